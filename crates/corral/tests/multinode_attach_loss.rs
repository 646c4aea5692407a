//! Losing the attach node, over network namespaces with real etcd: three `corral server` nodes, a
//! 3-replica volume attached on node 1 with a replica on every node. Node 1 is SIGKILLed (every process
//! of it, the engine included) after a verifying workload whose flushes were acknowledged. Attaching
//! elsewhere without `--force` is refused; `corral volume attach --node n2 --force` moves the engine to
//! node 2 under a new epoch and every flushed byte reads back there. Node 1 then comes back: its old
//! engine is not started again, the volume stays on node 2 under the same epoch, and what was written on
//! node 2 meanwhile still reads back (node 1's replica, which missed those writes, does not serve them).
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod multinode_support;

use std::time::{Duration, Instant};

use multinode_support::*;

/// Processes of node `i` that run an engine (`corral engine serve`).
fn engine_processes(c: &MultiNodeCluster, i: usize) -> Vec<String> {
    c.network()
        .pids(i)
        .into_iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|cmd| String::from_utf8_lossy(&cmd).replace('\0', " "))
        .filter(|cmd| cmd.contains("engine serve"))
        .collect()
}

#[test]
fn sigkill_of_the_attach_node_then_force_attach_elsewhere_keeps_every_flushed_write() {
    let mut c = cluster(3, 1, &[]);
    let v = volume_on(&c, "v", 3, &[1, 2, 3], 1);
    let epoch_before = v["engineEpoch"].as_u64().expect("the volume view shows its engine epoch");
    assert!(!engine_processes(&c, 1).is_empty(), "the engine runs on node 1");

    // Everything written here is acknowledged by a flush before node 1 dies.
    let mut model = vec![0u8; SIZE as usize];
    {
        let nbd = nbd_forward(&c, &v, 1);
        let fill = prefill();
        fill.run(&nbd.nbd_uri()).assert_all_ok();
        fill.apply(&mut model, fill.ops.len() as u64);
        let mut more = Workload::new();
        for b in (0..SIZE / 4096).step_by(5) {
            more.write(b * 4096, &block_data(b, 1, 4096), false);
        }
        more.flush();
        more.run(&nbd.nbd_uri()).assert_all_ok();
        more.apply(&mut model, more.ops.len() as u64);
    }

    c.kill_node(1);
    let killed = Instant::now();
    let down_after = c.wait_node_state(2, 1, "down", Duration::from_secs(15));
    eprintln!("node 1 down {down_after:?} after its SIGKILL");

    // Without --force the volume stays where it is.
    let refused = c.cli_output(2, &["volume", "attach", "v", "--node", "n2"]);
    assert!(!refused.status.success(), "attach elsewhere without --force must be refused");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("force"), "the refusal names --force: {why}");

    c.cli(2, &["volume", "attach", "v", "--node", "n2", "--force", "--wait"]);
    // The endpoint on node 2's address and a newer epoch: the new engine runs, fencing the old one.
    let on_node_2 = format!("nbd://{}:", c.address(2));
    let v = wait_volume(&c, 2, "v", "attached on node 2 under a newer epoch", Duration::from_secs(60), |v| {
        v["state"] == "attached"
            && v["nodeId"] == "n2"
            && v["endpoint"].as_str().is_some_and(|e| e.starts_with(&on_node_2))
            && v["engineEpoch"].as_u64().is_some_and(|e| e > epoch_before)
    });
    eprintln!("I/O possible on node 2 {:?} after node 1's SIGKILL", killed.elapsed());
    let epoch_after = v["engineEpoch"].as_u64().expect("the volume view shows its engine epoch");
    assert!(epoch_before > 0, "the first engine ran under an epoch: {v:#}");
    assert!(
        epoch_after > epoch_before,
        "the new engine runs under a newer epoch ({epoch_before} → {epoch_after})"
    );
    let nbd = nbd_forward(&c, &v, 2);
    assert_device_holds(&nbd.nbd_uri(), &model, "on node 2 after the force attach");

    // New writes on node 2, flushed: node 1's replica misses them.
    let mut later = Workload::new();
    for b in (1..SIZE / 4096).step_by(7) {
        later.write(b * 4096, &block_data(b, 2, 4096), false);
    }
    later.flush();
    later.run(&nbd.nbd_uri()).assert_all_ok();
    later.apply(&mut model, later.ops.len() as u64);

    // Node 1 comes back: its old engine stays stopped and the volume stays on node 2.
    c.restart_node(1);
    c.wait_node_state(2, 1, "ready", Duration::from_secs(30));
    let settle = Instant::now() + Duration::from_secs(8);
    while Instant::now() < settle {
        let engines = engine_processes(&c, 1);
        assert!(engines.is_empty(), "node 1 started an engine again after it came back: {engines:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let v = wait_volume(&c, 1, "v", "still attached on node 2", Duration::from_secs(10), |v| {
        v["state"] == "attached" && v["nodeId"] == "n2"
    });
    assert_eq!(v["engineEpoch"].as_u64(), Some(epoch_after), "no engine start after node 1's return: {v:#}");
    assert_device_holds(&nbd.nbd_uri(), &model, "on node 2 after node 1 came back");
}
