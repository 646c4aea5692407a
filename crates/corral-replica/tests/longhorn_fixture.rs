//! The Longhorn-written fixture opens, exports to the documented SHA-256, and Corral's metadata files
//! have Longhorn's keys, order and types.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_replica::{inspect, CreateOptions, Replica, SnapshotOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use corral_testkit::data::sha256_file;
use corral_testkit::fixtures::{extract_longhorn_replica, HEAD_SHA256, UUID_SNAPSHOT as SNAP1};

/// The fixture replica (from the repository's tests/fixtures/longhorn) in a fresh temporary directory.
fn extract() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = extract_longhorn_replica(tmp.path());
    (tmp, dir)
}

#[test]
fn fixture_opens_and_exports_to_the_documented_sha256() {
    let (tmp, dir) = extract();
    let before: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with("meta"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    let out = tmp.path().join("head.raw");
    inspect::export(&dir, None, &out).unwrap();
    assert_eq!(sha256_file(&out), HEAD_SHA256);
    // Sparse: only data ranges were written (a few blocks, not 64 MiB).
    let md = std::fs::metadata(&out).unwrap();
    assert_eq!(md.len(), 64 << 20);
    assert!(std::os::unix::fs::MetadataExt::blocks(&md) * 512 < 4 << 20, "export is not sparse");
    // Read-only tools changed nothing.
    for (name, bytes) in &before {
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name} changed");
    }

    // Snapshot views: after step 6 (snap2) and after step 3 (the UUID snapshot).
    let r = Replica::open_read_only(&dir).unwrap();
    let mut b = vec![0u8; 4096];
    r.read_snapshot_at("snap2", &mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == b'A'));
    r.read_snapshot_at("snap2", &mut b, 4096).unwrap();
    assert!(b.iter().all(|&x| x == b'C'));
    r.read_snapshot_at("snap2", &mut b, 8 << 20).unwrap();
    assert!(b.iter().all(|&x| x == b'D'));
    r.read_snapshot_at(SNAP1, &mut b, 8 << 20).unwrap();
    assert!(b.iter().all(|&x| x == b'B'));
    r.read_snapshot_at(SNAP1, &mut b, 4096).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    // Head: block 0 is A/F/A, 32 MiB holds E.
    r.read_at(&mut b, 0).unwrap();
    assert!(
        b[..512].iter().all(|&x| x == b'A')
            && b[512..1024].iter().all(|&x| x == b'F')
            && b[1024..].iter().all(|&x| x == b'A')
    );
    r.read_at(&mut b, 32 << 20).unwrap();
    assert!(b.iter().all(|&x| x == b'E'));
}

#[test]
fn fixture_chain_labels_and_flags_read_correctly() {
    let (_tmp, dir) = extract();
    let info = inspect::info(&dir).unwrap();
    assert_eq!(info.size, 64 << 20);
    assert_eq!(info.head, "volume-head-002.img");
    assert_eq!(info.chain, vec!["snap2".to_string(), SNAP1.to_string()]);
    assert_eq!(info.revision, 6);
    assert!(!info.dirty);
    assert!(!info.rebuilding);
    let by_name: BTreeMap<_, _> = info.snapshots.iter().map(|s| (s.name.as_str(), s)).collect();
    assert_eq!(by_name.len(), 3);
    let s1 = by_name[SNAP1];
    assert_eq!(s1.parent, None);
    assert_eq!(s1.children, vec!["snap2".to_string()]);
    assert!(s1.user_created && !s1.removed);
    assert_eq!(s1.labels, BTreeMap::from([("purpose".to_string(), "sample".to_string())]));
    assert_eq!(s1.created, "2026-11-26T15:47:00Z");
    assert_eq!(s1.size, 1028 * 1024); // 4 KiB of A + 1 MiB of B
    let s2 = by_name["snap2"];
    assert_eq!(s2.parent.as_deref(), Some(SNAP1));
    assert_eq!(s2.children, vec!["volume-head".to_string()]);
    assert_eq!(s2.labels.get("purpose").map(String::as_str), Some("second"));
    let head = by_name["volume-head"];
    assert_eq!(head.parent.as_deref(), Some("snap2"));
    assert!(!head.user_created);
    let report = inspect::check(&dir).unwrap();
    assert!(report.is_ok(), "{report:?}");
    // JSON output for `--json`.
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["chain"][0], "snap2");
}

