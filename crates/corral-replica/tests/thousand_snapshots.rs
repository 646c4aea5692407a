//! 1,000 snapshots on one replica: create, reopen, read, purge all but the newest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_replica::{CreateOptions, Replica, SnapshotOptions, HEAD_NAME};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

#[test]
fn one_thousand_snapshots_open_read_and_purge() {
    const N: u64 = 1000;
    const SIZE: u64 = 64 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let r = Replica::create(&dir, CreateOptions { size: SIZE }).unwrap();
    let block_of = |i: u64| (i * 37) % (SIZE / 4096);
    let t = Instant::now();
    for i in 0..N {
        let mut b = [0u8; 4096];
        b[..8].copy_from_slice(&i.to_le_bytes());
        r.write_at(&b, block_of(i) * 4096).unwrap();
        r.snapshot(&format!("snap-{i:04}"), SnapshotOptions { user_created: true, ..Default::default() })
            .unwrap();
    }
    eprintln!("created {N} snapshots in {:?}", t.elapsed());
    r.close().unwrap();
    let t = Instant::now();
    let r = Replica::open(&dir).unwrap();
    eprintln!("opened in {:?}, index {} bytes", t.elapsed(), r.index_heap_bytes());
    assert_eq!(r.recovery_facts().chain.len(), N as usize);
    let check = |r: &Replica, name: &str| {
        for i in 0..N {
            let mut b = [0u8; 8];
            if name == HEAD_NAME {
                r.read_at(&mut b, block_of(i) * 4096).unwrap()
            } else {
                r.read_snapshot_at(name, &mut b, block_of(i) * 4096).unwrap()
            }
            assert_eq!(u64::from_le_bytes(b), i, "{name}: block of snapshot {i}");
        }
    };
    check(&r, HEAD_NAME);
    // An old snapshot's view: only what was written up to it.
    let mut b = [0u8; 8];
    r.read_snapshot_at("snap-0010", &mut b, block_of(11) * 4096).unwrap();
    assert_eq!(b, [0; 8]);
    let t = Instant::now();
    for i in 0..N - 1 {
        r.mark_removed(&format!("snap-{i:04}")).unwrap();
    }
    r.purge(&AtomicBool::new(false), &|_, _| {}).unwrap();
    eprintln!("purged {} snapshots in {:?}", N - 1, t.elapsed());
    let left: Vec<String> = r.snapshots().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(left, vec![format!("snap-{:04}", N - 1), HEAD_NAME.to_string()]);
    check(&r, HEAD_NAME);
    check(&r, &format!("snap-{:04}", N - 1));
    r.close().unwrap();
    let r = Replica::open(&dir).unwrap();
    check(&r, HEAD_NAME);
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert!(files <= 8, "{files} files left");
}
