//! corral-replica: the replica store. One [`Replica`] is one directory in Longhorn's v1 layout
//! (`volume.meta`, `volume-head-NNN.img(.meta)`, `volume-snap-<name>.img(.meta)`, `revision.counter`),
//! byte-compatible with Longhorn in both directions, plus Corral's own `corral-state.json`.
//!
//! # Design
//! - **Layers.** The head is the only file normal writes go to; snapshots are read-only sparse files.
//!   A 4 KiB block belongs to the newest layer of the live chain (head → parent → … → root) whose file
//!   has it allocated with data (FIEMAP; unwritten extents, which a power cut can leave, do not count;
//!   see `fsutil::fiemap`). The head only ever holds whole 4 KiB blocks:
//!   sub-4 KiB writes read-modify-write the whole block.
//! - **Read index** ([`range_map::RangeMap`]): an interval map block-range → layer for the live chain,
//!   plus one extent set per layer. Memory is proportional to extents; no layer-count cap; removing a
//!   layer costs time proportional to its extents. Built at open from FIEMAP.
//! - **Durability.** Buffered I/O (page cache) with one `fdatasync` per [`Replica::flush`], shared by
//!   the flushes that arrive while it runs (group commit; the revision counter is written but not
//!   synced on that path, see `flush.rs` for why a lagging counter is safe); Longhorn uses
//!   O_DIRECT and never syncs. We chose buffered I/O because Corral has an explicit flush (so durability
//!   does not depend on O_DIRECT, which by itself guarantees nothing after a power loss) and because
//!   it needs no aligned bounce buffers for the frontend's unaligned requests. Every metadata rewrite is
//!   tmp + fsync + rename + directory fsync.
//! - **Crash safety.** Multi-file operations (snapshot, revert, expand, purge, finish_rebuild) have a
//!   single commit point (a rename of `volume.meta`, a layer `.meta`, or an intent in
//!   `corral-state.json` that open rolls forward); open removes the leftovers of an interrupted one.
//!   See each operation's module for its steps, and [`failpoint::ALL`] for the named crash points.
//!
//! # Threading model
//! `Replica` is `Send + Sync`; share it in an `Arc`. Data operations run concurrently: they take a
//! shared lock on the chain structure, a striped lock on the 1 MiB regions they write, and the index
//! lock only for the short index update (never during a system call). Structural operations (snapshot,
//! revert, expand, finish_rebuild) take the chain lock exclusively, waiting for in-flight I/O. Purge
//! runs online: it copies and punches in 1 MiB chunks under the stripe locks and takes the exclusive
//! lock only to commit each step. Nothing here spawns threads.
//!
//! # Example
//! ```
//! use corral_replica::{CreateOptions, Replica, SnapshotOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let replica = Replica::create(dir.path(), CreateOptions { size: 1 << 20 }).unwrap();
//! replica.write_at(b"hello", 4000).unwrap();
//! replica.snapshot("s1", SnapshotOptions::default()).unwrap();
//! replica.write_at(b"HELLO", 4000).unwrap();
//! let mut buf = [0u8; 5];
//! replica.read_snapshot_at("s1", &mut buf, 4000).unwrap();
//! assert_eq!(&buf, b"hello");
//! replica.close().unwrap();
//! ```

mod data_path;
pub mod error;
pub mod failpoint;
mod flush;
pub mod format;
pub mod fsutil;
pub mod inspect;
mod purge;
pub mod range_map;
mod rebuild;
mod replica;
mod scan;
pub mod service;
mod snapshot;

use std::collections::BTreeMap;

pub use error::{ErrorKind, ReplicaError, Result};
pub use replica::Replica;

/// The block size of the store (Longhorn's `VolumeSectorSize`).
pub const BLOCK_SIZE: u64 = 4096;

/// The name under which the head is listed by [`Replica::snapshots`].
pub const HEAD_NAME: &str = "volume-head";

/// Options of [`Replica::create`].
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Volume size in bytes, a multiple of 4096.
    pub size: u64,
}

/// Options of [`Replica::snapshot`].
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    /// Created by a user (false = system snapshot, auto-removed by purge).
    pub user_created: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// RFC3339 creation time; `None` = now.
    pub created: Option<String>,
}

/// One node of the snapshot tree. The head is listed with name [`HEAD_NAME`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    /// Snapshot name (from the file name), or `volume-head`.
    pub name: String,
    /// Parent snapshot name.
    pub parent: Option<String>,
    /// Child names (the head appears as `volume-head`).
    pub children: Vec<String>,
    /// Marked removed.
    pub removed: bool,
    /// Created by a user.
    pub user_created: bool,
    /// RFC3339 creation time.
    pub created: String,
    /// Allocated bytes of the layer file.
    pub size: u64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// What an engine needs at start to decide which replica is newest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryFacts {
    /// Volume size.
    pub size: u64,
    /// Requests applied (persisted at flush and clean close).
    pub revision: u64,
    /// Engine-assigned epoch (persisted at once by `set_generation`).
    pub generation: u64,
    /// The on-disk `Dirty` flag now: true while open for writing.
    pub dirty: bool,
    /// `Dirty` as found at open: true means the previous writer did not close cleanly.
    pub was_dirty_at_open: bool,
    /// Requests were applied since the last flush (the revision counter is ahead of the persisted
    /// one). True after a writer stopped without flushing, such as an engine that crashed: writes that
    /// were in flight then may have reached this replica and not others.
    pub unflushed_writes: bool,
    /// Rebuild-target flag.
    pub rebuilding: bool,
    /// Head file name.
    pub head: String,
    /// Snapshot names of the live chain, head's parent first, root last.
    pub chain: Vec<String>,
}

/// A byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extent {
    /// Start offset.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// Checks a name Corral creates (snapshot, volume): `^[a-z0-9][a-z0-9._-]{0,62}$` without `..`.
/// Longhorn's UUID snapshot names pass.
pub fn validate_name(name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && !name.contains("..")
        && name != HEAD_NAME;
    if ok {
        Ok(())
    } else {
        Err(ReplicaError::new(
            ErrorKind::InvalidArgument,
            "validate name",
            format!("invalid name {name:?}: must match ^[a-z0-9][a-z0-9._-]{{0,62}}$, without \"..\", and not be {HEAD_NAME:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Replica>();
        assert_send_sync::<ReplicaError>();
    }

    #[test]
    fn names() {
        for good in ["a", "snap2", "68129740-95fa-41f1-9ff2-30a78ca4a61b", "expand-1073741824", "a.b_c-d"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "A", "-a", "a/b", "..", "a..b", "volume-head", &"a".repeat(64), "a b", "é"] {
            assert_eq!(validate_name(bad).unwrap_err().kind(), ErrorKind::InvalidArgument, "{bad}");
        }
    }
}
