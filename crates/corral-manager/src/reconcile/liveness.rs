//! Node liveness, checked every second apart from the reconcile passes (a pass can take long, and
//! a node must be seen down within seconds of its lease's expiry):
//! - every manager takes its node lease again if it lost it;
//! - the leader marks each node whose lease is gone `Ready: false` ([`NODE_LEASE_EXPIRED`]), and
//!   the replicas on it failed (state `error`, mode ERR, `failedAt`, no address: the engine drops
//!   the address, the volume counts one replica less and becomes degraded). Its writes are guarded
//!   by the leader lease. A node that comes back sets itself ready (see [`super::node`]) and its
//!   replicas report their processes again.
use std::time::Duration;

use corral_store::resources::{set_condition, ConditionType, InstanceState, Node, Replica, ReplicaMode};
use corral_store::{Guarded, Lease};

use super::Reconciler;
use crate::cluster::node_lease_name;
use crate::error::Result;
use crate::model::liveness::{is_ready, NODE_LEASE_EXPIRED};

/// How often liveness is checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Run the liveness checks until `shutdown` fires.
pub(crate) async fn run(rec: Reconciler, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        rec.claims.renew_node_lease().await;
        if let Some(lease) = rec.claims.leader().await {
            if let Err(e) = mark_down_nodes(&rec, &lease).await {
                tracing::warn!(error = %e, "liveness check failed");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Marks nodes whose lease is gone down, and their replicas failed (leader only).
async fn mark_down_nodes(rec: &Reconciler, lease: &Lease) -> Result<()> {
    let leases = rec.claims.leases();
    let nodes: Vec<Node> = rec.ds.list().await?;
    let mut down = Vec::new();
    for node in nodes {
        let name = node.metadata.name.clone();
        let alive = leases.lease_holder(&node_lease_name(&name)).await?.is_some();
        if alive {
            continue;
        }
        if is_ready(&node) {
            let mut next = node.clone();
            set_condition(
                &mut next.status.conditions,
                ConditionType::Ready,
                false,
                NODE_LEASE_EXPIRED,
                "the node's lease expired: its manager stopped renewing it",
            );
            match rec.ds.update_guarded(leases, lease, &next).await {
                Ok(Guarded::Written(_)) => {
                    rec.events.warning("node", &name, "NodeDown", "node lease expired");
                    rec.wake.notify_one();
                }
                Ok(Guarded::LeaseLost) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        down.push(name);
    }
    if down.is_empty() {
        return Ok(());
    }
    let replicas: Vec<Replica> = rec.ds.list().await?;
    for r in replicas.into_iter().filter(|r| down.contains(&r.spec.node)) {
        let mut next = r.clone();
        next.status.state = InstanceState::Error;
        next.status.address = None;
        next.status.mode = Some(ReplicaMode::ERR);
        next.status.message = format!("node {} is down", r.spec.node);
        if next.spec.failed_at.is_none() {
            next.spec.failed_at = Some(chrono::Utc::now().to_rfc3339());
        }
        if next == r {
            continue;
        }
        match rec.ds.update_guarded(leases, lease, &next).await {
            Ok(Guarded::Written(_)) => {
                rec.events.warning("replica", &r.metadata.name, "Failed", next.status.message.clone());
                rec.wake.notify_one();
            }
            Ok(Guarded::LeaseLost) => return Ok(()),
            Err(e) if e.is_conflict() || e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
