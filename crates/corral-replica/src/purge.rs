//! Purge: reclaim the space of removed snapshots, online and interruptibly (Longhorn reference §2.3).
//!
//! 1. Every system (not user-created) snapshot is marked removed.
//! 2. Repeatedly pick one action until none is left:
//!    - **remove** a removed snapshot with no children: delete its record, then its data file;
//!    - **coalesce** a removed snapshot `P` with exactly one child `C` that is not the head (together
//!      with every removed single-child snapshot directly below `P`, so a run of removed snapshots
//!      costs one commit): `C` takes their data where `C` has none (nearest first), then `C`'s
//!      `Parent` skips them and they are deleted. The resulting
//!      directory is what Longhorn's coalesce+replace produces (the child's name and record survive,
//!      holding the merged data); we copy the parent's data into the child rather than the child's into
//!      the parent, so that removing `P` costs time proportional to `P`'s data. Snapshots whose kept
//!      child is not removed are coalesced first (top-down), so each removed layer is copied once;
//!    - **prune** a removed snapshot whose only child is the head: punch it wherever the head has data
//!      (it stays, removed, as in Longhorn);
//!    - a removed snapshot with more than one child is kept.
//!
//! Online: the copy and punch run in 1 MiB chunks under the chain's shared lock and the chunk's stripe
//! lock, so reads and writes continue; data written into `C` at blocks `C` did not have is exactly what
//! readers already saw through `P`, so it is invisible. The exclusive lock is taken only to commit.
//! Interruptible: `cancel` is checked between chunks; the copy is idempotent, so a later purge resumes.
//!
//! Crash safety of coalesce (commit = rename of `C`'s record): copy, fdatasync `C`; write the intent
//! `{"op":"coalesce","removed":[..],"child":"C"}` to `corral-state.json`; rewrite `C`'s record; delete
//! the removed snapshots' records, then their files; clear the intent. Open rolls the intent forward:
//! if `C`'s parent is no longer one of the removed snapshots, they are deleted.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::data_path::pread_full;
use crate::error::{ErrorKind, ReplicaError, Result};
use crate::format::corral_state::PendingOp;
use crate::format::disk_meta::DiskMeta;
use crate::format::names;
use crate::fsutil;
use crate::replica::{Chain, LayerId, Replica, REGION_BLOCKS};
use crate::BLOCK_SIZE;

const BS: u64 = BLOCK_SIZE;

#[derive(Debug, Clone)]
enum Action {
    Remove(LayerId),
    /// A run of removed snapshots (nearest ancestor of `child` first) merged into `child` at once.
    Coalesce {
        run: Vec<LayerId>,
        child: LayerId,
    },
    Prune(LayerId),
}

struct PurgingFlag<'a>(&'a AtomicBool);

impl Drop for PurgingFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn cancelled() -> ReplicaError {
    ReplicaError::new(ErrorKind::Busy, "purge", "purge cancelled; run it again to resume")
}

/// Splits block ranges into pieces that do not cross a stripe region boundary.
fn chunks(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s, e) in ranges {
        let mut pos = s;
        while pos < e {
            let next = ((pos / REGION_BLOCKS + 1) * REGION_BLOCKS).min(e);
            out.push((pos, next));
            pos = next;
        }
    }
    out
}

