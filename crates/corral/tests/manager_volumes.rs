//! The volume API against a one-node cluster (an in-process manager and instance manager running
//! real `corral` engine and replica processes): validation first, then the lifecycle create →
//! healthy → attach → snapshot → revert → expand → detach → delete, with every refusal checked to
//! change nothing and every action checked on the data (qemu-io through the volume's endpoint).
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod manager_support;

use manager_support::{assert_error, qemu_io, Cluster};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

async fn volume_names(c: &Cluster) -> Vec<String> {
    let (code, list) = c.get("/v1/volumes").await;
    assert_eq!(code, 200);
    list.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_validates_every_field_and_changes_nothing_on_refusal() {
    let c = Cluster::start(false).await;
    let ok = json!({"name": "v1", "size": 64 * MIB, "numberOfReplicas": 1});
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (json!({"name": "Bad_Name", "size": 64 * MIB}), 400, "invalid_argument", "invalid volume name"),
        (json!({"name": "-v", "size": 64 * MIB}), 400, "invalid_argument", "invalid volume name"),
        (json!({"name": "a".repeat(64), "size": 64 * MIB}), 400, "invalid_argument", "invalid volume name"),
        (json!({"name": "v/1", "size": 64 * MIB}), 400, "invalid_argument", "invalid volume name"),
        (json!({"name": "v1", "size": 0}), 400, "invalid_argument", "greater than 0"),
        (json!({"name": "v1", "size": 64 * MIB + 4096}), 400, "invalid_argument", "multiple of 2 MiB"),
        (json!({"name": "v1", "size": -1}), 400, "invalid_argument", "invalid request body"),
        (json!({"name": "v1", "size": "64Mi"}), 400, "invalid_argument", "invalid request body"),
        (
            json!({"name": "v1", "size": 64 * MIB, "numberOfReplicas": 0}),
            400,
            "invalid_argument",
            "numberOfReplicas",
        ),
        (
            json!({"name": "v1", "size": 64 * MIB, "numberOfReplicas": 21}),
            400,
            "invalid_argument",
            "numberOfReplicas",
        ),
        // One node, hard anti-affinity: two replicas cannot be placed.
        (
            json!({"name": "v1", "size": 64 * MIB, "numberOfReplicas": 2}),
            400,
            "invalid_argument",
            "scheduling failed",
        ),
        // More than the disk can hold.
        (
            json!({"name": "v1", "size": 1u64 << 50, "numberOfReplicas": 1}),
            400,
            "invalid_argument",
            "scheduling failed",
        ),
        (
            json!({"name": "v1", "size": 64 * MIB, "numberOfReplicas": 1, "replicaCount": 3}),
            400,
            "invalid_argument",
            "unknown field",
        ),
        (
            json!({"name": "v1", "size": 64 * MIB, "dataLocality": "strict"}),
            400,
            "invalid_argument",
            "dataLocality",
        ),
        (
            json!({"name": "v1", "size": 64 * MIB, "numberOfReplicas": 1, "fromBackup": "/etc/passwd"}),
            400,
            "invalid_argument",
            "backup URL",
        ),
        (
            json!({"name": "v1", "size": 64 * MIB, "numberOfReplicas": 1, "staleReplicaTimeout": 0}),
            400,
            "invalid_argument",
            "staleReplicaTimeout",
        ),
        (
            json!({"name": "v1", "size": 64 * MIB, "numberOfReplicas": 1, "nodeSelector": ["Bad Tag"]}),
            400,
            "invalid_argument",
            "tag",
        ),
        (json!({"size": 64 * MIB}), 400, "invalid_argument", "name"),
    ];
    for (body, status, code, needle) in cases {
        let resp = c.post("/v1/volumes", body.clone()).await;
        let msg = assert_error(&resp, status, code);
        assert!(msg.contains(needle), "{body}: message {msg:?} does not mention {needle:?}");
        assert!(volume_names(&c).await.is_empty(), "{body} was refused but created something");
    }
    // Not JSON at all.
    let resp = c
        .http
        .post(format!("{}/v1/volumes", c.url))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "invalid_argument");

    let (code, v) = c.post("/v1/volumes", ok.clone()).await;
    assert_eq!(code, 201, "{v}");
    assert_error(&c.post("/v1/volumes", ok).await, 409, "already_exists");
    assert_eq!(volume_names(&c).await, ["v1"]);
    assert_error(&c.get("/v1/volumes/nope").await, 404, "not_found");
    assert_error(&c.get("/v1/no/such/path").await, 404, "not_found");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_lifecycle_and_refused_actions() {
    let c = Cluster::start(true).await;
    let (code, v) = c
        .post(
            "/v1/volumes",
            json!({"name": "data", "size": 64 * MIB, "numberOfReplicas": 3, "labels": {"app": "db"}}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    // The fields the issue lists, with these exact names.
    for key in
        ["name", "size", "numberOfReplicas", "state", "robustness", "endpoint", "replicas", "conditions"]
    {
        assert!(v.get(key).is_some(), "volume JSON lacks {key}: {v:#}");
    }
    assert_eq!(v["size"], 64 * MIB);
    assert_eq!(v["labels"]["app"], "db");

    let v = c
        .wait_volume("data", "detached and healthy", |v| {
            v["state"] == "detached" && v["robustness"] == "healthy"
        })
        .await;
    let replicas = v["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{v:#}");
    for r in replicas {
        for key in ["name", "node", "disk", "mode", "rebuildProgress"] {
            assert!(r.get(key).is_some(), "replica JSON lacks {key}: {r}");
        }
        assert_eq!(r["node"], "node-1");
        assert_eq!(r["disk"], "default");
    }
    assert_eq!(v["endpoint"], Value::Null);

    // Snapshots need an attached volume.
    assert_error(&c.post("/v1/volumes/data/snapshots", json!({})).await, 409, "failed_precondition");

    let (code, _) = c.post("/v1/volumes/data/attach", json!({})).await;
    assert_eq!(code, 200);
    let v = c
        .wait_volume("data", "attached and healthy", |v| {
            v["state"] == "attached" && v["robustness"] == "healthy"
        })
        .await;
    let endpoint = v["endpoint"].as_str().unwrap().to_string();
    assert!(endpoint.starts_with("nbd://127.0.0.1:"), "{endpoint}");
    assert!(v["replicas"].as_array().unwrap().iter().all(|r| r["mode"] == "RW"), "{v:#}");
    // A real engine over three real replicas: what is written reads back.
    qemu_io(&endpoint, &["write -P 0xa1 0 1M", "read -P 0xa1 0 1M"]).await;
    // Each replica's node measures the space its files hold: the volume's actual size follows the write.
    let v = c
        .wait_volume("data", "holding the 1 MiB written in every replica", |v| {
            let at_least = |x: &Value| x.as_u64().unwrap_or(0) >= 1 << 20;
            at_least(&v["actualSize"])
                && v["replicas"].as_array().unwrap().iter().all(|r| at_least(&r["actualSize"]))
        })
        .await;
    assert!(v["actualSize"].as_u64().unwrap() < 2 * (1 << 20) + (1 << 20), "{v:#}");

    // A second node exists; attaching there while attached here is refused, nothing changes.
    {
        let ds = c.manager.as_ref().unwrap().datastore();
        let mut n2: corral_store::resources::Node = ds.get("node-1").await.unwrap();
        n2.metadata = corral_store::Metadata::named("node-2");
        n2.spec.disks.clear();
        ds.create(&n2).await.unwrap();
    }
    let msg = assert_error(
        &c.post("/v1/volumes/data/attach", json!({"node": "node-2"})).await,
        409,
        "failed_precondition",
    );
    assert!(msg.contains("detach it before"), "{msg}");
    assert_error(
        &c.post("/v1/volumes/data/attach", json!({"node": "node-9"})).await,
        400,
        "invalid_argument",
    );
    let msg = assert_error(&c.delete("/v1/volumes/data").await, 409, "failed_precondition");
    assert!(msg.contains("attached"), "{msg}");
    let (_, after) = c.get("/v1/volumes/data").await;
    assert_eq!((after["nodeId"].clone(), after["state"].clone()), (json!("node-1"), json!("attached")));
    // Attaching again to the same node is idempotent.
    assert_eq!(c.post("/v1/volumes/data/attach", json!({})).await.0, 200);

    // /metrics: Prometheus text with the volume's size, state and robustness.
    let (code, text) = c.get("/metrics").await;
    let text = text.as_str().unwrap_or_default().to_string();
    assert_eq!(code, 200, "{text}");
    for series in [
        format!("corral_volume_size_bytes{{volume=\"data\"}} {}", 64 * MIB),
        "corral_volume_state{volume=\"data\",state=\"attached\"} 1".to_string(),
        "corral_volume_robustness{volume=\"data\",robustness=\"healthy\"} 1".to_string(),
        "# TYPE corral_manager_reconcile_passes_total counter".to_string(),
    ] {
        assert!(text.lines().any(|l| l == series), "no line {series:?} in:\n{text}");
    }

    // Snapshots go through the engine.
    let (code, s) = c.post("/v1/volumes/data/snapshots", json!({"name": "s1", "labels": {"k": "v"}})).await;
    assert_eq!((code, s["name"].clone()), (201, json!("s1")));
    // Written after the snapshot: the revert below must undo it.
    qemu_io(&endpoint, &["write -P 0xb2 0 1M"]).await;
    assert_error(
        &c.post("/v1/volumes/data/snapshots", json!({"name": "S 1"})).await,
        400,
        "invalid_argument",
    );
    let (_, list) = c.get("/v1/volumes/data/snapshots").await;
    assert_eq!(list.as_array().unwrap().iter().map(|s| s["name"].clone()).collect::<Vec<_>>(), [json!("s1")]);
    let msg = assert_error(
        &c.post("/v1/volumes/data/snapshots/s1/revert", json!({})).await,
        409,
        "failed_precondition",
    );
    assert!(msg.contains("maintenance"), "{msg}");
    assert_eq!(c.post("/v1/volumes/data/maintenance", json!({"enabled": true})).await.0, 200);
    let (code, body) = c.post("/v1/volumes/data/snapshots/s1/revert", json!({})).await;
    assert_eq!(code, 204, "{body}");
    let v = c.wait_volume("data", "attached after the revert", |v| v["state"] == "attached").await;
    let endpoint = v["endpoint"].as_str().unwrap().to_string();
    qemu_io(&endpoint, &["read -P 0xa1 0 1M"]).await;
    assert_error(&c.post("/v1/volumes/data/snapshots/nope/revert", json!({})).await, 404, "not_found");
    assert_eq!(c.delete("/v1/volumes/data/snapshots/s1").await.0, 204);
    let (_, list) = c.get("/v1/volumes/data/snapshots").await;
    assert_eq!(list, json!([]));

    // Expand: refused when shrinking or unaligned, then done online through the engine.
    let before = c.get("/v1/volumes/data").await.1;
    assert!(assert_error(
        &c.post("/v1/volumes/data/expand", json!({"size": 32 * MIB})).await,
        400,
        "invalid_argument"
    )
    .contains("shrink"));
    assert_error(
        &c.post("/v1/volumes/data/expand", json!({"size": 100 * MIB + 1})).await,
        400,
        "invalid_argument",
    );
    assert_error(&c.post("/v1/volumes/data/expand", json!({"size": 0})).await, 400, "invalid_argument");
    assert_error(&c.post("/v1/volumes/data/expand", json!({"size": -1})).await, 400, "invalid_argument");
    assert_error(&c.post("/v1/volumes/nope/expand", json!({"size": 128 * MIB})).await, 404, "not_found");
    assert_eq!(c.get("/v1/volumes/data").await.1["size"], before["size"]);
    // A stale resourceVersion is a conflict, never last-writer-wins.
    let stale = before["resourceVersion"].as_str().unwrap().to_string();
    assert_eq!(c.post("/v1/volumes/data/maintenance", json!({"enabled": false})).await.0, 200);
    assert_error(
        &c.post("/v1/volumes/data/expand", json!({"size": 128 * MIB, "resourceVersion": stale})).await,
        409,
        "conflict",
    );
    assert_eq!(c.get("/v1/volumes/data").await.1["size"], 64 * MIB);
    assert_eq!(c.post("/v1/volumes/data/expand", json!({"size": 128 * MIB})).await.0, 200);
    let v = c.wait_volume("data", "expanded", |v| v["size"] == 128 * MIB && v["state"] == "attached").await;
    // The size above is the wanted one; the engine has it once the reconciler says so.
    c.wait_for("/v1/events?resource=volume&name=data", "showing the online expand", |events| {
        events.as_array().is_some_and(|es| es.iter().any(|e| e["reason"] == "Expanded"))
    })
    .await;
    // The engine serves the new size: a client connecting now can use the added range.
    let endpoint = v["endpoint"].as_str().unwrap().to_string();
    qemu_io(&endpoint, &["write -P 0xc3 100M 1M", "read -P 0xc3 100M 1M", "read -P 0xa1 0 1M"]).await;

    // Detach, then delete: the processes and replica directories go away.
    assert_eq!(c.post("/v1/volumes/data/detach", json!({})).await.0, 200);
    c.wait_volume("data", "detached", |v| v["state"] == "detached" && v["endpoint"].is_null()).await;
    assert!(
        c.supervisor.list().iter().all(|i| !i.name.starts_with("e-") || i.state != 2),
        "engine still running"
    );
    let (code, v) = c.delete("/v1/volumes/data").await;
    assert_eq!((code, v["state"].clone()), (202, json!("deleting")));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while c.get("/v1/volumes/data").await.0 != 404 {
        assert!(tokio::time::Instant::now() < deadline, "volume never deleted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(c.supervisor.list().is_empty(), "instances left: {:?}", c.supervisor.list());
    let left: Vec<_> = std::fs::read_dir(c.dir.path().join("disk/replicas")).unwrap().collect();
    assert!(left.is_empty(), "replica directories left: {left:?}");
    let (_, events) = c.get("/v1/events?resource=volume&name=data").await;
    let reasons: Vec<_> =
        events.as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap().to_string()).collect();
    for r in ["Created", "Scheduled", "Attach", "Detach", "Deleted"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} event in {reasons:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_process_is_restarted_and_readded() {
    let c = Cluster::start(true).await;
    assert_eq!(
        c.post("/v1/volumes", json!({"name": "v", "size": 16 * MIB, "numberOfReplicas": 2})).await.0,
        201
    );
    c.post("/v1/volumes/v/attach", json!({})).await;
    let v = c
        .wait_volume("v", "attached and healthy", |v| {
            v["state"] == "attached" && v["robustness"] == "healthy"
        })
        .await;
    let endpoint = v["endpoint"].as_str().unwrap().to_string();
    qemu_io(&endpoint, &["write -P 0x5a 0 2M"]).await;
    let victim = v["replicas"][0]["name"].as_str().unwrap().to_string();
    let inst = c.supervisor.get(&format!("r-{victim}")).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(inst.pid as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    // The instance manager reports it, the manager restarts it and adds it back to the engine.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = c.supervisor.get(&format!("r-{victim}")).unwrap();
        if now.pid != inst.pid && now.state == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "replica never restarted: {now:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let v = c
        .wait_volume("v", "healthy again", |v| v["robustness"] == "healthy" && v["state"] == "attached")
        .await;
    assert_eq!(v["replicas"].as_array().unwrap().len(), 2, "no duplicate replica: {v:#}");
    assert!(v["replicas"].as_array().unwrap().iter().all(|r| r["mode"] == "RW"), "rebuilt: {v:#}");
    // Written before the kill; on either replica now (reads spread over RW replicas).
    for _ in 0..4 {
        qemu_io(&endpoint, &["read -P 0x5a 0 2M"]).await;
    }
    let (_, events) = c.get("/v1/events?resource=replica").await;
    assert!(
        events.as_array().unwrap().iter().any(|e| e["reason"] == "Failed" && e["name"] == victim.as_str()),
        "{events:#}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_converges_without_duplicates() {
    let c = Cluster::start(true).await;
    assert_eq!(
        c.post("/v1/volumes", json!({"name": "v", "size": 16 * MIB, "numberOfReplicas": 3})).await.0,
        201
    );
    c.post("/v1/volumes/v/attach", json!({})).await;
    let v =
        c.wait_volume("v", "attached", |v| v["state"] == "attached" && v["robustness"] == "healthy").await;
    let endpoint = v["endpoint"].clone();
    qemu_io(endpoint.as_str().unwrap(), &["write -P 0x6b 1M 1M"]).await;
    let before: Vec<_> = c.supervisor.list().into_iter().map(|i| (i.name, i.pid)).collect();
    // Restart only the manager (processes keep running under the instance manager).
    let mut c = c;
    let m = c.manager.take().unwrap();
    let im_url = {
        let ds = m.datastore().clone();
        let n: corral_store::resources::Node = ds.get("node-1").await.unwrap();
        n.spec.instance_manager_url
    };
    m.shutdown().await;
    // The old manager's last tasks may still be dropping their handle of the database.
    let mut tries = 0;
    let store = loop {
        match corral_store::RedbStore::open(&c.dir.path().join("corral.redb")) {
            Ok(s) => break std::sync::Arc::new(s),
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let mut mc = corral_manager::ManagerConfig::new("node-1", im_url);
    mc.listen = "127.0.0.1:0".parse().unwrap();
    mc.resync = std::time::Duration::from_millis(300);
    let m = corral_manager::Manager::start(mc, store).await.unwrap();
    c.url = format!("http://{}", m.local_addr());
    c.manager = Some(m);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let v =
        c.wait_volume("v", "attached", |v| v["state"] == "attached" && v["robustness"] == "healthy").await;
    assert_eq!(v["endpoint"], endpoint);
    assert_eq!(v["replicas"].as_array().unwrap().len(), 3);
    let after: Vec<_> = c.supervisor.list().into_iter().map(|i| (i.name, i.pid)).collect();
    assert_eq!(before, after, "processes were restarted or duplicated");
    qemu_io(endpoint.as_str().unwrap(), &["read -P 0x6b 1M 1M"]).await;
    // Events are persisted: those of the first run are served by the second.
    let (_, events) = c.get("/v1/events?resource=volume&name=v").await;
    let reasons: Vec<_> = events.as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert!(
        reasons.contains(&"Created") && reasons.contains(&"Attach"),
        "events lost in the restart: {reasons:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_snapshot_job_keeps_only_retain_snapshots() {
    let c = Cluster::start(true).await;
    assert_eq!(c.post("/v1/volumes", json!({"name": "v", "size": 16 * MIB, "numberOfReplicas": 1, "labels": {"recurring-job-group.corral.io/gold": ""}})).await.0, 201);
    c.post("/v1/volumes/v/attach", json!({})).await;
    c.wait_volume("v", "attached", |v| v["state"] == "attached" && v["robustness"] == "healthy").await;
    let (code, _) = c.post("/v1/volumes/v/snapshots", json!({"name": "by-hand"})).await;
    assert_eq!(code, 201);
    // Every second (6-field cron), by group, keeping 2.
    let (code, j) = c.post("/v1/recurringjobs", json!({"name": "often", "task": "snapshot", "cron": "* * * * * *", "retain": 2, "groups": ["gold"]})).await;
    assert_eq!(code, 201, "{j}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, j) = c.get("/v1/recurringjobs/often").await;
        let (_, snaps) = c.get("/v1/volumes/v/snapshots").await;
        let ours: Vec<_> = snaps
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["labels"]["recurring-job.corral.io"] == "often")
            .collect();
        assert!(ours.len() <= 2, "more than retain=2 snapshots kept: {snaps:#}");
        if j["lastRun"].is_string() && ours.len() == 2 {
            // Wait for at least three runs in all.
            let ds = c.manager.as_ref().unwrap().datastore();
            let job: corral_store::resources::RecurringJob = ds.get("often").await.unwrap();
            if job.status.runs >= 3 {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "job did not run 3 times: {j:#} {snaps:#}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The store mirrors the engine's snapshots: the API's and the job's, already before anyone
    // lists them.
    assert_eq!(c.call(reqwest::Method::DELETE, "/v1/recurringjobs/often", None).await.0, 204);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let ds = c.manager.as_ref().unwrap().datastore().clone();
    let stored = |ds: corral_store::Datastore| async move {
        let mut names: Vec<(String, Option<String>)> = ds
            .list::<corral_store::resources::Snapshot>()
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.spec.volume == "v")
            .map(|s| (s.spec.snapshot, s.spec.created_by_job))
            .collect();
        names.sort();
        names
    };
    let mirrored = stored(ds.clone()).await;
    let (_, snaps) = c.get("/v1/volumes/v/snapshots").await;
    let mut listed: Vec<String> =
        snaps.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    listed.sort();
    assert_eq!(mirrored.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), listed);
    assert_eq!(mirrored.iter().filter(|(_, j)| j.as_deref() == Some("often")).count(), 2, "{mirrored:?}");
    assert!(mirrored.iter().any(|(n, j)| n == "by-hand" && j.is_none()), "{mirrored:?}");
    // Deleted through the API: gone from the mirror; detached: listed from the mirror.
    assert_eq!(c.delete("/v1/volumes/v/snapshots/by-hand").await.0, 204);
    assert!(!stored(ds.clone()).await.iter().any(|(n, _)| n == "by-hand"));
    c.post("/v1/volumes/v/detach", json!({})).await;
    c.wait_volume("v", "detached", |v| v["state"] == "detached").await;
    let (code, snaps) = c.get("/v1/volumes/v/snapshots").await;
    assert_eq!(code, 200, "{snaps}");
    let mut offline: Vec<String> =
        snaps.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    offline.sort();
    listed.retain(|n| n != "by-hand");
    assert_eq!(offline, listed);
    // Deleting the volume deletes its snapshot records.
    assert_eq!(c.delete("/v1/volumes/v").await.0, 202);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !stored(ds.clone()).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "snapshot records left: {:?}",
            stored(ds.clone()).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    c.shutdown().await;
}
