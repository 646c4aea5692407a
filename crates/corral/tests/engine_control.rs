//! The control CLI against a real engine: snapshot / revert / expand round trips checked by reading
//! through real NBD clients (qemu-io, libnbd), and clear errors for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_support;

use std::time::Duration;

use corral_testkit::nbd::export_size;
use engine_support::*;

fn stderr_of(engine: &EngineProc, args: &[&str]) -> String {
    let out = engine.cli(args);
    assert!(
        !out.status.success(),
        "corral engine {args:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `corral engine serve` that must refuse to start; returns its stderr.
fn engine_serve_error(volume: &str, replicas: &[&str]) -> String {
    let mut cmd = std::process::Command::new(CORRAL);
    cmd.args(["engine", "serve", "--volume", volume, "--size", "16MiB"]);
    cmd.args(["--nbd", "127.0.0.1:0", "--listen", "127.0.0.1:0"]);
    for r in replicas {
        cmd.args(["--replica", r]);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "engine serve {volume} {replicas:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn snapshot_revert_expand_round_trips_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let rs = replicas(dir.path(), 2, "32MiB");
    let engine = EngineProc::start("vol-ctl", "32MiB", &addresses(&rs), "127.0.0.1:0", &[]);

    let info: serde_json::Value = serde_json::from_str(&engine.cli_ok(&["info", "--json"])).unwrap();
    assert_eq!(info["volume"], "vol-ctl");
    assert_eq!(info["size"], 32u64 << 20);
    assert_eq!(info["state"], "healthy");
    assert_eq!(info["frontend"], engine.nbd.as_str());

    qemu_io(&engine.nbd, &["write -P 0x41 0 1M"]);
    assert_eq!(
        engine.cli_ok(&["snapshot", "create", "first", "--label", "app=db", "--label", "tier=gold"]).trim(),
        "first"
    );
    qemu_io(&engine.nbd, &["write -P 0x42 0 512k"]);
    let generated = engine.cli_ok(&["snapshot", "create"]).trim().to_string();
    assert_eq!(generated.len(), 36, "a UUID name: {generated}");
    qemu_io(
        &engine.nbd,
        &["write -P 0x43 0 4k", "read -P 0x43 0 4k", "read -P 0x42 4k 508k", "read -P 0x41 512k 512k"],
    );

    let list: serde_json::Value =
        serde_json::from_str(&engine.cli_ok(&["snapshot", "ls", "--json"])).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"first") && names.contains(&generated.as_str()), "{names:?}");
    let first = list.as_array().unwrap().iter().find(|s| s["name"] == "first").unwrap();
    assert_eq!(first["labels"]["app"], "db");
    assert_eq!(first["labels"]["tier"], "gold");
    assert_eq!(first["userCreated"], true);

    // Revert is refused while a client is connected, with a clear message.
    let mut reads = Workload::new();
    reads.read(0, 4096);
    let client = reads.start(&engine.nbd);
    client.wait_progress(1, Duration::from_secs(20));
    let err = stderr_of(&engine, &["revert", "first"]);
    assert!(err.contains("client") && err.contains("connected"), "{err}");
    client.stop().assert_all_ok();
    std::thread::sleep(std::time::Duration::from_millis(200));
    engine.cli_ok(&["revert", "first"]);
    qemu_io(&engine.nbd, &["read -P 0x41 0 1M", "read -P 0 1M 1M"]);

    // Remove + purge: the snapshot disappears, the data stays.
    engine.cli_ok(&["snapshot", "rm", &generated]);
    let list: serde_json::Value =
        serde_json::from_str(&engine.cli_ok(&["snapshot", "ls", "--json"])).unwrap();
    assert!(
        list.as_array().unwrap().iter().any(|s| s["name"] == generated.as_str() && s["removed"] == true),
        "{list}"
    );
    engine.cli_ok(&["snapshot", "purge"]);
    qemu_io(&engine.nbd, &["read -P 0x41 0 1M"]);

    // Expand: a reconnecting client sees the new size and can use it.
    let err = stderr_of(&engine, &["expand", "--size", "16MiB"]);
    assert!(err.contains("smaller"), "{err}");
    engine.cli_ok(&["expand", "--size", "48MiB"]);
    assert_eq!(export_size(&engine.nbd), 48 << 20);
    qemu_io(
        &engine.nbd,
        &["write -P 0x44 47M 1M", "read -P 0x44 47M 1M", "read -P 0 32M 15M", "read -P 0x41 0 1M"],
    );
    let info: serde_json::Value = serde_json::from_str(&engine.cli_ok(&["info", "--json"])).unwrap();
    assert_eq!(info["size"], 48u64 << 20);
}

#[test]
fn bad_control_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rs = replicas(dir.path(), 2, "16MiB");
    let engine = EngineProc::start("vol-bad", "16MiB", &addresses(&rs), "127.0.0.1:0", &[]);
    let err = stderr_of(&engine, &["replica", "add", &rs[0].address]);
    assert!(err.contains("already"), "{err}");
    let err = stderr_of(&engine, &["replica", "add", "nonsense"]);
    assert!(err.contains("bad replica address"), "{err}");
    let err = stderr_of(&engine, &["replica", "rm", "tcp://127.0.0.1:1"]);
    assert!(err.contains("no replica"), "{err}");
    let err = stderr_of(&engine, &["snapshot", "create", "Bad_Name"]);
    assert!(err.contains("bad name"), "{err}");
    let err = stderr_of(&engine, &["snapshot", "create", "x", "--label", "novalue"]);
    assert!(err.contains("KEY=VALUE"), "{err}");
    let err = stderr_of(&engine, &["snapshot", "rm", "missing"]);
    assert!(err.contains("no snapshot"), "{err}");
    let err = stderr_of(&engine, &["revert", "missing"]);
    assert!(err.contains("no snapshot"), "{err}");
    let err = stderr_of(&engine, &["expand", "--size", "12XB"]);
    assert!(err.contains("invalid size"), "{err}");
    let err = stderr_of(&engine, &["expand", "--size", "1000"]);
    assert!(err.contains("4096"), "{err}");
    engine.cli_ok(&["snapshot", "create", "dup"]);
    let err = stderr_of(&engine, &["snapshot", "create", "dup"]);
    assert!(err.contains("exists"), "{err}");
    engine.cli_ok(&["replica", "rm", &rs[1].address]);
    let err = stderr_of(&engine, &["replica", "rm", &rs[0].address]);
    assert!(err.contains("last healthy"), "{err}");

    // The engine refuses duplicate replicas and bad names at start.
    let err = engine_serve_error("v", &[&rs[0].address, &rs[0].address]);
    assert!(err.contains("twice"), "{err}");
    let err = engine_serve_error("Bad Volume", &[&rs[0].address]);
    assert!(err.contains("bad name"), "{err}");
    // The volume still works after all that.
    qemu_io(&engine.nbd, &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"]);
}
