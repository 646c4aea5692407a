//! Where a volume may be attached: the rule behind `attach` and `attach --force`.
//!
//! A volume's engine belongs to its attach node. Attaching to another node while attached is refused
//! (detach first), except with `force` when the attach node is down, i.e. its `Ready` condition is false
//! (the node lease expired) or its record is gone: then nothing can detach the volume cleanly, and the
//! engine moves to the new node under a new epoch (see [`crate::ops::engine_epoch`]), which fences the
//! old engine off the replicas should it still run somewhere.
use corral_store::resources::{ConditionType, Node};

/// Whether `node` is down: its `Ready` condition is false. A node without the condition yet is not.
pub fn node_down(node: &Node) -> bool {
    node.status.conditions.iter().any(|c| c.kind == ConditionType::Ready && !c.status)
}

/// Why attaching `volume`, now attached to `current` (whose record is `current_node`), to `target`
/// is refused; `None` when it is allowed.
pub fn refuse_attach(
    volume: &str,
    current: Option<&str>,
    current_node: Option<&Node>,
    target: &str,
    force: bool,
) -> Option<String> {
    let current = current.filter(|c| *c != target)?;
    if !force {
        return Some(format!(
            "volume {volume:?} is attached to {current}; detach it before attaching it to {target} \
             (or, if {current} is down, attach with force)"
        ));
    }
    if current_node.is_some_and(|n| !node_down(n)) {
        return Some(format!(
            "volume {volume:?} is attached to {current}, which is ready: force attach moves a volume \
             only off a node that is down; detach it instead"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_store::resources::{set_condition, NodeSpec};

    fn node(ready: Option<bool>) -> Node {
        let mut n = Node::new(
            "n1",
            NodeSpec {
                address: "10.0.0.1".into(),
                instance_manager_url: "http://10.0.0.1:9600".into(),
                allow_scheduling: true,
                tags: vec![],
                disks: Default::default(),
            },
        );
        if let Some(ready) = ready {
            set_condition(&mut n.status.conditions, ConditionType::Ready, ready, "NodeLeaseExpired", "");
        }
        n
    }

    #[test]
    fn force_moves_a_volume_only_off_a_node_that_is_down() {
        assert_eq!(refuse_attach("v", None, None, "n2", false), None);
        assert_eq!(refuse_attach("v", Some("n2"), Some(&node(Some(true))), "n2", false), None);
        let plain = refuse_attach("v", Some("n1"), Some(&node(Some(false))), "n2", false).unwrap();
        assert!(plain.contains("detach it before attaching it to n2"), "{plain}");
        for ready in [Some(true), None] {
            let refused = refuse_attach("v", Some("n1"), Some(&node(ready)), "n2", true).unwrap();
            assert!(refused.contains("n1, which is ready"), "{refused}");
        }
        assert_eq!(refuse_attach("v", Some("n1"), Some(&node(Some(false))), "n2", true), None);
        assert_eq!(refuse_attach("v", Some("n1"), None, "n2", true), None, "a node whose record is gone");
    }
}
