//! Crash at every named step of every multi-file operation (in-process: the operation stops at the
//! failpoint and the handle is dropped without closing, as if the process died), then reopen and check
//! that the directory holds either the old or the new state, never a broken one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_block::{BlockDevice, MemoryDisk};
use corral_replica::failpoint::ALL;
use corral_replica::{inspect, CreateOptions, Replica, SnapshotInfo, SnapshotOptions, HEAD_NAME};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;

const SIZE: u64 = 4 << 20;

fn user() -> SnapshotOptions {
    SnapshotOptions { user_created: true, ..Default::default() }
}

fn view(r: &Replica, name: &str) -> Vec<u8> {
    let mut b = vec![0u8; r.size() as usize];
    if name == HEAD_NAME {
        r.read_at(&mut b, 0).unwrap();
    } else {
        r.read_snapshot_at(name, &mut b, 0).unwrap();
    }
    b
}

fn model_bytes(m: &MemoryDisk, size: u64) -> Vec<u8> {
    let mut b = vec![0u8; size as usize];
    let n = m.size().min(size) as usize;
    m.read_at(&mut b[..n], 0).unwrap();
    b
}

fn names(r: &Replica) -> BTreeSet<String> {
    r.snapshots().unwrap().into_iter().map(|s| s.name).filter(|n| n != HEAD_NAME).collect()
}

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// After a reopen: the directory checks clean and holds no leftovers.
fn assert_clean(dir: &Path) {
    let report = inspect::check(dir).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.leftovers.is_empty(), "leftovers after a read-write open: {:?}", report.leftovers);
    let heads: Vec<String> =
        files(dir).into_iter().filter(|f| f.starts_with("volume-head-") && f.ends_with(".img")).collect();
    assert_eq!(heads.len(), 1, "{heads:?}");
}

fn fill(r: &Replica, m: &MemoryDisk, off: u64, len: usize, byte: u8) {
    r.write_at(&vec![byte; len], off).unwrap();
    m.write_at(&vec![byte; len], off).unwrap();
}

fn points(prefix: &str) -> Vec<&'static str> {
    ALL.iter().copied().filter(|p| p.starts_with(prefix)).collect()
}

#[test]
fn snapshot_and_expand_crash_at_every_step() {
    for (fp, expand) in points("snapshot.").into_iter().flat_map(|p| [(p, false), (p, true)]) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        let r = Replica::create(&dir, CreateOptions { size: SIZE }).unwrap();
        let m = MemoryDisk::new(SIZE);
        fill(&r, &m, 0, 10000, 1);
        r.snapshot("s1", user()).unwrap();
        let s1 = m.duplicate();
        fill(&r, &m, 5000, 3000, 2);
        r.flush().unwrap();
        r.arm_failpoint(fp, 1);
        let res = if expand { r.expand(SIZE * 2) } else { r.snapshot("s2", user()) };
        assert!(res.is_err(), "{fp}: the failpoint did not fire");
        drop(r);
        let r = Replica::open(&dir).unwrap_or_else(|e| panic!("{fp} expand={expand}: reopen failed: {e}"));
        assert_clean(&dir);
        let new_name = if expand { format!("expand-{}", SIZE * 2) } else { "s2".to_string() };
        let got = names(&r);
        let committed = got.contains(&new_name);
        let want: BTreeSet<String> =
            if committed { ["s1".to_string(), new_name.clone()].into() } else { ["s1".to_string()].into() };
        assert_eq!(got, want, "{fp}");
        // Commit happens at the volume.meta rename: failpoints after it must see the new state.
        assert_eq!(committed, fp == "snapshot.after_commit" || fp == "snapshot.after_cleanup", "{fp}");
        assert_eq!(r.size(), if committed && expand { SIZE * 2 } else { SIZE });
        assert_eq!(view(&r, HEAD_NAME), model_bytes(&m, r.size()), "{fp}: head");
        assert_eq!(view(&r, "s1"), model_bytes(&s1, r.size()), "{fp}: s1");
        if committed {
            assert_eq!(view(&r, &new_name), model_bytes(&m, r.size()), "{fp}: new snapshot");
            let info = r.snapshots().unwrap().into_iter().find(|s| s.name == new_name).unwrap();
            assert_eq!(info.user_created, !expand);
        }
        // The replica keeps working: write and take the snapshot again.
        fill(&r, &m, 100, 10, 3);
        if !committed {
            if expand {
                r.expand(SIZE * 2).unwrap()
            } else {
                r.snapshot("s2", user()).unwrap()
            }
        }
        assert_eq!(view(&r, HEAD_NAME), model_bytes(&m, r.size()));
        r.close().unwrap();
    }
}