impl Replica {
    /// Reclaims the space of removed snapshots (see the module documentation). Reads and writes keep
    /// working meanwhile. `cancel` stops it between chunks (error kind `Busy`); `progress(done, total)`
    /// is called after each step.
    pub fn purge(&self, cancel: &AtomicBool, progress: &dyn Fn(u64, u64)) -> Result<()> {
        self.check_writable("purge")?;
        let Some(_purge) = self.purge_lock.try_lock() else {
            return Err(ReplicaError::new(ErrorKind::Busy, "purge", "a purge is already running"));
        };
        self.purging.store(true, Ordering::Release);
        let _flag = PurgingFlag(&self.purging);
        if self.volume.lock().rebuilding {
            return Err(ReplicaError::new(ErrorKind::Busy, "purge", "the replica is rebuilding"));
        }
        {
            let mut chain = self.chain.write();
            let mut ids: Vec<LayerId> = chain
                .layers
                .iter()
                .filter(|(&id, l)| id != chain.head && !l.meta.user_created && !l.meta.removed)
                .map(|(&id, _)| id)
                .collect();
            ids.sort_unstable();
            for id in ids {
                self.set_removed_locked(&mut chain, id)?;
            }
        }
        self.failpoints.hit("purge.after_mark_system")?;
        let total = {
            let chain = self.chain.read();
            chain.layers.iter().filter(|(&id, l)| id != chain.head && l.meta.removed).count() as u64
        };
        let mut done = 0u64;
        progress(done, total);
        let mut pruned = HashSet::new();
        loop {
            if cancel.load(Ordering::Acquire) {
                return Err(cancelled());
            }
            let action = pick(&self.chain.read(), &pruned);
            let Some(action) = action else { break };
            match action {
                Action::Remove(id) => self.purge_remove(id)?,
                Action::Coalesce { run, child } => {
                    self.purge_coalesce(&run, child, cancel)?;
                    done += run.len().saturating_sub(1) as u64;
                }
                Action::Prune(id) => {
                    self.purge_prune(id, cancel)?;
                    pruned.insert(id);
                }
            }
            done += 1;
            progress(done, total.max(done));
        }
        Ok(())
    }

    fn purge_remove(&self, id: LayerId) -> Result<()> {
        let mut chain = self.chain.write();
        let Some(layer) = chain.layers.get(&id) else { return Ok(()) };
        if !layer.meta.removed || chain.child_count(id) != 0 || id == chain.head {
            return Ok(());
        }
        let file = layer.file_name.clone();
        fsutil::remove_if_exists(&self.dir.join(names::meta_file(&file)))?;
        fsutil::fsync_dir(&self.dir)?;
        self.failpoints.hit("purge.remove.after_meta")?;
        fsutil::remove_if_exists(&self.dir.join(&file))?;
        fsutil::fsync_dir(&self.dir)?;
        chain.layers.remove(&id);
        chain.by_file.remove(&file);
        chain.derive();
        self.maps.write().extents.remove(&id);
        Ok(())
    }

    /// True if `run` (removed snapshots, nearest ancestor of `child` first) is still a chain of
    /// single-child removed snapshots directly under `child`, and `child` is not the head.
    fn coalesce_still_valid(chain: &Chain, run: &[LayerId], child: LayerId) -> bool {
        let Some(mut below) = chain.layers.get(&child) else { return false };
        if child == chain.head {
            return false;
        }
        for &id in run {
            match chain.layers.get(&id) {
                Some(p)
                    if p.meta.removed && below.meta.parent == p.file_name && chain.child_count(id) == 1 =>
                {
                    below = p
                }
                _ => return false,
            }
        }
        true
    }

    /// Copies `parent`'s blocks in `[s, e)` that `child` lacks into `child`. Caller holds the chain lock
    /// (shared with the stripes of the range, or exclusive).
    fn copy_missing(&self, chain: &Chain, parent: LayerId, child: LayerId, s: u64, e: u64) -> Result<()> {
        let todo: Vec<(u64, u64)> = {
            let maps = self.maps.read();
            let mut todo = Vec::new();
            let child_ext = maps.extents_of(child);
            maps.extents_of(parent).for_each_piece(s, e, |ps, pe, ()| todo.extend(child_ext.gaps(ps, pe)));
            todo
        };
        if todo.is_empty() {
            return Ok(());
        }
        let p = chain.layer(parent)?;
        let c = chain.layer(child)?;
        let mut buf = vec![0u8; (REGION_BLOCKS * BS) as usize];
        for &(a, b) in &todo {
            let mut pos = a;
            while pos < b {
                let n = (b - pos).min(REGION_BLOCKS);
                let chunk = &mut buf[..(n * BS) as usize];
                pread_full(&p.file, chunk, pos * BS).map_err(|err| {
                    ReplicaError::io("purge read", &self.dir.join(&p.file_name), err).with_offset(pos * BS)
                })?;
                std::os::unix::fs::FileExt::write_all_at(&c.file, chunk, pos * BS).map_err(|err| {
                    ReplicaError::io("purge write", &self.dir.join(&c.file_name), err).with_offset(pos * BS)
                })?;
                pos += n;
            }
        }
        c.dirty.store(true, Ordering::Release);
        let mut maps = self.maps.write();
        for &(a, b) in &todo {
            maps.extents_mut(child).add(a, b);
            maps.top.replace_value(a, b, parent, child);
        }
        Ok(())
    }

