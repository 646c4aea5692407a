//! Rebuild support (layer extents/read/write/punch/checksum, begin/finish) and backup support
//! (changed ranges, reading a snapshot's view).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_block::{BlockDevice, MemoryDisk};
use corral_replica::{CreateOptions, Extent, Replica, SnapshotInfo, SnapshotOptions, HEAD_NAME};
use std::collections::BTreeMap;

const SIZE: u64 = 8 << 20;

fn whole(r: &Replica, name: &str) -> Vec<u8> {
    let mut b = vec![0u8; SIZE as usize];
    if name == HEAD_NAME {
        r.read_at(&mut b, 0).unwrap()
    } else {
        r.read_snapshot_at(name, &mut b, 0).unwrap()
    }
    b
}

fn model(m: &MemoryDisk) -> Vec<u8> {
    let mut b = vec![0u8; SIZE as usize];
    m.read_at(&mut b, 0).unwrap();
    b
}

#[test]
fn changed_ranges_cover_exactly_the_newer_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Replica::create(&tmp.path().join("r"), CreateOptions { size: SIZE }).unwrap();
    r.write_at(&[1; 8192], 0).unwrap();
    r.write_at(&[1; 100], 1 << 20).unwrap();
    r.snapshot("a", SnapshotOptions::default()).unwrap();
    r.write_at(&[2; 4096], 4096).unwrap();
    r.write_at(&[2; 10], (2 << 20) + 5).unwrap();
    // Zeroing over data of an older layer is a change (an allocated zero range in the head); zeroing
    // where nothing lies below is not (a hole reads as zeros already).
    r.write_zeroes(1 << 20, 8192).unwrap();
    r.write_zeroes(4 << 20, 8192).unwrap();
    r.snapshot("b", SnapshotOptions::default()).unwrap();
    assert_eq!(
        r.changed_ranges(None, "a").unwrap(),
        vec![Extent { offset: 0, len: 8192 }, Extent { offset: 1 << 20, len: 4096 }]
    );
    assert_eq!(
        r.changed_ranges(Some("a"), "b").unwrap(),
        vec![
            Extent { offset: 4096, len: 4096 },
            Extent { offset: 1 << 20, len: 4096 },
            Extent { offset: 2 << 20, len: 4096 }
        ]
    );
    assert_eq!(
        r.changed_ranges(None, "b").unwrap(),
        vec![
            Extent { offset: 0, len: 8192 },
            Extent { offset: 1 << 20, len: 4096 },
            Extent { offset: 2 << 20, len: 4096 }
        ]
    );
    assert_eq!(
        r.changed_ranges(Some("b"), "a").unwrap_err().kind(),
        corral_replica::ErrorKind::InvalidArgument
    );
    // Outside the changed ranges the two views are equal.
    let va = whole(&r, "a");
    let vb = whole(&r, "b");
    let changed = r.changed_ranges(Some("a"), "b").unwrap();
    for (i, (x, y)) in va.iter().zip(&vb).enumerate() {
        let inside = changed.iter().any(|e| (i as u64) >= e.offset && (i as u64) < e.offset + e.len);
        assert!(inside || x == y, "byte {i} differs outside the changed ranges");
    }
    assert_eq!(r.layer_extents("a").unwrap(), r.changed_ranges(None, "a").unwrap());
}

