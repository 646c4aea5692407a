//! Serves a [`Replica`] over the data protocol: the adapter from `corral-wire`'s [`ReplicaService`]
//! (contract B) onto the replica API (contract A).
//!
//! [`ServedReplica`] owns the replica while it is served. Session rules (one engine at a time, `Hello`
//! first, take-over) are enforced by `corral_wire::serve`; this module only maps operations, types and
//! errors. Errors keep their full text (operation, file, offset) and get the wire kind of their
//! [`ErrorKind`]; an I/O error whose OS code is `ENOSPC` is sent as `NoSpace`, so the engine can report a
//! full disk rather than a generic I/O failure.
//!
//! Threading: the server calls these methods from several worker threads at once; [`Replica`] is
//! internally synchronised, and nothing here adds a lock.
//!
//! ```no_run
//! # async fn example(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use corral_replica::{service::ServedReplica, Replica};
//! let served = Arc::new(ServedReplica::new(Replica::open(dir)?));
//! let listener = corral_wire::Listener::bind(&corral_wire::Address::parse("tcp://127.0.0.1:9502")?).await?;
//! corral_wire::serve(listener, served).await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

use corral_wire::{ErrorKind as WireKind, ReplicaService, WireError};

use crate::error::{ErrorKind, ReplicaError};
use crate::{Extent, RecoveryFacts, Replica, SnapshotInfo, SnapshotOptions};

/// A replica being served, plus the switch that interrupts a running purge at shutdown.
pub struct ServedReplica {
    replica: Replica,
    cancel_purge: AtomicBool,
}

impl ServedReplica {
    /// Wraps an open replica.
    pub fn new(replica: Replica) -> ServedReplica {
        ServedReplica { replica, cancel_purge: AtomicBool::new(false) }
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Asks a running purge to stop at its next safe point (used at shutdown; purge is resumable).
    pub fn cancel_purge(&self) {
        self.cancel_purge.store(true, Ordering::SeqCst);
    }

    /// Gives the replica back (to close it cleanly after serving).
    pub fn into_replica(self) -> Replica {
        self.replica
    }
}

const ENOSPC: i32 = 28;

/// Maps a replica error onto the wire: same text, wire kind.
pub fn to_wire_error(err: ReplicaError) -> WireError {
    let kind = match err.kind() {
        ErrorKind::NotFound => WireKind::NotFound,
        ErrorKind::AlreadyExists => WireKind::AlreadyExists,
        ErrorKind::OutOfRange => WireKind::OutOfRange,
        ErrorKind::InvalidArgument => WireKind::InvalidArgument,
        ErrorKind::Corrupt => WireKind::Corrupt,
        ErrorKind::Busy => WireKind::Busy,
        ErrorKind::Io if err.raw_os_error() == Some(ENOSPC) => WireKind::NoSpace,
        ErrorKind::Io => WireKind::Io,
    };
    WireError::service(kind, err.to_string())
}

fn wire_facts(facts: RecoveryFacts) -> corral_wire::RecoveryFacts {
    corral_wire::RecoveryFacts {
        size: facts.size,
        revision: facts.revision,
        generation: facts.generation,
        dirty: facts.dirty,
        was_dirty_at_open: facts.was_dirty_at_open,
        unflushed_writes: facts.unflushed_writes,
        rebuilding: facts.rebuilding,
        head: facts.head,
        chain: facts.chain,
    }
}

/// Converts the replica's snapshot description to the wire's.
pub fn wire_snapshot_info(info: SnapshotInfo) -> corral_wire::SnapshotInfo {
    corral_wire::SnapshotInfo {
        name: info.name,
        parent: info.parent,
        children: info.children,
        removed: info.removed,
        user_created: info.user_created,
        created: info.created,
        size: info.size,
        labels: info.labels,
    }
}

/// Converts the wire's snapshot description to the replica's.
pub fn replica_snapshot_info(info: &corral_wire::SnapshotInfo) -> SnapshotInfo {
    SnapshotInfo {
        name: info.name.clone(),
        parent: info.parent.clone(),
        children: info.children.clone(),
        removed: info.removed,
        user_created: info.user_created,
        created: info.created.clone(),
        size: info.size,
        labels: info.labels.clone(),
    }
}

type WireResult<T> = corral_wire::Result<T>;

impl ReplicaService for ServedReplica {
    fn read(&self, offset: u64, buf: &mut [u8]) -> WireResult<()> {
        self.replica.read_at(buf, offset).map_err(to_wire_error)
    }

