//! This manager's place in the cluster: its node lease (liveness) and the leader claim.
//!
//! - **Node lease** `node/<name>`: taken before the manager starts (a second node of the same name
//!   is refused: the claim is held), kept alive by the store in the background, and taken again
//!   when it was lost (etcd unreachable for longer than its TTL). While it is not held, the node
//!   does not call itself ready; the leader marks a node whose claim is gone `down`.
//! - **Leader claim** `leader`: every pass, a manager that holds its node lease tries to take it;
//!   cluster-wide work (scheduling replicas, recurring jobs, marking nodes down, the status of
//!   volumes no node owns) is done only by the holder, and its writes for that work are guarded by
//!   the claim ([`corral_store::Leases`]), so a manager that lost it writes nothing.
//!
//! On a one-process store ([`corral_store::LocalLeases`]) both claims are always granted, and the
//! same code runs a single-node cluster.
use std::sync::Arc;
use std::time::Duration;

use corral_store::{Lease, Leases};
use parking_lot::Mutex;

/// Name of the leader claim.
pub const LEADER_LEASE: &str = "leader";

/// Default TTL of node and leader leases (the `node-lease-ttl` setting's default).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// Name of the liveness claim of node `node`.
pub fn node_lease_name(node: &str) -> String {
    format!("node/{node}")
}

/// What a manager joining a cluster brings: the store's leases and its node's claim, taken already.
pub struct ClusterMembership {
    pub leases: Arc<dyn Leases>,
    /// This node's claim ([`node_lease_name`]).
    pub node_lease: Lease,
    /// Holder string written into claims (names the node, its address and process).
    pub holder: String,
}

/// The claims of one manager, shared by its reconcilers.
pub(crate) struct Claims {
    leases: Arc<dyn Leases>,
    node: String,
    holder: String,
    ttl: Duration,
    node_lease: Mutex<Option<Arc<Lease>>>,
    leader: Mutex<Option<Arc<Lease>>>,
}

impl Claims {
    pub(crate) fn new(node: &str, membership: ClusterMembership) -> Claims {
        let ttl = membership.node_lease.ttl();
        Claims {
            leases: membership.leases,
            node: node.to_string(),
            holder: membership.holder,
            ttl,
            node_lease: Mutex::new(Some(Arc::new(membership.node_lease))),
            leader: Mutex::new(None),
        }
    }

    pub(crate) fn leases(&self) -> &dyn Leases {
        self.leases.as_ref()
    }

    /// Whether this node's claim is (known to be) held.
    pub(crate) fn node_lease_held(&self) -> bool {
        self.node_lease.lock().as_ref().is_some_and(|l| l.is_held())
    }

    /// Takes this node's claim again when it was lost. Called periodically.
    pub(crate) async fn renew_node_lease(&self) {
        if self.node_lease_held() {
            return;
        }
        self.node_lease.lock().take();
        match self.leases.acquire_lease(&node_lease_name(&self.node), &self.holder, self.ttl).await {
            Ok(Some(l)) => {
                tracing::info!(node = %self.node, "node lease taken again");
                *self.node_lease.lock() = Some(Arc::new(l));
            }
            Ok(None) => tracing::warn!(node = %self.node, "node lease is held by someone else"),
            Err(e) => tracing::warn!(node = %self.node, error = %e, "cannot take the node lease"),
        }
    }

    /// The leader claim, if this manager holds it now (taking it when it is free and this node's
    /// own claim is held). Leader work writes with it through the guarded writes.
    pub(crate) async fn leader(&self) -> Option<Arc<Lease>> {
        if let Some(l) = self.leader.lock().as_ref() {
            if l.is_held() {
                return Some(l.clone());
            }
        }
        // A lost claim is dropped first: the leader's job moves on to whoever takes it next.
        self.leader.lock().take();
        if !self.node_lease_held() {
            return None;
        }
        match self.leases.acquire_lease(LEADER_LEASE, &self.holder, self.ttl).await {
            Ok(Some(l)) => {
                tracing::info!(node = %self.node, "leader lease taken");
                let l = Arc::new(l);
                *self.leader.lock() = Some(l.clone());
                Some(l)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, "cannot take the leader lease");
                None
            }
        }
    }

    /// Gives both claims up (clean shutdown: another manager can lead at once, and this node is
    /// seen down without waiting for a TTL).
    pub(crate) async fn release(&self) {
        let leader = self.leader.lock().take();
        let node = self.node_lease.lock().take();
        for lease in [leader, node].into_iter().flatten() {
            if let Ok(l) = Arc::try_unwrap(lease) {
                if let Err(e) = l.revoke().await {
                    tracing::warn!(error = %e, "cannot give a lease up");
                }
            }
        }
    }
}
