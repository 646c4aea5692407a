//! A partitioned replica node, over network namespaces with real etcd: three nodes, a 3-replica volume
//! attached on node 1; node 3's link is cut under a verifying write workload (its processes keep
//! running). I/O goes on; once healed, node 3's replica is rebuilt before it serves a read: with the
//! other two replicas killed afterwards it alone returns every acknowledged byte, including what was
//! written while it was cut off.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod multinode_support;

use std::time::Duration;

use multinode_support::*;

#[test]
fn a_partitioned_replica_misses_nothing_once_healed_and_rebuilt() {
    let mut c = cluster(3, 1, &[("replica-replenishment-wait-interval", "600")]);
    let v = volume_on(&c, "v", 3, &[1, 2, 3], 1);
    let cut = replica_on(&v, "n3").unwrap()["name"].as_str().unwrap().to_string();

    let nbd = nbd_forward(&c, &v, 1);
    let fill = prefill();
    fill.run(&nbd.nbd_uri()).assert_all_ok();
    let mut model = vec![0u8; SIZE as usize];
    fill.apply(&mut model, fill.ops.len() as u64);

    let plan = mixed_workload();
    let load = plan.start(&nbd.nbd_uri());
    load.wait_progress(300, Duration::from_secs(60));
    c.partition(3);
    // I/O goes on without node 3; its replica is failed out of the engine.
    load.wait_progress(600, Duration::from_secs(60));
    wait_volume(&c, 1, "v", "degraded", Duration::from_secs(30), |v| {
        v["robustness"] == "degraded" && replica_on(v, "n3").is_some_and(|r| r["mode"] == "ERR")
    });
    assert!(c.is_running(3), "a partitioned node keeps running");
    load.wait_progress(300, Duration::from_secs(60));

    c.heal(3);
    let v = wait_volume(&c, 1, "v", "healthy again with node 3's replica", Duration::from_secs(120), |v| {
        v["robustness"] == "healthy" && replica_on(v, "n3").is_some_and(|r| r["mode"] == "RW")
    });
    assert_eq!(replica_on(&v, "n3").unwrap()["name"], cut.as_str(), "node 3's replica was reused: {v:#}");
    let report = load.stop();
    report.assert_all_ok().assert_real_client(8);
    plan.apply(&mut model, report.issued.unwrap());

    // Node 3's replica alone: every byte, including those written while it was cut off.
    for (i, node) in [(1, "n1"), (2, "n2")] {
        let name = replica_on(&v, node).unwrap()["name"].as_str().unwrap().to_string();
        kill_replica_process(&c, i, &name);
    }
    wait_volume(&c, 1, "v", "served by node 3's replica alone", Duration::from_secs(30), |v| {
        replicas(v).iter().filter(|r| r["mode"] == "RW").count() == 1
    });
    assert_device_holds(&nbd.nbd_uri(), &model, "node 3's rebuilt replica alone");
}
