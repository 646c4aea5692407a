//! [`ReplicaProtocol`]: the replica verbs of the data protocol as one async trait.
//!
//! This is the one definition of what an engine can ask of a replica. [`crate::ReplicaClient`]
//! implements it over the wire; the engine holds its replicas as `Arc<dyn ReplicaProtocol>`, so its
//! replicator, start-up decision and rebuild run unchanged against real replicas and against the
//! in-memory replicas of its unit tests. Each verb maps to one frame opcode ([`crate::frame::Op`]); the
//! session handshake (`Hello`) is not a verb here because it belongs to opening a connection
//! ([`crate::ReplicaClient::hello`]).
//!
//! The replica's side of the same verbs is [`crate::ReplicaService`]: the same operations as
//! blocking calls, because the server runs them inline on a connection's task (a `pread` straight into
//! the answer buffer) or on its worker threads. A future per request there would cost an allocation and
//! a poll on the hot path for nothing: every replica store is synchronous file I/O.
//!
//! Futures are boxed so the trait is object-safe: one small allocation per replica per call, which is
//! what the engine paid before and far less than the network round trip it wraps.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::client::ReplicaClient;
use crate::error::Result;
use crate::frame::Request;
use crate::messages::{decode_extents, Extent, RecoveryFacts, SnapshotInfo, SnapshotRequest};

/// A boxed, `Send` future borrowing for `'a` (what every [`ReplicaProtocol`] verb returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The name under which replicas list their head in [`ReplicaProtocol::list_snapshots`].
pub const HEAD_NAME: &str = "volume-head";

