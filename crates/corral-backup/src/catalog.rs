//! Reading and writing the configs of a target, and the list/inspect operations.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::backup_url::BackupUrl;
use crate::error::{BackupError, Result};
use crate::format::backup_config::BackupConfig;
use crate::format::volume_config::VolumeConfig;
use crate::layout;
use crate::names::validate_existing_name;
use crate::target::BackupTarget;

/// Loads `volume.cfg`, or None if the volume has none.
pub(crate) async fn load_volume(target: &BackupTarget, volume: &str) -> Result<Option<VolumeConfig>> {
    let key = layout::volume_config(volume);
    match target.get_opt(&key).await? {
        Some(bytes) => VolumeConfig::parse(&target.describe(&key), &bytes).map(Some),
        None => Ok(None),
    }
}

/// Loads `volume.cfg`; a missing one is NotFound naming the volume.
pub(crate) async fn require_volume(target: &BackupTarget, volume: &str) -> Result<VolumeConfig> {
    load_volume(target, volume)
        .await?
        .ok_or_else(|| BackupError::NotFound { what: format!("backup volume {volume} in {}", target.url()) })
}

pub(crate) async fn save_volume(target: &BackupTarget, cfg: &VolumeConfig) -> Result<()> {
    target.put(&layout::volume_config(&cfg.name), cfg.encode()?.into()).await
}

/// Loads one backup config; a missing one is NotFound naming it.
pub(crate) async fn load_backup(target: &BackupTarget, volume: &str, backup: &str) -> Result<BackupConfig> {
    let key = layout::backup_config(volume, backup);
    let bytes = target.get_opt(&key).await?.ok_or_else(|| BackupError::NotFound {
        what: format!("backup {backup} of volume {volume} ({})", target.describe(&key)),
    })?;
    BackupConfig::parse(&target.describe(&key), &bytes)
}

pub(crate) async fn save_backup(target: &BackupTarget, cfg: &BackupConfig) -> Result<()> {
    target.put(&layout::backup_config(&cfg.volume_name, &cfg.name), cfg.encode()?.into()).await
}

