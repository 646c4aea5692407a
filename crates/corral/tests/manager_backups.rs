//! The backup API against a one-node cluster (an in-process manager and instance manager running
//! real `corral` engines, replicas and backup/restore jobs) and real backup targets: a directory
//! the volume's backup cannot be written to (the job fails and says why), and Longhorn's fixture
//! backup store, listed through corral-backup and restored into a volume read back with qemu-img.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod manager_support;

use std::path::Path;
use std::time::Duration;

use manager_support::{assert_error, device_sha256, Cluster};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

fn fixture(dir: &Path) {
    corral_testkit::fixtures::extract_longhorn("backupstore-vfs.tar.gz", dir);
}

/// SHA-256 of the 64 MiB volume `vol1` restored from the fixture's `bk-snap3` (its README).
const FIXTURE_BK_SNAP3_SHA256: &str = "742a32de6696dbac0a89e8e8a8eed3840612870d72b74b3950409750d8a3a1a3";

async fn wait_for(c: &Cluster, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    c.wait_for(path, what, pred).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_create_validates_and_a_failed_job_is_reported() {
    let c = Cluster::start(false).await;
    // No target: every backup route refuses clearly.
    let msg = assert_error(&c.post("/v1/volumes/vol/backups", json!({})).await, 409, "failed_precondition");
    assert!(msg.contains("no backup target"), "{msg}");
    assert_error(&c.get("/v1/backupvolumes").await, 409, "failed_precondition");
    assert_error(&c.get("/v1/backupvolumes/vol/backups").await, 409, "failed_precondition");

    // A target where the volume's backup cannot take its lock: a plain file holds the place of its
    // `locks` directory, so every backup job of `vol` fails (with the real binary) before it
    // writes anything, while the target stays readable (a volume directory without `volume.cfg`
    // is not a backup volume).
    let store = tempfile::tempdir().unwrap();
    let blocker =
        store.path().join(corral_backup::layout::volume_dir("vol")).join(corral_backup::layout::LOCKS_DIR);
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();
    let target = format!("file://{}", store.path().display());
    assert_eq!(c.put("/v1/backuptarget", json!({"url": target})).await.0, 200);
    let msg = assert_error(&c.post("/v1/volumes/nope/backups", json!({})).await, 404, "not_found");
    assert!(msg.contains("nope"), "{msg}");
    let (code, v) =
        c.post("/v1/volumes", json!({"name": "vol", "size": 8 * MIB, "numberOfReplicas": 1})).await;
    assert_eq!(code, 201, "{v}");
    c.wait_volume("vol", "detached and healthy", |v| {
        v["state"] == "detached" && v["robustness"] == "healthy"
    })
    .await;
    let msg = assert_error(&c.post("/v1/volumes/vol/backups", json!({})).await, 409, "failed_precondition");
    assert!(msg.contains("not attached"), "{msg}");
    let msg = assert_error(
        &c.post("/v1/volumes/vol/backups", json!({"snapshot": "snap9"})).await,
        404,
        "not_found",
    );
    assert!(msg.contains("snap9"), "{msg}");
    assert_error(
        &c.post("/v1/volumes/vol/backups", json!({"snapshot": "Bad Name"})).await,
        400,
        "invalid_argument",
    );
    assert_error(&c.post("/v1/volumes/vol/backups", json!({"snap": "x"})).await, 400, "invalid_argument");
    assert_error(
        &c.post("/v1/volumes/vol/backups", json!({"labels": {"": "x"}})).await,
        400,
        "invalid_argument",
    );
    // Nothing was requested by the refusals.
    assert_eq!(c.get("/v1/backupvolumes").await.1, json!([]));

    assert_eq!(c.post("/v1/volumes/vol/attach", json!({})).await.0, 200);
    c.wait_volume("vol", "attached", |v| v["state"] == "attached").await;
    assert_error(&c.post("/v1/volumes/vol/backups", json!({"snapshot": "snap9"})).await, 404, "not_found");
    // Without a snapshot one is taken through the engine.
    let (code, b) = c.post("/v1/volumes/vol/backups", json!({"labels": {"k": "v"}})).await;
    assert_eq!(code, 201, "{b}");
    assert_eq!(b["state"], "in-progress");
    assert_eq!(b["volume"], "vol");
    assert_eq!(b["labels"]["k"], "v");
    let snapshot = b["snapshot"].as_str().unwrap().to_string();
    let (_, snaps) = c.get("/v1/volumes/vol/snapshots").await;
    assert!(snaps.as_array().unwrap().iter().any(|s| s["name"] == snapshot.as_str()), "{snaps}");
    // The target cannot hold the volume's lock: the job fails and says why.
    let name = b["name"].as_str().unwrap().to_string();
    let path = format!("/v1/backupvolumes/vol/backups/{name}");
    let failed = wait_for(&c, &path, "error", |b| b["state"] == "error").await;
    assert!(failed["error"].as_str().unwrap().contains("Not a directory"), "{failed}");
    assert_eq!(failed["url"], "");
    let (_, list) = c.get("/v1/backupvolumes/vol/backups").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (_, vols) = c.get("/v1/backupvolumes").await;
    assert_eq!(vols, json!([]), "a volume whose only backup failed has nothing in the target");
    // The per-volume guard: while a backup of the volume runs (its job held running here by a
    // long-running stand-in), no snapshot of it may be removed.
    let ds = c.manager.as_ref().unwrap().datastore().clone();
    let mut running = corral_store::resources::Backup::new(
        "backup-guard",
        corral_store::resources::BackupSpec {
            volume: "vol".into(),
            snapshot: snapshot.clone(),
            labels: Default::default(),
            created_by_job: None,
        },
    );
    running.status.state = corral_store::resources::BackupState::InProgress;
    let job = c
        .supervisor
        .start(corral_im::pb::StartRequest {
            name: "b-backup-guard".into(),
            kind: corral_im::pb::InstanceKind::Job as i32,
            args: vec![
                "replica".into(),
                "serve".into(),
                "--dir".into(),
                c.dir.path().join("guard").display().to_string(),
                "--size".into(),
                "4MiB".into(),
                "--listen".into(),
                "127.0.0.1:{port0}".into(),
            ],
            port_count: 1,
            probe_host: String::new(),
            requested_ports: vec![],
        })
        .await
        .unwrap();
    assert_eq!(job.name, "b-backup-guard");
    ds.create(&running).await.unwrap();
    let snap_path = format!("/v1/volumes/vol/snapshots/{snapshot}");
    for _ in 0..5 {
        let msg = assert_error(&c.delete(&snap_path).await, 409, "failed_precondition");
        assert!(msg.contains("backup-guard"), "{msg}");
        let b = c.get("/v1/backupvolumes/vol/backups/backup-guard").await.1;
        assert_eq!(b["state"], "in-progress", "{b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Deleting a running backup is refused too.
    assert_error(&c.delete("/v1/backupvolumes/vol/backups/backup-guard").await, 409, "failed_precondition");
    assert_error(&c.delete("/v1/backupvolumes/vol").await, 409, "failed_precondition");
    // Its job gone, the backup is run again (and fails on this target): the guard lifts.
    c.supervisor.delete("b-backup-guard").await.unwrap();
    wait_for(&c, "/v1/backupvolumes/vol/backups/backup-guard", "error", |b| b["state"] == "error").await;
    assert_eq!(c.delete(&snap_path).await.0, 204);

    // A failed backup can be deleted (once the target takes locks again); then it is gone.
    std::fs::remove_file(&blocker).unwrap();
    let (code, body) = c.delete(&path).await;
    assert_eq!(code, 204, "{body}");
    assert_error(&c.get(&path).await, 404, "not_found");
    assert_error(&c.delete(&path).await, 404, "not_found");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_reads_the_target_and_from_backup_checks_the_size() {
    let c = Cluster::start(false).await;
    let store = tempfile::tempdir().unwrap();
    fixture(store.path());
    let target = format!("vfs://{}", store.path().display());
    assert_eq!(c.put("/v1/backuptarget", json!({"url": target})).await.0, 200);

    // Longhorn's backups show up.
    let (code, vols) = c.get("/v1/backupvolumes").await;
    assert_eq!(code, 200, "{vols}");
    assert_eq!(vols.as_array().unwrap().len(), 1, "{vols}");
    assert_eq!(vols[0]["name"], "vol1");
    assert_eq!(vols[0]["size"], 64 * MIB);
    assert_eq!(vols[0]["backupCount"], 2);
    assert_eq!(c.get("/v1/backupvolumes/vol1").await.1, vols[0]);
    assert_error(&c.get("/v1/backupvolumes/vol2").await, 404, "not_found");
    assert_error(&c.get("/v1/backupvolumes/vol2/backups").await, 404, "not_found");
    assert_error(&c.get("/v1/backupvolumes/Bad%20Name/backups").await, 400, "invalid_argument");
    let (_, list) = c.get("/v1/backupvolumes/vol1/backups").await;
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bk-snap2", "bk-snap3"]);
    let b = c.get("/v1/backupvolumes/vol1/backups/bk-snap3").await.1;
    assert_eq!(b["state"], "completed");
    assert_eq!(b["progress"], 100);
    assert_eq!(b["snapshot"], "snap3");
    let url = format!("{target}?backup=bk-snap3&volume=vol1");
    assert_eq!(b["url"], url.as_str());
    assert_error(&c.get("/v1/backupvolumes/vol1/backups/bk-nope").await, 404, "not_found");

    // fromBackup: the size comes from the backup; a smaller one is refused; a missing backup too.
    let msg = assert_error(
        &c.post(
            "/v1/volumes",
            json!({"name": "r", "size": 32 * MIB, "fromBackup": url, "numberOfReplicas": 1}),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert!(msg.contains("smaller"), "{msg}");
    let msg = assert_error(
        &c.post(
            "/v1/volumes",
            json!({"name": "r", "size": 128 * MIB, "fromBackup": url, "numberOfReplicas": 1}),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert!(msg.contains("expand the volume after the restore"), "{msg}");
    let missing = format!("{target}?backup=bk-nope&volume=vol1");
    let msg = assert_error(
        &c.post("/v1/volumes", json!({"name": "r", "fromBackup": missing, "numberOfReplicas": 1})).await,
        400,
        "invalid_argument",
    );
    assert!(msg.contains("bk-nope"), "{msg}");
    assert_error(
        &c.post("/v1/volumes", json!({"name": "r", "fromBackup": "file:///x", "numberOfReplicas": 1})).await,
        400,
        "invalid_argument",
    );
    assert_eq!(c.get("/v1/volumes").await.1, json!([]), "refusals created nothing");
    let (code, v) =
        c.post("/v1/volumes", json!({"name": "r", "fromBackup": url, "numberOfReplicas": 1})).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["size"], 64 * MIB);
    // Restored by a real job from Longhorn's backup: healthy, and byte for byte what Longhorn
    // backed up.
    let v = c
        .wait_volume("r", "restored and healthy", |v| {
            v["robustness"] == "healthy"
                && v["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "restored" && c["status"] == true))
        })
        .await;
    assert!(v["replicas"].as_array().unwrap().iter().all(|r| r["state"] == "running"), "{v}");
    assert_eq!(c.post("/v1/volumes/r/attach", json!({})).await.0, 200);
    let v = c.wait_volume("r", "attached", |v| v["state"] == "attached" && v["endpoint"].is_string()).await;
    let sha = device_sha256(v["endpoint"].as_str().unwrap(), c.dir.path()).await;
    assert_eq!(sha, FIXTURE_BK_SNAP3_SHA256, "the restored volume differs from Longhorn's backup");

    // Delete one backup, then the whole backup volume.
    assert_eq!(c.delete("/v1/backupvolumes/vol1/backups/bk-snap2").await.0, 204);
    let (_, list) = c.get("/v1/backupvolumes/vol1/backups").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], "bk-snap3");
    assert_error(&c.delete("/v1/backupvolumes/vol1/backups/bk-snap2").await, 404, "not_found");
    assert_eq!(c.delete("/v1/backupvolumes/vol1").await.0, 204);
    assert_eq!(c.get("/v1/backupvolumes").await.1, json!([]));
    assert_error(&c.delete("/v1/backupvolumes/vol1").await, 404, "not_found");
    c.shutdown().await;
}
