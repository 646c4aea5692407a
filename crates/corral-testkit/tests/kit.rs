//! The kit's own checks: process start-up and its failures, and the libnbd workload against nbdkit's
//! memory plugin (a reference NBD server), whose bytes must match the model the plan predicts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use corral_testkit::data::{block_data, sha256};
use corral_testkit::fixtures;
use corral_testkit::nbd::{require_tool, Workload};
use corral_testkit::ports::{free_port, wait_for_port};
use corral_testkit::process::Process;

#[test]
fn a_process_is_recognised_by_its_first_line_and_a_failed_start_shows_its_stderr() {
    let (mut p, line) =
        Process::start("sh", Command::new("sh").args(["-c", "echo listening on x; sleep 60"]));
    assert_eq!(line, "listening on x");
    assert!(p.is_running());
    assert_eq!(p.terminate(Duration::from_secs(5)).and_then(|s| s.code()), None, "sh dies of SIGTERM");
    let err = Process::try_start(
        "failing",
        Command::new("sh").args(["-c", "echo oops >&2; exit 3"]),
        Duration::from_secs(5),
    )
    .err()
    .expect("a silent exit is not a start");
    assert_eq!(err.status.and_then(|s| s.code()), Some(3));
    assert!(err.stderr.contains("oops"), "{err}");
}

#[test]
fn the_fixtures_are_in_the_repository_with_their_checksums() {
    let sums = std::fs::read_to_string(fixtures::longhorn("SHA256SUMS")).unwrap();
    for name in [fixtures::REPLICA_TWO_SNAPSHOTS, fixtures::BACKUPSTORE_VFS] {
        let digest = corral_testkit::data::sha256_file(&fixtures::longhorn(name));
        assert!(sums.contains(&format!("{digest}  {name}")), "{name} does not match SHA256SUMS");
    }
}

#[test]
fn the_libnbd_workload_pipelines_over_several_connections_and_its_model_matches_the_server() {
    require_tool("nbdkit");
    let port = free_port();
    let mut server = Process::spawn(
        "nbdkit",
        Command::new("nbdkit").args(["-f", "-p", &port.to_string(), "memory", "16M"]),
    );
    wait_for_port(&mut server, port, Duration::from_secs(20));
    let uri = format!("nbd://127.0.0.1:{port}");
    let blocks = (16u64 << 20) / 4096;
    let mut plan = Workload::new();
    for b in 0..blocks {
        plan.write(b * 4096, &block_data(b, 1, 4096), b % 97 == 0);
        if b % 64 == 63 {
            plan.pipelined_flush();
        }
    }
    plan.zero(0, 8192, false).flush();
    let report = plan.run(&uri);
    report.assert_all_ok().assert_real_client(16);
    // The last flush waited for every write, so it covers them all.
    assert_eq!(report.durable_writes(&plan).len() as u64, blocks);

    let mut model = vec![0u8; 16 << 20];
    plan.apply(&mut model, report.issued.unwrap());
    let mut check = Workload::new();
    for chunk in 0..16u64 {
        check.read(chunk << 20, 1 << 20);
    }
    let read = check.run(&uri);
    read.assert_all_ok();
    for chunk in 0..16u64 {
        let want = sha256(&model[(chunk << 20) as usize..((chunk + 1) << 20) as usize]);
        assert_eq!(read.read_sha256(chunk), want, "MiB {chunk} differs from the model");
    }
}
