//! Losing a whole node, over network namespaces with real etcd: four `corral server` nodes, a
//! 3-replica volume attached on node 1 with its replicas on nodes 1 to 3; node 3 is SIGKILLed (every
//! process of it) under a verifying write workload. No request fails, node 3 is `down` within 15 s, a
//! replacement is rebuilt on node 4, the volume is healthy again and every acknowledged byte reads back.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod multinode_support;

use std::time::{Duration, Instant};

use multinode_support::*;

#[test]
fn sigkill_of_a_replica_node_under_load_loses_nothing_and_a_replacement_is_rebuilt_on_another_node() {
    let mut c = cluster(4, 1, &[("replica-replenishment-wait-interval", "5")]);
    let v = volume_on(&c, "v", 3, &[1, 2, 3], 1);
    let mut nodes = replica_nodes(&v);
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"], "one replica on each of nodes 1 to 3: {v:#}");
    let victim = replica_on(&v, "n3").unwrap()["name"].as_str().unwrap().to_string();

    let nbd = nbd_forward(&c, &v, 1);
    let fill = prefill();
    fill.run(&nbd.nbd_uri()).assert_all_ok();
    let mut model = vec![0u8; SIZE as usize];
    fill.apply(&mut model, fill.ops.len() as u64);

    let plan = mixed_workload();
    let load = plan.start(&nbd.nbd_uri());
    load.wait_progress(300, Duration::from_secs(60));
    c.kill_node(3);
    let killed = Instant::now();
    load.wait_progress(300, Duration::from_secs(60));

    let down_after = c.wait_node_state(1, 3, "down", Duration::from_secs(15));
    eprintln!("node 3 down {down_after:?} after its SIGKILL");
    let v = wait_volume(&c, 2, "v", "degraded", Duration::from_secs(15), |v| v["robustness"] == "degraded");
    assert_eq!(replica_on(&v, "n3").unwrap()["mode"], "ERR", "the dead node's replica: {v:#}");

    // After replica-replenishment-wait-interval a replacement is scheduled on node 4 and rebuilt.
    let v = wait_volume(&c, 1, "v", "healthy with a replica on node 4", Duration::from_secs(120), |v| {
        v["robustness"] == "healthy" && replica_on(v, "n4").is_some_and(|r| r["mode"] == "RW")
    });
    eprintln!("healthy with a replica on node 4 {:?} after the SIGKILL", killed.elapsed());
    let rw: Vec<String> = replicas(&v)
        .iter()
        .filter(|r| r["mode"] == "RW")
        .map(|r| r["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rw.len(), 3, "three RW replicas: {v:#}");
    assert!(!rw.contains(&"n3".to_string()), "the dead node's replica {victim} is not RW: {v:#}");

    load.wait_progress(300, Duration::from_secs(60));
    let report = load.stop();
    report.assert_all_ok().assert_real_client(8);
    plan.apply(&mut model, report.issued.unwrap());
    assert_device_holds(&nbd.nbd_uri(), &model, "after node 3's loss");
}
