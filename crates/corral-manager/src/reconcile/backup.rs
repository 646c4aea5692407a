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
//! # Restores (`fromBackup`)
//! A replica of a volume created from a backup gets its directory from `corral backup restore URL
//! --to-replica-dir DIR` (job `rs-<replica>`) before its process may start. The restore builds the
//! directory under a temporary name and renames it into place last, so "the directory exists"
//! durably means "restored completely"; a replica whose directory is missing is never started.
//! The volume shows a `restored` condition (`Restoring` with progress, `RestoreFailed` with the
//! job's message, then true); a failed restore is not retried by itself (delete the volume).
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use corral_backup::{BackupTarget, BackupUrl, LockTimings};
use corral_im::pb::{Instance, InstanceKind, InstanceState as ImState, StartRequest};
use corral_store::resources::{
    set_condition, Backup, BackupState, BackupTarget as BackupTargetResource, BackupVolume, BackupVolumeSpec,
    ConditionType, InstanceState, RecurringJob, Replica, ReplicaMode, Volume, VolumeState, VolumeStatus,
};
use corral_store::{Datastore, Resource};

use super::jobs::JOB_LABEL;
use super::Reconciler;
use crate::engine_client::EngineClient;
use crate::error::{Code, ManagerError, Result};

/// Prefix of the progress lines the backup CLI prints with `--progress-lines`.
pub const PROGRESS_PREFIX: &str = "progress: ";

/// Name of the stored backup target resource.
pub(crate) const TARGET_RESOURCE: &str = "default";

/// Instance-manager name of a backup's job.
pub fn backup_job_name(backup: &str) -> String {
    format!("b-{backup}")
}

/// Instance-manager name of a replica's restore job.
pub fn restore_job_name(replica: &str) -> String {
    format!("rs-{replica}")
}

/// The backup target URL, if one is set.
pub(crate) async fn target_url(ds: &Datastore) -> Result<Option<String>> {
    let t: Option<BackupTargetResource> = ds.try_get(TARGET_RESOURCE).await?;
    Ok(t.map(|t| t.spec.url).filter(|u| !u.is_empty()))
}

/// The API code of a backup-store error kind.
fn code_of(kind: corral_backup::ErrorKind) -> Code {
    use corral_backup::ErrorKind as K;
    match kind {
        K::NotFound => Code::NotFound,
        K::AlreadyExists => Code::AlreadyExists,
        K::InvalidArgument => Code::InvalidArgument,
        K::Busy => Code::Conflict,
        K::Unavailable | K::PermissionDenied => Code::Unavailable,
        K::Corrupt | K::Io => Code::Internal,
    }
}

/// A backup-store error as an API error (kind → stable code).
pub(crate) fn backup_error(e: corral_backup::BackupError) -> ManagerError {
    ManagerError { code: code_of(e.kind()), message: format!("backup store: {e}"), source: Some(Box::new(e)) }
}

/// Open a target URL through corral-backup.
pub(crate) fn open_target(url: &str) -> Result<BackupTarget> {
    BackupTarget::open(url).map_err(backup_error)
}

fn is_running_state(s: BackupState) -> bool {
    matches!(s, BackupState::Pending | BackupState::InProgress)
}

/// The per-volume guard: the name of a backup of `volume` that is pending or running, if any.
/// Snapshots of the volume must not be removed or purged while it runs.
pub async fn backup_in_progress(ds: &Datastore, volume: &str) -> Result<Option<String>> {
    let backups: Vec<Backup> = ds.list().await?;
    Ok(backups
        .into_iter()
        .find(|b| b.spec.volume == volume && is_running_state(b.status.state))
        .map(|b| b.metadata.name))
}

/// Store a request for a backup (the reconciler runs it). `name` defaults to `backup-<16 hex>`.
pub(crate) async fn request_backup(
    ds: &Datastore,
    volume: &str,
    snapshot: &str,
    labels: BTreeMap<String, String>,
    created_by_job: Option<String>,
) -> Result<Backup> {
    let name = format!("backup-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let spec = corral_store::resources::BackupSpec {
        volume: volume.to_string(),
        snapshot: snapshot.to_string(),
        labels,
        created_by_job,
    };
    Ok(ds.create(&Backup::new(name, spec)).await?)
}