#[test]
fn revert_crash_at_every_step() {
    for fp in points("revert.") {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        let r = Replica::create(&dir, CreateOptions { size: SIZE }).unwrap();
        let m = MemoryDisk::new(SIZE);
        fill(&r, &m, 0, 10000, 1);
        r.snapshot("s1", user()).unwrap();
        let s1 = m.duplicate();
        fill(&r, &m, 5000, 30000, 2);
        r.flush().unwrap();
        r.arm_failpoint(fp, 1);
        assert!(r.revert("s1").is_err(), "{fp}");
        drop(r);
        let r = Replica::open(&dir).unwrap_or_else(|e| panic!("{fp}: reopen failed: {e}"));
        assert_clean(&dir);
        let head = view(&r, HEAD_NAME);
        let old = model_bytes(&m, SIZE);
        let new = model_bytes(&s1, SIZE);
        let committed = fp != "revert.after_new_head";
        assert_eq!(head, if committed { new } else { old }, "{fp}");
        assert_eq!(view(&r, "s1"), model_bytes(&s1, SIZE));
        r.close().unwrap();
    }
}

/// A chain exercising every purge action: a removed leaf (remove), removed snapshots with a kept
/// child (coalesce), a system snapshot (marked removed by purge), a removed snapshot under the head
/// (prune). Returns the models of the snapshots that must survive.
fn purge_setup(r: &Replica, m: &MemoryDisk) -> Vec<(String, MemoryDisk)> {
    fill(r, m, 0, 3 << 20, 1);
    r.snapshot("s1", user()).unwrap();
    let s1 = m.duplicate();
    fill(r, m, 1 << 20, 8192, 9);
    r.snapshot("leaf", user()).unwrap();
    r.revert("s1").unwrap();
    let m2 = s1.duplicate();
    // Overwrite the model's head with s1 (revert).
    let mut all = vec![0u8; SIZE as usize];
    m2.read_at(&mut all, 0).unwrap();
    m.write_at(&all, 0).unwrap();
    fill(r, m, 4096, 2 << 20, 2);
    r.snapshot("s2", user()).unwrap();
    fill(r, m, 8192, 1 << 20, 3);
    r.snapshot("sys3", SnapshotOptions::default()).unwrap();
    fill(r, m, 3 << 20, 4096, 4);
    r.snapshot("s4", user()).unwrap();
    let s4 = m.duplicate();
    fill(r, m, 100, 100_000, 5);
    r.snapshot("s5", user()).unwrap();
    fill(r, m, 0, 50_000, 6);
    r.unmap(60_000, 20_000).unwrap();
    m.unmap(60_000, 20_000).unwrap();
    r.mark_removed("leaf").unwrap();
    r.mark_removed("s2").unwrap();
    r.mark_removed("s5").unwrap();
    r.flush().unwrap();
    vec![("s1".into(), s1), ("s4".into(), s4)]
}

