//! Validation and behaviour of the node/disk, setting, recurring-job, backup-target, event and
//! health APIs.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod manager_support;

use manager_support::{assert_error, Cluster};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_nodes_and_disks() {
    let c = Cluster::start(false).await;
    let (code, h) = c.get("/healthz").await;
    assert_eq!((code, h["status"].clone(), h["node"].clone()), (200, json!("ok"), json!("node-1")));

    let (_, nodes) = c.get("/v1/nodes").await;
    let n = &nodes[0];
    assert_eq!(n["name"], "node-1");
    assert_eq!(n["ready"], true, "{n:#}");
    let disk = &n["disks"][0];
    assert_eq!(disk["name"], "default");
    assert!(disk["storageMaximum"].as_u64().unwrap() > 0, "capacity reported: {disk}");
    assert!(disk["storageAvailable"].as_u64().unwrap() > 0);
    assert_error(&c.get("/v1/nodes/nope").await, 404, "not_found");

    // Disks: bad paths, duplicates and bad tags are refused.
    let extra = c.dir.path().join("extra");
    std::fs::create_dir(&extra).unwrap();
    assert_error(
        &c.post("/v1/nodes/node-1/disks", json!({"path": "relative/dir"})).await,
        400,
        "invalid_argument",
    );
    assert_error(
        &c.post("/v1/nodes/node-1/disks", json!({"path": "/a/../etc"})).await,
        400,
        "invalid_argument",
    );
    assert_error(
        &c.post("/v1/nodes/node-1/disks", json!({"path": "/nonexistent/corral-disk"})).await,
        400,
        "invalid_argument",
    );
    assert_error(
        &c.post("/v1/nodes/node-1/disks", json!({"path": extra, "tags": ["Not A Tag"]})).await,
        400,
        "invalid_argument",
    );
    assert_error(
        &c.post("/v1/nodes/node-1/disks", json!({"path": extra, "size": 1})).await,
        400,
        "invalid_argument",
    );
    assert_error(&c.post("/v1/nodes/nope/disks", json!({"path": extra})).await, 404, "not_found");
    // Above the API's int64: refused, not stored (schemathesis found this one).
    let too_big: u64 = 1 << 63;
    assert_error(
        &c.post("/v1/nodes/node-1/disks", json!({"path": extra, "storageReserved": too_big})).await,
        400,
        "invalid_argument",
    );
    let default_disk = c.get("/v1/nodes/node-1").await.1["disks"][0]["name"].as_str().unwrap().to_string();
    let reserved_before = c.get("/v1/nodes/node-1").await.1["disks"][0]["storageReserved"].clone();
    assert_error(
        &c.patch(&format!("/v1/nodes/node-1/disks/{default_disk}"), json!({"storageReserved": too_big}))
            .await,
        400,
        "invalid_argument",
    );
    assert_eq!(c.get("/v1/nodes/node-1").await.1["disks"][0]["storageReserved"], reserved_before);
    assert_eq!(
        c.get("/v1/nodes/node-1").await.1["disks"].as_array().unwrap().len(),
        1,
        "refusals changed nothing"
    );
    let (code, n) = c.post("/v1/nodes/node-1/disks", json!({"path": extra, "tags": ["ssd"]})).await;
    assert_eq!(code, 201, "{n}");
    assert_eq!(n["disks"].as_array().unwrap().len(), 2);
    assert_error(&c.post("/v1/nodes/node-1/disks", json!({"path": extra})).await, 409, "already_exists");
    assert_error(
        &c.post("/v1/nodes/node-1/disks", json!({"path": "/", "name": "extra"})).await,
        409,
        "already_exists",
    );

    // Node tags and scheduling; the scheduler honours them.
    assert_error(&c.patch("/v1/nodes/node-1", json!({"tags": ["UPPER"]})).await, 400, "invalid_argument");
    assert_error(
        &c.patch("/v1/nodes/node-1", json!({"allowScheduling": "no"})).await,
        400,
        "invalid_argument",
    );
    let (code, n) = c.patch("/v1/nodes/node-1", json!({"allowScheduling": false})).await;
    assert_eq!((code, n["allowScheduling"].clone()), (200, json!(false)));
    let msg = assert_error(
        &c.post("/v1/volumes", json!({"name": "v", "size": 2 << 20, "numberOfReplicas": 1})).await,
        400,
        "invalid_argument",
    );
    assert!(msg.contains("scheduling failed") && msg.contains("scheduling disabled"), "{msg}");
    let stale = n["resourceVersion"].as_str().unwrap().to_string();
    assert_eq!(c.patch("/v1/nodes/node-1", json!({"allowScheduling": true})).await.0, 200);
    assert_error(
        &c.patch("/v1/nodes/node-1", json!({"tags": ["a"], "resourceVersion": stale})).await,
        409,
        "conflict",
    );
    // A disk selector picks the tagged disk.
    let (code, v) = c
        .post(
            "/v1/volumes",
            json!({"name": "v", "size": 2 << 20, "numberOfReplicas": 1, "diskSelector": ["ssd"]}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let v = c.wait_volume("v", "placed", |v| v["replicas"].as_array().is_some_and(|r| !r.is_empty())).await;
    assert_eq!(v["replicas"][0]["disk"], "extra");
    // A disk holding a replica cannot be removed; an empty one can.
    assert_error(&c.delete("/v1/nodes/node-1/disks/extra").await, 409, "failed_precondition");
    assert_error(&c.delete("/v1/nodes/node-1/disks/nope").await, 404, "not_found");
    assert_eq!(
        c.patch("/v1/nodes/node-1/disks/default", json!({"allowScheduling": false, "tags": ["hdd"]})).await.0,
        200
    );
    assert_error(
        &c.patch("/v1/nodes/node-1/disks/default", json!({"bogus": 1})).await,
        400,
        "invalid_argument",
    );
    let (code, n) = c.delete("/v1/nodes/node-1/disks/default").await;
    assert_eq!(code, 200, "{n}");
    assert_eq!(n["disks"].as_array().unwrap().len(), 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_validate_and_use_the_version_check() {
    let c = Cluster::start(false).await;
    let (_, all) = c.get("/v1/settings").await;
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "replica-soft-anti-affinity" && s["value"] == "false"));
    assert_error(&c.get("/v1/settings/nope").await, 404, "not_found");
    assert_error(&c.put("/v1/settings/nope", json!({"value": "1"})).await, 404, "not_found");
    assert_error(
        &c.put("/v1/settings/replica-soft-anti-affinity", json!({"value": "yes"})).await,
        400,
        "invalid_argument",
    );
    assert_error(
        &c.put("/v1/settings/storage-over-provisioning-percentage", json!({"value": "50"})).await,
        400,
        "invalid_argument",
    );
    assert_error(
        &c.put("/v1/settings/default-replica-count", json!({"value": "3", "x": 1})).await,
        400,
        "invalid_argument",
    );
    assert_eq!(
        c.get("/v1/settings/replica-soft-anti-affinity").await.1["value"],
        "false",
        "refusals changed nothing"
    );
    let (code, s) = c.put("/v1/settings/replica-soft-anti-affinity", json!({"value": "true"})).await;
    assert_eq!((code, s["value"].clone()), (200, json!("true")));
    // Two writers with the same version: exactly one wins, the other gets a conflict.
    let version = s["resourceVersion"].as_str().unwrap().to_string();
    let a = c.put(
        "/v1/settings/replica-soft-anti-affinity",
        json!({"value": "false", "resourceVersion": version}),
    );
    let b = c
        .put("/v1/settings/replica-soft-anti-affinity", json!({"value": "true", "resourceVersion": version}));
    let (ra, rb) = tokio::join!(a, b);
    let mut codes = [ra.0, rb.0];
    codes.sort_unstable();
    assert_eq!(codes, [200, 409], "{ra:?} {rb:?}");
    let loser = if ra.0 == 409 { &ra } else { &rb };
    assert_eq!(loser.1["code"], "conflict");
    let winner_value = if ra.0 == 200 { "false" } else { "true" };
    assert_eq!(c.get("/v1/settings/replica-soft-anti-affinity").await.1["value"], winner_value);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurring_jobs_backup_target_and_events() {
    let c = Cluster::start(false).await;
    let good =
        json!({"name": "hourly", "task": "snapshot", "cron": "0 * * * *", "retain": 2, "volumes": ["v"]});
    for (patch, needle) in [
        (json!({"name": "Hourly"}), "name"),
        (json!({"task": "copy"}), "task"),
        (json!({"cron": "every hour"}), "cron"),
        (json!({"cron": "61 * * * *"}), "cron"),
        (json!({"retain": 0}), "retain"),
        (json!({"retain": 101}), "retain"),
        (json!({"volumes": []}), "at least one"),
        (json!({"volumes": ["Bad"]}), "volume name"),
        (json!({"extra": true}), "unknown field"),
    ] {
        let mut body = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let msg = assert_error(&c.post("/v1/recurringjobs", body.clone()).await, 400, "invalid_argument");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    assert_eq!(c.get("/v1/recurringjobs").await.1, json!([]));
    let (code, j) = c.post("/v1/recurringjobs", good.clone()).await;
    assert_eq!((code, j["retain"].clone()), (201, json!(2)));
    assert_error(&c.post("/v1/recurringjobs", good).await, 409, "already_exists");
    assert_eq!(c.get("/v1/recurringjobs/hourly").await.1["cron"], "0 * * * *");
    assert_eq!(c.delete("/v1/recurringjobs/hourly").await.0, 204);
    assert_error(&c.delete("/v1/recurringjobs/hourly").await, 404, "not_found");

    assert_eq!(c.get("/v1/backuptarget").await.1["url"], "");
    assert_error(&c.put("/v1/backuptarget", json!({"url": "ftp://x"})).await, 400, "invalid_argument");
    assert_error(
        &c.put("/v1/backuptarget", json!({"url": "file:///b", "creds": 1})).await,
        400,
        "invalid_argument",
    );
    let (code, t) = c.put("/v1/backuptarget", json!({"url": "file:///var/backups"})).await;
    assert_eq!((code, t["url"].clone()), (200, json!("file:///var/backups")));

    let (_, events) = c.get("/v1/events?resource=node").await;
    assert!(events.as_array().unwrap().iter().any(|e| e["reason"] == "Registered"), "{events:#}");
    assert_error(&c.get("/v1/events?bogus=1").await, 400, "invalid_argument");
    c.shutdown().await;
}