/// The last `progress: N` value in `lines`.
pub(crate) fn parse_progress(lines: &[String]) -> Option<u32> {
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(PROGRESS_PREFIX)?.trim().parse::<u32>().ok().map(|p| p.min(100)))
}

async fn job_progress(rec: &Reconciler, job: &str) -> Option<u32> {
    rec.im.logs(job, 20).await.ok().and_then(|l| parse_progress(&l))
}

/// The job's failure in a sentence: its state message and its last log lines.
async fn job_failure(rec: &Reconciler, inst: &Instance) -> String {
    let lines = rec.im.logs(&inst.name, 5).await.unwrap_or_default();
    let errors: Vec<&String> =
        lines.iter().filter(|l| !l.starts_with(PROGRESS_PREFIX) && !l.trim().is_empty()).collect();
    match errors.last() {
        Some(l) if !inst.message.contains(l.as_str()) => format!("{}; {l}", inst.message),
        _ => inst.message.clone(),
    }
}

fn state_of(inst: Option<&Instance>) -> Option<ImState> {
    inst.and_then(|i| ImState::try_from(i.state).ok())
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
            let progress = job_progress(rec, &job).await.unwrap_or(0).min(99);
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
                Some(i) => job_failure(rec, i).await,
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
    start_job(rec, backup_job_name(b.name()), args).await?;
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

/// Starts `corral <args>` as job `name` under the instance manager. Returns false when a job of that
/// name already exists (a restarted manager finds its job again).
async fn start_job(rec: &Reconciler, name: String, args: Vec<String>) -> Result<bool> {
    let req = StartRequest {
        name,
        kind: InstanceKind::Job as i32,
        args,
        port_count: 0,
        probe_host: String::new(),
        requested_ports: vec![],
    };
    match rec.im.start(req).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == corral_im::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.into()),
    }
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
            if start_job(rec, job.clone(), args).await? {
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
                    Some(i) => job_failure(rec, i).await,
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
                progress.push(job_progress(rec, &job).await.unwrap_or(0))
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

/// Size of the volume a backup restores to, checked against a requested size (0 = take the
/// backup's; any other must equal it).
pub async fn size_from_backup(url: &str, requested: u64) -> Result<u64> {
    let parsed = BackupUrl::parse(url).map_err(|e| ManagerError::invalid(e.to_string()))?;
    let target = open_target(&parsed.target)?;
    let details =
        corral_backup::inspect_backup(&target, &parsed.volume, &parsed.backup).await.map_err(|e| {
            // A backup that does not exist is a bad value in this request, not a missing API object.
            let code = match e.kind() {
                corral_backup::ErrorKind::NotFound => Code::InvalidArgument,
                kind => code_of(kind),
            };
            ManagerError::new(code, format!("fromBackup {url}: {e}"))
        })?;
    if details.backup.in_progress {
        return Err(ManagerError::invalid(format!("fromBackup {url}: the backup is not complete")));
    }
    let size = details.volume_size;
    if requested == 0 {
        return Ok(size);
    }
    if requested < size {
        return Err(ManagerError::invalid(format!(
            "size {requested} is smaller than the backup's volume size {size}: a restored volume cannot shrink"
        )));
    }
    if requested > size {
        // The restored replica directories have the backup's size; growing them is the expand
        // action's job once the volume is attached.
        return Err(ManagerError::invalid(format!(
            "size {requested} differs from the backup's volume size {size}: omit the size (or give {size}) and expand the volume after the restore"
        )));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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

    #[tokio::test]
    async fn the_guard_sees_only_pending_and_running_backups_of_the_volume() {
        let ds = Datastore::new(Arc::new(corral_store::MemoryStore::new()));
        assert_eq!(backup_in_progress(&ds, "v").await.unwrap(), None);
        let b = request_backup(&ds, "v", "s1", BTreeMap::new(), None).await.unwrap();
        assert_eq!(backup_in_progress(&ds, "v").await.unwrap(), Some(b.metadata.name.clone()));
        assert_eq!(backup_in_progress(&ds, "w").await.unwrap(), None);
        for (state, running) in
            [(BackupState::InProgress, true), (BackupState::Completed, false), (BackupState::Error, false)]
        {
            ds.modify(&b.metadata.name, |x: &mut Backup| {
                x.status.state = state;
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(backup_in_progress(&ds, "v").await.unwrap().is_some(), running, "{state:?}");
        }
    }
}
