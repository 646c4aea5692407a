//! Backups through the control plane, end to end with real processes: `corral quickstart` on a temp
//! dir, data written through the NBD endpoint with qemu-io, `corral backup create VOLUME --wait`
//! (run as an instance-manager job on the replica's node), `corral volume create --from-backup`
//! (restored into every replica directory before the replicas start), byte-identical read-back
//! checked with qemu-img; a recurring backup job's retention; the refusal without a target.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod control_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control_support::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn backup_then_restore_into_a_new_volume_reads_back_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let mut q = start_cluster(&tmp.path().join("data"));
    q.cli(&["volume", "create", "src", "--size", "64MiB", "--replicas", "2", "--wait"]);
    let ep = q.cli(&["volume", "attach", "src", "--wait"]).trim().to_string();
    write_pattern(&ep, 0xa1, 0, 1 << 20);
    write_pattern(&ep, 0xb2, 5 << 20, 3 << 20);
    write_pattern(&ep, 0xc3, (64 << 20) - 4096, 4096);
    let before = device_sha256(&ep, tmp.path());

    // Through the API, a new snapshot is taken and backed up by a job on the replica's node.
    let b = json(&q.cli(&["backup", "create", "src", "--wait", "--json"]));
    assert_eq!(b["state"], "completed", "{b:#}");
    assert_eq!(b["progress"], 100);
    let url = b["url"].as_str().unwrap().to_string();
    let target = format!("file://{}", q.data_dir().join("backups").canonicalize().unwrap().display());
    assert_eq!(url, format!("{target}?backup={}&volume=src", b["name"].as_str().unwrap()));
    // The offline tool sees the same backup in the target.
    let offline = json(&q.cli(&["backup", "inspect", &url]));
    assert_eq!(offline["snapshot"], b["snapshot"]);
    assert_eq!(offline["volumeSize"].as_u64().or(offline["volume_size"].as_u64()), Some(64 << 20));
    // Listing through the API.
    let vols = json(&q.cli(&["backup", "ls", "--json"]));
    assert!(vols.as_array().unwrap().iter().any(|v| v["name"] == "src" && v["backupCount"] == 1), "{vols:#}");
    let list = json(&q.cli(&["backup", "ls", "src", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(list[0]["url"], url.as_str());
    let table = q.cli(&["backup", "ls", "src"]);
    assert!(table.contains("completed") && table.contains(&url), "{table}");

    // Written after the backup: must not be in the restore.
    write_pattern(&ep, 0xdd, 0, 1 << 20);
    // A given snapshot is backed up as it is (the write above came after it).
    q.cli(&["snapshot", "create", "src", "after"]);
    let b2 = json(&q.cli(&["backup", "create", "src", "--snapshot", "after", "--wait", "--json"]));
    assert_eq!((b2["state"].as_str(), b2["snapshot"].as_str()), (Some("completed"), Some("after")), "{b2:#}");
    assert_eq!(json(&q.cli(&["backup", "ls", "src", "--json"])).as_array().unwrap().len(), 2);

    // Restore into a new volume; its size comes from the backup.
    let v = json(&q.cli(&[
        "volume",
        "create",
        "dst",
        "--from-backup",
        &url,
        "--replicas",
        "2",
        "--wait",
        "--json",
    ]));
    assert_eq!(v["size"], 64u64 << 20);
    assert!(
        v["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "restored" && c["status"] == true),
        "{v:#}"
    );
    let ep2 = q.cli(&["volume", "attach", "dst", "--wait"]).trim().to_string();
    assert_eq!(device_sha256(&ep2, tmp.path()), before, "restored volume differs from the backed-up data");
    read_pattern(&ep2, 0xa1, 0, 1 << 20);
    read_pattern(&ep2, 0xb2, 5 << 20, 3 << 20);
    q.stop();
}

#[test]
fn a_recurring_backup_job_with_retain_1_leaves_one_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let mut q = start_cluster(&tmp.path().join("data"));
    q.cli(&["volume", "create", "jv", "--size", "16MiB", "--replicas", "1", "--wait"]);
    let ep = q.cli(&["volume", "attach", "jv", "--wait"]).trim().to_string();
    write_pattern(&ep, 0x5a, 0, 1 << 20);
    q.cli(&[
        "job",
        "create",
        "nightly",
        "--task",
        "backup",
        "--cron",
        "*/3 * * * * *",
        "--retain",
        "1",
        "--volume",
        "jv",
    ]);
    // Wait until at least three runs' backups have existed and, between two runs, exactly one
    // (completed) backup of the job is left.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let left = loop {
        let out = q.cli_output(&["backup", "ls", "jv", "--json"]);
        if out.status.success() {
            let list = json(&String::from_utf8_lossy(&out.stdout));
            let all = list.as_array().unwrap().clone();
            for b in &all {
                assert_ne!(b["state"], "error", "a job backup failed: {b:#}");
                assert_eq!(b["labels"]["recurring-job.corral.io"], "nightly", "{b:#}");
                seen.insert(b["name"].as_str().unwrap().to_string());
            }
            let completed = all.iter().filter(|b| b["state"] == "completed").count();
            // A new backup completes before the job's oldest is removed: two for a moment.
            assert!(completed <= 2, "retain 1 kept {completed}: {list:#}");
            if seen.len() >= 3 && all.len() == 1 && completed == 1 {
                break all;
            }
        }
        assert!(Instant::now() < deadline, "never three job backups with one left; saw {seen:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // The target itself holds that one complete backup of the volume.
    let target = format!("file://{}", q.data_dir().join("backups").display());
    let offline = json(&q.cli(&["backup", "ls", "--target", &target, "--volume", "jv", "--json"]));
    let complete: Vec<&Value> =
        offline.as_array().unwrap().iter().filter(|b| b["in_progress"] != true).collect();
    assert_eq!(complete.len(), 1, "{offline:#}");
    assert_eq!(complete[0]["name"], left[0]["name"]);
    q.cli(&["job", "rm", "nightly"]);
    // The job's snapshots were pruned too (the newest is kept for the next incremental backup).
    let snaps = json(&q.cli(&["snapshot", "ls", "jv", "--json"]));
    let mine = snaps
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["labels"]["recurring-job.corral.io"] == "nightly" && s["removed"] != true)
        .count();
    assert!(mine <= 2, "job snapshots were not pruned: {snaps:#}");
    q.stop();
}

#[test]
fn backup_without_a_target_fails_clearly() {
    // A manager alone (no quickstart, so no default target); its instance manager is not needed
    // for the API to refuse.
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut manager = Command::new(CORRAL)
        .args(["manager", "--node", "n1", "--listen", &listen, "--data-dir"])
        .arg(tmp.path())
        .args(["--instance-manager", &format!("http://127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut manager);
    let url = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::blocking::get(format!("{url}/healthz")).is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "manager never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = |args: &[&str]| Command::new(CORRAL).args(args).env("CORRAL_URL", &url).output().unwrap();
    for args in [&["backup", "create", "vol1"][..], &["backup", "ls"][..], &["backup", "ls", "vol1"][..]] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no backup target"), "{args:?}: {stderr}");
    }
    // Setting one through the CLI makes listing work (empty).
    let store = tempfile::tempdir().unwrap();
    let target = format!("file://{}", store.path().display());
    let out = run(&["backup", "target", "set", &target]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), target);
    let out = run(&["backup", "ls", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&String::from_utf8_lossy(&out.stdout)), serde_json::json!([]));
    // And the backup of an unknown volume is now refused for that reason.
    let out = run(&["backup", "create", "vol1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"vol1\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_crash_in_the_middle_of_a_backup_converges_to_a_complete_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let mut q = start_cluster(&tmp.path().join("data"));
    q.cli(&["volume", "create", "kv", "--size", "64MiB", "--replicas", "1", "--wait"]);
    let ep = q.cli(&["volume", "attach", "kv", "--wait"]).trim().to_string();
    write_pattern(&ep, 0x77, 0, 8 << 20);
    write_pattern(&ep, 0x78, 40 << 20, 2 << 20);
    let before = device_sha256(&ep, tmp.path());
    let b = json(&q.cli(&["backup", "create", "kv", "--json"]));
    assert_eq!(b["state"], "in-progress", "{b:#}");
    let name = b["name"].as_str().unwrap().to_string();
    // The job spends its first ~2 s in the backup store's lock protocol: kill everything while it runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_mentioning(&format!("--name {name}")).is_empty() {
        assert!(Instant::now() < deadline, "the backup job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL of manager and instance manager; the job dies with them (checked by kill_and_restart).
    kill_and_restart(&mut q);
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        let out = q.cli_output(&["backup", "ls", "kv", "--json"]);
        if out.status.success() {
            let list = json(&String::from_utf8_lossy(&out.stdout));
            let all = list.as_array().unwrap().clone();
            assert!(all.len() <= 1, "one backup was asked for: {list:#}");
            if let Some(x) = all.first() {
                assert_eq!(x["name"], name.as_str());
                assert_ne!(x["state"], "error", "{x:#}");
                if x["state"] == "completed" {
                    break x.clone();
                }
            }
        }
        assert!(Instant::now() < deadline, "the backup never completed after the restart");
        std::thread::sleep(Duration::from_millis(200));
    };
    // What it reports as complete restores to the data that was backed up.
    let image = tmp.path().join("restored.img");
    q.cli(&["backup", "restore", done["url"].as_str().unwrap(), "--to-file", image.to_str().unwrap()]);
    let restored = hex::encode(Sha256::digest(std::fs::read(&image).unwrap()));
    assert_eq!(restored, before);
    q.stop();
}
