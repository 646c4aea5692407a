//! The live change stream, `GET /v1/watch` (server-sent events).
//!
//! Each SSE event named `change` carries one [`WatchMessage`] as JSON: the kind and name of the
//! object that changed and its API view (the shape the REST API returns for it), or `deleted`.
//! Only what changed is sent; when nothing changes the stream carries SSE comments (keep-alives)
//! every [`KEEP_ALIVE_SECS`] seconds. Every connection begins with an event named `ready`:
//! a client lists what it shows after `ready` (changes made before it are not replayed), which
//! also makes a reconnect after a lost connection safe.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Seconds between two keep-alive comments on an idle stream.
pub const KEEP_ALIVE_SECS: u64 = 15;

/// Kinds of object the stream reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum WatchKind {
    /// `object` is a `VolumeView`; sent when the volume or one of its replicas changed.
    Volume,
    /// `object` is a `NodeView`.
    Node,
    /// `object` is an `EngineSnapshot`; `volume` names its volume.
    Snapshot,
    /// `object` is a `BackupView` of a backup this cluster runs or ran; `volume` names its volume.
    Backup,
    /// No `object`: list `/v1/backupvolumes` again.
    BackupVolume,
    /// `object` is the `BackupTargetView`.
    BackupTarget,
    /// `object` is a `RecurringJobView`.
    RecurringJob,
    /// `object` is a `SettingView`.
    Setting,
    /// `object` is an `Event` (a new event; trimmed old ones are not reported).
    Event,
}

/// One change on the stream (`event: change`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchMessage {
    pub kind: WatchKind,
    /// The object's name as the REST API names it.
    pub name: String,
    /// The volume a snapshot or backup belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The object is gone.
    #[serde(default)]
    pub deleted: bool,
    /// The object's API view (absent when deleted, and for kinds that carry none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub object: Option<serde_json::Value>,
}
