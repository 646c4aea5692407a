//! The CLI against a quickstart cluster with real processes: snapshot, revert (in maintenance
//! mode) and expand, each checked by reading through the volume's NBD endpoint; refusals print a
//! clear error and exit non-zero.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod control_support;

use std::time::Duration;

use control_support::*;

const MIB: u64 = 1 << 20;

fn nbd_size(ep: &str) -> u64 {
    let out = std::process::Command::new("nbdinfo")
        .args(["--size", ep])
        .output()
        .expect("nbdinfo is required (Debian libnbd-bin)");
    assert!(out.status.success(), "nbdinfo: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn snapshot_revert_and_expand_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut q = start_cluster(&data);

    // Bad input: non-zero exit, a clear message, nothing created.
    let out = q.cli_output(&["volume", "create", "Bad_Name", "--size", "64MiB"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid volume name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = q.cli_output(&["volume", "create", "v", "--size", "3MiB", "--replicas", "1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("multiple of 2 MiB"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(q.cli(&["volume", "ls", "--json"]).trim(), "[]");

    q.cli(&["volume", "create", "v", "--size", "64MiB", "--replicas", "2", "--wait"]);
    let ep = q.cli(&["volume", "attach", "v", "--wait"]).trim().to_string();
    write_pattern(&ep, 0x11, 0, 2 * MIB);
    assert_eq!(q.cli(&["snapshot", "create", "v", "s1"]).trim(), "s1");
    write_pattern(&ep, 0x22, 0, 2 * MIB);
    let list: serde_json::Value = serde_json::from_str(&q.cli(&["snapshot", "ls", "v", "--json"])).unwrap();
    assert!(list.as_array().unwrap().iter().any(|s| s["name"] == "s1"), "{list:#}");
    assert!(q.cli(&["snapshot", "ls", "v"]).contains("s1"));

    // Revert is refused outside maintenance mode, and changes nothing.
    let out = q.cli_output(&["snapshot", "revert", "v", "s1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("maintenance"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    read_pattern(&ep, 0x22, 0, 2 * MIB);

    q.cli(&["volume", "detach", "v", "--wait"]);
    let ep = q.cli(&["volume", "attach", "v", "--maintenance", "--wait"]).trim().to_string();
    q.cli(&["snapshot", "revert", "v", "s1"]);
    read_pattern(&ep, 0x11, 0, 2 * MIB);

    // Expand: refused when shrinking; online otherwise, visible to a new client.
    let out = q.cli_output(&["volume", "expand", "v", "--size", "32MiB"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shrink"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    q.cli(&["volume", "expand", "v", "--size", "128MiB"]);
    q.wait_volume("v", "expanded", Duration::from_secs(30), |v| v["size"] == 128 * MIB);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while nbd_size(&ep) != 128 * MIB {
        assert!(std::time::Instant::now() < deadline, "the endpoint still shows {} bytes", nbd_size(&ep));
        std::thread::sleep(Duration::from_millis(200));
    }
    write_pattern(&ep, 0x33, 100 * MIB, MIB);
    read_pattern(&ep, 0x33, 100 * MIB, MIB);
    read_pattern(&ep, 0x11, 0, 2 * MIB);

    q.cli(&["snapshot", "rm", "v", "s1"]);
    let list: serde_json::Value = serde_json::from_str(&q.cli(&["snapshot", "ls", "v", "--json"])).unwrap();
    assert!(!list.as_array().unwrap().iter().any(|s| s["name"] == "s1" && s["removed"] == false), "{list:#}");
    read_pattern(&ep, 0x11, 0, 2 * MIB);

    // Nodes, disks, settings and jobs through the CLI.
    assert!(q.cli(&["node", "ls"]).contains("default"));
    let extra = tmp.path().join("extra-disk");
    std::fs::create_dir(&extra).unwrap();
    q.cli(&["disk", "add", "local", extra.to_str().unwrap(), "--tag", "ssd"]);
    assert!(q.cli(&["node", "ls"]).contains("extra-disk"));
    q.cli(&["disk", "rm", "local", extra.to_str().unwrap()]);
    assert!(!q.cli(&["node", "ls"]).contains("extra-disk"));
    assert!(q.cli(&["setting", "get", "replica-soft-anti-affinity"]).contains("true"));
    q.cli(&["setting", "set", "default-replica-count", "2"]);
    assert!(q.cli(&["setting", "get", "default-replica-count", "--json"]).contains("\"value\": \"2\""));
    q.cli(&[
        "job",
        "create",
        "snap5",
        "--task",
        "snapshot",
        "--cron",
        "*/5 * * * *",
        "--retain",
        "2",
        "--volume",
        "v",
    ]);
    assert!(q.cli(&["job", "ls"]).contains("snap5"));
    q.cli(&["job", "rm", "snap5"]);

    q.cli(&["volume", "detach", "v", "--wait"]);
    q.cli(&["volume", "rm", "v", "--wait"]);
    assert_eq!(q.cli(&["volume", "ls", "--json"]).trim(), "[]");
    q.stop();
    assert_no_processes(&data.display().to_string());
}
