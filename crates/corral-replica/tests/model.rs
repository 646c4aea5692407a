//! Property tests: random sequences of operations against the replica and a plain in-memory model
//! (`corral_block::MemoryDisk`, one per snapshot via `duplicate()`); every read must equal the model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_block::{BlockDevice, MemoryDisk};
use corral_replica::{CreateOptions, Replica, SnapshotOptions, HEAD_NAME};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: u64, byte: u8 },
    Read { off: u64, len: u64 },
    Unmap { off: u64, len: u64 },
    WriteZeroes { off: u64, len: u64 },
    Snapshot { user: bool },
    MarkRemoved(usize),
    Purge,
    Revert(usize),
    Expand(u64),
    Flush,
    Reopen { clean: bool },
}

fn op() -> impl Strategy<Value = Op> {
    // Offsets/lengths are fractions of the current size, resolved when applied.
    prop_oneof![
        6 => (any::<u64>(), 1u64..20_000, any::<u8>()).prop_map(|(off, len, byte)| Op::Write { off, len, byte }),
        2 => (any::<u64>(), 1u64..20_000).prop_map(|(off, len)| Op::Read { off, len }),
        2 => (any::<u64>(), 1u64..40_000).prop_map(|(off, len)| Op::Unmap { off, len }),
        2 => (any::<u64>(), 1u64..40_000).prop_map(|(off, len)| Op::WriteZeroes { off, len }),
        2 => any::<bool>().prop_map(|user| Op::Snapshot { user }),
        1 => any::<usize>().prop_map(Op::MarkRemoved),
        1 => Just(Op::Purge),
        1 => any::<usize>().prop_map(Op::Revert),
        1 => (1u64..8).prop_map(Op::Expand),
        1 => Just(Op::Flush),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

struct Snap {
    data: MemoryDisk,
    removed: bool,
    user: bool,
}

struct Model {
    head: MemoryDisk,
    snaps: BTreeMap<String, Snap>,
    counter: usize,
}

fn clip(off: u64, len: u64, size: u64) -> (u64, u64) {
    let off = off % size;
    (off, len.min(size - off))
}

fn compare(replica: &Replica, model: &MemoryDisk, view: &str) -> Result<(), TestCaseError> {
    let size = replica.size();
    let mut a = vec![0u8; size as usize];
    let mut b = vec![0u8; size as usize];
    if view == HEAD_NAME {
        replica.read_at(&mut a, 0).map_err(|e| TestCaseError::fail(e.to_string()))?;
    } else {
        replica.read_snapshot_at(view, &mut a, 0).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    // A snapshot taken before an expansion is smaller; its view reads zeros past its end.
    let msize = model.size().min(size);
    model.read_at(&mut b[..msize as usize], 0).unwrap();
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        return Err(TestCaseError::fail(format!("view {view}: byte {i} is {:#x}, model {:#x}", a[i], b[i])));
    }
    Ok(())
}

fn run(ops: Vec<Op>, dir: &Path) -> Result<(), TestCaseError> {
    let initial = 64 * 1024;
    let mut replica = Some(Replica::create(dir, CreateOptions { size: initial }).unwrap());
    let mut m = Model { head: MemoryDisk::new(initial), snaps: BTreeMap::new(), counter: 0 };
    let fail = |e: corral_replica::ReplicaError| TestCaseError::fail(e.to_string());
    for op in ops {
        let r = replica.as_ref().unwrap();
        let size = r.size();
        match op {
            Op::Write { off, len, byte } => {
                let (off, len) = clip(off, len, size);
                let buf = vec![byte; len as usize];
                r.write_at(&buf, off).map_err(fail)?;
                m.head.write_at(&buf, off).unwrap();
            }
            Op::Read { off, len } => {
                let (off, len) = clip(off, len, size);
                let mut a = vec![0u8; len as usize];
                let mut b = vec![0u8; len as usize];
                r.read_at(&mut a, off).map_err(fail)?;
                m.head.read_at(&mut b, off).unwrap();
                prop_assert!(a == b, "read {}+{} differs", off, len);
            }
            Op::Unmap { off, len } => {
                let (off, len) = clip(off, len, size);
                r.unmap(off, len).map_err(fail)?;
                m.head.unmap(off, len).unwrap();
            }
            Op::WriteZeroes { off, len } => {
                let (off, len) = clip(off, len, size);
                r.write_zeroes(off, len).map_err(fail)?;
                m.head.write_zeroes(off, len).unwrap();
            }
            Op::Snapshot { user } => {
                m.counter += 1;
                let name = format!("s{}", m.counter);
                r.snapshot(&name, SnapshotOptions { user_created: user, ..Default::default() })
                    .map_err(fail)?;
                m.snaps.insert(name, Snap { data: m.head.duplicate(), removed: false, user });
            }
            Op::MarkRemoved(i) => {
                let live: Vec<String> =
                    m.snaps.iter().filter(|(_, s)| !s.removed).map(|(n, _)| n.clone()).collect();
                if !live.is_empty() {
                    let name = &live[i % live.len()];
                    r.mark_removed(name).map_err(fail)?;
                    if let Some(s) = m.snaps.get_mut(name) {
                        s.removed = true;
                    }
                }
            }
            Op::Purge => {
                r.purge(&AtomicBool::new(false), &|_, _| {}).map_err(fail)?;
                // System snapshots are removed by purge; removed ones may be gone or pruned: stop
                // checking their views.
                m.snaps.retain(|_, s| s.user && !s.removed);
                let listed: Vec<String> = r.snapshots().map_err(fail)?.into_iter().map(|s| s.name).collect();
                for name in m.snaps.keys() {
                    prop_assert!(listed.contains(name), "kept snapshot {} missing after purge", name);
                }
            }
            Op::Revert(i) => {
                let live: Vec<String> =
                    m.snaps.iter().filter(|(_, s)| !s.removed).map(|(n, _)| n.clone()).collect();
                if !live.is_empty() {
                    let name = &live[i % live.len()];
                    r.revert(name).map_err(fail)?;
                    let head = m.snaps[name].data.duplicate();
                    head.set_size(size);
                    m.head = head;
                }
            }
            Op::Expand(blocks) => {
                let new_size = size + blocks * 4096;
                r.expand(new_size).map_err(fail)?;
                m.snaps.insert(
                    format!("expand-{new_size}"),
                    Snap { data: m.head.duplicate(), removed: false, user: false },
                );
                m.head.set_size(new_size);
            }
            Op::Flush => r.flush().map_err(fail)?,
            Op::Reopen { clean } => {
                let old = replica.take().unwrap();
                if clean {
                    old.close().map_err(fail)?;
                } else {
                    drop(old);
                }
                let reopened = Replica::open(dir).map_err(fail)?;
                prop_assert_eq!(reopened.size(), m.head.size());
                replica = Some(reopened);
            }
        }
    }
    let r = replica.as_ref().unwrap();
    compare(r, &m.head, HEAD_NAME)?;
    for (name, snap) in &m.snaps {
        if !snap.removed {
            compare(r, &snap.data, name)?;
        }
    }
    let report = corral_replica::inspect::check(dir).map_err(fail)?;
    prop_assert!(report.is_ok(), "check after run: {:?}", report);
    // Everything survives a final reopen.
    let r = replica.take().unwrap();
    r.close().map_err(fail)?;
    let r = Replica::open(dir).map_err(fail)?;
    compare(&r, &m.head, HEAD_NAME)?;
    for (name, snap) in &m.snaps {
        if !snap.removed {
            compare(&r, &snap.data, name)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn replica_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        run(ops, &tmp.path().join("r"))?;
    }
}

#[test]
fn block_conformance_suite_passes_on_a_replica() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Replica::create(&tmp.path().join("r"), CreateOptions { size: 1 << 20 }).unwrap();
    corral_block::conformance::run_all(&r).unwrap_or_else(|e| panic!("{e}"));
    // And again with a snapshot under the head, so discards must shadow older data.
    let r2 = Replica::create(&tmp.path().join("r2"), CreateOptions { size: 1 << 20 }).unwrap();
    r2.snapshot("base", SnapshotOptions::default()).unwrap();
    corral_block::conformance::random_ops(&r2, 7, 400).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn unmap_never_uncovers_older_snapshot_data_even_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let r = Replica::create(&dir, CreateOptions { size: 1 << 20 }).unwrap();
    r.write_at(&[7u8; 65536], 0).unwrap();
    r.snapshot("old", SnapshotOptions { user_created: true, ..Default::default() }).unwrap();
    r.write_at(&[8u8; 65536], 0).unwrap();
    r.snapshot("removed", SnapshotOptions { user_created: true, ..Default::default() }).unwrap();
    r.mark_removed("removed").unwrap();
    r.write_at(&[9u8; 8192], 0).unwrap();
    r.unmap(0, 65536).unwrap();
    r.write_zeroes(65536, 4096).unwrap();
    let mut b = vec![1u8; 65536 + 4096];
    r.read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    r.close().unwrap();
    let r = Replica::open(&dir).unwrap();
    r.read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 0), "older data reappeared after reopen");
    let mut s = vec![0u8; 65536];
    r.read_snapshot_at("old", &mut s, 0).unwrap();
    assert!(s.iter().all(|&x| x == 7), "the kept snapshot lost data");
}

#[test]
fn concurrent_sub_block_writes_to_the_same_blocks_are_not_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let r =
        std::sync::Arc::new(Replica::create(&tmp.path().join("r"), CreateOptions { size: 1 << 20 }).unwrap());
    r.write_at(&[1u8; 65536], 0).unwrap();
    r.snapshot("base", SnapshotOptions::default()).unwrap();
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                // Thread t owns bytes [t*512, t*512+512) of every block in the first 64 KiB.
                for round in 0..50u8 {
                    for blk in 0..16u64 {
                        r.write_at(
                            &[t.wrapping_mul(31).wrapping_add(round) | 0x80; 512],
                            blk * 4096 + u64::from(t) * 512,
                        )
                        .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut b = vec![0u8; 65536];
    r.read_at(&mut b, 0).unwrap();
    for blk in 0..16usize {
        for t in 0..8usize {
            let want = (t as u8).wrapping_mul(31).wrapping_add(49) | 0x80;
            assert!(
                b[blk * 4096 + t * 512..blk * 4096 + t * 512 + 512].iter().all(|&x| x == want),
                "block {blk} part {t}"
            );
        }
    }
}
