//! Deleting backups and backup volumes, and garbage-collecting blocks (reference §6.7).
//!
//! Under the DELETION lock (which excludes every backup and restore of the volume):
//! 1. delete `backup_<name>.cfg` (from then on the backup no longer exists for anyone);
//! 2. if it was the volume's last backup, point `LastBackupName`/`LastBackupAt` at the newest remaining one;
//! 3. GC: list the block objects, load every remaining backup config and count references; GC is skipped
//!    (blocks are kept, nothing is lost) if a config cannot be read, a backup is in progress, or the set of
//!    backups changed during the scan; otherwise every unreferenced block is deleted;
//! 4. `BlockCount` = referenced blocks that exist; `volume.cfg` written.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::catalog::{backup_names, load_backup, load_volume, save_volume};
use crate::error::{BackupError, Result};
use crate::layout;
use crate::lock::{LockKind, LockTimings, VolumeLock};
use crate::names::validate_existing_name;
use crate::target::BackupTarget;

/// Deletions in flight at once.
const DELETE_CONCURRENCY: usize = 16;

/// What garbage collection did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Block objects found.
    pub blocks_found: usize,
    /// Blocks referenced by remaining backups (and present).
    pub blocks_referenced: usize,
    /// Blocks deleted.
    pub blocks_deleted: usize,
    /// Referenced blocks that are missing (found by the scan; `verify` gives details).
    pub blocks_missing: usize,
    /// Why GC did not delete anything, if it did not run.
    pub skipped: Option<String>,
}

/// What deleting a backup did.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteReport {
    /// Deleted backup.
    pub backup: String,
    /// Its volume.
    pub volume: String,
    /// The volume's last backup afterwards ("" if none is left).
    pub last_backup: String,
    /// Garbage collection.
    pub gc: GcReport,
}

/// Deletes one backup and garbage-collects the blocks no remaining backup references.
pub async fn delete_backup(
    target: &BackupTarget,
    volume: &str,
    backup: &str,
    timings: LockTimings,
) -> Result<DeleteReport> {
    validate_existing_name("volume", volume)?;
    validate_existing_name("backup", backup)?;
    let lock = VolumeLock::acquire(target, volume, LockKind::Deletion, timings).await?;
    let result = delete_locked(target, volume, backup).await;
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "cannot release deletion lock; it expires by itself");
    }
    result
}

async fn delete_locked(target: &BackupTarget, volume: &str, backup: &str) -> Result<DeleteReport> {
    let key = layout::backup_config(volume, backup);
    if target.head(&key).await?.is_none() {
        return Err(BackupError::NotFound {
            what: format!("backup {backup} of volume {volume} ({})", target.describe(&key)),
        });
    }
    target.delete(&key).await?;
    let mut volume_cfg = load_volume(target, volume).await?;
    let gc = collect_garbage(target, volume).await?;
    let mut last_backup = String::new();
    if let Some(cfg) = volume_cfg.as_mut() {
        if cfg.last_backup_name == backup {
            let (name, at) = newest_backup(target, volume).await;
            cfg.last_backup_name = name;
            cfg.last_backup_at = at;
        }
        if gc.skipped.is_none() {
            cfg.block_count = gc.blocks_referenced as u64;
        }
        last_backup = cfg.last_backup_name.clone();
        save_volume(target, cfg).await?;
    }
    Ok(DeleteReport { backup: backup.to_string(), volume: volume.to_string(), last_backup, gc })
}

/// The completed backup with the latest `SnapshotCreatedAt` (Longhorn's rule), or empty strings.
async fn newest_backup(target: &BackupTarget, volume: &str) -> (String, String) {
    let mut best: (String, String) = (String::new(), String::new());
    let Ok(names) = backup_names(target, volume).await else { return best };
    for name in names {
        let Ok(cfg) = load_backup(target, volume, &name).await else { continue };
        if !cfg.is_in_progress() && (best.0.is_empty() || cfg.snapshot_created_at > best.1) {
            best = (cfg.name, cfg.snapshot_created_at);
        }
    }
    best
}

