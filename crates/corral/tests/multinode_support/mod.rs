//! What the multi-node tests share: a cluster of `corral server` nodes in network namespaces on etcd
//! (corral-testkit's `MultiNodeCluster`), volumes placed on chosen nodes, the engine's NBD endpoint
//! reached from the host through a forward into the attach node, a verifying write workload and a
//! whole-device read back.
//!
//! The nodes run this build's `corral` (`corral server`), or the executable named by the environment
//! variable `CORRAL_MULTINODE_BINARY` when it is set (to run these tests against another build).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unused_imports)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

pub use corral_testkit::data::block_data;
pub use corral_testkit::nbd::Workload;
pub use corral_testkit::netns::cluster::MultiNodeCluster;
pub use corral_testkit::netns::forward::Forward;
use serde_json::{json, Value};

pub const CORRAL: &str = env!("CARGO_BIN_EXE_corral");
pub const MIB: u64 = 1 << 20;
/// The size of the volumes these tests write.
pub const SIZE: u64 = 64 * MIB;
const BLOCKS: u64 = SIZE / 4096;

/// A cluster of `nodes` nodes on `etcd_members` etcd members, with a short node lease (a dead node is
/// `down` in seconds) and `settings` applied after the builder's own.
pub fn cluster(nodes: usize, etcd_members: usize, settings: &[(&str, &str)]) -> MultiNodeCluster {
    MultiNodeCluster::builder()
        .binary(std::env::var("CORRAL_MULTINODE_BINARY").unwrap_or(CORRAL.to_string()))
        .nodes(nodes)
        .etcd_members(etcd_members)
        .node_lease_ttl(3)
        .settings(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .build()
}

/// Allows or forbids scheduling replicas on node `i` (asked of node 1).
pub fn allow_scheduling(c: &MultiNodeCluster, i: usize, allow: bool) {
    let (status, body) = c.call(
        1,
        reqwest::Method::PATCH,
        &format!("/v1/nodes/{}", c.name(i)),
        Some(json!({ "allowScheduling": allow })),
    );
    assert_eq!(status, 200, "PATCH node {i} allowScheduling={allow}: {body}");
}

/// Creates volume `name` (SIZE, `replicas` replicas) with its replicas only on `on` (the other nodes do
/// not take replicas meanwhile), attaches it on node `attach` and waits until it is attached and
/// healthy; scheduling is allowed again everywhere afterwards.
pub fn volume_on(c: &MultiNodeCluster, name: &str, replicas: usize, on: &[usize], attach: usize) -> Value {
    let others: Vec<usize> = (1..=c.len()).filter(|i| !on.contains(i)).collect();
    for &i in &others {
        allow_scheduling(c, i, false);
    }
    let size = format!("{}MiB", SIZE / MIB);
    c.cli(1, &["volume", "create", name, "--size", &size, "--replicas", &replicas.to_string(), "--wait"]);
    c.cli(1, &["volume", "attach", name, "--node", &c.name(attach), "--wait"]);
    let v = wait_volume(c, 1, name, "attached and healthy", Duration::from_secs(60), attached_healthy);
    for &i in &others {
        allow_scheduling(c, i, true);
    }
    v
}

/// `GET /v1/volumes/NAME` of node `asked`, polled until `pred` holds.
pub fn wait_volume(
    c: &MultiNodeCluster,
    asked: usize,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    c.wait_for(asked, &format!("/v1/volumes/{name}"), what, timeout, pred)
}

pub fn attached_healthy(v: &Value) -> bool {
    v["state"] == "attached" && v["robustness"] == "healthy" && v["endpoint"].is_string()
}

pub fn replicas(v: &Value) -> Vec<Value> {
    v["replicas"].as_array().cloned().unwrap_or_default()
}

/// The nodes (`nI`) of the volume's replicas, in its order.
pub fn replica_nodes(v: &Value) -> Vec<String> {
    replicas(v).iter().map(|r| r["node"].as_str().unwrap().to_string()).collect()
}

/// The volume's replica on node `node` (a name such as `n3`), if any.
pub fn replica_on<'a>(v: &'a Value, node: &str) -> Option<&'a Value> {
    v["replicas"].as_array()?.iter().find(|r| r["node"] == node)
}

/// A host-side NBD URI for the engine of volume `v`, attached on node `attach`: its endpoint (on the
/// node's loopback or address) carried through a forward into the node.
pub fn nbd_forward(c: &MultiNodeCluster, v: &Value, attach: usize) -> Forward {
    let endpoint = v["endpoint"].as_str().unwrap_or_else(|| panic!("volume without an endpoint: {v:#}"));
    let address: SocketAddr = endpoint
        .strip_prefix("nbd://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("endpoint {endpoint} is not nbd://IP:PORT"));
    c.network().forward(attach, address)
}

/// Writes every block but each third one, then flushes: the data the tests then overwrite in part.
pub fn prefill() -> Workload {
    let mut plan = Workload::new();
    for b in 0..BLOCKS {
        if b % 3 != 0 {
            plan.write(b * 4096, &block_data(b, 0, 4096), false);
        }
    }
    plan.flush();
    plan
}

/// A verifying mixed load over the whole volume (4 KiB, 16 KiB and sub-block writes, zeroes, FUA,
/// pipelined flushes) that repeats with new bytes every pass until stopped.
pub fn mixed_workload() -> Workload {
    let mut plan = Workload::new();
    for round in 1..=2000u64 {
        let block = round.wrapping_mul(2_654_435_761) % BLOCKS;
        let off = block * 4096;
        match round % 10 {
            0..=2 => {
                plan.write(off + (round % 7) * 512 + 100, &block_data(block, round, 700), false);
            }
            3 => {
                plan.zero(off, 4096, false);
            }
            4 => {
                plan.pipelined_flush();
            }
            _ => {
                let n = if round % 10 == 5 { 16384.min((BLOCKS - block) * 4096) } else { 4096 };
                plan.write(off, &block_data(block, round, n as usize), round % 10 == 6);
            }
        }
    }
    plan.pass_shift = 4096 * 5 + 100;
    plan
}

/// The whole device behind `uri`, read with `qemu-img convert` (Debian qemu-utils).
pub fn read_device(uri: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("device.raw");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", uri])
        .arg(&out)
        .output()
        .expect("qemu-img is required (Debian qemu-utils)");
    assert!(status.status.success(), "qemu-img convert {uri}: {}", String::from_utf8_lossy(&status.stderr));
    std::fs::read(&out).unwrap()
}

/// Panics at the first 4 KiB block where the device behind `uri` differs from `model`.
pub fn assert_device_holds(uri: &str, model: &[u8], what: &str) {
    let device = read_device(uri);
    assert_eq!(device.len(), model.len(), "{what}: device size");
    if let Some(block) =
        (0..model.len() / 4096).find(|b| device[b * 4096..][..4096] != model[b * 4096..][..4096])
    {
        panic!("{what}: block {block} (offset {}) differs from what was acknowledged", block * 4096);
    }
}

/// SIGKILLs the process of replica `replica` in node `i` (found by its command line among the node's
/// processes), leaving the rest of the node running.
pub fn kill_replica_process(c: &MultiNodeCluster, i: usize, replica: &str) {
    let needle = format!("replicas/{replica}");
    let victims: Vec<i32> = c
        .network()
        .pids(i)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmd| String::from_utf8_lossy(&cmd).replace('\0', " ").contains(&needle))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(victims.len(), 1, "one process of node {i} serves {replica}: {victims:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victims[0]), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
}