    fn purge_coalesce(&self, run: &[LayerId], child: LayerId, cancel: &AtomicBool) -> Result<()> {
        // Nearest ancestor first: its data wins over older ones, which only fill what is still missing.
        for &parent in run {
            let ranges: Vec<(u64, u64)> =
                self.maps.read().extents_of(parent).iter().map(|(s, e, ())| (s, e)).collect();
            for (cs, ce) in chunks(&ranges) {
                if cancel.load(Ordering::Acquire) {
                    return Err(cancelled());
                }
                let chain = self.chain.read();
                if !Self::coalesce_still_valid(&chain, run, child) {
                    return Ok(());
                }
                let _stripes = self.lock_stripes(cs, ce);
                self.copy_missing(&chain, parent, child, cs, ce)?;
                self.failpoints.hit("purge.coalesce.mid_copy")?;
            }
        }
        let mut chain = self.chain.write();
        if !Self::coalesce_still_valid(&chain, run, child) {
            return Ok(());
        }
        // Anything gained since the online pass (nothing normally) is copied now, all I/O excluded.
        for &parent in run {
            let rest: Vec<(u64, u64)> =
                self.maps.read().extents_of(parent).iter().map(|(s, e, ())| (s, e)).collect();
            for (s, e) in rest {
                self.copy_missing(&chain, parent, child, s, e)?;
            }
        }
        let mut run_files = Vec::with_capacity(run.len());
        let mut run_names = Vec::with_capacity(run.len());
        for &id in run {
            let p = chain.layer(id)?;
            run_files.push(p.file_name.clone());
            run_names.push(p.snapshot_name().unwrap_or_default().to_string());
        }
        let new_parent = match run.last() {
            Some(&oldest) => chain.layer(oldest)?.meta.parent.clone(),
            None => return Ok(()),
        };
        let (c_file, c_name, c_meta) = {
            let c = chain.layer(child)?;
            c.file.sync_data().map_err(|e| ReplicaError::io("fdatasync", &self.dir.join(&c.file_name), e))?;
            c.dirty.store(false, Ordering::Release);
            (c.file_name.clone(), c.snapshot_name().unwrap_or_default().to_string(), c.meta.clone())
        };
        self.failpoints.hit("purge.coalesce.after_copy")?;
        self.update_state(|s| s.pending = Some(PendingOp::Coalesce { removed: run_names, child: c_name }))?;
        self.failpoints.hit("purge.coalesce.after_intent")?;
        let new_meta = DiskMeta { parent: new_parent, ..c_meta };
        let committed =
            fsutil::atomic_write(&self.dir, &names::meta_file(&c_file), &new_meta.to_bytes(), 0o644);
        if let Err(e) = committed {
            self.poisoned.store(true, Ordering::Release);
            return Err(e);
        }
        if let Some(c) = chain.layers.get_mut(&child) {
            c.meta = new_meta;
        }
        {
            let mut maps = self.maps.write();
            for &parent in run {
                let ranges: Vec<(u64, u64)> =
                    maps.extents_of(parent).iter().map(|(s, e, ())| (s, e)).collect();
                maps.extents.remove(&parent);
                for (s, e) in ranges {
                    maps.top.replace_value(s, e, parent, child);
                }
            }
        }
        for (&id, file) in run.iter().zip(&run_files) {
            chain.layers.remove(&id);
            chain.by_file.remove(file);
        }
        chain.derive();
        self.failpoints.hit("purge.coalesce.after_commit")?;
        for file in &run_files {
            fsutil::remove_if_exists(&self.dir.join(names::meta_file(file)))?;
        }
        for file in &run_files {
            fsutil::remove_if_exists(&self.dir.join(file))?;
        }
        fsutil::fsync_dir(&self.dir)?;
        self.failpoints.hit("purge.coalesce.after_delete")?;
        self.update_state(|s| s.pending = None)
    }

