//! [`Connector`]: how the engine opens its replicas by address, and [`ClientConnector`], the one that
//! opens real replicas over the data protocol.
//!
//! The engine holds every replica as `Arc<dyn ReplicaProtocol>` (the verbs are `corral-wire`'s one
//! trait), so its replicator, start-up decision and rebuild run unchanged against real replicas and
//! against the in-memory replicas of `crate::memory` in unit tests; the connector is the only place that
//! knows which.

use std::sync::Arc;
use std::time::Duration;

use corral_wire::{BoxFuture, ClientOptions, RecoveryFacts, ReplicaClient, ReplicaProtocol, Result};

/// Opens replicas by address, performing the `Hello` handshake.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `address` and says hello; returns the replica and its recovery facts.
    fn connect(&self, address: String) -> BoxFuture<'_, Result<(Arc<dyn ReplicaProtocol>, RecoveryFacts)>>;
}

/// Opens [`ReplicaClient`]s: `connections` sockets per replica, `Hello` with this engine's id, taking
/// the replica over from a previous engine (the control plane runs one engine per volume; a restarted
/// engine must be able to reclaim replicas its dead predecessor still holds). Every client gets the
/// engine's replica timeout, so data requests need no timer of the engine's own.
///
/// Every `Hello` carries the engine's epoch ([`ClientConnector::with_epoch`], from the control plane's
/// store): a replica that accepted a newer one refuses this engine, so an engine cut off by a partition
/// cannot write after a newer one took the volume over, and cannot reconnect either.
pub struct ClientConnector {
    engine_id: String,
    connections: usize,
    request_timeout: Duration,
    epoch: u64,
}

impl ClientConnector {
    /// A connector for the engine `engine_id`.
    pub fn new(engine_id: impl Into<String>, connections: usize, request_timeout: Duration) -> Arc<Self> {
        Self::with_epoch(engine_id, connections, request_timeout, 0)
    }

    /// A connector for the engine `engine_id` started under `epoch` (0: started by hand, no fencing).
    pub fn with_epoch(
        engine_id: impl Into<String>,
        connections: usize,
        request_timeout: Duration,
        epoch: u64,
    ) -> Arc<Self> {
        Arc::new(ClientConnector {
            engine_id: engine_id.into(),
            connections: connections.max(1),
            request_timeout,
            epoch,
        })
    }
}

impl Connector for ClientConnector {
    fn connect(&self, address: String) -> BoxFuture<'_, Result<(Arc<dyn ReplicaProtocol>, RecoveryFacts)>> {
        Box::pin(async move {
            let options = ClientOptions {
                connections: self.connections,
                request_timeout: Some(self.request_timeout),
                ..ClientOptions::default()
            };
            let client = ReplicaClient::connect_with(&address, options).await?;
            let facts = client.hello_at_epoch(&self.engine_id, true, self.epoch).await?;
            let replica: Arc<dyn ReplicaProtocol> = Arc::new(client);
            Ok((replica, facts))
        })
    }
}
