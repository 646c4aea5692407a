//! The engine's view of one replica: [`ReplicaLink`], the operations of the data protocol (contract B) as
//! async methods, and [`Connector`], which opens links by address.
//!
//! The engine is written against these two traits only, so the replicator, failure handling, start-up
//! decision and rebuild run unchanged against real replicas (`crate::wire_link`, over `corral-wire`) and
//! against in-memory replicas with fault injection (`crate::memory`) in unit tests.
//!
//! Futures are boxed (`BoxFuture`): one small allocation per replica per request, which keeps the engine
//! free of generic parameters and costs far less than the network round trip it wraps.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

/// The replica's types are the data protocol's own (`corral-wire`), used as they are: a replica's
/// durable facts at `Hello`/`Info` (the start-up decision reads `generation`, `revision`,
/// `was_dirty_at_open`, `rebuilding` and `size`), a snapshot as a replica lists it, an allocated
/// extent, a snapshot request, and the stable error kinds (`Closed` for a lost connection, `Timeout`
/// for a replica that did not answer in time).
pub use corral_wire::{ErrorKind as LinkErrorKind, Extent, RecoveryFacts, SnapshotInfo, SnapshotRequest};

/// Name under which replicas list their head.
pub const HEAD_NAME: &str = "volume-head";

/// A failure reported by or about one replica.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct LinkError {
    /// Class.
    pub kind: LinkErrorKind,
    /// Detail.
    pub message: String,
}

impl LinkError {
    /// Builds one.
    pub fn new(kind: LinkErrorKind, message: impl Into<String>) -> Self {
        LinkError { kind, message: message.into() }
    }
}

/// Result of a link operation.
pub type LinkResult<T> = std::result::Result<T, LinkError>;

/// A connection (possibly several pooled TCP/unix connections) to one replica, after `Hello`.
/// Implementations pipeline requests and never spawn a task per request.
pub trait ReplicaLink: Send + Sync + 'static {
    /// Reads `len` bytes at `off` of the volume.
    fn read(&self, off: u64, len: usize) -> BoxFuture<'_, LinkResult<Bytes>>;
    /// Writes `data` at `off`.
    fn write(&self, off: u64, data: Bytes) -> BoxFuture<'_, LinkResult<()>>;
    /// Discards a range (reads as zeros afterwards).
    fn unmap(&self, off: u64, len: u64) -> BoxFuture<'_, LinkResult<()>>;
    /// Zeroes a range.
    fn write_zeroes(&self, off: u64, len: u64) -> BoxFuture<'_, LinkResult<()>>;
    /// Makes every completed write durable.
    fn flush(&self) -> BoxFuture<'_, LinkResult<()>>;
    /// Liveness probe.
    fn ping(&self) -> BoxFuture<'_, LinkResult<()>>;
    /// Current recovery facts.
    fn info(&self) -> BoxFuture<'_, LinkResult<RecoveryFacts>>;
    /// Durably sets the generation.
    fn set_generation(&self, generation: u64) -> BoxFuture<'_, LinkResult<()>>;
    /// Sets the revision counter.
    fn set_revision(&self, revision: u64) -> BoxFuture<'_, LinkResult<()>>;
    /// Durably sets the rebuilding flag.
    fn set_rebuilding(&self, rebuilding: bool) -> BoxFuture<'_, LinkResult<()>>;
    /// Takes a snapshot of the head.
    fn snapshot(&self, request: SnapshotRequest) -> BoxFuture<'_, LinkResult<()>>;
    /// Lists snapshots and the head.
    fn list_snapshots(&self) -> BoxFuture<'_, LinkResult<Vec<SnapshotInfo>>>;
    /// Marks a snapshot removed.
    fn mark_removed(&self, name: String) -> BoxFuture<'_, LinkResult<()>>;
    /// Purges removed snapshots (runs to completion).
    fn purge(&self) -> BoxFuture<'_, LinkResult<()>>;
    /// Reverts the head to a snapshot.
    fn revert(&self, name: String) -> BoxFuture<'_, LinkResult<()>>;
    /// Grows the volume.
    fn expand(&self, size: u64) -> BoxFuture<'_, LinkResult<()>>;
    /// Allocated ranges of a layer file.
    fn layer_extents(&self, name: String) -> BoxFuture<'_, LinkResult<Vec<Extent>>>;
    /// Raw bytes of a layer file.
    fn read_layer(&self, name: String, off: u64, len: usize) -> BoxFuture<'_, LinkResult<Bytes>>;
    /// SHA-256 of a raw layer range.
    fn layer_checksum(&self, name: String, off: u64, len: u64) -> BoxFuture<'_, LinkResult<[u8; 32]>>;
    /// Creates (or keeps, for reuse) a layer on a rebuild target.
    fn begin_layer(&self, info: SnapshotInfo) -> BoxFuture<'_, LinkResult<()>>;
    /// Raw write into a layer on a rebuild target.
    fn write_layer(&self, name: String, off: u64, data: Bytes) -> BoxFuture<'_, LinkResult<()>>;
    /// Punches a hole into a layer on a rebuild target.
    fn punch_layer(&self, name: String, off: u64, len: u64) -> BoxFuture<'_, LinkResult<()>>;
    /// Makes the chain under the head exactly `chain` (root first).
    fn finish_rebuild(&self, chain: Vec<SnapshotInfo>) -> BoxFuture<'_, LinkResult<()>>;
    /// Closes the connections (best effort; further calls fail with `Closed`).
    fn close(&self);
    /// True when the link itself fails a data request (read, write, unmap, write-zeroes, flush) that
    /// gets no answer within the engine's replica timeout, with kind `Timeout`. The engine then arms no
    /// timer of its own per request; otherwise it bounds every data call itself.
    fn times_out_data_requests(&self) -> bool {
        false
    }
}

/// Opens links to replicas by address, performing the `Hello` handshake.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `address` and says hello; returns the link and the replica's recovery facts.
    fn connect(&self, address: String) -> BoxFuture<'_, LinkResult<(Arc<dyn ReplicaLink>, RecoveryFacts)>>;
}