#[test]
fn purge_crash_at_every_step() {
    let mut cases: Vec<(&str, u32)> = points("purge.").into_iter().map(|p| (p, 1)).collect();
    cases.push(("purge.coalesce.mid_copy", 3));
    cases.push(("purge.prune.mid_punch", 2));
    for (fp, nth) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        let r = Replica::create(&dir, CreateOptions { size: SIZE }).unwrap();
        let m = MemoryDisk::new(SIZE);
        let kept = purge_setup(&r, &m);
        r.arm_failpoint(fp, nth);
        assert!(r.purge(&AtomicBool::new(false), &|_, _| {}).is_err(), "{fp} #{nth}: did not fire");
        drop(r);
        let r = Replica::open(&dir).unwrap_or_else(|e| panic!("{fp}: reopen failed: {e}"));
        assert_clean(&dir);
        assert_eq!(view(&r, HEAD_NAME), model_bytes(&m, SIZE), "{fp}: head");
        for (name, model) in &kept {
            assert_eq!(view(&r, name), model_bytes(model, SIZE), "{fp}: {name}");
        }
        // Resume: a second purge completes and nothing changes in the views.
        r.purge(&AtomicBool::new(false), &|_, _| {}).unwrap();
        let got = names(&r);
        assert_eq!(
            got,
            ["s1", "s4", "s5"].iter().map(|s| s.to_string()).collect(),
            "{fp}: after resumed purge"
        );
        assert_eq!(view(&r, HEAD_NAME), model_bytes(&m, SIZE), "{fp}: head after resume");
        for (name, model) in &kept {
            assert_eq!(view(&r, name), model_bytes(model, SIZE), "{fp}: {name} after resume");
        }
        r.close().unwrap();
        let r = Replica::open(&dir).unwrap();
        assert_eq!(view(&r, HEAD_NAME), model_bytes(&m, SIZE));
        assert_clean(&dir);
    }
}

#[test]
fn purge_is_cancellable_and_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let r = Replica::create(&dir, CreateOptions { size: SIZE }).unwrap();
    let m = MemoryDisk::new(SIZE);
    let kept = purge_setup(&r, &m);
    let cancel = AtomicBool::new(false);
    let calls = std::cell::Cell::new(0u64);
    let err = r
        .purge(&cancel, &|done, _total| {
            calls.set(calls.get() + 1);
            if done >= 1 {
                cancel.store(true, std::sync::atomic::Ordering::Release);
            }
        })
        .unwrap_err();
    assert_eq!(err.kind(), corral_replica::ErrorKind::Busy);
    assert!(calls.get() >= 2);
    assert_eq!(view(&r, HEAD_NAME), model_bytes(&m, SIZE));
    r.purge(&AtomicBool::new(false), &|_, _| {}).unwrap();
    for (name, model) in &kept {
        assert_eq!(view(&r, name), model_bytes(model, SIZE), "{name}");
    }
    assert_eq!(view(&r, HEAD_NAME), model_bytes(&m, SIZE));
}

fn info(name: &str, user_created: bool) -> SnapshotInfo {
    SnapshotInfo {
        name: name.into(),
        parent: None,
        children: vec![],
        removed: false,
        user_created,
        created: "2026-01-01T00:00:00Z".into(),
        size: 0,
        labels: [("from".to_string(), "rebuild".to_string())].into(),
    }
}

/// Copies every snapshot of `src`'s live chain into `dst` with the rebuild functions.
fn copy_layers(src: &Replica, dst: &Replica) -> Vec<SnapshotInfo> {
    let mut chain = src.recovery_facts().chain;
    chain.reverse();
    let mut infos = Vec::new();
    for name in &chain {
        let i = info(name, true);
        dst.begin_layer(&i).unwrap();
        for e in src.layer_extents(name).unwrap() {
            let mut buf = vec![0u8; e.len as usize];
            src.read_layer(name, &mut buf, e.offset).unwrap();
            dst.write_layer(name, &buf, e.offset).unwrap();
            assert_eq!(
                src.layer_checksum(name, e.offset, e.len).unwrap(),
                dst.layer_checksum(name, e.offset, e.len).unwrap()
            );
        }
        infos.push(i);
    }
    infos
}

