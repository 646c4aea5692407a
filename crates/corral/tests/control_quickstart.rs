//! End to end through `corral quickstart` with the real engine and replica processes: a replica
//! killed under I/O is rebuilt and the volume heals by itself; Ctrl-C leaves no process behind and
//! a restart brings the volume back attached with its data; a manager killed in the middle of a
//! volume creation or of a rebuild converges after a restart without duplicates or leaks.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod control_support;

use std::time::{Duration, Instant};

use control_support::*;

const MIB: u64 = 1 << 20;

fn replica_processes(data_dir: &std::path::Path) -> Vec<(u32, String)> {
    processes_mentioning(&format!("replica serve --dir {}", data_dir.display()))
}

fn replica_dirs(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir.join("disks/default/replicas")).map_or(0, |d| d.count())
}

#[test]
fn replica_killed_under_io_is_rebuilt_and_quickstart_restarts_with_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut q = start_cluster(&data);
    q.cli(&["volume", "create", "vol1", "--size", "256MiB", "--replicas", "3", "--wait"]);
    let printed = q.cli(&["volume", "attach", "vol1", "--wait"]);
    let v = q.wait_volume("vol1", "attached and healthy", Duration::from_secs(30), attached_healthy);
    let ep = endpoint(&v);
    assert_eq!(printed.trim(), ep, "attach prints the endpoint");
    assert!(ep.starts_with("nbd://127.0.0.1:"), "{ep}");
    write_pattern(&ep, 0xa1, 0, 4 * MIB);
    write_pattern(&ep, 0xb2, 200 * MIB, 4 * MIB);

    // SIGKILL one replica process; I/O goes on.
    let victim = v["replicas"][1]["name"].as_str().unwrap().to_string();
    let procs = processes_mentioning(&format!("replicas/{victim} "));
    assert_eq!(procs.len(), 1, "one process serves {victim}: {procs:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(procs[0].0 as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    write_pattern(&ep, 0xc3, 100 * MIB, 8 * MIB);
    q.wait_volume("vol1", "degraded", Duration::from_secs(20), |v| v["robustness"] == "degraded");
    // It heals by itself: the replica is restarted, rebuilt, and RW again.
    let v = q.wait_volume("vol1", "healthy again", Duration::from_secs(90), |v| {
        attached_healthy(v) && v["replicas"].as_array().unwrap().iter().all(|r| r["mode"] == "RW")
    });
    assert_eq!(v["replicas"].as_array().unwrap().len(), 3, "{v:#}");
    assert_eq!(endpoint(&v), ep, "same endpoint");
    read_pattern(&ep, 0xa1, 0, 4 * MIB);
    read_pattern(&ep, 0xc3, 100 * MIB, 8 * MIB);
    read_pattern(&ep, 0xb2, 200 * MIB, 4 * MIB);

    // Ctrl-C: everything stops, nothing is left running.
    q.stop();
    assert_no_processes(&data.display().to_string());
    // Start again on the same data dir: the volume is back, attached, with its data.
    q.restart();
    let v = q.wait_volume("vol1", "attached again", Duration::from_secs(60), attached_healthy);
    let ep = endpoint(&v);
    read_pattern(&ep, 0xa1, 0, 4 * MIB);
    read_pattern(&ep, 0xc3, 100 * MIB, 8 * MIB);
    read_pattern(&ep, 0xb2, 200 * MIB, 4 * MIB);
    q.stop();
    assert_no_processes(&data.display().to_string());
}

#[test]
fn manager_killed_during_volume_creation_converges_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut q = start_cluster(&data);
    q.cli(&["volume", "create", "v", "--size", "64MiB", "--replicas", "3"]);
    // Crash in the middle: replicas are being scheduled and started.
    std::thread::sleep(Duration::from_millis(150));
    kill_and_restart(&mut q);
    // The children died with it (parent-death signal), nothing leaked.
    let v = q.wait_volume("v", "detached and healthy", Duration::from_secs(60), |v| {
        v["state"] == "detached" && v["robustness"] == "healthy"
    });
    assert_eq!(v["replicas"].as_array().unwrap().len(), 3, "{v:#}");
    assert_eq!(replica_dirs(&data), 3, "one directory per replica");
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica_processes(&data).len() != 3 {
        assert!(Instant::now() < deadline, "replica processes: {:#?}", replica_processes(&data));
        std::thread::sleep(Duration::from_millis(100));
    }
    q.stop();
    assert_no_processes(&data.display().to_string());
}

#[test]
fn manager_killed_during_a_rebuild_converges_and_keeps_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut q = start_cluster(&data);
    q.cli(&["volume", "create", "v", "--size", "128MiB", "--replicas", "2", "--wait"]);
    q.cli(&["volume", "attach", "v", "--wait"]);
    let v = q.wait_volume("v", "attached", Duration::from_secs(30), attached_healthy);
    let ep = endpoint(&v);
    write_pattern(&ep, 0x5a, 0, 64 * MIB);
    let victim = v["replicas"][0]["name"].as_str().unwrap().to_string();
    let procs = processes_mentioning(&format!("replicas/{victim} "));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(procs[0].0 as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    // Wait for the rebuild to begin (the replica restarted and was added back), then crash.
    q.wait_volume("v", "rebuilding", Duration::from_secs(20), |v| {
        v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == victim.as_str() && r["state"] == "running")
    });
    kill_and_restart(&mut q);
    let v = q.wait_volume("v", "healthy after the restart", Duration::from_secs(90), |v| {
        attached_healthy(v) && v["replicas"].as_array().unwrap().iter().all(|r| r["mode"] == "RW")
    });
    assert_eq!(v["replicas"].as_array().unwrap().len(), 2);
    assert_eq!(replica_dirs(&data), 2);
    assert_eq!(replica_processes(&data).len(), 2, "{:#?}", replica_processes(&data));
    read_pattern(&endpoint(&v), 0x5a, 0, 64 * MIB);
    q.stop();
    assert_no_processes(&data.display().to_string());
}
