//! Restores of `fromBackup` volumes: a replica of a volume created from a backup gets its
//! directory from `corral backup restore URL --to-replica-dir DIR` (job `rs-<replica>`) before its
//! process may start. The restore builds the directory under a temporary name and renames it into
//! place last, so "the directory exists" durably means "restored completely"; a replica whose
//! directory is missing is never started. The volume shows a `restored` condition (`Restoring`
//! with progress, `RestoreFailed` with the job's message, then true); a failed restore is not
//! retried by itself (delete the volume).
use std::collections::HashMap;
use std::path::Path;

use corral_im::pb::{Instance, InstanceState as ImState};
use corral_store::resources::{set_condition, ConditionType, Replica, Volume, VolumeStatus};
use corral_store::Resource;

use super::Reconciler;
use crate::clients::instance_manager::{job_failure, job_progress, start_job, state_of};
use crate::error::{Code, ManagerError, Result};

/// Instance-manager name of a replica's restore job.
pub fn restore_job_name(replica: &str) -> String {
    format!("rs-{replica}")
}

/// Whether replica `r` of `v` must wait for its restore before its process starts; starts the
/// restore job when it is not running yet.
pub(super) async fn restore_pending(
    rec: &Reconciler,
    v: &Volume,
    r: &Replica,
    instances: &HashMap<String, Instance>,
) -> Result<bool> {
    let Some(url) = &v.spec.from_backup else { return Ok(false) };
    if v.status.restore_done || r.status.initialized || r.spec.node != rec.node {
        return Ok(false);
    }
    // The restore renames its finished directory into place as its last step.
    if Path::new(&r.spec.data_dir).exists() {
        return Ok(false);
    }
    let job = restore_job_name(r.name());
    match state_of(instances.get(&job)) {
        Some(ImState::Starting | ImState::Running | ImState::Error) => Ok(true),
        _ => {
            if let Some(parent) = Path::new(&r.spec.data_dir).parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    ManagerError::new(Code::Internal, format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            let args = vec![
                "backup".to_string(),
                "restore".into(),
                url.clone(),
                "--to-replica-dir".into(),
                r.spec.data_dir.clone(),
                "--json".into(),
                "--progress-lines".into(),
            ];
            if start_job(&rec.im, job.clone(), args).await? {
                rec.events.normal("replica", r.name(), "Restoring", format!("from {url}"));
            }
            Ok(true)
        }
    }
}

/// The `restored` condition and `restoreDone` of a `fromBackup` volume.
pub(super) async fn restore_status(
    rec: &Reconciler,
    v: &Volume,
    replicas: &[Replica],
    instances: &HashMap<String, Instance>,
    status: &mut VolumeStatus,
) {
    let Some(url) = &v.spec.from_backup else { return };
    if status.restore_done {
        return;
    }
    let n = v.spec.number_of_replicas as usize;
    if replicas.len() >= n && replicas.iter().all(|r| r.status.initialized) {
        status.restore_done = true;
        set_condition(&mut status.conditions, ConditionType::Restored, true, "Restored", url);
        rec.events.normal("volume", v.name(), "Restored", format!("from {url}"));
        for r in replicas {
            let _ = rec.im.delete(&restore_job_name(r.name())).await;
        }
        return;
    }
    let mut progress = Vec::new();
    for r in replicas.iter().filter(|r| r.spec.node == rec.node) {
        let job = restore_job_name(r.name());
        let inst = instances.get(&job);
        match state_of(inst) {
            Some(ImState::Error) => {
                let why = match inst {
                    Some(i) => job_failure(&rec.im, i).await,
                    None => String::new(),
                };
                let message = format!("restore of replica {} from {url} failed: {why}", r.name());
                if set_condition(
                    &mut status.conditions,
                    ConditionType::Restored,
                    false,
                    "RestoreFailed",
                    &message,
                ) {
                    rec.events.warning("volume", v.name(), "RestoreFailed", message);
                }
                return;
            }
            Some(ImState::Starting | ImState::Running) => {
                progress.push(job_progress(&rec.im, &job).await.unwrap_or(0))
            }
            _ => progress.push(if r.status.initialized || Path::new(&r.spec.data_dir).exists() {
                100
            } else {
                0
            }),
        }
    }
    let pct = if progress.is_empty() { 0 } else { progress.iter().sum::<u32>() / progress.len() as u32 };
    set_condition(
        &mut status.conditions,
        ConditionType::Restored,
        false,
        "Restoring",
        &format!("restoring from {url}: {pct}%"),
    );
}
