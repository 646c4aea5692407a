use std::collections::BTreeMap;

use corral_store::resources::{DiskSpec, DiskStatus, Node, NodeSpec, NodeStatus};
use proptest::prelude::*;

use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn node(name: &str, disks: &[(&str, u64, u64)]) -> Node {
    let mut spec = NodeSpec {
        address: "127.0.0.1".into(),
        instance_manager_url: String::new(),
        allow_scheduling: true,
        tags: vec![],
        disks: BTreeMap::new(),
    };
    let mut status = NodeStatus::default();
    for (d, max, avail) in disks {
        spec.disks.insert(
            d.to_string(),
            DiskSpec { path: format!("/d/{d}"), allow_scheduling: true, storage_reserved: 0, tags: vec![] },
        );
        status.disks.insert(
            d.to_string(),
            DiskStatus { storage_maximum: *max, storage_available: *avail, ..DiskStatus::default() },
        );
    }
    let mut n = Node::new(name, spec);
    n.status = status;
    n
}

fn settings(soft: bool) -> SchedulerSettings {
    SchedulerSettings {
        soft_anti_affinity: soft,
        over_provisioning_percentage: 100,
        minimal_available_percentage: 10,
    }
}

fn req(size: u64) -> VolumeRequest<'static> {
    VolumeRequest {
        volume: "v",
        size,
        node_selector: &[],
        disk_selector: &[],
        data_locality: DataLocality::Disabled,
        attach_node: None,
    }
}

#[test]
fn replicas_go_to_different_nodes() {
    let nodes = [
        node("a", &[("d", 10 * GIB, 10 * GIB)]),
        node("b", &[("d", 10 * GIB, 10 * GIB)]),
        node("c", &[("d", 10 * GIB, 10 * GIB)]),
    ];
    let p = schedule_replicas(&req(GIB), 3, &nodes, &[], settings(false)).unwrap();
    let mut ns: Vec<_> = p.iter().map(|p| p.node.as_str()).collect();
    ns.sort_unstable();
    assert_eq!(ns, ["a", "b", "c"]);
}

#[test]
fn hard_anti_affinity_refuses_a_second_replica_on_one_node() {
    let nodes = [node("a", &[("d1", 10 * GIB, 10 * GIB), ("d2", 10 * GIB, 10 * GIB)])];
    let err = schedule_replicas(&req(GIB), 2, &nodes, &[], settings(false)).unwrap_err();
    assert!(
        err.to_string().starts_with("scheduling failed: replica 2 of 2: every schedulable node (a)"),
        "{err}"
    );
    assert!(err.to_string().contains("replica-soft-anti-affinity is off"), "{err}");
}

#[test]
fn soft_anti_affinity_spreads_over_disks_then_stacks() {
    let nodes = [node("a", &[("d1", 10 * GIB, 10 * GIB), ("d2", 10 * GIB, 10 * GIB)])];
    let p = schedule_replicas(&req(GIB), 3, &nodes, &[], settings(true)).unwrap();
    let disks: Vec<_> = p.iter().map(|p| p.disk.as_str()).collect();
    assert_eq!(&disks[..2], ["d1", "d2"], "a fresh disk before a used one");
    assert_eq!(p.len(), 3);
}

#[test]
fn over_provisioning_and_reserved_space_limit_a_disk() {
    let mut nodes = [node("a", &[("d", 10 * GIB, 10 * GIB)])];
    let existing =
        [PlacedReplica { volume: "other".into(), node: "a".into(), disk: "d".into(), size: 9 * GIB }];
    assert!(schedule_replica(&req(GIB), &nodes, &existing, settings(false)).is_ok(), "exactly full is fine");
    let err = schedule_replica(&req(GIB + 2 * MIB), &nodes, &existing, settings(false)).unwrap_err();
    assert!(err.reason.contains("exceeds"), "{err}");
    let mut s = settings(false);
    s.over_provisioning_percentage = 200;
    assert!(schedule_replica(&req(5 * GIB), &nodes, &existing, s).is_ok());
    nodes[0].spec.disks.get_mut("d").unwrap().storage_reserved = 2 * GIB;
    let err = schedule_replica(&req(GIB), &nodes, &existing, settings(false)).unwrap_err();
    assert!(err.reason.contains("exceeds"), "reserved space is not usable: {err}");
}

