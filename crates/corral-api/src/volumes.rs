//! Volumes, their replicas and snapshots as the manager's API shows them, and the bodies of the
//! volume actions.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest volume size: 1 PiB. Far beyond any disk Corral places replicas on, and it keeps every
/// offset inside a volume well within the signed 64-bit range engines, replicas and NBD use.
pub const MAX_VOLUME_SIZE: u64 = 1 << 50;

/// Lifecycle state of a volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    #[default]
    Creating,
    Detached,
    Attaching,
    Attached,
    Detaching,
    Deleting,
    Error,
}

/// Health of a volume's data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Robustness {
    Healthy,
    Degraded,
    Faulted,
    #[default]
    Unknown,
}

/// `dataLocality` of a volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataLocality {
    #[default]
    Disabled,
    BestEffort,
}

/// A replica's role in its engine (the manager's API and the engine's control API say the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMode {
    /// Read and write: healthy and up to date.
    #[serde(rename = "RW")]
    ReadWrite,
    /// Write-only: a rebuild target; receives every write, serves no read.
    #[serde(rename = "WO")]
    WriteOnly,
    /// Excluded from I/O: failed, unreachable, or stale.
    #[serde(rename = "ERR")]
    Error,
}

impl ReplicaMode {
    /// `RW`, `WO` or `ERR`, as the APIs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaMode::ReadWrite => "RW",
            ReplicaMode::WriteOnly => "WO",
            ReplicaMode::Error => "ERR",
        }
    }
}

impl std::fmt::Display for ReplicaMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kind of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConditionType {
    /// All replicas are placed.
    Scheduled,
    /// A restore from backup finished.
    Restored,
    /// The node is up: its instance manager answers and it holds its node lease.
    Ready,
}

/// One observed condition of a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: ConditionType,
    pub status: bool,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub last_transition: String,
}

/// A replica as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    pub name: String,
    pub node: String,
    pub disk: String,
    /// `RW`, `WO` or `ERR`; absent while the volume is detached.
    #[schema(value_type = Option<String>)]
    pub mode: Option<ReplicaMode>,
    /// Percent copied while rebuilding (100 when RW).
    pub rebuild_progress: u32,
    /// Process state: pending, starting, running, stopped, error.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
    /// Bytes the replica's files hold on disk (its snapshots and head), measured by its node.
    #[serde(default)]
    pub actual_size: u64,
}

/// A volume as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Bytes on disk held by the volume's largest replica (snapshots included), as Longhorn counts
    /// a volume's actual size.
    #[serde(default)]
    pub actual_size: u64,
    pub number_of_replicas: u32,
    /// creating, detached, attaching, attached, detaching, deleting, error.
    #[schema(value_type = String)]
    pub state: VolumeState,
    /// healthy, degraded, faulted, unknown.
    #[schema(value_type = String)]
    pub robustness: Robustness,
    /// NBD URI while attached.
    pub endpoint: Option<String>,
    pub replicas: Vec<ReplicaView>,
    #[schema(value_type = Vec<Object>)]
    pub conditions: Vec<Condition>,
    /// Minutes.
    pub stale_replica_timeout: u64,
    /// disabled or best-effort.
    #[schema(value_type = String)]
    pub data_locality: DataLocality,
    pub from_backup: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub node_selector: Vec<String>,
    pub disk_selector: Vec<String>,
    /// Node the volume is (to be) attached to.
    pub node_id: Option<String>,
    pub maintenance: bool,
    /// Epoch of the volume's newest engine start (0 before the first): replicas refuse every engine
    /// with an older one, so a higher number after a force attach means the old engine is fenced.
    #[serde(default)]
    pub engine_epoch: u64,
    pub created: String,
    /// Pass back in an action's `resourceVersion` to make it conditional on no change since.
    pub resource_version: String,
}

/// Body of `POST /v1/volumes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateVolume {
    /// `^[a-z0-9][a-z0-9._-]{0,62}$` (see `corral_api::names`).
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    pub name: String,
    /// Bytes; a non-zero multiple of 2 MiB. With `fromBackup` it may be omitted (the backup's
    /// volume size); if given it must equal the backup's (expand after the restore).
    #[serde(default)]
    pub size: u64,
    /// 1-20; default from the setting `default-replica-count`.
    #[serde(default)]
    pub number_of_replicas: Option<u32>,
    /// Minutes; default from the setting `default-stale-replica-timeout`.
    #[serde(default)]
    pub stale_replica_timeout: Option<u64>,
    /// `disabled` (default) or `best-effort`.
    #[serde(default)]
    pub data_locality: Option<String>,
    /// Backup URL to restore from.
    #[serde(default)]
    pub from_backup: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub node_selector: Vec<String>,
    #[serde(default)]
    pub disk_selector: Vec<String>,
}

/// Body of attach.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttachVolume {
    /// Node to attach to; default: the manager's node.
    #[serde(default)]
    pub node: Option<String>,
    /// Attach in maintenance mode (revert allowed, no client expected).
    #[serde(default)]
    pub maintenance: bool,
    /// Move the volume to `node` although it is attached elsewhere: allowed only when its attach node
    /// is down (its `ready` condition false). The engine starts on `node` under a new epoch, which the
    /// replicas use to refuse the old engine should it still run.
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// Body of detach.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetachVolume {
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// Body of expand.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExpandVolume {
    /// New size in bytes: larger than the current one, a multiple of 2 MiB, at most 1 PiB.
    #[schema(minimum = 2097152_f64, maximum = 1125899906842624_f64, multiple_of = 2097152_f64)]
    pub size: u64,
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// Body of maintenance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceVolume {
    pub enabled: bool,
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// Body of snapshot create.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSnapshot {
    /// `^[a-z0-9][a-z0-9._-]{0,62}$` (see `corral_api::names`).
    /// Default: generated.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Answer of snapshot create.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SnapshotCreated {
    pub name: String,
}

/// Whether a volume has settled: healthy (every replica RW when attached, every replica running
/// when detached), attached or detached.
pub fn is_settled(v: &VolumeView) -> bool {
    v.robustness == Robustness::Healthy && matches!(v.state, VolumeState::Attached | VolumeState::Detached)
}
