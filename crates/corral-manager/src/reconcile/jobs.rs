//! The recurring-job runner: when a job's cron schedule is due, snapshot every attached volume it
//! applies to (by name, or by the label `recurring-job-group.corral.io/<group>` on the volume), then
//! remove that job's oldest snapshots beyond `retain`. Runs are recorded in the job's status
//! (`lastRun`), so a restarted manager neither repeats a run nor runs missed ones in a burst:
//! at most one run happens for all occurrences missed.
//!
//! A `backup` task snapshots each volume (labelled with the job, like a snapshot task) and requests
//! a backup of that snapshot labelled `recurring-job.corral.io=<job>` (as Longhorn labels a
//! RecurringJob's backups). The backup reconciler runs it; when it completes, that job's oldest
//! backups of the volume beyond `retain`, and its oldest snapshots beyond `retain`, are removed
//! (see `backup.rs`). A volume whose previous backup still runs is skipped for this run, and no
//! snapshot is removed while any backup of the volume runs (the per-volume guard).
use std::collections::BTreeMap;

use corral_store::resources::{JobTask, RecurringJob, Volume, VolumeState};

use super::Reconciler;
use crate::clients::engine::EngineClient;
use crate::error::Result;
use crate::model::recurring::{applies_to, parse_cron, JOB_LABEL};
use crate::ops::backups::{backup_in_progress, request_backup};
use crate::ops::snapshots;

pub(super) async fn run_due_jobs(rec: &Reconciler, volumes: &[Volume]) -> Result<()> {
    let jobs: Vec<RecurringJob> = rec.ds.list().await?;
    let now = chrono::Utc::now();
    for job in jobs {
        let Ok(cron) = parse_cron(&job.spec.cron) else { continue };
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
        {
            for v in volumes.iter().filter(|v| applies_to(&job, v)) {
                let Some(url) = v
                    .status
                    .engine_control_url
                    .as_deref()
                    .filter(|_| v.status.state == VolumeState::Attached)
                else {
                    continue;
                };
                let busy = backup_in_progress(&rec.ds, &v.metadata.name).await?;
                let run = match (job.spec.task, busy) {
                    (JobTask::Backup, Some(running)) => {
                        message = format!("volume {}: backup {running} still runs; skipped", v.metadata.name);
                        continue;
                    }
                    (JobTask::Backup, None) => {
                        snapshot_and_back_up(rec, &EngineClient::new(url), &job, v).await
                    }
                    (JobTask::Snapshot, busy) => {
                        snapshot_and_prune(&EngineClient::new(url), &job, busy.is_none()).await
                    }
                };
                if let Err(e) = run {
                    rec.events.warning(
                        "recurringjob",
                        &job.metadata.name,
                        "RunFailed",
                        format!("volume {}: {e}", v.metadata.name),
                    );
                    message = e.to_string();
                }
                // Mirror what the run left (its new snapshot, pruned ones) into the store.
                if let Err(e) = snapshots::refresh(&rec.ds, &v.metadata.name, &EngineClient::new(url)).await {
                    rec.events.warning("volume", &v.metadata.name, "SnapshotSyncFailed", e.to_string());
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

/// Labels of what a job creates: its own labels and `recurring-job.corral.io=<job>`.
fn job_labels(job: &RecurringJob) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = job.spec.labels.clone();
    labels.insert(JOB_LABEL.into(), job.metadata.name.clone());
    labels
}

fn snapshot_name(job: &RecurringJob) -> String {
    format!("{}-{}", job.metadata.name, chrono::Utc::now().format("%Y%m%d%H%M%S%3f"))
}

/// Take a snapshot and request its backup; retention happens when the backup completes.
async fn snapshot_and_back_up(
    rec: &Reconciler,
    engine: &EngineClient,
    job: &RecurringJob,
    v: &Volume,
) -> Result<()> {
    let labels = job_labels(job);
    let snapshot = engine.snapshot_create(Some(&snapshot_name(job)), &labels).await?;
    let b =
        request_backup(&rec.ds, &v.metadata.name, &snapshot, labels, Some(job.metadata.name.clone())).await?;
    rec.events.normal(
        "recurringjob",
        &job.metadata.name,
        "BackupRequested",
        format!("backup {} of volume {} (snapshot {snapshot})", b.metadata.name, v.metadata.name),
    );
    Ok(())
}

/// Take a snapshot; remove the job's oldest beyond `retain` when `may_prune` (no backup of the
/// volume reads its replicas).
async fn snapshot_and_prune(engine: &EngineClient, job: &RecurringJob, may_prune: bool) -> Result<()> {
    engine.snapshot_create(Some(&snapshot_name(job)), &job_labels(job)).await?;
    if !may_prune {
        return Ok(());
    }
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