#[test]
fn a_nearly_full_disk_takes_nothing() {
    let nodes = [node("a", &[("d", 10 * GIB, GIB / 2)])];
    let err = schedule_replica(&req(2 * MIB), &nodes, &[], settings(false)).unwrap_err();
    assert!(err.reason.contains("below 10%"), "{err}");
}

#[test]
fn tags_and_disabled_scheduling_are_respected() {
    let mut nodes = [
        node("a", &[("d", 10 * GIB, 10 * GIB)]),
        node("b", &[("fast", 10 * GIB, 10 * GIB), ("slow", 10 * GIB, 10 * GIB)]),
    ];
    nodes[1].spec.tags = vec!["zone1".into()];
    nodes[1].spec.disks.get_mut("fast").unwrap().tags = vec!["ssd".into()];
    let node_sel = vec!["zone1".to_string()];
    let disk_sel = vec!["ssd".to_string()];
    let r = VolumeRequest { node_selector: &node_sel, disk_selector: &disk_sel, ..req(GIB) };
    assert_eq!(
        schedule_replica(&r, &nodes, &[], settings(false)).unwrap(),
        Placement { node: "b".into(), disk: "fast".into() }
    );
    nodes[1].spec.disks.get_mut("fast").unwrap().allow_scheduling = false;
    let err = schedule_replica(&r, &nodes, &[], settings(false)).unwrap_err();
    assert!(
        err.reason.contains("disk b/fast: scheduling disabled") && err.reason.contains("node a: no tag"),
        "{err}"
    );
    nodes[1].spec.allow_scheduling = false;
    let err = schedule_replica(&req(GIB), &nodes[1..], &[], settings(false)).unwrap_err();
    assert!(err.reason.contains("node b: scheduling disabled"), "{err}");
}

#[test]
fn best_effort_data_locality_prefers_the_attach_node() {
    let nodes = [node("a", &[("d", 100 * GIB, 100 * GIB)]), node("b", &[("d", 10 * GIB, 10 * GIB)])];
    let plain = schedule_replica(&req(GIB), &nodes, &[], settings(false)).unwrap();
    assert_eq!(plain.node, "a", "most space");
    let r = VolumeRequest { data_locality: DataLocality::BestEffort, attach_node: Some("b"), ..req(GIB) };
    assert_eq!(schedule_replica(&r, &nodes, &[], settings(false)).unwrap().node, "b");
    let existing = [PlacedReplica { volume: "v".into(), node: "b".into(), disk: "d".into(), size: GIB }];
    assert_eq!(schedule_replica(&r, &nodes, &existing, settings(false)).unwrap().node, "a", "already local");
}

fn placed(node: &str, disk: &str) -> PlacedReplica {
    PlacedReplica { volume: "v".into(), node: node.into(), disk: disk.into(), size: GIB }
}

#[test]
fn a_replacement_avoids_the_failed_replicas_disk() {
    // One node, three disks; replicas on d1 (failed) and d2: the replacement goes to d3, even
    // though d1 has the most room (plain spreading would pick it).
    let nodes = [node(
        "a",
        &[("d1", 500 * GIB, 500 * GIB), ("d2", 100 * GIB, 100 * GIB), ("d3", 100 * GIB, 90 * GIB)],
    )];
    let existing = [placed("a", "d1"), placed("a", "d2")];
    let p = schedule_replacement(&req(GIB), &nodes, &existing, &existing[..1], settings(true)).unwrap();
    assert_eq!(p, Placement { node: "a".into(), disk: "d3".into() });
    // With no other disk left, the failed replica's disk is used rather than failing.
    let nodes = [node("a", &[("d1", 500 * GIB, 500 * GIB), ("d2", 100 * GIB, 100 * GIB)])];
    let p = schedule_replacement(&req(GIB), &nodes, &existing, &existing[..1], settings(true)).unwrap();
    assert_eq!(p.disk, "d1");
}

