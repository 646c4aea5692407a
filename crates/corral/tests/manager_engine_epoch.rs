//! Engine epochs and force attach through the manager (one real node: an in-process manager and
//! instance manager running real `corral` engines and replicas): every engine start takes a new epoch
//! from the store (attach, re-attach, the engine process SIGKILLed and restarted by the manager), the
//! replicas hold the latest one; force attach is refused while the attach node is ready and moves the
//! volume off a node that is down, under a new epoch, with the data.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod manager_support;

use std::time::Duration;

use corral_store::resources::{set_condition, ConditionType, Node, Volume};
use manager_support::{assert_error, qemu_io, Cluster};
use serde_json::json;

const MIB: u64 = 1 << 20;

/// The epoch the volume's running engine process was started with (from its arguments), once it runs.
async fn running_engine_epoch(c: &Cluster, volume: &str, at_least: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = c.supervisor.get(&format!("e-{volume}")).ok().filter(|i| i.state == 2).and_then(|i| {
            let at = i.args.iter().position(|a| a == "--epoch")?;
            i.args.get(at + 1)?.parse::<u64>().ok()
        });
        if let Some(epoch) = found.filter(|e| *e >= at_least) {
            return epoch;
        }
        assert!(tokio::time::Instant::now() < deadline, "no engine of {volume} at epoch {at_least} or more");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn store_epoch(c: &Cluster, volume: &str) -> u64 {
    let v: Volume = c.manager.as_ref().unwrap().datastore().get(volume).await.unwrap();
    v.status.engine_epoch
}

async fn attached(c: &Cluster, volume: &str) -> String {
    let v = c
        .wait_volume(volume, "attached and healthy", |v| {
            v["state"] == "attached" && v["robustness"] == "healthy" && v["endpoint"].is_string()
        })
        .await;
    v["endpoint"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_engine_start_takes_a_new_epoch_and_force_attach_needs_the_node_down() {
    let c = Cluster::start(false).await;
    let (code, _) =
        c.post("/v1/volumes", json!({"name": "ep", "size": 16 * MIB, "numberOfReplicas": 1})).await;
    assert_eq!(code, 201);
    c.wait_volume("ep", "detached and healthy", |v| v["state"] == "detached" && v["robustness"] == "healthy")
        .await;
    assert_eq!(store_epoch(&c, "ep").await, 0);

    // Attach: epoch 1, written to the store before the engine started, and sent to the replica.
    assert_eq!(c.post("/v1/volumes/ep/attach", json!({})).await.0, 200);
    let endpoint = attached(&c, "ep").await;
    assert_eq!(running_engine_epoch(&c, "ep", 1).await, 1);
    assert_eq!(store_epoch(&c, "ep").await, 1);
    qemu_io(&endpoint, &["write -P 0x5a 0 1M", "flush"]).await;

    // The engine process SIGKILLed: the manager starts a new one, under a new epoch.
    let pid = c.supervisor.get("e-ep").unwrap().pid;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let epoch = running_engine_epoch(&c, "ep", 2).await;
    assert_eq!(epoch, 2, "the restarted engine did not take exactly the next epoch");
    let endpoint = attached(&c, "ep").await;
    qemu_io(&endpoint, &["read -P 0x5a 0 1M"]).await;

    // Detach and attach again: epoch 3.
    assert_eq!(c.post("/v1/volumes/ep/detach", json!({})).await.0, 200);
    c.wait_volume("ep", "detached", |v| v["state"] == "detached" && v["endpoint"].is_null()).await;
    assert_eq!(c.post("/v1/volumes/ep/attach", json!({})).await.0, 200);
    attached(&c, "ep").await;
    assert_eq!(running_engine_epoch(&c, "ep", 3).await, 3);
    let replica_dir = walk_for_state(c.dir.path()).expect("no replica directory with corral-state.json");
    let state = std::fs::read_to_string(&replica_dir).unwrap();
    assert!(state.contains("\"engine_epoch\":3"), "the replica does not hold epoch 3: {state}");

    // A second node, ready: attaching there is refused, with or without force; nothing changes.
    let ds = c.manager.as_ref().unwrap().datastore();
    let mut n2: Node = ds.get("node-1").await.unwrap();
    n2.metadata = corral_store::Metadata::named("node-2");
    n2.spec.disks.clear();
    n2.status.disks.clear();
    set_condition(&mut n2.status.conditions, ConditionType::Ready, true, "", "");
    ds.create(&n2).await.unwrap();
    let msg = assert_error(
        &c.post("/v1/volumes/ep/attach", json!({"node": "node-2"})).await,
        409,
        "failed_precondition",
    );
    assert!(msg.contains("detach it before attaching it to node-2"), "{msg}");
    let msg = assert_error(
        &c.post("/v1/volumes/ep/attach", json!({"node": "node-2", "force": true})).await,
        409,
        "failed_precondition",
    );
    assert!(msg.contains("node-1, which is ready"), "{msg}");
    let (_, after) = c.get("/v1/volumes/ep").await;
    assert_eq!((after["nodeId"].clone(), after["state"].clone()), (json!("node-1"), json!("attached")));
    assert_eq!(store_epoch(&c, "ep").await, 3);

    // The volume moves to node-2 (whose manager is not running here), and node-2 goes down: force
    // attach brings it back to node-1 under a new epoch, with its data.
    assert_eq!(c.post("/v1/volumes/ep/detach", json!({})).await.0, 200);
    c.wait_volume("ep", "detached", |v| v["state"] == "detached" && v["endpoint"].is_null()).await;
    assert_eq!(c.post("/v1/volumes/ep/attach", json!({"node": "node-2"})).await.0, 200);
    ds.modify("node-2", |n: &mut Node| {
        set_condition(
            &mut n.status.conditions,
            ConditionType::Ready,
            false,
            "NodeLeaseExpired",
            "lease expired",
        );
        Ok(())
    })
    .await
    .unwrap();
    let msg = assert_error(
        &c.post("/v1/volumes/ep/attach", json!({"node": "node-1"})).await,
        409,
        "failed_precondition",
    );
    assert!(msg.contains("attach with force"), "{msg}");
    let (code, body) = c.post("/v1/volumes/ep/attach", json!({"node": "node-1", "force": true})).await;
    assert_eq!(code, 200, "{body}");
    let endpoint = attached(&c, "ep").await;
    assert_eq!(running_engine_epoch(&c, "ep", 4).await, 4);
    qemu_io(&endpoint, &["read -P 0x5a 0 1M"]).await;
    c.shutdown().await;
}

/// The `corral-state.json` of the (one) replica under `root`.
fn walk_for_state(root: &std::path::Path) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = walk_for_state(&path) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == "corral-state.json") {
            return Some(path);
        }
    }
    None
}
