//! The store under the cluster, over network namespaces: three nodes on a three-member etcd. One member
//! is SIGKILLed while volumes are created, attached, written and detached: nothing fails. Then the whole
//! cluster, etcd included, is stopped and started again: the volumes come back with their data.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod multinode_support;

use std::time::Duration;

use corral_testkit::nbd::qemu_io;
use multinode_support::*;

#[test]
fn losing_an_etcd_member_fails_nothing_and_a_full_restart_keeps_every_volume() {
    let mut c = cluster(3, 3, &[]);
    let v1 = volume_on(&c, "v1", 3, &[1, 2, 3], 1);
    {
        let nbd = nbd_forward(&c, &v1, 1);
        qemu_io(&nbd.nbd_uri(), &["write -P 0x5a 0 8M", "flush"]);
    }

    // One member dies (the first in every node's list) in the middle of volume operations.
    c.etcd().kill(0);
    c.cli(2, &["volume", "create", "v2", "--size", "64MiB", "--replicas", "2", "--wait"]);
    c.cli(3, &["volume", "attach", "v2", "--node", "n2", "--wait"]);
    let v2 = wait_volume(&c, 3, "v2", "attached and healthy", Duration::from_secs(60), attached_healthy);
    {
        let nbd = nbd_forward(&c, &v2, 2);
        qemu_io(&nbd.nbd_uri(), &["write -P 0xc3 4M 8M", "flush"]);
    }
    c.cli(1, &["volume", "detach", "v1", "--wait"]);
    c.cli(1, &["volume", "attach", "v1", "--node", "n3", "--wait"]);
    let v1 = wait_volume(&c, 2, "v1", "attached on node 3", Duration::from_secs(60), |v| {
        attached_healthy(v) && v["nodeId"] == "n3"
    });
    {
        let nbd = nbd_forward(&c, &v1, 3);
        qemu_io(&nbd.nbd_uri(), &["read -P 0x5a 0 8M"]);
    }
    c.etcd().restart(0);
    for i in 1..=3 {
        c.wait_node_state(i, i, "ready", Duration::from_secs(15));
    }

    // Everything stops, etcd included, and starts again.
    c.stop_all();
    c.start_all();
    for (name, node, pattern, offset) in [("v1", 3, "0x5a", "0"), ("v2", 2, "0xc3", "4M")] {
        let v =
            wait_volume(&c, 1, name, "attached and healthy again", Duration::from_secs(90), attached_healthy);
        assert_eq!(v["nodeId"], c.name(node).as_str(), "{name} came back on its node: {v:#}");
        let nbd = nbd_forward(&c, &v, node);
        qemu_io(&nbd.nbd_uri(), &[&format!("read -P {pattern} {offset} 8M")]);
    }
}