#[test]
fn a_replacement_prefers_another_node_and_falls_back_to_the_failed_replicas_node() {
    let nodes = [
        node("a", &[("d", 100 * GIB, 100 * GIB)]),
        node("b", &[("d", 100 * GIB, 100 * GIB)]),
        node("c", &[("d", 100 * GIB, 100 * GIB)]),
    ];
    let existing = [placed("a", "d"), placed("b", "d")];
    let p = schedule_replacement(&req(GIB), &nodes, &existing, &existing[..1], settings(false)).unwrap();
    assert_eq!(p.node, "c");
    // Hard anti-affinity and only two nodes: the failed replica's node takes the replacement.
    let p = schedule_replacement(&req(GIB), &nodes[..2], &existing, &existing[..1], settings(false)).unwrap();
    assert_eq!(p.node, "a");
    // Without failed replicas there is nothing to relax: a clear failure.
    let err = schedule_replacement(&req(GIB), &nodes[..2], &existing, &[], settings(false)).unwrap_err();
    assert!(err.reason.contains("already holds a replica"), "{}", err.reason);
}

#[test]
fn no_nodes_is_a_clear_failure() {
    assert_eq!(
        schedule_replica(&req(GIB), &[], &[], settings(true)).unwrap_err().to_string(),
        "scheduling failed: no node is registered"
    );
}

fn arb_cluster() -> impl Strategy<Value = Vec<Node>> {
    proptest::collection::vec(
        (
            any::<bool>(),
            proptest::collection::vec((1u64..40, 0u64..=100, any::<bool>(), 0u64..4, any::<bool>()), 1..4),
            any::<bool>(),
        ),
        1..5,
    )
    .prop_map(|nodes| {
        nodes
            .into_iter()
            .enumerate()
            .map(|(i, (sched, disks, tagged))| {
                let ds: Vec<(String, u64, u64)> = disks
                    .iter()
                    .enumerate()
                    .map(|(j, (g, pct, _, _, _))| (format!("d{j}"), g * GIB, g * GIB * pct / 100))
                    .collect();
                let refs: Vec<(&str, u64, u64)> = ds.iter().map(|(n, m, a)| (n.as_str(), *m, *a)).collect();
                let mut n = node(&format!("n{i}"), &refs);
                n.spec.allow_scheduling = sched;
                if tagged {
                    n.spec.tags = vec!["t".into()];
                }
                for (j, (_, _, dsched, reserved, dtag)) in disks.iter().enumerate() {
                    let d = n.spec.disks.get_mut(&format!("d{j}")).unwrap();
                    d.allow_scheduling = *dsched;
                    d.storage_reserved = reserved * GIB;
                    if *dtag {
                        d.tags = vec!["t".into()];
                    }
                }
                n
            })
            .collect()
    })
}

