//! Bad input: each gets a clear error naming the file or request, changes nothing on disk, and never
//! panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_replica::{inspect, CreateOptions, ErrorKind, Replica, SnapshotInfo, SnapshotOptions};
use std::collections::BTreeMap;
use std::path::Path;

/// All files of a directory with their bytes.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// A closed replica with a chain s1 <- s2 <- head.
fn sample(dir: &Path) {
    let r = Replica::create(dir, CreateOptions { size: 1 << 20 }).unwrap();
    r.write_at(&[1; 4096], 0).unwrap();
    r.snapshot("s1", SnapshotOptions::default()).unwrap();
    r.write_at(&[2; 4096], 4096).unwrap();
    r.snapshot("s2", SnapshotOptions::default()).unwrap();
    r.close().unwrap();
}

/// Damages the directory with `damage`, then checks that open fails naming `file`, changes nothing,
/// and that `check` reports it naming the same file.
fn expect_rejected(damage: impl Fn(&Path), file: &str, kind: ErrorKind) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    sample(&dir);
    damage(&dir);
    let before = contents(&dir);
    for read_only in [false, true] {
        let err = if read_only { Replica::open_read_only(&dir) } else { Replica::open(&dir) }.unwrap_err();
        assert_eq!(err.kind(), kind, "{file}: {err}");
        assert!(err.to_string().contains(file), "error does not name {file}: {err}");
    }
    assert_eq!(contents(&dir), before, "{file}: open changed the directory");
    let report = inspect::check(&dir).unwrap();
    assert!(!report.is_ok(), "{file}: check found nothing");
    assert!(
        report.problems.iter().any(|p| p.file.to_string_lossy().contains(file)),
        "{file}: check does not name it: {report:?}"
    );
    assert!(inspect::info(&dir).is_err());
    assert!(inspect::export(&dir, None, &tmp.path().join("out")).is_err());
    assert_eq!(contents(&dir), before, "{file}: tools changed the directory");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
fn corrupt_or_truncated_volume_meta() {
    for bytes in [&b""[..], b"{\"Size\":1048576,\"Head\":\"volume-he", b"garbage", b"{\"Size\":\"big\"}"] {
        expect_rejected(|d| write(d, "volume.meta", bytes), "volume.meta", ErrorKind::Corrupt);
    }
}

#[test]
fn backing_images_are_refused_not_ignored() {
    expect_open_refused(
        |d| {
            let m = std::fs::read_to_string(d.join("volume.meta")).unwrap();
            write(
                d,
                "volume.meta",
                m.replace("\"BackingFilePath\":\"\"", "\"BackingFilePath\":\"/img\"").as_bytes(),
            );
        },
        "volume.meta",
        ErrorKind::InvalidArgument,
    );
}

/// Like `expect_rejected` for a directory that is consistent but not supported.
fn expect_open_refused(damage: impl Fn(&Path), file: &str, kind: ErrorKind) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    sample(&dir);
    damage(&dir);
    let before = contents(&dir);
    for read_only in [false, true] {
        let err = if read_only { Replica::open_read_only(&dir) } else { Replica::open(&dir) }.unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains(file), "{err}");
    }
    assert_eq!(contents(&dir), before);
}

#[test]
fn corrupt_disk_meta() {
    for bytes in [&b""[..], b"{\"Parent\":\"volume-snap-s1.img\",\"Removed\":", b"{\"Removed\":1}"] {
        expect_rejected(
            |d| write(d, "volume-snap-s2.img.meta", bytes),
            "volume-snap-s2.img.meta",
            ErrorKind::Corrupt,
        );
    }
}

#[test]
fn corrupt_revision_counter() {
    for bytes in [&b""[..], b"12x", &[0u8; 4096]] {
        expect_rejected(|d| write(d, "revision.counter", bytes), "revision.counter", ErrorKind::Corrupt);
    }
}

#[test]
fn missing_layer_files() {
    expect_rejected(
        |d| std::fs::remove_file(d.join("volume-snap-s1.img")).unwrap(),
        "volume-snap-s1.img",
        ErrorKind::Corrupt,
    );
    expect_rejected(
        |d| std::fs::remove_file(d.join("volume-head-002.img")).unwrap(),
        "volume-head-002.img",
        ErrorKind::Corrupt,
    );
    expect_rejected(
        |d| std::fs::remove_file(d.join("volume-head-002.img.meta")).unwrap(),
        "volume-head-002.img.meta",
        ErrorKind::Corrupt,
    );
}

#[test]
fn chain_loop_and_dangling_parent() {
    expect_rejected(
        |d| {
            let m = std::fs::read_to_string(d.join("volume-snap-s1.img.meta")).unwrap();
            write(
                d,
                "volume-snap-s1.img.meta",
                m.replace("\"Parent\":\"\"", "\"Parent\":\"volume-snap-s2.img\"").as_bytes(),
            );
        },
        "volume-snap-s",
        ErrorKind::Corrupt,
    );
    expect_rejected(
        |d| {
            let m = std::fs::read_to_string(d.join("volume-snap-s2.img.meta")).unwrap();
            write(
                d,
                "volume-snap-s2.img.meta",
                m.replace("volume-snap-s1.img", "volume-snap-gone.img").as_bytes(),
            );
        },
        "volume-snap-s2.img.meta",
        ErrorKind::Corrupt,
    );
    // A parent name that tries to leave the directory.
    expect_rejected(
        |d| {
            let m = std::fs::read_to_string(d.join("volume-snap-s2.img.meta")).unwrap();
            write(
                d,
                "volume-snap-s2.img.meta",
                m.replace("volume-snap-s1.img", "../../etc/passwd").as_bytes(),
            );
        },
        "volume-snap-s2.img.meta",
        ErrorKind::Corrupt,
    );
}