/// Deletes blocks that no backup of the volume references (see the module doc for when it declines).
pub(crate) async fn collect_garbage(target: &BackupTarget, volume: &str) -> Result<GcReport> {
    let mut report = GcReport::default();
    let present: BTreeSet<String> = target
        .list_recursive(&layout::blocks_dir(volume))
        .await?
        .into_iter()
        .filter_map(|(file, _)| layout::checksum_from_block_file(&file).map(str::to_string))
        .collect();
    report.blocks_found = present.len();
    let names_before = backup_names(target, volume).await?;
    let mut referenced = BTreeSet::new();
    for name in &names_before {
        let cfg = match load_backup(target, volume, name).await {
            Ok(cfg) => cfg,
            Err(e) => {
                report.skipped = Some(format!("backup {name} cannot be read ({e}); keeping every block"));
                return Ok(report);
            }
        };
        if cfg.is_in_progress() {
            report.skipped = Some(format!("backup {name} is in progress; keeping every block"));
            return Ok(report);
        }
        referenced.extend(cfg.blocks.into_iter().map(|b| b.checksum));
    }
    if backup_names(target, volume).await? != names_before {
        report.skipped = Some("the set of backups changed during the scan; keeping every block".to_string());
        return Ok(report);
    }
    report.blocks_referenced = referenced.iter().filter(|c| present.contains(*c)).count();
    report.blocks_missing = referenced.len() - report.blocks_referenced;
    let garbage: Vec<String> = present.iter().filter(|c| !referenced.contains(*c)).cloned().collect();
    report.blocks_deleted = garbage.len();
    futures::stream::iter(garbage)
        .map(|checksum| async move { target.delete(&layout::block(volume, &checksum)).await })
        .buffer_unordered(DELETE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(report)
}

/// What deleting a backup volume did.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteVolumeReport {
    /// Deleted volume.
    pub volume: String,
    /// Objects deleted.
    pub objects_deleted: usize,
}

/// Deletes a whole backup volume: its backups, blocks, locks and `volume.cfg`.
pub async fn delete_volume(
    target: &BackupTarget,
    volume: &str,
    timings: LockTimings,
) -> Result<DeleteVolumeReport> {
    validate_existing_name("volume", volume)?;
    let dir = layout::volume_dir(volume);
    if target.list_recursive(&dir).await?.is_empty() {
        return Err(BackupError::NotFound { what: format!("backup volume {volume} in {}", target.url()) });
    }
    let lock = VolumeLock::acquire(target, volume, LockKind::Deletion, timings).await?;
    let own_lock = format!("{}{}", lock.name(), layout::LOCK_SUFFIX);
    let result = async {
        // Backup configs first (a half-deleted volume then has no backups that reference missing blocks),
        // volume.cfg last but before our own lock.
        let mut objects = target.list_recursive(&dir).await?;
        objects.retain(|(file, _)| file != &own_lock);
        let count = objects.len();
        for group in [0, 1, 2] {
            let keys: Vec<String> = objects
                .iter()
                .filter(|(file, _)| deletion_order(file) == group)
                .map(|(_, meta)| relative_key(target, meta))
                .collect();
            futures::stream::iter(keys)
                .map(|key| async move { target.delete(&key).await })
                .buffer_unordered(DELETE_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
        }
        Ok::<_, BackupError>(count)
    }
    .await;
    let released = lock.release().await;
    let count = result?;
    released?;
    Ok(DeleteVolumeReport { volume: volume.to_string(), objects_deleted: count + 1 })
}

/// Backup configs first, then blocks and other files, `volume.cfg` last.
fn deletion_order(file: &str) -> u8 {
    if layout::backup_name_from_file(file).is_some() {
        0
    } else if file == layout::VOLUME_CONFIG_FILE {
        2
    } else {
        1
    }
}

/// The key of a listed object relative to the target root.
fn relative_key(target: &BackupTarget, meta: &object_store::ObjectMeta) -> String {
    let full = meta.location.as_ref();
    let prefix = match target.location() {
        crate::target::TargetLocation::S3 { prefix, .. } => prefix.as_str(),
        crate::target::TargetLocation::Directory(_) => "",
    };
    if prefix.is_empty() {
        full.to_string()
    } else {
        full.strip_prefix(prefix)
            .map(|k| k.trim_start_matches('/').to_string())
            .unwrap_or_else(|| full.to_string())
    }
}
