//! `corral replica info | export | check` on the Longhorn fixture and on damaged copies of it, and
//! `corral replica serve` on a directory Longhorn wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod replica_support;

use corral_wire::ReplicaClient;
use replica_support::*;

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn info_json_shows_the_longhorn_fixture_chain_labels_and_flags() {
    let temp = tempfile::tempdir().unwrap();
    let dir = extract_fixture(temp.path());
    let output = corral(&["replica", "info", "--dir", dir.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["size"], serde_json::json!(67108864));
    assert_eq!(info["head"], serde_json::json!("volume-head-002.img"));
    assert_eq!(info["chain"], serde_json::json!(["snap2", FIXTURE_UUID_SNAPSHOT]));
    assert_eq!(info["revision"], serde_json::json!(6));
    assert_eq!(info["dirty"], serde_json::json!(false));
    let snapshots = info["snapshots"].as_array().unwrap();
    let by_name = |name: &str| {
        snapshots.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("{name} missing: {info}"))
    };
    assert_eq!(by_name(FIXTURE_UUID_SNAPSHOT)["labels"]["purpose"], "sample");
    assert_eq!(by_name("snap2")["labels"]["purpose"], "second");
    assert_eq!(by_name("snap2")["parent"], serde_json::json!(FIXTURE_UUID_SNAPSHOT));
    assert_eq!(by_name("snap2")["removed"], serde_json::json!(false));
    // info is read-only: nothing in the directory changed (Dirty stays false).
    let again = corral(&["replica", "info", "--dir", dir.to_str().unwrap(), "--json"]);
    assert_eq!(stdout(&again), stdout(&output));

    let text = corral(&["replica", "info", "--dir", dir.to_str().unwrap()]);
    assert!(text.status.success());
    let text = stdout(&text);
    assert!(text.contains("volume-head-002.img -> snap2 -> 68129740"), "{text}");
    assert!(text.contains("purpose=second"), "{text}");
}

#[test]
fn export_of_the_fixture_matches_longhorn_for_the_head_and_a_snapshot() {
    let temp = tempfile::tempdir().unwrap();
    let dir = extract_fixture(temp.path());
    let head = temp.path().join("head.raw");
    let output =
        corral(&["replica", "export", "--dir", dir.to_str().unwrap(), "--output", head.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::metadata(&head).unwrap().len(), 64 << 20);
    assert_eq!(sha256_file(&head), FIXTURE_HEAD_SHA256);
    // Sparse where the volume has no data (the fixture holds well under 2 MiB).
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&head).unwrap().blocks() * 512 < 8 << 20, "export is not sparse");

    let snap2 = temp.path().join("snap2.raw");
    let output = corral(&[
        "replica",
        "export",
        "--dir",
        dir.to_str().unwrap(),
        "--snapshot",
        "snap2",
        "--output",
        snap2.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(sha256_file(&snap2), FIXTURE_SNAP2_SHA256);

    let output = corral(&[
        "replica",
        "export",
        "--dir",
        dir.to_str().unwrap(),
        "--snapshot",
        "nope",
        "--output",
        snap2.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("nope"), "{}", stderr(&output));
}

#[test]
fn check_passes_on_the_fixture_and_names_the_damaged_file() {
    let temp = tempfile::tempdir().unwrap();
    let dir = extract_fixture(temp.path());
    let output = corral(&["replica", "check", "--dir", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    assert!(stdout(&output).contains("is consistent"), "{}", stdout(&output));

    // A snapshot's .meta truncated mid-JSON.
    let meta = dir.join("volume-snap-snap2.img.meta");
    let text = std::fs::read(&meta).unwrap();
    std::fs::write(&meta, &text[..text.len() / 2]).unwrap();
    let output = corral(&["replica", "check", "--dir", dir.to_str().unwrap()]);
    assert!(!output.status.success(), "check passed on a truncated .meta");
    assert!(stderr(&output).contains("volume-snap-snap2.img.meta"), "{}", stderr(&output));
    std::fs::write(&meta, &text).unwrap();

    // A missing layer file.
    let layer = dir.join(format!("volume-snap-{FIXTURE_UUID_SNAPSHOT}.img"));
    std::fs::rename(&layer, temp.path().join("moved.img")).unwrap();
    let output = corral(&["replica", "check", "--dir", dir.to_str().unwrap()]);
    assert!(!output.status.success(), "check passed with a layer missing");
    assert!(stderr(&output).contains(FIXTURE_UUID_SNAPSHOT), "{}", stderr(&output));
    std::fs::rename(temp.path().join("moved.img"), &layer).unwrap();

    // Garbage volume.meta.
    let volume_meta = dir.join("volume.meta");
    std::fs::write(&volume_meta, b"{\"Size\": \"not a number\"").unwrap();
    let output = corral(&["replica", "check", "--dir", dir.to_str().unwrap()]);
    assert!(!output.status.success(), "check passed on a garbage volume.meta");
    assert!(stderr(&output).contains("volume.meta"), "{}", stderr(&output));
    // serve refuses it too, with the file named, and changes nothing.
    let err = try_start_replica(&dir, None, "127.0.0.1:0").err().expect("served a corrupt replica");
    assert!(err.contains("volume.meta"), "{err}");
    assert_eq!(std::fs::read(&volume_meta).unwrap(), b"{\"Size\": \"not a number\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longhorn_replica_is_served_and_reads_like_its_export() {
    let temp = tempfile::tempdir().unwrap();
    let dir = extract_fixture(temp.path());
    let mut server = start_replica(&dir, Some("64MiB"), "127.0.0.1:0");
    let client = ReplicaClient::connect(&server.address, 2).await.unwrap();
    let facts = client.hello("engine-1", false).await.unwrap();
    assert_eq!(facts.chain, vec!["snap2".to_string(), FIXTURE_UUID_SNAPSHOT.to_string()]);
    assert_eq!(facts.revision, 6);
    let mut volume = Vec::with_capacity(64 << 20);
    for chunk in 0..16u64 {
        volume.extend_from_slice(&client.read(chunk << 22, 4 << 20).await.unwrap());
    }
    assert_eq!(sha256(&volume), FIXTURE_HEAD_SHA256);
    assert_eq!(&volume[512..1024], &[b'F'; 512][..]);
    drop(client);
    assert!(server.terminate().success());
    assert_check_passes(&dir);
}
