//! A recurring snapshot job against the real engine, through a real quickstart: cron every minute,
//! `retain 2`; after three runs exactly two of its snapshots remain, and the store's mirror of the
//! volume's snapshots (listed while detached) shows the same two. Takes about three minutes (see the
//! slow-timeout override in .config/nextest.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod control_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use control_support::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn job_snapshots(q: &TestCluster, volume: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(&q.cli(&["snapshot", "ls", volume, "--json"])).unwrap();
    let mut out: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["labels"]["recurring-job.corral.io"] == "every-minute")
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn recurring_snapshot_job_every_minute_keeps_retain_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut q = start_cluster(&data);
    q.cli(&["volume", "create", "j", "--size", "32MiB", "--replicas", "2", "--wait"]);
    q.cli(&["volume", "attach", "j", "--wait"]);
    let v = q.wait_volume("j", "attached", Duration::from_secs(30), attached_healthy);
    let ep = endpoint(&v);
    // A user snapshot the job must never touch.
    q.cli(&["snapshot", "create", "j", "mine"]);
    q.cli(&[
        "job",
        "create",
        "every-minute",
        "--task",
        "snapshot",
        "--cron",
        "* * * * *",
        "--retain",
        "2",
        "--volume",
        "j",
    ]);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(250);
    let mut pattern = 1u8;
    loop {
        let now = job_snapshots(&q, "j");
        assert!(now.len() <= 2, "more than retain=2 snapshots of the job: {now:?}");
        let fresh = now.iter().any(|s| !seen.contains(s));
        seen.extend(now.iter().cloned());
        if fresh {
            // Each run snapshots different data.
            write_pattern(&ep, pattern, u64::from(pattern) * MIB, MIB);
            pattern += 1;
        }
        if seen.len() >= 3 && now.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not run 3 times in time: seen {seen:?}, now {now:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
    let kept = job_snapshots(&q, "j");
    assert_eq!(kept.len(), 2);
    // The two kept are the newest ones seen (names embed the run's time).
    let newest: Vec<String> = seen.iter().rev().take(2).rev().cloned().collect();
    assert_eq!(kept, newest, "the oldest runs' snapshots were removed");
    let all: Value = serde_json::from_str(&q.cli(&["snapshot", "ls", "j", "--json"])).unwrap();
    assert!(
        all.as_array().unwrap().iter().any(|s| s["name"] == "mine"),
        "the user's snapshot stays: {all:#}"
    );

    // Detached, the list comes from the store's mirror: the same snapshots.
    q.cli(&["job", "rm", "every-minute"]);
    q.cli(&["volume", "detach", "j"]);
    q.wait_volume("j", "detached", Duration::from_secs(30), |v| v["state"] == "detached");
    assert_eq!(job_snapshots(&q, "j"), kept, "the store mirrors the engine's snapshots");
    for k in &kept {
        assert!(seen.contains(k));
    }
    q.stop();
}