#[test]
fn fixture_opens_read_write_and_keeps_longhorn_bytes() {
    let (_tmp, dir) = extract();
    let snap_meta_before = std::fs::read(dir.join("volume-snap-snap2.img.meta")).unwrap();
    let r = Replica::open(&dir).unwrap();
    // Open sets Dirty durably and changes nothing else in volume.meta.
    let vm = std::fs::read_to_string(dir.join("volume.meta")).unwrap();
    assert_eq!(
        vm,
        "{\"Size\":67108864,\"Head\":\"volume-head-002.img\",\"Dirty\":true,\"Rebuilding\":false,\"Error\":\"\",\"Parent\":\"volume-snap-snap2.img\",\"SectorSize\":512,\"BackingFilePath\":\"\",\"Encrypted\":false}\n"
    );
    r.write_at(&[b'G'; 100], 10).unwrap();
    r.snapshot(
        "snap3",
        SnapshotOptions {
            user_created: true,
            labels: BTreeMap::from([("k".into(), "v".into())]),
            created: Some("2026-11-26T16:00:00Z".into()),
        },
    )
    .unwrap();
    r.close().unwrap();
    assert_eq!(std::fs::read(dir.join("volume-snap-snap2.img.meta")).unwrap(), snap_meta_before);
    // The head number follows Longhorn's sequence; the snapshot record keeps the old head's name.
    assert_eq!(
        std::fs::read_to_string(dir.join("volume-snap-snap3.img.meta")).unwrap(),
        "{\"Name\":\"volume-head-002.img\",\"Parent\":\"volume-snap-snap2.img\",\"Removed\":false,\"UserCreated\":true,\"Created\":\"2026-11-26T16:00:00Z\",\"Labels\":{\"k\":\"v\"}}\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("volume-head-003.img.meta")).unwrap(),
        "{\"Name\":\"volume-head-003.img\",\"Parent\":\"volume-snap-snap3.img\",\"Removed\":false,\"UserCreated\":false,\"Created\":\"2026-11-26T16:00:00Z\",\"Labels\":null}\n"
    );
    assert!(!dir.join("volume-head-002.img").exists());
    let vm = std::fs::read_to_string(dir.join("volume.meta")).unwrap();
    assert!(vm.starts_with("{\"Size\":67108864,\"Head\":\"volume-head-003.img\",\"Dirty\":false,"), "{vm}");
    let rc = std::fs::read(dir.join("revision.counter")).unwrap();
    assert_eq!(rc.len(), 4096);
    assert_eq!(&rc[..2], b"7\0");
}

/// Keys, their order and JSON types of every object in a file.
fn shape(bytes: &[u8]) -> Vec<(String, &'static str)> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "not one line + newline: {text:?}");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let t = match v {
                serde_json::Value::Null => "null-or-object",
                serde_json::Value::Bool(_) => "bool",
                serde_json::Value::Number(_) => "number",
                serde_json::Value::String(_) => "string",
                serde_json::Value::Array(_) => "array",
                serde_json::Value::Object(_) => "null-or-object",
            };
            (k.clone(), t)
        })
        .collect()
}

#[test]
fn corral_metadata_has_longhorns_keys_order_and_types() {
    let (_tmp, fixture) = extract();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("r");
    let r = Replica::create(&dir, CreateOptions { size: 64 << 20 }).unwrap();
    r.snapshot(
        SNAP1,
        SnapshotOptions {
            user_created: true,
            labels: BTreeMap::from([("purpose".into(), "sample".into())]),
            created: Some("2026-11-26T15:47:00Z".into()),
        },
    )
    .unwrap();
    r.snapshot(
        "snap2",
        SnapshotOptions {
            user_created: true,
            labels: BTreeMap::from([("purpose".into(), "second".into())]),
            created: Some("2026-11-26T15:47:05Z".into()),
        },
    )
    .unwrap();
    r.close().unwrap();
    let names = [
        "volume.meta".to_string(),
        "volume-head-002.img.meta".to_string(),
        format!("volume-snap-{SNAP1}.img.meta"),
        "volume-snap-snap2.img.meta".to_string(),
    ];
    for name in &names {
        let ours = std::fs::read(dir.join(name)).unwrap();
        let theirs = std::fs::read(fixture.join(name)).unwrap();
        assert_eq!(shape(&ours), shape(&theirs), "{name}");
        // Same operations with the same names and times: the bytes must be equal too.
        assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap(), "{name}");
    }
    // Same file set (plus Corral's own state file).
    let list = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "corral-state.json")
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(&dir), list(&fixture));
    assert_eq!(std::fs::read(dir.join("revision.counter")).unwrap().len(), 4096);
}