/// Names of the backups of a volume (by their config files), sorted.
pub(crate) async fn backup_names(target: &BackupTarget, volume: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = target
        .list_files(&layout::backups_dir(volume))
        .await?
        .into_iter()
        .filter_map(|(file, _)| layout::backup_name_from_file(&file).map(str::to_string))
        .filter(|n| validate_existing_name("backup", n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Names of the backup volumes in a target, sorted.
pub async fn volume_names(target: &BackupTarget) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for first in target.list_dirs(layout::VOLUMES_DIR).await? {
        for second in target.list_dirs(&format!("{}/{first}", layout::VOLUMES_DIR)).await? {
            for volume in target.list_dirs(&format!("{}/{first}/{second}", layout::VOLUMES_DIR)).await? {
                // Only directories at the place the name's hash says count as volumes.
                if validate_existing_name("volume", &volume).is_ok()
                    && layout::volume_dir(&volume)
                        == format!("{}/{first}/{second}/{volume}", layout::VOLUMES_DIR)
                {
                    names.push(volume);
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

/// One backup volume, as `ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeSummary {
    /// Volume name.
    pub name: String,
    /// Volume size in bytes.
    pub size: u64,
    /// When the backup volume was created.
    pub created: String,
    /// Most recent backup.
    pub last_backup_name: String,
    /// Its time.
    pub last_backup_at: String,
    /// Distinct blocks stored.
    pub block_count: u64,
    /// Block compression.
    pub compression: String,
    /// Number of backups.
    pub backup_count: usize,
    /// Labels of the latest backup.
    pub labels: BTreeMap<String, String>,
}

/// One backup, as `ls` and `inspect` show it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    /// Backup name.
    pub name: String,
    /// Backup URL (`<target>?backup=<name>&volume=<volume>`).
    pub url: String,
    /// Volume name.
    pub volume: String,
    /// Source snapshot.
    pub snapshot: String,
    /// Backup start time (Longhorn's `SnapshotCreatedAt`).
    pub snapshot_created_at: String,
    /// Completion time; empty while in progress.
    pub created: String,
    /// True while the backup is being written (or if its writer died).
    pub in_progress: bool,
    /// Bytes covered by its blocks.
    pub size: u64,
    /// Number of blocks.
    pub block_count: usize,
    /// Block size in bytes.
    pub block_size: u64,
    /// Whether it read only changed blocks.
    pub is_incremental: bool,
    /// Block compression.
    pub compression: String,
    /// Stored bytes it uploaded.
    pub newly_uploaded_data_size: u64,
    /// Stored bytes it re-uploaded.
    pub re_uploaded_data_size: u64,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Parameters (block size, mode).
    pub parameters: BTreeMap<String, String>,
}

/// One backup with its volume's facts, for `inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct BackupDetails {
    /// The backup.
    #[serde(flatten)]
    pub backup: BackupSummary,
    /// Size of the volume the backup restores to.
    pub volume_size: u64,
    /// When the backup volume was created.
    pub volume_created: String,
}

pub(crate) fn summarize(
    target: &BackupTarget,
    cfg: &BackupConfig,
    volume_compression: &str,
) -> BackupSummary {
    BackupSummary {
        url: BackupUrl {
            target: target.url().to_string(),
            volume: cfg.volume_name.clone(),
            backup: cfg.name.clone(),
        }
        .encode(),
        name: cfg.name.clone(),
        volume: cfg.volume_name.clone(),
        snapshot: cfg.snapshot_name.clone(),
        snapshot_created_at: cfg.snapshot_created_at.clone(),
        created: cfg.created_time.clone(),
        in_progress: cfg.is_in_progress(),
        size: cfg.size,
        block_count: cfg.blocks.len(),
        block_size: cfg.block_size().map(|b| b.bytes()).unwrap_or_default(),
        is_incremental: cfg.is_incremental,
        compression: cfg.compression_or(volume_compression).to_string(),
        newly_uploaded_data_size: cfg.newly_uploaded_data_size,
        re_uploaded_data_size: cfg.re_uploaded_data_size,
        labels: cfg.labels.clone().unwrap_or_default(),
        parameters: cfg.parameters.clone().unwrap_or_default(),
    }
}

/// Lists the backup volumes of a target.
pub async fn list_volumes(target: &BackupTarget) -> Result<Vec<VolumeSummary>> {
    let mut out = Vec::new();
    for name in volume_names(target).await? {
        // A volume directory without volume.cfg (e.g. half deleted) is skipped, as Longhorn does.
        let Some(cfg) = load_volume(target, &name).await? else { continue };
        let backup_count = backup_names(target, &name).await?.len();
        out.push(VolumeSummary {
            name,
            size: cfg.size,
            created: cfg.created_time,
            last_backup_name: cfg.last_backup_name,
            last_backup_at: cfg.last_backup_at,
            block_count: cfg.block_count,
            compression: cfg.compression_method,
            backup_count,
            labels: cfg.labels.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Lists the backups of one volume, oldest first (by start time, then name).
pub async fn list_backups(target: &BackupTarget, volume: &str) -> Result<Vec<BackupSummary>> {
    validate_existing_name("volume", volume)?;
    let volume_cfg = require_volume(target, volume).await?;
    let mut out = Vec::new();
    for name in backup_names(target, volume).await? {
        let cfg = load_backup(target, volume, &name).await?;
        out.push(summarize(target, &cfg, &volume_cfg.compression_method));
    }
    out.sort_by(|a, b| (&a.snapshot_created_at, &a.name).cmp(&(&b.snapshot_created_at, &b.name)));
    Ok(out)
}

/// Details of one backup.
pub async fn inspect_backup(target: &BackupTarget, volume: &str, backup: &str) -> Result<BackupDetails> {
    validate_existing_name("volume", volume)?;
    validate_existing_name("backup", backup)?;
    let volume_cfg = require_volume(target, volume).await?;
    let cfg = load_backup(target, volume, backup).await?;
    Ok(BackupDetails {
        backup: summarize(target, &cfg, &volume_cfg.compression_method),
        volume_size: volume_cfg.size,
        volume_created: volume_cfg.created_time,
    })
}
