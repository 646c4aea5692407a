//! `/metrics` of a real quickstart: the Prometheus text a scraper gets, and its values moving with
//! the volume's life and its I/O.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod control_support;

use std::time::{Duration, Instant};

use control_support::*;

const MIB: u64 = 1 << 20;

fn scrape(q: &TestCluster) -> String {
    let (status, text) = q.get_text("/metrics");
    assert_eq!(status, 200, "{text}");
    text
}

fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn metrics_follow_a_volume_and_its_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut q = start_cluster(&data);
    q.cli(&["volume", "create", "m", "--size", "64MiB", "--replicas", "2", "--wait"]);
    let t = scrape(&q);
    assert!(t.contains("# TYPE corral_volume_size_bytes gauge"), "{t}");
    assert_eq!(value(&t, r#"corral_volume_size_bytes{volume="m"}"#), (64 * MIB) as f64);
    assert_eq!(value(&t, r#"corral_volume_state{volume="m",state="detached"}"#), 1.0);
    assert_eq!(value(&t, r#"corral_volume_robustness{volume="m",robustness="healthy"}"#), 1.0);
    let passes = value(&t, "corral_manager_reconcile_passes_total");
    assert!(value(&t, "corral_manager_resident_memory_bytes") > 1e6);

    q.cli(&["volume", "attach", "m", "--wait"]);
    let v = q.wait_volume("m", "attached", Duration::from_secs(30), attached_healthy);
    let ep = endpoint(&v);
    let t = scrape(&q);
    assert_eq!(value(&t, r#"corral_volume_state{volume="m",state="attached"}"#), 1.0);
    assert!(metric(&t, r#"corral_volume_state{volume="m",state="detached"}"#).is_none(), "{t}");
    let before = value(&t, r#"corral_volume_actual_size_bytes{volume="m"}"#);
    for r in v["replicas"].as_array().unwrap() {
        let series = format!(
            r#"corral_replica_rebuild_progress_percent{{volume="m",replica="{}"}}"#,
            r["name"].as_str().unwrap()
        );
        assert_eq!(value(&t, &series), 100.0, "an RW replica is fully built");
    }

    write_pattern(&ep, 0x6d, 0, 16 * MIB);
    let t = scrape(&q);
    let after = value(&t, r#"corral_volume_actual_size_bytes{volume="m"}"#);
    assert!(after >= before + (16 * MIB) as f64, "actual size {before} -> {after} after writing 16 MiB");
    assert!(value(&t, "corral_manager_reconcile_passes_total") > passes, "reconcile passes counted");

    // Expand: the size follows.
    q.cli(&["volume", "expand", "m", "--size", "128MiB"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&scrape(&q), r#"corral_volume_size_bytes{volume="m"}"#) != Some((128 * MIB) as f64) {
        assert!(Instant::now() < deadline, "size never moved to 128 MiB");
        std::thread::sleep(Duration::from_millis(200));
    }
    q.stop();
}

/// Read/write operations and bytes come from the engine's control API (`/v1/info` fields
/// `readOps`, `writeOps`, `readBytes`, `writeBytes`); IOPS and throughput derive from them.
#[test]
fn metrics_count_reads_and_writes_through_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut q = start_cluster(&data);
    q.cli(&["volume", "create", "io", "--size", "64MiB", "--replicas", "1", "--wait"]);
    q.cli(&["volume", "attach", "io", "--wait"]);
    let v = q.wait_volume("io", "attached", Duration::from_secs(30), attached_healthy);
    let ep = endpoint(&v);
    let t0 = scrape(&q);
    let w0 = metric(&t0, r#"corral_volume_write_bytes_total{volume="io"}"#).unwrap_or_else(|| {
        panic!(
            "no write counter for the volume: the engine's /v1/info does not report readOps/writeOps/readBytes/writeBytes\n{t0}"
        )
    });
    let r0 = value(&t0, r#"corral_volume_read_bytes_total{volume="io"}"#);
    let wops0 = value(&t0, r#"corral_volume_write_ops_total{volume="io"}"#);
    write_pattern(&ep, 0x11, 0, 8 * MIB);
    read_pattern(&ep, 0x11, 0, 8 * MIB);
    let t1 = scrape(&q);
    assert!(value(&t1, r#"corral_volume_write_bytes_total{volume="io"}"#) >= w0 + (8 * MIB) as f64, "{t1}");
    assert!(value(&t1, r#"corral_volume_read_bytes_total{volume="io"}"#) >= r0 + (8 * MIB) as f64, "{t1}");
    assert!(value(&t1, r#"corral_volume_write_ops_total{volume="io"}"#) > wops0, "{t1}");
    assert!(value(&t1, r#"corral_volume_write_throughput_bytes{volume="io"}"#) > 0.0, "{t1}");
    q.stop();
}
