//! The resources Corral stores, each a spec (desired state, written through the API) and a status
//! (observed state, written only by the reconciler that owns the resource). JSON is camelCase.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::object::resource;
use crate::store::Kind;

/// `dataLocality` of a volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataLocality {
    #[default]
    Disabled,
    BestEffort,
}

/// Lifecycle state of a volume, as reported by the API.
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

/// Mode of a replica inside its engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMode {
    RW,
    WO,
    ERR,
}

/// Kind of a condition; typed so code never compares condition strings.
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

/// Set or replace the condition of `kind` in `conditions`, keeping the transition time when the
/// status does not change. Returns whether anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: ConditionType,
    status: bool,
    reason: &str,
    message: &str,
) -> bool {
    if let Some(c) = conditions.iter_mut().find(|c| c.kind == kind) {
        if c.status == status && c.reason == reason && c.message == message {
            return false;
        }
        if c.status != status {
            c.last_transition = chrono::Utc::now().to_rfc3339();
        }
        c.status = status;
        c.reason = reason.to_string();
        c.message = message.to_string();
        return true;
    }
    conditions.push(Condition {
        kind,
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition: chrono::Utc::now().to_rfc3339(),
    });
    true
}

/// Desired state of a volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Bytes; a multiple of 4096 (the API enforces 2 MiB alignment as Longhorn does).
    pub size: u64,
    pub number_of_replicas: u32,
    /// Minutes a failed replica may be reused for a rebuild before it is deleted.
    pub stale_replica_timeout: u64,
    #[serde(default)]
    pub data_locality: DataLocality,
    /// Backup URL to restore from when the volume is created.
    #[serde(default)]
    pub from_backup: Option<String>,
    /// Node to attach to; `None` = detached.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Attached without a frontend client expected: revert is allowed.
    #[serde(default)]
    pub maintenance: bool,
    /// Replicas go only to nodes carrying all these tags.
    #[serde(default)]
    pub node_selector: Vec<String>,
    /// Replicas go only to disks carrying all these tags.
    #[serde(default)]
    pub disk_selector: Vec<String>,
}

/// Observed state of a volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    pub state: VolumeState,
    pub robustness: Robustness,
    /// NBD URI while attached.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub current_node: Option<String>,
    /// Size the engine serves (after an expand completes equals `spec.size`).
    #[serde(default)]
    pub current_size: u64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The engine's address of its control API while it runs.
    #[serde(default)]
    pub engine_control_url: Option<String>,
    #[serde(default)]
    pub restore_done: bool,
}

/// Desired state of a process instance (engine or replica).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    #[default]
    Running,
    Stopped,
}

/// Observed state of a process instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    #[default]
    Pending,
    Starting,
    Running,
    Stopped,
    Error,
}

/// Desired state of a replica: one directory on one disk, served by one `corral replica serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSpec {
    pub volume: String,
    pub node: String,
    /// Disk name on `node`.
    pub disk: String,
    /// Replica directory (under the disk's path).
    pub data_dir: String,
    pub size: u64,
    #[serde(default)]
    pub desired_state: DesiredState,
    /// RFC 3339 time the replica failed; `None` while healthy.
    #[serde(default)]
    pub failed_at: Option<String>,
}

/// Observed state of a replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    pub state: InstanceState,
    /// `tcp://host:port` while running.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub mode: Option<ReplicaMode>,
    #[serde(default)]
    pub rebuild_progress: u32,
    #[serde(default)]
    pub message: String,
    /// The process has run once, so its directory holds a replica (it is then started without
    /// `--size`: an expanded replica's size is its own).
    #[serde(default)]
    pub initialized: bool,
    /// RFC 3339 time an engine first had this replica RW: its data was complete then. A replica
    /// without it (new, or still rebuilding) never seeds an engine while one with it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_at: Option<String>,
    /// Bytes the replica's files hold on disk, measured by the replica's node.
    #[serde(default)]
    pub actual_size: u64,
}

/// Desired state of a volume's engine on its attach node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineSpec {
    pub volume: String,
    pub node: String,
    pub size: u64,
    /// Replica name → data address the engine should use.
    #[serde(default)]
    pub replicas: BTreeMap<String, String>,
    #[serde(default)]
    pub desired_state: DesiredState,
}

/// Observed state of an engine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineStatus {
    pub state: InstanceState,
    #[serde(default)]
    pub control_url: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub size: u64,
    /// Replica address → mode as the engine reports it.
    #[serde(default)]
    pub replica_modes: BTreeMap<String, ReplicaMode>,
    #[serde(default)]
    pub rebuild_progress: BTreeMap<String, u32>,
    #[serde(default)]
    pub message: String,
}