/// Every rule, checked independently of the scheduler's code, for one disk.
fn eligible(
    n: &Node,
    d: &str,
    size: u64,
    scheduled: u64,
    r: &VolumeRequest<'_>,
    s: SchedulerSettings,
) -> bool {
    let disk = &n.spec.disks[d];
    let st = &n.status.disks[d];
    n.spec.allow_scheduling
        && disk.allow_scheduling
        && r.node_selector.iter().all(|t| n.spec.tags.contains(t))
        && r.disk_selector.iter().all(|t| disk.tags.contains(t))
        && st.storage_available.saturating_sub(disk.storage_reserved) * 100
            >= st.storage_maximum * s.minimal_available_percentage
        && (scheduled + size) * 100
            <= st.storage_maximum.saturating_sub(disk.storage_reserved) * s.over_provisioning_percentage
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn placements_obey_every_rule(
        nodes in arb_cluster(),
        count in 1u32..5,
        size_gib in 1u64..12,
        soft in any::<bool>(),
        over in prop_oneof![Just(100u64), Just(200u64)],
        node_tag in any::<bool>(),
        disk_tag in any::<bool>(),
    ) {
        let s = SchedulerSettings { soft_anti_affinity: soft, over_provisioning_percentage: over, minimal_available_percentage: 10 };
        let tag = vec!["t".to_string()];
        let none: Vec<String> = vec![];
        let r = VolumeRequest {
            volume: "v",
            size: size_gib * GIB,
            node_selector: if node_tag { &tag } else { &none },
            disk_selector: if disk_tag { &tag } else { &none },
            data_locality: DataLocality::Disabled,
            attach_node: None,
        };
        let mut placed: Vec<PlacedReplica> = Vec::new();
        for _ in 0..count {
            let scheduled = |n: &str, d: &str| placed.iter().filter(|p| p.node == n && p.disk == d).map(|p| p.size).sum::<u64>();
            let any_eligible = nodes.iter().flat_map(|n| n.spec.disks.keys().map(move |d| (n, d)))
                .filter(|(n, d)| eligible(n, d, r.size, scheduled(&n.metadata.name, d), &r, s))
                .map(|(n, _)| n.metadata.name.clone())
                .collect::<Vec<_>>();
            let fresh_exists = any_eligible.iter().any(|n| !placed.iter().any(|p| &p.node == n));
            match schedule_replica(&r, &nodes, &placed, s) {
                Ok(p) => {
                    let n = nodes.iter().find(|n| n.metadata.name == p.node).unwrap();
                    prop_assert!(eligible(n, &p.disk, r.size, scheduled(&p.node, &p.disk), &r, s), "ineligible disk chosen: {:?}", p);
                    if !soft || fresh_exists {
                        prop_assert!(!placed.iter().any(|q| q.node == p.node), "anti-affinity broken: {:?}", p);
                    }
                    placed.push(PlacedReplica { volume: "v".into(), node: p.node, disk: p.disk, size: r.size });
                }
                Err(e) => {
                    prop_assert!(e.to_string().starts_with("scheduling failed: "));
                    // It may fail only if no disk is eligible, or (hard) none on a fresh node.
                    prop_assert!(any_eligible.is_empty() || (!soft && !fresh_exists), "failed although possible: {}", e);
                    break;
                }
            }
        }
    }
}

#[test]
fn an_expand_must_fit_the_disks_of_the_volumes_replicas() {
    let nodes = [node("a", &[("d", 10 * GIB, 10 * GIB)]), node("b", &[("e", 100 * GIB, 100 * GIB)])];
    let existing = [
        PlacedReplica { volume: "v".into(), node: "a".into(), disk: "d".into(), size: GIB },
        PlacedReplica { volume: "v".into(), node: "b".into(), disk: "e".into(), size: GIB },
        PlacedReplica { volume: "other".into(), node: "a".into(), disk: "d".into(), size: 4 * GIB },
    ];
    assert!(check_expand("v", 6 * GIB, &nodes, &existing, settings(false)).is_ok(), "exactly full is fine");
    let err = check_expand("v", 6 * GIB + 2 * MIB, &nodes, &existing, settings(false)).unwrap_err();
    assert!(err.reason.contains("disk a/d cannot hold v"), "{err}");
    let mut s = settings(false);
    s.over_provisioning_percentage = 200;
    assert!(check_expand("v", 16 * GIB, &nodes, &existing, s).is_ok());
    assert!(check_expand("v", 1 << 50, &nodes, &existing, s).is_err(), "1 PiB fits no disk here");
}
