//! Replica replacement and resizing through a real quickstart: a replica that cannot come back is
//! replaced right away on another disk (the failed one deleted after `staleReplicaTimeout`, with
//! no duplicate across a crash of the whole quickstart), a replica that comes back is reused, and
//! an offline expand grows the replicas at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod control_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use control_support::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn replicas(v: &Value) -> Vec<Value> {
    v["replicas"].as_array().unwrap().clone()
}

fn names(v: &Value) -> Vec<String> {
    replicas(v).iter().map(|r| r["name"].as_str().unwrap().to_string()).collect()
}

fn disk_path(q: &TestCluster, disk: &str) -> PathBuf {
    let nodes: Value = serde_json::from_str(&q.cli(&["node", "ls", "--json"])).unwrap();
    let node = &nodes.as_array().unwrap()[0];
    let d = node["disks"].as_array().unwrap().iter().find(|d| d["name"] == disk).unwrap();
    PathBuf::from(d["path"].as_str().unwrap())
}

fn kill_replica_process(name: &str) {
    let procs = processes_mentioning(&format!("replicas/{name} "));
    assert_eq!(procs.len(), 1, "one process serves {name}: {procs:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(procs[0].0 as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
}

#[test]
fn a_lost_replica_is_replaced_right_away_and_deleted_after_the_stale_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut q = start_cluster(&data);
    for d in ["d2", "d3"] {
        let p = tmp.path().join(d);
        std::fs::create_dir_all(&p).unwrap();
        q.cli(&["disk", "add", "local", p.to_str().unwrap()]);
    }
    q.cli(&[
        "volume",
        "create",
        "v",
        "--size",
        "64MiB",
        "--replicas",
        "2",
        "--stale-replica-timeout",
        "1",
        "--wait",
    ]);
    q.cli(&["volume", "attach", "v", "--wait"]);
    let v = q.wait_volume("v", "attached", Duration::from_secs(30), attached_healthy);
    let ep = endpoint(&v);
    write_pattern(&ep, 0x3c, 0, 32 * MIB);
    let victim = replicas(&v)[0].clone();
    let victim_name = victim["name"].as_str().unwrap().to_string();
    let victim_disk = victim["disk"].as_str().unwrap().to_string();
    let original = names(&v);
    let used_disks: Vec<String> =
        replicas(&v).iter().map(|r| r["disk"].as_str().unwrap().to_string()).collect();
    // Its data is gone and its process killed: it cannot come back.
    let victim_dir = replica_dir(&disk_path(&q, &victim_disk), &victim_name);
    std::fs::remove_dir_all(&victim_dir).unwrap();
    kill_replica_process(&victim_name);
    let failed_at = Instant::now();

    // A replacement is scheduled right away (not after the 1-minute timeout), on the free disk.
    let v = q.wait_volume("v", "given a replacement", Duration::from_secs(30), |v| {
        v["replicas"].as_array().unwrap().len() == 3
    });
    assert!(failed_at.elapsed() < Duration::from_secs(40), "replacement waited {:?}", failed_at.elapsed());
    let replacement = replicas(&v)
        .into_iter()
        .find(|r| !original.contains(&r["name"].as_str().unwrap().to_string()))
        .unwrap();
    let free_disk = ["default", "d2", "d3"].into_iter().find(|d| !used_disks.iter().any(|u| u == d)).unwrap();
    assert_eq!(replacement["disk"], free_disk, "the replacement avoids the failed replica's disk: {v:#}");

    // Crash the whole quickstart while the replacement may still be rebuilding: it converges
    // without a duplicate.
    kill_and_restart(&mut q);
    let v = q.wait_volume("v", "healthy with its replacement", Duration::from_secs(90), |v| {
        attached_healthy(v)
            && replicas(v).iter().filter(|r| r["mode"] == "RW").count() == 2
            && replicas(v).iter().all(|r| r["name"] != victim_name.as_str() || r["mode"] != "RW")
    });
    let rs = names(&v);
    assert!(rs.len() <= 3, "no duplicate replica: {v:#}");
    read_pattern(&endpoint(&v), 0x3c, 0, 32 * MIB);

    // The failed replica is deleted once staleReplicaTimeout (1 minute) has passed.
    let v = q.wait_volume("v", "rid of its failed replica", Duration::from_secs(120), |v| {
        replicas(v).len() == 2 && !names(v).contains(&victim_name)
    });
    assert!(
        failed_at.elapsed() >= Duration::from_secs(55),
        "deleted before its timeout: {:?}",
        failed_at.elapsed()
    );
    assert!(replicas(&v).iter().all(|r| r["mode"] == "RW"), "{v:#}");
    assert!(processes_mentioning(&format!("replicas/{victim_name} ")).is_empty(), "its process was stopped");
    assert!(!victim_dir.exists());
    read_pattern(&endpoint(&v), 0x3c, 0, 32 * MIB);
    q.stop();
    assert_no_processes(&data.display().to_string());
}

