//! The backup reconciler: runs each requested [`Backup`] as a job process on this node and records
//! its outcome, and gates the replicas of a `fromBackup` volume on their restore.
//!
//! # Backups
//! A backup is requested by storing a `Backup` record (state `pending`; API or recurring job). The
//! reconciler of the node holding a running replica of the volume (RW in the engine when attached)
//! starts `corral backup create --replica-dir DIR --snapshot S --target URL --volume V --name B
//! --json --progress-lines` as an instance-manager job named `b-<backup>`, then follows it: the
//! progress comes from its `progress: N` log lines, exit code 0 (state `SUCCEEDED`) makes the
//! backup `completed` (size read back from the target), anything else makes it `error` with the
//! job's last log lines. Only a zero exit marks a backup done, so a half-written backup is never
//! reported complete.
//!
//! Restart at any point converges: a manager restart finds the job again in the instance manager
//! (instance names are deterministic); if the job is gone (the instance manager restarted too), the
//! target is asked: a complete backup of that name means the job finished, an in-progress one is a
//! remnant of the killed job and is deleted before the job is started again under the same name.
//!
//! The backup job reads the replica directory while the replica process serves it. That is safe
//! for data: a snapshot's files are immutable once taken and the reader keeps its own file handles
//! across a later snapshot's rename of the head. What is *not* safe is removing or purging
//! snapshots of that volume meanwhile (purge merges snapshot files), so [`backup_in_progress`] is a
//! per-volume guard that the snapshot-delete API and the recurring jobs check first.
//!
//! Restores of `fromBackup` volumes are in [`super::restore`].
use std::collections::HashMap;

use corral_backup::{BackupTarget, LockTimings};
use corral_im::pb::{Instance, InstanceState as ImState};
use corral_store::resources::{
    Backup, BackupState, BackupVolume, BackupVolumeSpec, InstanceState, RecurringJob, Replica, ReplicaMode,
    Volume, VolumeState,
};
use corral_store::{Datastore, Resource};

use super::Reconciler;
use crate::clients::backup_store::{backup_error, open_target};
use crate::clients::engine::EngineClient;
use crate::clients::instance_manager::{job_failure, job_progress, start_job, state_of};
use crate::error::{Code, Result};
use crate::model::recurring::JOB_LABEL;
use crate::ops::backups::{backup_in_progress, is_running_state, target_url};

/// Instance-manager name of a backup's job.
pub fn backup_job_name(backup: &str) -> String {
    format!("b-{backup}")
}

/// One pass over the backups.
pub(super) async fn pass(rec: &Reconciler) -> Result<()> {
    let backups: Vec<Backup> = rec.ds.list().await?;
    if backups.is_empty() {
        return Ok(());
    }
    let instances: HashMap<String, Instance> =
        rec.im.list().await?.into_iter().map(|i| (i.name.clone(), i)).collect();
    for b in backups {
        let job = backup_job_name(b.name());
        let inst = instances.get(&job);
        if is_running_state(b.status.state) {
            if let Err(e) = drive(rec, &b, inst).await {
                if e.code != Code::Conflict {
                    rec.events.warning("backup", b.name(), "ReconcileFailed", e.to_string());
                }
            }
        } else if inst
            .is_some_and(|i| i.state != ImState::Starting as i32 && i.state != ImState::Running as i32)
        {
            // The outcome is recorded; the finished job's record can go.
            let _ = rec.im.delete(&job).await;
        }
    }
    Ok(())
}

async fn set_status(
    rec: &Reconciler,
    b: &Backup,
    f: impl Fn(&mut corral_store::resources::BackupStatus),
) -> Result<Backup> {
    let mut next = b.clone();
    f(&mut next.status);
    if next.status == b.status {
        return Ok(b.clone());
    }
    Ok(rec.ds.update(&next).await?)
}

async fn fail(rec: &Reconciler, b: &Backup, message: String) -> Result<()> {
    rec.events.warning("backup", b.name(), "Failed", message.clone());
    set_status(rec, b, |s| {
        s.state = BackupState::Error;
        s.message = message.clone();
    })
    .await?;
    rec.wake.notify_one();
    Ok(())
}