    fn purge_prune(&self, id: LayerId, cancel: &AtomicBool) -> Result<()> {
        // The head's extents are taken before its fdatasync, so every block punched below is shadowed
        // by durable head data.
        let (child, ranges) = {
            let chain = self.chain.read();
            let child = chain.head;
            if !chain.layers.get(&id).is_some_and(|l| l.meta.removed)
                || chain.children.get(&id) != Some(&vec![child])
            {
                return Ok(());
            }
            let maps = self.maps.read();
            let head_ext = maps.extents_of(child);
            let mut ranges = Vec::new();
            maps.extents_of(id).for_each_piece(0, u64::MAX, |s, e, ()| {
                head_ext.for_each_piece(s, e, |hs, he, ()| ranges.push((hs, he)));
            });
            let head = chain.head_layer();
            head.file
                .sync_data()
                .map_err(|e| ReplicaError::io("fdatasync", &self.dir.join(&head.file_name), e))?;
            (child, ranges)
        };
        for (cs, ce) in chunks(&ranges) {
            if cancel.load(Ordering::Acquire) {
                return Err(cancelled());
            }
            let chain = self.chain.read();
            if !chain.layers.get(&id).is_some_and(|l| l.meta.removed)
                || chain.children.get(&id) != Some(&vec![child])
            {
                return Ok(());
            }
            let _stripes = self.lock_stripes(cs, ce);
            let layer = chain.layer(id)?;
            fsutil::punch_hole(&layer.file, cs * BS, (ce - cs) * BS).map_err(|e| {
                ReplicaError::io("punch hole", &self.dir.join(&layer.file_name), e).with_offset(cs * BS)
            })?;
            layer.dirty.store(true, Ordering::Release);
            self.maps.write().extents_mut(id).clear(cs, ce);
            self.failpoints.hit("purge.prune.mid_punch")?;
        }
        Ok(())
    }
}

fn pick(chain: &Chain, pruned: &HashSet<LayerId>) -> Option<Action> {
    let mut ids: Vec<LayerId> = chain
        .layers
        .iter()
        .filter(|(&id, l)| id != chain.head && l.meta.removed)
        .map(|(&id, _)| id)
        .collect();
    ids.sort_unstable();
    let only_child = |id: LayerId| match chain.children.get(&id).map(Vec::as_slice) {
        Some([c]) => Some(*c),
        _ => None,
    };
    if let Some(&id) = ids.iter().find(|&&id| chain.child_count(id) == 0) {
        return Some(Action::Remove(id));
    }
    let coalescable = |prefer_kept: bool| {
        ids.iter().find_map(|&id| {
            let c = only_child(id)?;
            let kept = !chain.layers.get(&c)?.meta.removed;
            (c != chain.head && (kept || !prefer_kept)).then_some((id, c))
        })
    };
    let extend = |(first, child): (LayerId, LayerId)| {
        // Every removed single-child ancestor directly below joins the run: one commit for all.
        let mut run = vec![first];
        let mut cur = first;
        while let Some(&p) = chain.layers.get(&cur).and_then(|l| chain.by_file.get(&l.meta.parent)) {
            match chain.layers.get(&p) {
                Some(l) if l.meta.removed && chain.child_count(p) == 1 && !run.contains(&p) => {
                    run.push(p);
                    cur = p;
                }
                _ => break,
            }
        }
        Action::Coalesce { run, child }
    };
    if let Some(pair) = coalescable(true).or_else(|| coalescable(false)) {
        return Some(extend(pair));
    }
    ids.iter()
        .find(|&&id| only_child(id) == Some(chain.head) && !pruned.contains(&id))
        .map(|&id| Action::Prune(id))
}