#[test]
fn a_replica_that_comes_back_is_reused_not_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut q = start_cluster(&data);
    q.cli(&["volume", "create", "v", "--size", "64MiB", "--replicas", "2", "--wait"]);
    q.cli(&["volume", "attach", "v", "--wait"]);
    let v = q.wait_volume("v", "attached", Duration::from_secs(30), attached_healthy);
    let before = names(&v);
    write_pattern(&endpoint(&v), 0x77, 0, 16 * MIB);
    let old_pid = processes_mentioning(&format!("replicas/{} ", before[1]))[0].0;
    kill_replica_process(&before[1]);
    // Its process comes back (a new one on the same directory)...
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = processes_mentioning(&format!("replicas/{} ", before[1]));
        if now.len() == 1 && now[0].0 != old_pid {
            break;
        }
        assert!(Instant::now() < deadline, "replica process never restarted: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and the engine takes it back: it is rebuilt from its own data, no replacement stays.
    let v = q.wait_volume("v", "healthy again", Duration::from_secs(60), |v| {
        attached_healthy(v) && replicas(v).iter().all(|r| r["mode"] == "RW") && replicas(v).len() == 2
    });
    assert_eq!(names(&v), before, "the same replicas, the failed one reused: {v:#}");
    assert_eq!(std::fs::read_dir(data.join("disks/default/replicas")).unwrap().count(), 2);
    read_pattern(&endpoint(&v), 0x77, 0, 16 * MIB);
    q.stop();
}

#[test]
fn offline_expand_grows_the_replicas_before_any_attach() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut q = start_cluster(&data);
    q.cli(&["volume", "create", "x", "--size", "64MiB", "--replicas", "2", "--wait"]);
    q.cli(&["volume", "attach", "x", "--wait"]);
    let v = q.wait_volume("x", "attached", Duration::from_secs(30), attached_healthy);
    write_pattern(&endpoint(&v), 0x42, 60 * MIB, 4 * MIB);
    q.cli(&["volume", "detach", "x"]);
    let v = q.wait_volume("x", "detached", Duration::from_secs(30), |v| v["state"] == "detached");
    let dirs: Vec<PathBuf> = names(&v).iter().map(|n| replica_dir(&data.join("disks/default"), n)).collect();
    for d in &dirs {
        assert_eq!(replica_info(d)["size"], 64 * MIB, "{}", d.display());
    }
    q.cli(&["volume", "expand", "x", "--size", "128MiB"]);
    // The replicas grow now, while the volume stays detached.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dirs.iter().all(|d| replica_info(d)["size"] == 128 * MIB) {
        assert!(
            Instant::now() < deadline,
            "replicas never grew: {:?}",
            dirs.iter().map(|d| replica_info(d)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(q.volume("x")["state"], "detached");
    assert!(processes_mentioning("--volume x ").is_empty(), "the expanding engine stopped");
    q.cli(&["volume", "attach", "x", "--wait"]);
    let v = q.wait_volume("x", "attached", Duration::from_secs(30), attached_healthy);
    let ep = endpoint(&v);
    let out = std::process::Command::new("nbdinfo")
        .args(["--size", &ep])
        .output()
        .expect("nbdinfo is required (Debian package libnbd-bin)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (128 * MIB).to_string());
    read_pattern(&ep, 0x42, 60 * MIB, 4 * MIB);
    write_pattern(&ep, 0x43, 120 * MIB, 8 * MIB);
    read_pattern(&ep, 0x43, 120 * MIB, 8 * MIB);
    q.stop();
}
