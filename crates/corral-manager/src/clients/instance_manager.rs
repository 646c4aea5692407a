//! The node's instance manager (gRPC, `corral-im`) and the short-lived jobs the manager runs under
//! it (`corral backup create`, `corral backup restore`): starting them under a deterministic name,
//! and reading their progress and failure from their log lines.
use corral_im::pb::{Instance, InstanceKind, InstanceState as ImState, StartRequest};
pub use corral_im::ImClient;

use crate::error::Result;

/// Prefix of the progress lines the backup CLI prints with `--progress-lines`.
pub const PROGRESS_PREFIX: &str = "progress: ";

/// The last `progress: N` value in `lines`.
pub fn parse_progress(lines: &[String]) -> Option<u32> {
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(PROGRESS_PREFIX)?.trim().parse::<u32>().ok().map(|p| p.min(100)))
}

/// The progress a running job last printed.
pub async fn job_progress(im: &ImClient, job: &str) -> Option<u32> {
    im.logs(job, 20).await.ok().and_then(|l| parse_progress(&l))
}

/// The job's failure in a sentence: its state message and its last log lines.
pub async fn job_failure(im: &ImClient, inst: &Instance) -> String {
    let lines = im.logs(&inst.name, 5).await.unwrap_or_default();
    let errors: Vec<&String> =
        lines.iter().filter(|l| !l.starts_with(PROGRESS_PREFIX) && !l.trim().is_empty()).collect();
    match errors.last() {
        Some(l) if !inst.message.contains(l.as_str()) => format!("{}; {l}", inst.message),
        _ => inst.message.clone(),
    }
}

/// The typed state of an instance, if there is one.
pub fn state_of(inst: Option<&Instance>) -> Option<ImState> {
    inst.and_then(|i| ImState::try_from(i.state).ok())
}

/// Starts `corral <args>` as job `name` under the instance manager. Returns false when a job of that
/// name already exists (a restarted manager finds its job again).
pub async fn start_job(im: &ImClient, name: String, args: Vec<String>) -> Result<bool> {
    let req = StartRequest {
        name,
        kind: InstanceKind::Job as i32,
        args,
        port_count: 0,
        probe_host: String::new(),
        requested_ports: vec![],
    };
    match im.start(req).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == corral_im::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_the_last_progress_line() {
        let lines: Vec<String> = ["progress: 10", "some log", "progress: 57", "{\"url\": 1}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(parse_progress(&lines), Some(57));
        assert_eq!(parse_progress(&["progress: 250".to_string()]), Some(100));
        assert_eq!(parse_progress(&["progress: x".to_string()]), None);
        assert_eq!(parse_progress(&[]), None);
    }
}
