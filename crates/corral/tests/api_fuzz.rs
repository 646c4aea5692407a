//! The REST API fuzzed from its own OpenAPI document: schemathesis (PyPI) generates requests for
//! every documented operation of a real quickstart (examples, coverage, fuzzing and stateful
//! sequences, bounded in time) and checks each answer: no 5xx, every status and body as documented,
//! schema-violating requests refused. Afterwards the cluster's state must be consistent: every
//! listed object can be read, and the replicas the nodes account for are exactly the replicas of
//! existing volumes (nothing half-created or half-deleted left behind).
//!
//! One check is left out: `positive_data_acceptance` (a request the schema allows must be
//! accepted). The API validates more than JSON Schema can say — a volume size that is a multiple of
//! 2 MiB and not below the current size, a cron expression, a setting's value by the setting's
//! type, a backup URL's scheme — so such requests are rightly refused with 400.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use corral_testkit::cluster::TestCluster;
use serde_json::Value;

fn schemathesis() -> String {
    for candidate in ["/opt/corral-test-venv/bin/schemathesis", "schemathesis"] {
        if Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return candidate.to_string();
        }
    }
    panic!(
        "schemathesis is not installed: the API fuzz test needs it (pip install schemathesis into \
         /opt/corral-test-venv; scripts/install-test-deps does it)"
    );
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array().unwrap().iter().map(|v| v[key].as_str().unwrap().to_string()).collect()
}

/// Replica names as the volumes list them, and as the nodes' disks account for them.
fn replica_books(cluster: &TestCluster) -> (BTreeSet<String>, BTreeSet<String>) {
    let (status, volumes) = cluster.get("/v1/volumes");
    assert_eq!(status, 200, "{volumes}");
    let by_volume = volumes
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| {
            v["replicas"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string())
        })
        .collect();
    let (status, nodes) = cluster.get("/v1/nodes");
    assert_eq!(status, 200, "{nodes}");
    let by_disk = nodes
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["disks"].as_array().unwrap().iter())
        .flat_map(|d| {
            d["scheduledReplicas"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string())
        })
        .collect();
    (by_volume, by_disk)
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_mismatch_and_leaves_a_consistent_state() {
    let tool = schemathesis();
    let cluster =
        TestCluster::builder().binary(env!("CARGO_BIN_EXE_corral")).soft_anti_affinity(true).build();
    let report = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(&tool)
        .current_dir(report.path())
        .args(["run", &format!("{}/v1/openapi.json", cluster.url())])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        // The live stream never ends: it is tested by the UI tests.
        .args(["--exclude-path", "/v1/watch"])
        .args(["--max-examples", "15", "--max-time", "75", "--workers", "2", "--request-timeout", "20"])
        .args(["--generation-database", "none", "--no-color"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let summary: Vec<&str> = text.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect();
    println!("schemathesis ran {:?}:\n{}", started.elapsed(), summary.join("\n"));
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    assert!(text.contains("passed"), "schemathesis ran no test case:\n{text}");

    // The state afterwards: readable and consistent.
    let (status, health) = cluster.get("/healthz");
    assert_eq!(status, 200, "{health}");
    let (status, volumes) = cluster.get("/v1/volumes");
    assert_eq!(status, 200, "{volumes}");
    for name in names(&volumes, "name") {
        let path = format!("/v1/volumes/{}", name.replace('%', "%25"));
        let (status, v) = cluster.get(&path);
        assert!(status == 200 || status == 404, "GET {path}: {status} {v}");
        let (status, snaps) = cluster.get(&format!("{path}/snapshots"));
        assert!(status < 500, "GET {path}/snapshots: {status} {snaps}");
    }
    let (status, jobs) = cluster.get("/v1/recurringjobs");
    assert_eq!(status, 200, "{jobs}");
    for name in names(&jobs, "name") {
        let (status, j) = cluster.get(&format!("/v1/recurringjobs/{name}"));
        assert_eq!(status, 200, "listed job {name} cannot be read: {j}");
    }
    for path in ["/v1/settings", "/v1/events", "/v1/backuptarget", "/v1/nodes"] {
        let (status, body) = cluster.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    // Deleting volumes finishes in the background: give it time, then the books must agree.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (by_volume, by_disk) = replica_books(&cluster);
        if by_volume == by_disk {
            println!(
                "consistent: {} volume(s), {} replica(s)",
                names(&cluster.get("/v1/volumes").1, "name").len(),
                by_volume.len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas of volumes and replicas on disks disagree: only in volumes {:?}, only on disks {:?}",
            by_volume.difference(&by_disk).collect::<Vec<_>>(),
            by_disk.difference(&by_volume).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
