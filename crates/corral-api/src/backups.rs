//! Backups and backup volumes as the manager's API shows them, and the body of a backup request.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/volumes/{name}/backups`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBackup {
    /// Snapshot to back up; default: a new snapshot taken now (the volume must be attached).
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A backup as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupView {
    pub name: String,
    /// The backup volume (the volume's name).
    pub volume: String,
    /// The snapshot it holds.
    pub snapshot: String,
    /// `<target>?backup=<name>&volume=<volume>` (what `corral backup create` prints); empty until
    /// the backup is in the target.
    pub url: String,
    /// `in-progress`, `completed` or `error`.
    pub state: String,
    /// Percent done (0-100).
    pub progress: u32,
    /// Bytes covered by the backup's blocks.
    pub size: u64,
    /// RFC 3339 time the backup was requested (or, for a backup only in the target, completed).
    pub created: String,
    pub labels: BTreeMap<String, String>,
    /// Why it failed (`state` = `error`), else empty.
    pub error: String,
}

/// A backup volume: one volume's backups in the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupVolumeView {
    pub name: String,
    /// Size of the volume its backups restore to (0 before the first backup completes).
    pub size: u64,
    pub created: String,
    pub last_backup_name: String,
    pub last_backup_at: String,
    /// Backups in the target plus those still pending or running.
    pub backup_count: usize,
    pub labels: BTreeMap<String, String>,
}

/// The backup is finished (either way): `corral backup create --wait` stops polling.
pub fn is_backup_finished(b: &BackupView) -> bool {
    b.state == "completed" || b.state == "error"
}