async fn drive(rec: &Reconciler, b: &Backup, inst: Option<&Instance>) -> Result<()> {
    let job = backup_job_name(b.name());
    let Some(target_url) = target_url(&rec.ds).await? else {
        return fail(rec, b, "no backup target is set".into()).await;
    };
    match state_of(inst) {
        Some(ImState::Starting | ImState::Running) => {
            let progress = job_progress(&rec.im, &job).await.unwrap_or(0).min(99);
            set_status(rec, b, |s| {
                s.state = BackupState::InProgress;
                s.progress = s.progress.max(progress);
            })
            .await?;
            Ok(())
        }
        Some(ImState::Succeeded) => complete(rec, b, &target_url).await,
        Some(_) => {
            let message = match inst {
                Some(i) => job_failure(&rec.im, i).await,
                None => String::new(),
            };
            fail(rec, b, format!("backup job failed: {message}")).await?;
            let _ = rec.im.delete(&job).await;
            Ok(())
        }
        None => start(rec, b, &target_url).await,
    }
}

/// Record a finished backup: size from the target, the backup volume's record, retention.
async fn complete(rec: &Reconciler, b: &Backup, target_url: &str) -> Result<()> {
    let target = open_target(target_url)?;
    let details =
        corral_backup::inspect_backup(&target, &b.spec.volume, b.name()).await.map_err(backup_error)?;
    if details.backup.in_progress {
        return fail(rec, b, "backup job exited but the backup is incomplete in the target".into()).await;
    }
    let url = details.backup.url.clone();
    set_status(rec, b, |s| {
        s.state = BackupState::Completed;
        s.progress = 100;
        s.url = Some(url.clone());
        s.size = details.backup.size;
        s.message.clear();
    })
    .await?;
    rec.events.normal("backup", b.name(), "Completed", url.clone());
    let _ = rec.im.delete(&backup_job_name(b.name())).await;
    record_backup_volume(&rec.ds, &b.spec.volume, target_url, b.name(), details.volume_size).await;
    if let Err(e) = apply_retention(rec, b, &target).await {
        rec.events.warning("backup", b.name(), "RetentionFailed", e.to_string());
    }
    Ok(())
}

/// Keep the BackupVolume record of `volume` (last backup, size) in step.
async fn record_backup_volume(ds: &Datastore, volume: &str, target: &str, last: &str, size: u64) {
    let now = chrono::Utc::now().to_rfc3339();
    let result = match ds.try_get::<BackupVolume>(volume).await {
        Ok(Some(mut bv)) => {
            bv.spec.target = target.to_string();
            bv.status.size = size;
            bv.status.last_backup = Some(last.to_string());
            bv.status.last_backup_at = Some(now);
            ds.update(&bv).await.map(drop)
        }
        Ok(None) => {
            let mut bv = BackupVolume::new(volume, BackupVolumeSpec { target: target.to_string() });
            bv.status.size = size;
            bv.status.last_backup = Some(last.to_string());
            bv.status.last_backup_at = Some(now);
            ds.create(&bv).await.map(drop)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, volume, "cannot record the backup volume");
    }
}

/// A recurring job's backup completed: remove that job's oldest backups of the volume beyond its
/// `retain`, then its oldest snapshots beyond `retain` (the newest is the base of the next
/// incremental backup, so it is always kept).
async fn apply_retention(rec: &Reconciler, b: &Backup, target: &BackupTarget) -> Result<()> {
    let Some(job_name) = &b.spec.created_by_job else { return Ok(()) };
    let Some(job) = rec.ds.try_get::<RecurringJob>(job_name).await? else { return Ok(()) };
    let retain = job.spec.retain as usize;
    let mine: Vec<_> = corral_backup::list_backups(target, &b.spec.volume)
        .await
        .map_err(backup_error)?
        .into_iter()
        .filter(|s| !s.in_progress && s.labels.get(JOB_LABEL) == Some(job_name))
        .collect();
    // list_backups is oldest first.
    let excess = mine.len().saturating_sub(retain);
    for old in &mine[..excess] {
        corral_backup::delete_backup(target, &b.spec.volume, &old.name, LockTimings::default())
            .await
            .map_err(backup_error)?;
        let _ = rec.ds.delete::<Backup>(&old.name, None).await;
        rec.events.normal(
            "recurringjob",
            job_name,
            "BackupRemoved",
            format!("{} (retain {retain})", old.url),
        );
    }
    // Snapshots: only when no other backup of the volume reads the replica.
    if backup_in_progress(&rec.ds, &b.spec.volume).await?.is_some() {
        return Ok(());
    }
    let Some(v) = rec.ds.try_get::<Volume>(&b.spec.volume).await? else { return Ok(()) };
    let Some(url) =
        v.status.engine_control_url.as_deref().filter(|_| v.status.state == VolumeState::Attached)
    else {
        return Ok(());
    };
    let engine = EngineClient::new(url);
    let mut snaps: Vec<_> = engine
        .snapshots()
        .await?
        .into_iter()
        .filter(|s| !s.removed && s.labels.get(JOB_LABEL) == Some(job_name))
        .collect();
    snaps.sort_by(|a, b| (a.created.as_str(), a.name.as_str()).cmp(&(b.created.as_str(), b.name.as_str())));
    let excess = snaps.len().saturating_sub(retain);
    if excess > 0 {
        for s in &snaps[..excess] {
            engine.snapshot_remove(&s.name).await?;
        }
        engine.snapshot_purge().await?;
    }
    Ok(())
}

