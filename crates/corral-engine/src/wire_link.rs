//! [`ReplicaLink`] over the real data protocol: a thin adapter around `corral_wire::ReplicaClient`
//! (pipelined frames, several connections per replica, no task per request).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_wire::{ClientOptions, ReplicaClient, WireError};
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::link::{
    Connector, Extent, LinkError, LinkResult, RecoveryFacts, ReplicaLink, SnapshotInfo, SnapshotRequest,
};

fn link_error(e: WireError) -> LinkError {
    LinkError::new(e.kind(), e.to_string())
}

/// A link to a replica process.
pub struct WireLink {
    client: ReplicaClient,
}

impl ReplicaLink for WireLink {
    fn read(&self, off: u64, len: usize) -> BoxFuture<'_, LinkResult<Bytes>> {
        self.client.read(off, len as u64).map(|r| r.map_err(link_error)).boxed()
    }
    fn write(&self, off: u64, data: Bytes) -> BoxFuture<'_, LinkResult<()>> {
        self.client.write(off, data).map(|r| r.map_err(link_error)).boxed()
    }
    fn unmap(&self, off: u64, len: u64) -> BoxFuture<'_, LinkResult<()>> {
        self.client.unmap(off, len).map(|r| r.map_err(link_error)).boxed()
    }
    fn write_zeroes(&self, off: u64, len: u64) -> BoxFuture<'_, LinkResult<()>> {
        self.client.write_zeroes(off, len).map(|r| r.map_err(link_error)).boxed()
    }
    fn flush(&self) -> BoxFuture<'_, LinkResult<()>> {
        self.client.flush().map(|r| r.map_err(link_error)).boxed()
    }
    fn ping(&self) -> BoxFuture<'_, LinkResult<()>> {
        self.client.ping().map(|r| r.map_err(link_error)).boxed()
    }
    fn info(&self) -> BoxFuture<'_, LinkResult<RecoveryFacts>> {
        self.client.info().map(|r| r.map_err(link_error)).boxed()
    }
    fn set_generation(&self, generation: u64) -> BoxFuture<'_, LinkResult<()>> {
        self.client.set_generation(generation).map(|r| r.map_err(link_error)).boxed()
    }
    fn set_revision(&self, revision: u64) -> BoxFuture<'_, LinkResult<()>> {
        self.client.set_revision(revision).map(|r| r.map_err(link_error)).boxed()
    }
    fn set_rebuilding(&self, rebuilding: bool) -> BoxFuture<'_, LinkResult<()>> {
        self.client.set_rebuilding(rebuilding).map(|r| r.map_err(link_error)).boxed()
    }
    fn snapshot(&self, request: SnapshotRequest) -> BoxFuture<'_, LinkResult<()>> {
        self.client.snapshot(request).map(|r| r.map_err(link_error)).boxed()
    }
    fn list_snapshots(&self) -> BoxFuture<'_, LinkResult<Vec<SnapshotInfo>>> {
        self.client.list_snapshots().map(|r| r.map_err(link_error)).boxed()
    }
    fn mark_removed(&self, name: String) -> BoxFuture<'_, LinkResult<()>> {
        async move { self.client.mark_removed(&name).await.map_err(link_error) }.boxed()
    }
    fn purge(&self) -> BoxFuture<'_, LinkResult<()>> {
        self.client.purge().map(|r| r.map_err(link_error)).boxed()
    }
    fn revert(&self, name: String) -> BoxFuture<'_, LinkResult<()>> {
        async move { self.client.revert(&name).await.map_err(link_error) }.boxed()
    }
    fn expand(&self, size: u64) -> BoxFuture<'_, LinkResult<()>> {
        self.client.expand(size).map(|r| r.map_err(link_error)).boxed()
    }
    fn layer_extents(&self, name: String) -> BoxFuture<'_, LinkResult<Vec<Extent>>> {
        async move { self.client.layer_extents(&name).await.map_err(link_error) }.boxed()
    }
    fn read_layer(&self, name: String, off: u64, len: usize) -> BoxFuture<'_, LinkResult<Bytes>> {
        async move { self.client.read_layer(&name, off, len as u64).await.map_err(link_error) }.boxed()
    }
    fn layer_checksum(&self, name: String, off: u64, len: u64) -> BoxFuture<'_, LinkResult<[u8; 32]>> {
        async move { self.client.layer_checksum(&name, off, len).await.map_err(link_error) }.boxed()
    }
    fn begin_layer(&self, info: SnapshotInfo) -> BoxFuture<'_, LinkResult<()>> {
        async move { self.client.begin_layer(&info).await.map_err(link_error) }.boxed()
    }
    fn write_layer(&self, name: String, off: u64, data: Bytes) -> BoxFuture<'_, LinkResult<()>> {
        async move { self.client.write_layer(&name, off, data).await.map_err(link_error) }.boxed()
    }
    fn punch_layer(&self, name: String, off: u64, len: u64) -> BoxFuture<'_, LinkResult<()>> {
        async move { self.client.punch_layer(&name, off, len).await.map_err(link_error) }.boxed()
    }
    fn finish_rebuild(&self, chain: Vec<SnapshotInfo>) -> BoxFuture<'_, LinkResult<()>> {
        async move { self.client.finish_rebuild(&chain).await.map_err(link_error) }.boxed()
    }
    fn close(&self) {
        self.client.close();
    }
    fn times_out_data_requests(&self) -> bool {
        // The connector gives every client the engine's replica timeout (see `WireConnector`).
        true
    }
}

/// Opens [`WireLink`]s: `connections` sockets per replica, `Hello` with this engine's id, taking the
/// replica over from a previous engine (the control plane runs one engine per volume; a restarted engine
/// must be able to reclaim replicas its dead predecessor still holds).
pub struct WireConnector {
    engine_id: String,
    connections: usize,
    request_timeout: Duration,
}

impl WireConnector {
    /// A connector for the engine `engine_id`.
    pub fn new(engine_id: impl Into<String>, connections: usize, request_timeout: Duration) -> Arc<Self> {
        Arc::new(WireConnector {
            engine_id: engine_id.into(),
            connections: connections.max(1),
            request_timeout,
        })
    }
}

impl Connector for WireConnector {
    fn connect(&self, address: String) -> BoxFuture<'_, LinkResult<(Arc<dyn ReplicaLink>, RecoveryFacts)>> {
        async move {
            let options = ClientOptions {
                connections: self.connections,
                request_timeout: Some(self.request_timeout),
                ..ClientOptions::default()
            };
            let client = ReplicaClient::connect_with(&address, options).await.map_err(link_error)?;
            let facts = client.hello(&self.engine_id, true).await.map_err(link_error)?;
            let link: Arc<dyn ReplicaLink> = Arc::new(WireLink { client });
            Ok((link, facts))
        }
        .boxed()
    }
}
