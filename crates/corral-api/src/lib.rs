//! corral-api: the contract between Corral's control plane and everything that talks to it.
//!
//! - The manager's REST API: resource views ([`VolumeView`], [`NodeView`], [`BackupView`], …),
//!   request bodies ([`CreateVolume`], [`AttachVolume`], …), the error body and its stable
//!   [`Code`]. They derive `utoipa::ToSchema`; the manager builds its OpenAPI document from them.
//! - [`ApiClient`]: the typed client of that API, used by the `corral` CLI (and by the CSI driver,
//!   the UI's tests and the cluster tests).
//! - The engine's control API ([`engine`]): its types and its one client, [`EngineClient`], used by
//!   the manager and by `corral engine <command>`; the engine's server speaks the same types.
//! - The name rule of volumes, snapshots and backups ([`names`]).
//! - The live change stream's messages ([`watch`]).
//!
//! The crate is light on purpose (serde, utoipa, reqwest; no server framework, no runtime of its
//! own): the clients are async and run on the caller's tokio runtime.
//!
//! # Example
//! ```no_run
//! # async fn example() -> Result<(), corral_api::ApiError> {
//! let manager = corral_api::ApiClient::new("http://127.0.0.1:9500");
//! for v in manager.volumes().await? {
//!     println!("{} {:?} {:?}", v.name, v.state, v.robustness);
//! }
//! # Ok(()) }
//! ```
pub mod backups;
mod client;
pub mod engine;
mod error;
pub mod names;
pub mod nodes;
pub mod settings;
pub mod volumes;
pub mod watch;

pub use backups::{is_backup_finished, BackupView, BackupVolumeView, CreateBackup};
pub use client::ApiClient;
pub use engine::EngineClient;
pub use error::{ApiError, Code, ErrorBody, Result};
pub use names::{check_name, InvalidName, NAME_PATTERN};
pub use nodes::{AddDisk, DiskView, NodeView, UpdateDisk, UpdateNode};
pub use settings::{BackupTargetView, Health, RecurringJobView, SetBackupTarget, SetSetting, SettingView};
pub use volumes::{
    is_settled, AttachVolume, Condition, ConditionType, CreateSnapshot, CreateVolume, DataLocality,
    DetachVolume, ExpandVolume, MaintenanceVolume, ReplicaMode, ReplicaView, Robustness, SnapshotCreated,
    VolumeState, VolumeView, MAX_VOLUME_SIZE,
};
pub use watch::{WatchKind, WatchMessage, KEEP_ALIVE_SECS};