#[test]
fn not_a_replica_directory() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(Replica::open(tmp.path()).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(Replica::open(&tmp.path().join("absent")).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    sample(&tmp.path().join("r"));
    assert_eq!(
        Replica::create(&tmp.path().join("r"), CreateOptions { size: 1 << 20 }).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        Replica::create(&tmp.path().join("x"), CreateOptions { size: 1000 }).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn io_beyond_the_end_and_bad_names_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    sample(&dir);
    let r = Replica::open(&dir).unwrap();
    r.flush().unwrap();
    let before = contents(&dir);
    let size = r.size();
    for e in [
        r.write_at(&[1; 10], size - 5).unwrap_err(),
        r.write_at(&[1; 1], u64::MAX).unwrap_err(),
        r.read_at(&mut [0; 10], size).unwrap_err(),
        r.unmap(size - 4096, 8192).unwrap_err(),
        r.write_zeroes(u64::MAX, 2).unwrap_err(),
        r.read_snapshot_at("s1", &mut [0; 2], size - 1).unwrap_err(),
        r.read_layer("s1", &mut [0; 2], size - 1).unwrap_err(),
        r.layer_checksum("s1", size, 1).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::OutOfRange, "{e}");
        assert!(e.to_string().contains("beyond the volume end"), "{e}");
    }
    for bad in ["a/b", "..", "../x", "a..b", "", "volume-head", "UPPER"] {
        assert_eq!(
            r.snapshot(bad, SnapshotOptions::default()).unwrap_err().kind(),
            ErrorKind::InvalidArgument,
            "{bad}"
        );
        assert!(matches!(
            r.revert(bad).unwrap_err().kind(),
            ErrorKind::NotFound | ErrorKind::InvalidArgument
        ));
        assert!(matches!(
            r.mark_removed(bad).unwrap_err().kind(),
            ErrorKind::NotFound | ErrorKind::InvalidArgument
        ));
        let info = SnapshotInfo {
            name: bad.into(),
            parent: None,
            children: vec![],
            removed: false,
            user_created: false,
            created: String::new(),
            size: 0,
            labels: BTreeMap::new(),
        };
        assert_eq!(r.begin_layer(&info).unwrap_err().kind(), ErrorKind::InvalidArgument, "{bad}");
        assert!(r.write_layer(bad, &[0; 1], 0).is_err());
    }
    assert_eq!(r.snapshot("s1", SnapshotOptions::default()).unwrap_err().kind(), ErrorKind::AlreadyExists);
    assert_eq!(r.revert("nope").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(r.expand(size - 4096).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(r.expand(size + 1).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        r.write_layer("s1", &[0; 1], 0).unwrap_err().kind(),
        ErrorKind::InvalidArgument,
        "live layer written while not rebuilding"
    );
    // Only volume.meta's Dirty flag differs from the closed state, and that was set at open.
    assert_eq!(contents(&dir), before);
    let ro = Replica::open_read_only(&dir).unwrap();
    assert_eq!(ro.write_at(&[1], 0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(ro.snapshot("x", SnapshotOptions::default()).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(contents(&dir), before);
}

#[test]
fn dirty_flag_and_recovery_facts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    sample(&dir);
    let vm = || std::fs::read_to_string(dir.join("volume.meta")).unwrap();
    assert!(vm().contains("\"Dirty\":false"));
    let r = Replica::open(&dir).unwrap();
    assert!(vm().contains("\"Dirty\":true"));
    let f = r.recovery_facts();
    assert!(f.dirty && !f.was_dirty_at_open && !f.unflushed_writes);
    assert_eq!(f.chain, vec!["s2".to_string(), "s1".to_string()]);
    assert_eq!(f.revision, 2);
    r.write_at(&[5; 10], 0).unwrap();
    assert!(r.recovery_facts().unflushed_writes, "a write after the last flush is not reported");
    r.unmap(8192, 4096).unwrap();
    r.write_zeroes(0, 1).unwrap();
    assert_eq!(r.recovery_facts().revision, 5);
    // Persisted at flush, not per write.
    assert_eq!(&std::fs::read(dir.join("revision.counter")).unwrap()[..2], b"2\0");
    r.flush().unwrap();
    assert_eq!(&std::fs::read(dir.join("revision.counter")).unwrap()[..2], b"5\0");
    assert!(!r.recovery_facts().unflushed_writes, "a flush did not clear unflushed_writes");
    r.set_generation(9).unwrap();
    assert!(std::fs::read_to_string(dir.join("corral-state.json")).unwrap().contains("\"generation\":9"));
    r.set_rebuilding(true).unwrap();
    assert!(vm().contains("\"Rebuilding\":true"));
    r.set_revision(100).unwrap();
    drop(r); // no clean close
    let r = Replica::open(&dir).unwrap();
    let f = r.recovery_facts();
    assert!(f.was_dirty_at_open && f.rebuilding && !f.unflushed_writes);
    assert_eq!((f.revision, f.generation), (100, 9));
    r.set_rebuilding(false).unwrap();
    r.close().unwrap();
    assert!(vm().contains("\"Dirty\":false"));
}