    fn read_if_cached(&self, offset: u64, buf: &mut [u8]) -> WireResult<bool> {
        self.replica.read_cached_at(buf, offset).map_err(to_wire_error)
    }

    fn write(&self, offset: u64, data: &[u8]) -> WireResult<()> {
        self.replica.write_at(data, offset).map_err(to_wire_error)
    }

    fn unmap(&self, offset: u64, len: u64) -> WireResult<()> {
        self.replica.unmap(offset, len).map_err(to_wire_error)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> WireResult<()> {
        self.replica.write_zeroes(offset, len).map_err(to_wire_error)
    }

    fn flush(&self) -> WireResult<()> {
        self.replica.flush().map_err(to_wire_error)
    }

    fn info(&self) -> WireResult<corral_wire::RecoveryFacts> {
        Ok(wire_facts(self.replica.recovery_facts()))
    }

    fn set_generation(&self, generation: u64) -> WireResult<()> {
        self.replica.set_generation(generation).map_err(to_wire_error)
    }

    fn engine_epoch(&self) -> WireResult<u64> {
        Ok(self.replica.engine_epoch())
    }

    fn accept_engine_epoch(&self, epoch: u64) -> WireResult<()> {
        self.replica.accept_engine_epoch(epoch).map_err(to_wire_error)
    }

    fn set_revision(&self, revision: u64) -> WireResult<()> {
        self.replica.set_revision(revision).map_err(to_wire_error)
    }

    fn set_rebuilding(&self, rebuilding: bool) -> WireResult<()> {
        self.replica.set_rebuilding(rebuilding).map_err(to_wire_error)
    }

    fn snapshot(&self, request: &corral_wire::SnapshotRequest) -> WireResult<()> {
        let options = SnapshotOptions {
            user_created: request.user_created,
            labels: request.labels.clone(),
            created: request.created.clone(),
        };
        self.replica.snapshot(&request.name, options).map_err(to_wire_error)
    }

    fn list_snapshots(&self) -> WireResult<Vec<corral_wire::SnapshotInfo>> {
        let snapshots = self.replica.snapshots().map_err(to_wire_error)?;
        Ok(snapshots.into_iter().map(wire_snapshot_info).collect())
    }

    fn mark_removed(&self, name: &str) -> WireResult<()> {
        self.replica.mark_removed(name).map_err(to_wire_error)
    }

    fn purge(&self) -> WireResult<()> {
        self.cancel_purge.store(false, Ordering::SeqCst);
        self.replica.purge(&self.cancel_purge, &|_, _| {}).map_err(to_wire_error)
    }

    fn revert(&self, name: &str) -> WireResult<()> {
        self.replica.revert(name).map_err(to_wire_error)
    }

    fn expand(&self, size: u64) -> WireResult<()> {
        self.replica.expand(size).map_err(to_wire_error)
    }

    fn layer_extents(&self, name: &str) -> WireResult<Vec<corral_wire::Extent>> {
        let extents = self.replica.layer_extents(name).map_err(to_wire_error)?;
        Ok(extents.into_iter().map(|Extent { offset, len }| corral_wire::Extent { offset, len }).collect())
    }

    fn read_layer(&self, name: &str, offset: u64, buf: &mut [u8]) -> WireResult<()> {
        self.replica.read_layer(name, buf, offset).map_err(to_wire_error)
    }

    fn layer_checksum(&self, name: &str, offset: u64, len: u64) -> WireResult<[u8; 32]> {
        self.replica.layer_checksum(name, offset, len).map_err(to_wire_error)
    }

    fn begin_layer(&self, info: &corral_wire::SnapshotInfo) -> WireResult<()> {
        self.replica.begin_layer(&replica_snapshot_info(info)).map_err(to_wire_error)
    }

    fn write_layer(&self, name: &str, offset: u64, data: &[u8]) -> WireResult<()> {
        self.replica.write_layer(name, data, offset).map_err(to_wire_error)
    }

    fn punch_layer(&self, name: &str, offset: u64, len: u64) -> WireResult<()> {
        self.replica.punch_layer(name, offset, len).map_err(to_wire_error)
    }

    fn finish_rebuild(&self, chain: &[corral_wire::SnapshotInfo]) -> WireResult<()> {
        let chain: Vec<SnapshotInfo> = chain.iter().map(replica_snapshot_info).collect();
        self.replica.finish_rebuild(&chain).map_err(to_wire_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CreateOptions;

    #[test]
    fn errors_keep_their_text_and_get_the_wire_kind() {
        let dir = tempfile::tempdir().unwrap();
        let served =
            ServedReplica::new(Replica::create(dir.path(), CreateOptions { size: 1 << 20 }).unwrap());
        let err = served.read(1 << 20, &mut [0u8; 4096]).unwrap_err();
        assert_eq!(err.kind(), WireKind::OutOfRange, "{err}");
        let err = served.revert("missing").unwrap_err();
        assert_eq!(err.kind(), WireKind::NotFound, "{err}");
        assert!(err.wire_message().contains("missing"), "{err}");
        let err = served.mark_removed("../x").unwrap_err();
        assert!(matches!(err.kind(), WireKind::InvalidArgument | WireKind::NotFound), "{err}");
        let enospc = ReplicaError::io("write", dir.path(), std::io::Error::from_raw_os_error(ENOSPC));
        assert_eq!(to_wire_error(enospc).kind(), WireKind::NoSpace);
    }

    #[test]
    fn the_accepted_engine_epoch_is_durable_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let served =
            ServedReplica::new(Replica::create(dir.path(), CreateOptions { size: 1 << 20 }).unwrap());
        assert_eq!(served.engine_epoch().unwrap(), 0);
        served.accept_engine_epoch(5).unwrap();
        served.accept_engine_epoch(5).unwrap();
        let err = served.accept_engine_epoch(4).unwrap_err();
        assert_eq!(err.kind(), WireKind::Busy, "{err}");
        assert!(err.wire_message().contains("engine epoch 4 is older than 5"), "{err}");
        // Durable at once: a replica reopened after a crash (no close) still knows epoch 5.
        drop(served);
        let reopened = Replica::open(dir.path()).unwrap();
        assert_eq!(reopened.engine_epoch(), 5);
        assert_eq!(reopened.recovery_facts().generation, 0, "the engine epoch is not the generation");
    }

    #[test]
    fn every_operation_reaches_the_replica() {
        let dir = tempfile::tempdir().unwrap();
        let served =
            ServedReplica::new(Replica::create(dir.path(), CreateOptions { size: 1 << 20 }).unwrap());
        served.write(4096, b"abc").unwrap();
        let mut buf = [0u8; 3];
        served.read(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        served.flush().unwrap();
        served.set_generation(9).unwrap();
        assert_eq!(served.info().unwrap().generation, 9);
        let request =
            corral_wire::SnapshotRequest { name: "s1".into(), user_created: true, ..Default::default() };
        served.snapshot(&request).unwrap();
        let names: Vec<String> = served.list_snapshots().unwrap().into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"s1".to_string()), "{names:?}");
        assert_eq!(served.info().unwrap().chain, vec!["s1".to_string()]);
        let extents = served.layer_extents("s1").unwrap();
        assert_eq!(extents.first().map(|e| e.offset), Some(4096), "{extents:?}");
        let mut raw = [0u8; 3];
        served.read_layer("s1", 4096, &mut raw).unwrap();
        assert_eq!(&raw, b"abc");
        served.write_zeroes(4096, 4096).unwrap();
        served.read(4096, &mut buf).unwrap();
        assert_eq!(buf, [0u8; 3]);
        served.expand(2 << 20).unwrap();
        assert_eq!(served.info().unwrap().size, 2 << 20);
        served.into_replica().close().unwrap();
    }
}