#[test]
fn rebuild_copies_a_replica_exactly_and_reuses_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Replica::create(&tmp.path().join("src"), CreateOptions { size: SIZE }).unwrap();
    let m = MemoryDisk::new(SIZE);
    let w = |off: u64, len: usize, b: u8| {
        src.write_at(&vec![b; len], off).unwrap();
        m.write_at(&vec![b; len], off).unwrap();
    };
    w(0, 1 << 20, 1);
    src.snapshot(
        "a",
        SnapshotOptions {
            user_created: true,
            labels: BTreeMap::from([("k".into(), "v".into())]),
            created: None,
        },
    )
    .unwrap();
    let ma = m.duplicate();
    w(4096, 3000, 2);
    src.unmap(512 * 1024, 256 * 1024).unwrap();
    m.unmap(512 * 1024, 256 * 1024).unwrap();
    src.snapshot("b", SnapshotOptions::default()).unwrap();
    let mb = m.duplicate();
    w(6 << 20, 10, 3);

    let dst_dir = tmp.path().join("dst");
    let dst = Replica::create(&dst_dir, CreateOptions { size: SIZE }).unwrap();
    dst.set_rebuilding(true).unwrap();
    // The target receives live writes into its head meanwhile (as a WO replica does).
    dst.write_at(&[3; 10], 6 << 20).unwrap();
    let listed = src.snapshots().unwrap();
    let infos: Vec<SnapshotInfo> =
        ["a", "b"].iter().map(|n| listed.iter().find(|s| s.name == *n).unwrap().clone()).collect();
    for i in &infos {
        dst.begin_layer(i).unwrap();
        // Stale data in the target layer must be punched where the source has none.
        dst.write_layer(&i.name, &[9; 4096], 7 << 20).unwrap();
        dst.punch_layer(&i.name, 7 << 20, 4096).unwrap();
        for e in src.layer_extents(&i.name).unwrap() {
            let mut buf = vec![0u8; e.len as usize];
            src.read_layer(&i.name, &mut buf, e.offset).unwrap();
            dst.write_layer(&i.name, &buf, e.offset).unwrap();
        }
        assert_eq!(dst.layer_extents(&i.name).unwrap(), src.layer_extents(&i.name).unwrap(), "{}", i.name);
        assert_eq!(
            dst.layer_checksum(&i.name, 0, SIZE).unwrap(),
            src.layer_checksum(&i.name, 0, SIZE).unwrap()
        );
    }
    // Layers not in the live chain are not visible yet.
    assert_eq!(dst.recovery_facts().chain, Vec::<String>::new());
    dst.finish_rebuild(&infos).unwrap();
    dst.set_rebuilding(false).unwrap();
    assert_eq!(dst.recovery_facts().chain, vec!["b".to_string(), "a".to_string()]);
    assert_eq!(whole(&dst, "a"), model(&ma));
    assert_eq!(whole(&dst, "b"), model(&mb));
    assert_eq!(whole(&dst, HEAD_NAME), model(&m));
    let got = dst.snapshots().unwrap();
    let a = got.iter().find(|s| s.name == "a").unwrap();
    assert_eq!(a.labels.get("k").map(String::as_str), Some("v"));
    assert!(a.user_created);
    assert!(!got.iter().find(|s| s.name == "b").unwrap().user_created);
    dst.close().unwrap();
    let dst = Replica::open(&dst_dir).unwrap();
    assert_eq!(whole(&dst, HEAD_NAME), model(&m));
    // A resumed rebuild keeps existing layers (begin_layer is a no-op) and equal ranges compare equal.
    dst.begin_layer(&infos[0]).unwrap();
    assert_eq!(dst.layer_checksum("a", 0, SIZE).unwrap(), src.layer_checksum("a", 0, SIZE).unwrap());
    assert_eq!(dst.write_layer("a", &[1], 0).unwrap_err().kind(), corral_replica::ErrorKind::InvalidArgument);
}

#[test]
fn online_purge_while_io_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let r =
        std::sync::Arc::new(Replica::create(&tmp.path().join("r"), CreateOptions { size: SIZE }).unwrap());
    for i in 0..6u8 {
        r.write_at(&vec![i + 1; 1 << 20], u64::from(i) << 20).unwrap();
        r.snapshot(&format!("s{i}"), SnapshotOptions::default()).unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (r, stop) = (r.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let off = (n * 7 * 4096) % (1 << 20) + (7 << 20);
                r.write_at(&[0xEE; 4096], off).unwrap();
                let mut b = vec![0u8; 1 << 20];
                r.read_at(&mut b, 2 << 20).unwrap();
                assert!(b.iter().all(|&x| x == 3), "read during purge saw wrong data");
                n += 1;
            }
            n
        })
    };
    r.purge(&std::sync::atomic::AtomicBool::new(false), &|_, _| {}).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Release);
    assert!(writer.join().unwrap() > 0);
    let mut b = vec![0u8; 6 << 20];
    r.read_at(&mut b, 0).unwrap();
    for i in 0..6usize {
        assert!(b[i << 20..(i + 1) << 20].iter().all(|&x| x == i as u8 + 1), "MiB {i}");
    }
    // All system snapshots were purged; the one under the head stays, removed and pruned.
    let left: Vec<_> = r.snapshots().unwrap().into_iter().filter(|s| s.name != HEAD_NAME).collect();
    assert_eq!(left.len(), 1);
    assert!(left[0].removed);
}