#[test]
fn finish_rebuild_crash_at_every_step() {
    let mut cases: Vec<(&str, u32)> = points("finish_rebuild.").into_iter().map(|p| (p, 1)).collect();
    cases.push(("finish_rebuild.after_meta", 2));
    for (fp, nth) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let src = Replica::create(&tmp.path().join("src"), CreateOptions { size: SIZE }).unwrap();
        let m = MemoryDisk::new(SIZE);
        fill(&src, &m, 0, 100_000, 1);
        src.snapshot("a", user()).unwrap();
        let a = m.duplicate();
        fill(&src, &m, 50_000, 100_000, 2);
        src.snapshot("b", user()).unwrap();
        let b = m.duplicate();
        let dir = tmp.path().join("dst");
        let dst = Replica::create(&dir, CreateOptions { size: SIZE }).unwrap();
        dst.set_rebuilding(true).unwrap();
        // A stale layer the source does not have: finish_rebuild must delete it.
        dst.begin_layer(&info("stale", false)).unwrap();
        let chain = copy_layers(&src, &dst);
        dst.arm_failpoint(fp, nth);
        assert!(dst.finish_rebuild(&chain).is_err(), "{fp}");
        drop(dst);
        // Every failpoint is after the intent: open must roll forward to the new chain.
        let dst = Replica::open(&dir).unwrap_or_else(|e| panic!("{fp}: reopen failed: {e}"));
        assert_clean(&dir);
        assert_eq!(dst.recovery_facts().chain, vec!["b".to_string(), "a".to_string()], "{fp}");
        assert_eq!(names(&dst), ["a", "b"].iter().map(|s| s.to_string()).collect());
        assert_eq!(view(&dst, "a"), model_bytes(&a, SIZE), "{fp}");
        assert_eq!(view(&dst, "b"), model_bytes(&b, SIZE), "{fp}");
        assert_eq!(view(&dst, HEAD_NAME), model_bytes(&b, SIZE), "{fp}");
        let listed = dst.snapshots().unwrap();
        let la = listed.iter().find(|s| s.name == "a").unwrap();
        assert_eq!(la.labels.get("from").map(String::as_str), Some("rebuild"));
        assert_eq!(listed.iter().find(|s| s.name == "b").unwrap().parent.as_deref(), Some("a"));
    }
}

/// A crash between a flush's data sync and its counter step: the data is there, the replica says it
/// was not closed cleanly, and its counter never runs ahead of what it holds.
#[test]
fn flush_crash_between_data_sync_and_counter() {
    for fp in points("flush.") {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        let r = Replica::create(&dir, CreateOptions { size: SIZE }).unwrap();
        let m = MemoryDisk::new(SIZE);
        fill(&r, &m, 0, 10000, 1);
        r.flush().unwrap();
        let flushed_revision = r.recovery_facts().revision;
        fill(&r, &m, 5000, 3000, 2);
        r.arm_failpoint(fp, 1);
        assert!(r.flush().is_err(), "{fp}: the failpoint did not fire");
        let facts = r.recovery_facts();
        assert!(facts.unflushed_writes, "{fp}: {facts:?}");
        drop(r);
        let r = Replica::open(&dir).unwrap_or_else(|e| panic!("{fp}: reopen failed: {e}"));
        assert_clean(&dir);
        let facts = r.recovery_facts();
        assert!(facts.was_dirty_at_open, "{fp}: {facts:?}");
        // The counter step never ran: the counter lags the data (safe, see the replica's flush module).
        assert_eq!(facts.revision, flushed_revision, "{fp}: {facts:?}");
        assert_eq!(view(&r, HEAD_NAME), model_bytes(&m, SIZE), "{fp}: the synced data is gone");
        // The next flush completes the step, and a clean close leaves the exact counter.
        r.flush().unwrap();
        let revision = r.recovery_facts().revision;
        r.close().unwrap();
        let r = Replica::open(&dir).unwrap();
        assert_eq!(r.recovery_facts().revision, revision, "{fp}");
        assert!(!r.recovery_facts().was_dirty_at_open, "{fp}");
    }
}