/// One disk of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSpec {
    pub path: String,
    #[serde(default = "yes")]
    pub allow_scheduling: bool,
    /// Bytes kept free for other users of the filesystem.
    #[serde(default)]
    pub storage_reserved: u64,
    #[serde(default)]
    pub tags: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Observed state of one disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskStatus {
    /// Filesystem size.
    pub storage_maximum: u64,
    /// Filesystem free space.
    pub storage_available: u64,
    /// Sum of the sizes of the replicas scheduled on this disk.
    pub storage_scheduled: u64,
    #[serde(default)]
    pub scheduled_replicas: Vec<String>,
    #[serde(default)]
    pub message: String,
}

/// Desired state of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Address replicas of this node listen on (the host part of their data address).
    pub address: String,
    /// The node's instance manager (`http://host:port`).
    pub instance_manager_url: String,
    #[serde(default = "yes")]
    pub allow_scheduling: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Disk name → disk.
    #[serde(default)]
    pub disks: BTreeMap<String, DiskSpec>,
}

/// Observed state of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default)]
    pub disks: BTreeMap<String, DiskStatus>,
    #[serde(default)]
    pub conditions: Vec<crate::resources::Condition>,
}

/// A snapshot of a volume, as last seen in its engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    pub volume: String,
    /// The snapshot's name inside the volume (store names are `<volume>.<snapshot>`).
    pub snapshot: String,
    /// Recurring job that created it, if any.
    #[serde(default)]
    pub created_by_job: Option<String>,
}

/// Observed state of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub user_created: bool,
    #[serde(default)]
    pub ready: bool,
}

/// Where backups go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetSpec {
    /// `s3://bucket@region/path`, `file:///path` or `nfs://server:/path`.
    pub url: String,
    /// Seconds between polls of the target for backup volumes.
    #[serde(default)]
    pub poll_interval: u64,
}

/// Observed state of a backup target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetStatus {
    pub available: bool,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub last_synced: String,
}

/// A volume's backups in the target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupVolumeSpec {
    #[serde(default)]
    pub target: String,
}

/// Observed state of a backup volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupVolumeStatus {
    pub size: u64,
    #[serde(default)]
    pub last_backup: Option<String>,
    #[serde(default)]
    pub last_backup_at: Option<String>,
}

/// A backup (requested or found in the target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    pub volume: String,
    pub snapshot: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub created_by_job: Option<String>,
}

/// Progress of a backup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    #[default]
    Pending,
    InProgress,
    Completed,
    Error,
}

/// Observed state of a backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    pub state: BackupState,
    #[serde(default)]
    pub progress: u32,
    /// `<target>?backup=<name>&volume=<volume>` once completed.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub message: String,
}

/// Task of a recurring job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobTask {
    Snapshot,
    Backup,
}

/// A cron-scheduled snapshot or backup of the volumes it applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecurringJobSpec {
    pub task: JobTask,
    /// Cron expression (5 fields, or 6 with seconds).
    pub cron: String,
    /// Snapshots/backups of this job kept per volume; older ones are removed.
    pub retain: u32,
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Volumes whose label `recurring-job-group.corral.io/<group>` is set are included.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Volumes included by name.
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// Observed state of a recurring job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecurringJobStatus {
    #[serde(default)]
    pub last_run: Option<String>,
    #[serde(default)]
    pub runs: u64,
    #[serde(default)]
    pub message: String,
}

/// A setting: its value as a string (the manager knows each setting's type and default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingSpec {
    pub value: String,
}

/// One event of the manager (stored under a zero-padded sequence number, so names sort by age).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSpec {
    /// RFC 3339.
    pub time: String,
    /// `normal` or `warning`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Resource kind the event is about: volume, replica, engine, node, ...
    pub resource: String,
    /// Name of that resource.
    pub name: String,
    /// Short CamelCase reason.
    pub reason: String,
    pub message: String,
}

/// Settings have no observed state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NoStatus {}

resource!(/** A volume. */ Volume = VolumeSpec, VolumeStatus, Kind::Volume);
resource!(/** A volume's engine. */ Engine = EngineSpec, EngineStatus, Kind::Engine);
resource!(/** A replica of a volume. */ Replica = ReplicaSpec, ReplicaStatus, Kind::Replica);
resource!(/** A node and its disks. */ Node = NodeSpec, NodeStatus, Kind::Node);
resource!(/** A snapshot of a volume. */ Snapshot = SnapshotSpec, SnapshotStatus, Kind::Snapshot);
resource!(/** The backup target. */ BackupTarget = BackupTargetSpec, BackupTargetStatus, Kind::BackupTarget);
resource!(/** A volume in the backup target. */ BackupVolume = BackupVolumeSpec, BackupVolumeStatus, Kind::BackupVolume);
resource!(/** A backup. */ Backup = BackupSpec, BackupStatus, Kind::Backup);
resource!(/** A recurring job. */ RecurringJob = RecurringJobSpec, RecurringJobStatus, Kind::RecurringJob);
resource!(/** A setting. */ Setting = SettingSpec, NoStatus, Kind::Setting);
resource!(/** An event of the manager. */ Event = EventSpec, NoStatus, Kind::Event);
