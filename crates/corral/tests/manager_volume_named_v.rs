//! The case end to end through the manager's REST API on a real cluster
//! (`TestCluster`, real engine, replica and job processes): a volume named `v` (one character,
//! which the API's name rule `^[a-z0-9][a-z0-9._-]{0,62}$` accepts) is created, attached, written
//! with qemu-io, backed up to a `file://` target, restored into a new volume with `fromBackup`,
//! attached and read back byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod control_support;

use std::time::Duration;

use control_support::*;
use serde_json::json;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(90);

#[test]
fn a_volume_named_v_is_created_backed_up_and_restored_through_the_manager() {
    let store = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let target = format!("file://{}", store.path().display());
    let c = TestCluster::builder().binary(CORRAL).soft_anti_affinity(true).backup_target(&target).build();
    assert_eq!(c.get("/v1/backuptarget").1["url"], target.as_str());

    let (code, v) = c.post("/v1/volumes", json!({"name": "v", "size": 16 * MIB, "numberOfReplicas": 2}));
    assert_eq!(code, 201, "creating volume v: {v}");
    c.wait_volume("v", "detached and healthy", WAIT, |v| {
        v["state"] == "detached" && v["robustness"] == "healthy"
    });
    let (code, body) = c.post("/v1/volumes/v/attach", json!({}));
    assert_eq!(code, 200, "attaching v: {body}");
    let v = c.wait_volume("v", "attached and healthy", WAIT, attached_healthy);
    let ep = endpoint(&v);
    write_pattern(&ep, 0x76, 0, MIB);
    write_pattern(&ep, 0x77, 9 * MIB, 2 * MIB);
    write_pattern(&ep, 0x78, 16 * MIB - 4096, 4096);
    let written = device_sha256(&ep, scratch.path());

    // Back it up (a snapshot is taken through the engine, then a job copies it to the target).
    let (code, b) = c.post("/v1/volumes/v/backups", json!({}));
    assert_eq!(code, 201, "backing up volume v: {b}");
    let name = b["name"].as_str().unwrap().to_string();
    let done = c.wait_for(&format!("/v1/backupvolumes/v/backups/{name}"), "finished", WAIT, |b| {
        b["state"] == "completed" || b["state"] == "error"
    });
    assert_eq!(done["state"], "completed", "{done:#}");
    let url = done["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("{target}?backup={name}&volume=v"));
    let (code, volumes) = c.get("/v1/backupvolumes");
    assert_eq!(code, 200, "{volumes}");
    assert!(
        volumes.as_array().unwrap().iter().any(|bv| bv["name"] == "v" && bv["backupCount"] == 1),
        "{volumes:#}"
    );
    // Written after the backup: must not be in the restore.
    write_pattern(&ep, 0xdd, 0, MIB);

    // Restore into a new volume; its size comes from the backup.
    let (code, r) =
        c.post("/v1/volumes", json!({"name": "v-restored", "fromBackup": url, "numberOfReplicas": 2}));
    assert_eq!(code, 201, "restoring {url}: {r}");
    assert_eq!(r["size"], 16 * MIB);
    c.wait_volume("v-restored", "restored and healthy", WAIT, |v| {
        v["robustness"] == "healthy"
            && v["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "restored" && c["status"] == true))
    });
    assert_eq!(c.post("/v1/volumes/v-restored/attach", json!({})).0, 200);
    let restored = c.wait_volume("v-restored", "attached and healthy", WAIT, attached_healthy);
    let restored_ep = endpoint(&restored);
    assert_ne!(restored_ep, ep);
    read_pattern(&restored_ep, 0x76, 0, MIB);
    read_pattern(&restored_ep, 0x77, 9 * MIB, 2 * MIB);
    read_pattern(&restored_ep, 0x78, 16 * MIB - 4096, 4096);
    assert_eq!(device_sha256(&restored_ep, scratch.path()), written, "the restore differs from the backup");
    // The source volume keeps what was written after its backup.
    read_pattern(&ep, 0xdd, 0, MIB);
}
