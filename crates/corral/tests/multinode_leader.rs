//! Losing the leader, over network namespaces with real etcd: three nodes; volumes are created through
//! a follower and the leader's node (the holder of the `leader` claim in etcd) is SIGKILLed while it
//! schedules their replicas. Another node takes the claim, every volume gets its replicas, and none
//! has a duplicate: exactly the replicas it asked for, each on a node of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod multinode_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use multinode_support::*;
use serde_json::{json, Value};

const VOLUMES: usize = 8;
/// The store key of the leader claim (cluster `default`), holding "NODE at ADDRESS (pid N)".
const LEADER_KEY: &str = "/corral/default/.leases/leader";

/// The node number holding the leader claim, if any.
fn leader(c: &mut MultiNodeCluster) -> Option<usize> {
    let holder = c.etcd().etcdctl(0, &["get", LEADER_KEY, "--print-value-only"]);
    let name = holder.split_whitespace().next()?.to_string();
    (1..=c.len()).find(|&i| c.name(i) == name)
}

/// Every volume has exactly `replicas` replicas, each placed on a node, no two on one node.
fn placed_without_duplicates(volumes: &[Value], replicas: usize) -> bool {
    volumes.iter().all(|v| {
        let nodes: Vec<&str> = v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["node"].as_str())
            .filter(|n| !n.is_empty())
            .collect();
        let distinct: BTreeSet<&str> = nodes.iter().copied().collect();
        v["replicas"].as_array().unwrap().len() == replicas
            && nodes.len() == replicas
            && distinct.len() == replicas
    })
}

#[test]
fn sigkill_of_the_leader_while_it_schedules_leaves_no_duplicate_replica() {
    let mut c = cluster(3, 1, &[]);
    let old = leader(&mut c).expect("a node holds the leader claim");
    let follower = (1..=3).find(|&i| i != old).unwrap();

    for k in 0..VOLUMES {
        let body = json!({ "name": format!("v{k}"), "size": SIZE, "numberOfReplicas": 2 });
        let (status, v) = c.post(follower, "/v1/volumes", body);
        assert_eq!(status, 201, "create v{k}: {v}");
    }
    // The leader dies once it has begun placing replicas.
    let placed = || {
        let (_, list) = c.get(follower, "/v1/volumes");
        list.as_array().unwrap().iter().map(|v| v["replicas"].as_array().unwrap().len()).sum::<usize>()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut before = placed();
    while before == 0 {
        assert!(Instant::now() < deadline, "the leader placed no replica within 20 s");
        before = placed();
    }
    c.kill_node(old);
    let killed = Instant::now();
    eprintln!("{before} replicas placed of {} when the leader died", 2 * VOLUMES);

    // Another node takes the claim once the dead leader's lease expired.
    let deadline = killed + Duration::from_secs(20);
    let new = loop {
        if let Some(l) = leader(&mut c).filter(|&l| l != old) {
            break l;
        }
        assert!(Instant::now() < deadline, "no other node took the leader claim within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("node {new} leads {:?} after the SIGKILL of leader node {old}", killed.elapsed());

    let all = || {
        let (status, list) = c.get(follower, "/v1/volumes");
        assert_eq!(status, 200, "GET /v1/volumes: {list}");
        list.as_array().cloned().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let volumes = all();
        if volumes.len() == VOLUMES && placed_without_duplicates(&volumes, 2) {
            break;
        }
        assert!(Instant::now() < deadline, "volumes never all placed without duplicates: {volumes:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // And it stays so: no late duplicate from a leader that lost its claim.
    std::thread::sleep(Duration::from_secs(5));
    let volumes = all();
    assert!(placed_without_duplicates(&volumes, 2), "a duplicate appeared later: {volumes:#?}");
}
