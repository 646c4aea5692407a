//! When a node is up: its `Ready` condition, set true by the node itself while its instance
//! manager answers and it holds its node lease, and false by the leader once that lease expired
//! (reason [`NODE_LEASE_EXPIRED`]) or by the node when its instance manager does not answer.
use corral_store::resources::{ConditionType, Node};

/// Reason of a `Ready: false` condition set because the node's lease expired.
pub const NODE_LEASE_EXPIRED: &str = "NodeLeaseExpired";

/// Whether `node` is up: no `Ready` condition says otherwise (a node that never reported is up).
pub fn is_ready(node: &Node) -> bool {
    !node.status.conditions.iter().any(|c| c.kind == ConditionType::Ready && !c.status)
}

/// The state the API shows: `ready` or `down`.
pub fn state(node: &Node) -> &'static str {
    if is_ready(node) {
        "ready"
    } else {
        "down"
    }
}

/// Whether the node named `name` is known and up.
pub fn is_node_ready(nodes: &[Node], name: &str) -> bool {
    nodes.iter().find(|n| n.metadata.name == name).is_some_and(is_ready)
}
