//! corral-backup: Longhorn-compatible backup store — incremental, deduplicated backups of replica
//! snapshots to S3 and directory targets; restore to image files and replica directories, including
//! incremental (disaster-recovery) restore; delete with garbage collection; list, inspect and verify.
//!
//! The store's layout and every file in it are Longhorn's, byte for byte (see [`layout`] and the
//! [`format`] modules): a Longhorn user's backups restore here, and Corral's backups restore in Longhorn.
//! Blocks are 2 MiB (or 16 MiB), named by the SHA-512/64 of their uncompressed bytes, stored lz4-framed
//! (default), gzip'd or raw ([`block`]). Concurrent writers coordinate with Longhorn's lock files ([`lock`]).
//!
//! Threading model: the operations are `async` and run on a Tokio runtime (any flavour). Object I/O runs on
//! the runtime; reading snapshots, hashing, (de)compression and writing restored data run on Tokio's
//! blocking pool. Each operation keeps at most `concurrency` blocks in flight, so memory is bounded by
//! about `2 x concurrency x block size`; block buffers are reused across blocks rather than allocated
//! per block. A [`BackupTarget`] is cheap to clone and shared freely.
//!
//! ```no_run
//! # async fn demo() -> Result<(), corral_backup::BackupError> {
//! use corral_backup::{create_backup, restore_backup, BackupTarget, CreateOptions, NoProgress,
//!                     RestoreDestination, RestoreOptions};
//! let target = BackupTarget::open("vfs:///var/lib/backups")?;
//! let mut opts = CreateOptions::new("/var/lib/corral/replicas/vol1-r1", "snap2");
//! opts.volume = Some("vol1".into());
//! let report = create_backup(&target, opts, &NoProgress).await?;
//! println!("{}", report.url); // vfs:///var/lib/backups?backup=backup-…&volume=vol1
//! restore_backup(&target, "vol1", &report.backup, RestoreDestination::File("/tmp/vol1.img".into()),
//!                RestoreOptions::default(), &NoProgress).await?;
//! # Ok(()) }
//! ```

pub mod backup_url;
pub mod block;
mod buffer_pool;
pub mod catalog;
pub mod create;
pub mod delete;
pub mod error;
pub mod format;
pub mod layout;
pub mod lock;
pub mod names;
pub mod progress;
pub mod restore;
mod source;
pub mod target;
pub mod verify;

pub use backup_url::BackupUrl;
pub use block::{BlockSize, Compression};
pub use catalog::{inspect_backup, list_backups, list_volumes, BackupDetails, BackupSummary, VolumeSummary};
pub use create::{create_backup, CreateOptions, CreateReport, DEFAULT_CONCURRENCY};
pub use delete::{delete_backup, delete_volume, DeleteReport, DeleteVolumeReport, GcReport};
pub use error::{BackupError, ErrorKind, Result};
pub use lock::{LockKind, LockTimings, VolumeLock};
pub use progress::{NoProgress, Progress, TerminalProgress};
pub use restore::{restore_backup, RestoreDestination, RestoreOptions, RestoreReport};
pub use target::{BackupTarget, S3Settings, TargetLocation};
pub use verify::{verify, BlockProblem, VerifyReport};
