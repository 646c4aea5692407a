//! The recurring-job runner: when a job's cron schedule is due, snapshot every attached volume it
//! applies to (by name, or by the label `recurring-job-group.corral.io/<group>` on the volume), then
//! remove that job's oldest snapshots beyond `retain`. Runs are recorded in the job's status
//! (`lastRun`), so a restarted manager neither repeats a run nor runs missed ones in a burst:
//! at most one run happens for all occurrences missed.
//!
//! Backup tasks are not run yet (they need the manager-driven backup flow); such a job records a
//! message saying so.
use std::collections::BTreeMap;

use corral_store::resources::{JobTask, RecurringJob, Volume, VolumeState};

use super::Reconciler;
use crate::engine_client::EngineClient;
use crate::error::Result;

/// Label put on snapshots a job creates.
pub const JOB_LABEL: &str = "recurring-job.corral.io";

fn applies_to(job: &RecurringJob, v: &Volume) -> bool {
    job.spec.volumes.contains(&v.metadata.name)
        || job
            .spec
            .groups
            .iter()
            .any(|g| v.metadata.labels.contains_key(&format!("recurring-job-group.corral.io/{g}")))
}

pub(super) async fn run_due_jobs(rec: &Reconciler, volumes: &[Volume]) -> Result<()> {
    let jobs: Vec<RecurringJob> = rec.ds.list().await?;
    let now = chrono::Utc::now();
    for job in jobs {
        let Ok(cron) = crate::api::parse_cron(&job.spec.cron) else { continue };
        let since = job
            .status
            .last_run
            .as_deref()
            .or(Some(job.metadata.created.as_str()))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(now, |t| t.with_timezone(&chrono::Utc));
        let due = cron.find_next_occurrence(&since, false).is_ok_and(|next| next <= now);
        if !due {
            continue;
        }
        let mut message = String::new();
        if job.spec.task == JobTask::Backup {
            message = "backup tasks are not run by this manager version yet".into();
        } else {
            for v in volumes.iter().filter(|v| applies_to(&job, v)) {
                let Some(url) = v
                    .status
                    .engine_control_url
                    .as_deref()
                    .filter(|_| v.status.state == VolumeState::Attached)
                else {
                    continue;
                };
                if let Err(e) = snapshot_and_prune(&EngineClient::new(url), &job).await {
                    rec.events.warning(
                        "recurringjob",
                        &job.metadata.name,
                        "RunFailed",
                        format!("volume {}: {e}", v.metadata.name),
                    );
                    message = e.to_string();
                }
            }
        }
        let name = job.metadata.name.clone();
        let stamp = now.to_rfc3339();
        let updated = rec
            .ds
            .modify(&name, |j: &mut RecurringJob| {
                j.status.last_run = Some(stamp.clone());
                j.status.runs += 1;
                j.status.message = message.clone();
                Ok(())
            })
            .await;
        if let Err(e) = updated {
            if !e.is_not_found() {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

async fn snapshot_and_prune(engine: &EngineClient, job: &RecurringJob) -> Result<()> {
    let name = format!("{}-{}", job.metadata.name, chrono::Utc::now().format("%Y%m%d%H%M%S%3f"));
    let mut labels: BTreeMap<String, String> = job.spec.labels.clone();
    labels.insert(JOB_LABEL.into(), job.metadata.name.clone());
    engine.snapshot_create(Some(&name), &labels).await?;
    let mut mine: Vec<_> = engine
        .snapshots()
        .await?
        .into_iter()
        .filter(|s| !s.removed && s.labels.get(JOB_LABEL) == Some(&job.metadata.name))
        .collect();
    // Oldest first: creation time, then name (names embed the time too).
    mine.sort_by(|a, b| (a.created.as_str(), a.name.as_str()).cmp(&(b.created.as_str(), b.name.as_str())));
    let excess = mine.len().saturating_sub(job.spec.retain as usize);
    if excess > 0 {
        for s in &mine[..excess] {
            engine.snapshot_remove(&s.name).await?;
        }
        engine.snapshot_purge().await?;
    }
    Ok(())
}