/// The replica verbs, as the engine calls them. Implementations pipeline requests (any number may be
/// in flight at once) and never spawn a task per request. Errors are [`crate::WireError`]s whose
/// [`kind`](crate::WireError::kind) is stable: `Closed` for a lost connection, `Timeout` for a replica
/// that did not answer in time, the replica's own kind otherwise.
pub trait ReplicaProtocol: Send + Sync + 'static {
    /// Reads `len` bytes of the volume at `offset`.
    fn read(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<Bytes>>;
    /// Writes `data` at `offset` (any alignment).
    fn write(&self, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>>;
    /// Discards a range (it reads as zeros afterwards).
    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>>;
    /// Makes a range read as zeros.
    fn write_zeroes(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>>;
    /// Makes every acknowledged write durable.
    fn flush(&self) -> BoxFuture<'_, Result<()>>;
    /// Writes `data` at `offset` and makes it durable before answering (FUA): one round trip where the
    /// link can (the wire's FUA bit); the default writes, then flushes.
    fn write_fua(&self, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.write(offset, data).await?;
            self.flush().await
        })
    }
    /// Round trip without touching the store.
    fn ping(&self) -> BoxFuture<'_, Result<()>>;
    /// The replica's current recovery facts.
    fn info(&self) -> BoxFuture<'_, Result<RecoveryFacts>>;
    /// Durably sets the engine-assigned generation.
    fn set_generation(&self, generation: u64) -> BoxFuture<'_, Result<()>>;
    /// Sets the revision counter.
    fn set_revision(&self, revision: u64) -> BoxFuture<'_, Result<()>>;
    /// Durably sets or clears the rebuilding flag.
    fn set_rebuilding(&self, rebuilding: bool) -> BoxFuture<'_, Result<()>>;
    /// Takes a snapshot of the head.
    fn snapshot(&self, request: SnapshotRequest) -> BoxFuture<'_, Result<()>>;
    /// Lists snapshots and the head (as [`HEAD_NAME`]).
    fn list_snapshots(&self) -> BoxFuture<'_, Result<Vec<SnapshotInfo>>>;
    /// Marks a snapshot removed.
    fn mark_removed(&self, name: String) -> BoxFuture<'_, Result<()>>;
    /// Purges removed snapshots; completes when done.
    fn purge(&self) -> BoxFuture<'_, Result<()>>;
    /// Reverts the head to a snapshot.
    fn revert(&self, name: String) -> BoxFuture<'_, Result<()>>;
    /// Grows the volume.
    fn expand(&self, size: u64) -> BoxFuture<'_, Result<()>>;
    /// Allocated extents of a layer file.
    fn layer_extents(&self, name: String) -> BoxFuture<'_, Result<Vec<Extent>>>;
    /// Raw bytes of a layer file (holes read as zeros).
    fn read_layer(&self, name: String, offset: u64, len: u64) -> BoxFuture<'_, Result<Bytes>>;
    /// SHA-256 of a raw layer range.
    fn layer_checksum(&self, name: String, offset: u64, len: u64) -> BoxFuture<'_, Result<[u8; 32]>>;
    /// Rebuild target: creates (or keeps, for reuse) a layer outside the live chain.
    fn begin_layer(&self, info: SnapshotInfo) -> BoxFuture<'_, Result<()>>;
    /// Rebuild target: raw write into a begun layer.
    fn write_layer(&self, name: String, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>>;
    /// Rebuild target: punches a hole in a begun layer.
    fn punch_layer(&self, name: String, offset: u64, len: u64) -> BoxFuture<'_, Result<()>>;
    /// Rebuild target: makes the chain under the head exactly `chain` (root first).
    fn finish_rebuild(&self, chain: Vec<SnapshotInfo>) -> BoxFuture<'_, Result<()>>;
    /// Closes the connection (best effort; further calls fail with `Closed`).
    fn close(&self);
    /// True when the implementation itself fails a data request (read, write, unmap, write-zeroes,
    /// flush) that gets no answer within its request timeout, with kind `Timeout`. A caller then needs
    /// no timer of its own per request; otherwise it must bound every data call itself.
    fn times_out_data_requests(&self) -> bool {
        false
    }
}

/// The client's verbs through the trait: its inherent methods, boxed (the engine holds replicas as
/// `dyn ReplicaProtocol`). Inherent methods win method resolution, so each line calls the wire method.
impl ReplicaProtocol for ReplicaClient {
    fn read(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(ReplicaClient::read(self, offset, len))
    }
    fn write(&self, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::write(self, offset, data))
    }
    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::unmap(self, offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::write_zeroes(self, offset, len))
    }
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::flush(self))
    }
    fn write_fua(&self, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::write_fua(self, offset, data))
    }
    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::ping(self))
    }
    fn info(&self) -> BoxFuture<'_, Result<RecoveryFacts>> {
        Box::pin(ReplicaClient::info(self))
    }
    fn set_generation(&self, generation: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::set_generation(self, generation))
    }
    fn set_revision(&self, revision: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::set_revision(self, revision))
    }
    fn set_rebuilding(&self, rebuilding: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::set_rebuilding(self, rebuilding))
    }
    fn snapshot(&self, request: SnapshotRequest) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::snapshot(self, request))
    }
    fn list_snapshots(&self) -> BoxFuture<'_, Result<Vec<SnapshotInfo>>> {
        Box::pin(ReplicaClient::list_snapshots(self))
    }
    fn mark_removed(&self, name: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.call_empty(Request::MarkRemoved { name }))
    }
    fn purge(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::purge(self))
    }
    fn revert(&self, name: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.call_empty(Request::Revert { name }))
    }
    fn expand(&self, size: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(ReplicaClient::expand(self, size))
    }
    fn layer_extents(&self, name: String) -> BoxFuture<'_, Result<Vec<Extent>>> {
        Box::pin(async move {
            let answer = self.call(Request::LayerExtents { name, offset: 0, len: 0 }).await?;
            decode_extents(&answer.payload)
        })
    }
    fn read_layer(&self, name: String, offset: u64, len: u64) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move { ReplicaClient::read_layer(self, &name, offset, len).await })
    }
    fn layer_checksum(&self, name: String, offset: u64, len: u64) -> BoxFuture<'_, Result<[u8; 32]>> {
        Box::pin(async move { ReplicaClient::layer_checksum(self, &name, offset, len).await })
    }
    fn begin_layer(&self, info: SnapshotInfo) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.call_empty(Request::BeginLayer(info)))
    }
    fn write_layer(&self, name: String, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.call_empty(Request::WriteLayer { name, offset, data }))
    }
    fn punch_layer(&self, name: String, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.call_empty(Request::PunchLayer { name, offset, len }))
    }
    fn finish_rebuild(&self, chain: Vec<SnapshotInfo>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.call_empty(Request::FinishRebuild(chain)))
    }
    fn close(&self) {
        ReplicaClient::close(self);
    }
    fn times_out_data_requests(&self) -> bool {
        ReplicaClient::times_out_data_requests(self)
    }
}