/// The replica to back up from: running on this node, RW in the engine when attached.
fn source_replica<'a>(v: &Volume, replicas: &'a [Replica], node: &str) -> Option<&'a Replica> {
    let attached = v.status.state == VolumeState::Attached;
    replicas.iter().find(|r| {
        r.spec.volume == v.metadata.name
            && r.spec.node == node
            && r.status.state == InstanceState::Running
            && r.spec.failed_at.is_none()
            && (!attached || r.status.mode == Some(ReplicaMode::RW))
    })
}

async fn start(rec: &Reconciler, b: &Backup, target_url: &str) -> Result<()> {
    let Some(v) = rec.ds.try_get::<Volume>(&b.spec.volume).await? else {
        return fail(rec, b, format!("volume {} no longer exists", b.spec.volume)).await;
    };
    let replicas: Vec<Replica> = rec.ds.list().await?;
    let Some(r) = source_replica(&v, &replicas, &rec.node) else {
        if !replicas.iter().any(|r| r.spec.volume == b.spec.volume && r.spec.node == rec.node) {
            // Another node's manager runs it.
            return Ok(());
        }
        set_status(rec, b, |s| s.message = "waiting for a healthy replica".into()).await?;
        return Ok(());
    };
    // A job that was lost with its instance manager may have finished, or left a remnant.
    let target = match open_target(target_url) {
        Ok(t) => t,
        Err(e) if e.code == Code::InvalidArgument => return fail(rec, b, e.message).await,
        Err(e) => return Err(e),
    };
    if b.status.state == BackupState::InProgress {
        match corral_backup::inspect_backup(&target, &b.spec.volume, b.name()).await {
            Ok(d) if !d.backup.in_progress => return complete(rec, b, target_url).await,
            Ok(_) => {
                corral_backup::delete_backup(&target, &b.spec.volume, b.name(), LockTimings::default())
                    .await
                    .map_err(backup_error)?;
                rec.events.normal("backup", b.name(), "Restarted", "removed the remnant of a lost job");
            }
            Err(e) if e.kind() == corral_backup::ErrorKind::NotFound => {}
            Err(e) => return Err(backup_error(e)),
        }
    }
    let mut args = vec![
        "backup".to_string(),
        "create".into(),
        "--replica-dir".into(),
        r.spec.data_dir.clone(),
        "--snapshot".into(),
        b.spec.snapshot.clone(),
        "--target".into(),
        target_url.to_string(),
        "--volume".into(),
        b.spec.volume.clone(),
        "--name".into(),
        b.name().to_string(),
        "--json".into(),
        "--progress-lines".into(),
    ];
    for (k, val) in &b.spec.labels {
        args.extend(["--label".to_string(), format!("{k}={val}")]);
    }
    start_job(&rec.im, backup_job_name(b.name()), args).await?;
    rec.events.normal(
        "backup",
        b.name(),
        "Started",
        format!("snapshot {} of {} from replica {}", b.spec.snapshot, b.spec.volume, r.name()),
    );
    let replica = r.name().to_string();
    set_status(rec, b, |s| {
        s.state = BackupState::InProgress;
        s.message = format!("running on replica {replica}");
    })
    .await?;
    Ok(())
}
