//! Rebuild support (copying layers between replicas) and backup support (changed ranges, reading a
//! snapshot's view).
//!
//! A rebuild target first gets each missing layer with [`Replica::begin_layer`] (a snapshot file and
//! record outside the live chain), fills it with [`Replica::write_layer`]/[`Replica::punch_layer`], and
//! finally installs the source's chain with [`Replica::finish_rebuild`].
//!
//! # finish_rebuild steps (commit = intent in `corral-state.json`, rolled forward at open)
//! 1. fdatasync every layer written. 2. Write the intent `{"op":"finish_rebuild","chain":[..]}`.
//! 3. Rewrite each chain layer's record root first (`Parent` = the previous one). 4. Point the head's
//!    record and `volume.meta` at the last one. 5. Delete every snapshot not in the chain.
//! 6. Clear the intent. Steps 3–5 are idempotent, so open re-runs them if the intent is present.

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use crate::data_path::pread_full;
use crate::error::{ErrorKind, ReplicaError, Result};
use crate::format::corral_state::{ChainEntry, PendingOp};
use crate::format::disk_meta::DiskMeta;
use crate::format::names;
use crate::fsutil;
use crate::range_map::RangeMap;
use crate::replica::{blocks_of, Chain, LayerId, Replica};
use crate::scan;
use crate::{validate_name, Extent, SnapshotInfo, BLOCK_SIZE, HEAD_NAME};

const BS: u64 = BLOCK_SIZE;

fn to_extents(set: &RangeMap<()>) -> Vec<Extent> {
    set.iter().map(|(s, e, ())| Extent { offset: s * BS, len: (e - s) * BS }).collect()
}

impl Replica {
    /// The layer of snapshot `name`; `volume-head` names the head.
    fn layer_id(&self, chain: &Chain, name: &str) -> Result<LayerId> {
        if name == HEAD_NAME {
            return Ok(chain.head);
        }
        chain.snapshot_id(name)
    }

    /// Allocated byte ranges of snapshot `snapshot`'s file (4 KiB granular; from FIEMAP at open and
    /// kept up to date; unwritten extents left by a power cut count as holes, see `fsutil::fiemap`).
    pub fn layer_extents(&self, snapshot: &str) -> Result<Vec<Extent>> {
        let chain = self.chain.read();
        let id = chain.snapshot_id(snapshot)?;
        let maps = self.maps.read();
        Ok(to_extents(maps.extents_of(id)))
    }

    fn check_layer_range(&self, op: &'static str, off: u64, len: u64) -> Result<()> {
        self.check_range(op, off, len)
    }

    /// Raw bytes of snapshot `snapshot`'s file (holes and bytes past its end read as zeros).
    pub fn read_layer(&self, snapshot: &str, buf: &mut [u8], off: u64) -> Result<()> {
        self.check_layer_range("read layer", off, buf.len() as u64)?;
        let chain = self.chain.read();
        let layer = chain.layer(chain.snapshot_id(snapshot)?)?;
        pread_full(&layer.file, buf, off)
            .map_err(|e| ReplicaError::io("read layer", &self.dir.join(&layer.file_name), e).with_offset(off))
    }

    /// SHA-256 of the raw bytes `[off, off+len)` of snapshot `snapshot`'s file.
    pub fn layer_checksum(&self, snapshot: &str, off: u64, len: u64) -> Result<[u8; 32]> {
        self.check_layer_range("layer checksum", off, len)?;
        let chain = self.chain.read();
        let layer = chain.layer(chain.snapshot_id(snapshot)?)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; (1 << 20).min(len as usize)];
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(buf.len() as u64) as usize;
            pread_full(&layer.file, &mut buf[..n], off + pos).map_err(|e| {
                ReplicaError::io("layer checksum", &self.dir.join(&layer.file_name), e).with_offset(off + pos)
            })?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        Ok(hasher.finalize().into())
    }

    /// Rebuild target: creates `volume-snap-<name>.img` and its record outside the live chain, or keeps
    /// an existing layer of that name (a resumed rebuild reuses its data).
    pub fn begin_layer(&self, info: &SnapshotInfo) -> Result<()> {
        self.check_writable("begin layer")?;
        validate_name(&info.name)?;
        if self.purging.load(Ordering::Acquire) {
            return Err(ReplicaError::new(ErrorKind::Busy, "begin layer", "a purge is running"));
        }
        let mut chain = self.chain.write();
        let file = names::snapshot_file(&info.name);
        if chain.by_file.contains_key(&file) {
            return Ok(());
        }
        let path = self.dir.join(&file);
        // Data file first: a crash before the record leaves an orphan that open deletes.
        fsutil::remove_if_exists(&path)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ReplicaError::io("create layer", &path, e))?;
        f.set_len(self.size()).map_err(|e| ReplicaError::io("truncate layer", &path, e))?;
        f.sync_all().map_err(|e| ReplicaError::io("fsync layer", &path, e))?;
        let meta = DiskMeta {
            name: file.clone(),
            parent: String::new(),
            removed: info.removed,
            user_created: info.user_created,
            created: info.created.clone(),
            labels: info.labels.clone(),
        };
        fsutil::atomic_write(&self.dir, &names::meta_file(&file), &meta.to_bytes(), 0o644)?;
        let id = chain.insert_layer(file, meta, f);
        chain.derive();
        self.maps.write().extents.insert(id, RangeMap::new());
        Ok(())
    }

    fn writable_layer(&self, chain: &Chain, op: &'static str, snapshot: &str) -> Result<LayerId> {
        let id = chain.snapshot_id(snapshot)?;
        if chain.live.contains(&id) && !self.volume.lock().rebuilding {
            return Err(ReplicaError::new(
                ErrorKind::InvalidArgument,
                op,
                format!("snapshot {snapshot:?} is in the live chain and the replica is not rebuilding"),
            ));
        }
        Ok(id)
    }

    /// Recomputes the live owners of blocks `[s, e)` from the extent sets (after a layer changed).
    fn recompute_top(&self, chain: &Chain, s: u64, e: u64) {
        let mut maps = self.maps.write();
        let pieces = view_pieces(&maps, &chain.live, s, e);
        for (ps, pe, owner) in pieces {
            maps.top.set(ps, pe, owner);
        }
    }

    /// Raw write into a layer begun by [`Replica::begin_layer`] (or any layer while rebuilding).
    pub fn write_layer(&self, snapshot: &str, buf: &[u8], off: u64) -> Result<()> {
        self.check_writable("write layer")?;
        self.check_layer_range("write layer", off, buf.len() as u64)?;
        let chain = self.chain.read();
        let id = self.writable_layer(&chain, "write layer", snapshot)?;
        let (s, e) = blocks_of(off, buf.len() as u64);
        let _stripes = self.lock_stripes(s, e);
        let layer = chain.layer(id)?;
        layer.file.write_all_at(buf, off).map_err(|err| {
            ReplicaError::io("write layer", &self.dir.join(&layer.file_name), err).with_offset(off)
        })?;
        layer.dirty.store(true, Ordering::Release);
        self.maps.write().extents_mut(id).add(s, e);
        if chain.live.contains(&id) {
            self.recompute_top(&chain, s, e);
        }
        Ok(())
    }

    /// Punches a hole in a layer begun by [`Replica::begin_layer`] (or any layer while rebuilding).
    pub fn punch_layer(&self, snapshot: &str, off: u64, len: u64) -> Result<()> {
        self.check_writable("punch layer")?;
        self.check_layer_range("punch layer", off, len)?;
        let chain = self.chain.read();
        let id = self.writable_layer(&chain, "punch layer", snapshot)?;
        let (s, e) = blocks_of(off, len);
        let _stripes = self.lock_stripes(s, e);
        let layer = chain.layer(id)?;
        fsutil::punch_hole(&layer.file, off, len).map_err(|err| {
            ReplicaError::io("punch layer", &self.dir.join(&layer.file_name), err).with_offset(off)
        })?;
        layer.dirty.store(true, Ordering::Release);
        // Only whole blocks become holes; a partly punched block stays allocated.
        let (ws, we) = (off.div_ceil(BS), (off + len) / BS);
        if ws < we {
            self.maps.write().extents_mut(id).clear(ws, we);
        }
        if chain.live.contains(&id) {
            self.recompute_top(&chain, s, e);
        }
        Ok(())
    }

    /// Makes the snapshot chain under the head exactly `chain` (root first), deletes every other
    /// snapshot, and rebuilds the index. Crash-safe (see the module documentation).
    pub fn finish_rebuild(&self, chain_infos: &[SnapshotInfo]) -> Result<()> {
        self.check_writable("finish rebuild")?;
        if self.purging.load(Ordering::Acquire) {
            return Err(ReplicaError::new(ErrorKind::Busy, "finish rebuild", "a purge is running"));
        }
        let mut chain = self.chain.write();
        let mut seen = BTreeSet::new();
        for info in chain_infos {
            chain.snapshot_id(&info.name)?;
            if !seen.insert(info.name.as_str()) {
                return Err(ReplicaError::new(
                    ErrorKind::InvalidArgument,
                    "finish rebuild",
                    format!("snapshot {:?} appears twice in the chain", info.name),
                ));
            }
        }
        for layer in chain.layers.values() {
            if layer.dirty.swap(false, Ordering::AcqRel) {
                layer
                    .file
                    .sync_data()
                    .map_err(|e| ReplicaError::io("fdatasync", &self.dir.join(&layer.file_name), e))?;
            }
        }
        let entries: Vec<ChainEntry> = chain_infos
            .iter()
            .map(|i| ChainEntry {
                name: i.name.clone(),
                removed: i.removed,
                user_created: i.user_created,
                created: i.created.clone(),
                labels: i.labels.clone(),
            })
            .collect();
        self.update_state(|s| s.pending = Some(PendingOp::FinishRebuild { chain: entries.clone() }))?;
        self.failpoints.hit("finish_rebuild.after_intent")?;
        let metas = chain.layers.values().map(|l| (l.file_name.clone(), l.meta.clone())).collect();
        let volume = self.volume.lock().clone();
        let fp = &self.failpoints;
        let applied = scan::apply_chain_with(&self.dir, &volume, &metas, &entries, &mut |step| fp.hit(step));
        if let Err(e) = applied {
            self.poisoned.store(true, Ordering::Release);
            return Err(e);
        }
        self.update_state(|s| s.pending = None)?;
        self.reload_locked(&mut chain)
    }

    /// Byte ranges (4 KiB granular) whose owning layer in the view of snapshot `to` is newer than
    /// snapshot `from` (`None` = every range with data). `from` must be an ancestor of `to`.
    pub fn changed_ranges(&self, from: Option<&str>, to: &str) -> Result<Vec<Extent>> {
        let chain = self.chain.read();
        let to_id = self.layer_id(&chain, to)?;
        let ancestry = chain.ancestry(to_id);
        let layers: &[LayerId] = match from {
            None => &ancestry,
            Some(f) => {
                let from_id = chain.snapshot_id(f)?;
                let Some(pos) = ancestry.iter().position(|&id| id == from_id) else {
                    return Err(ReplicaError::new(
                        ErrorKind::InvalidArgument,
                        "changed ranges",
                        format!("snapshot {f:?} is not an ancestor of {to:?}"),
                    ));
                };
                &ancestry[..pos]
            }
        };
        let maps = self.maps.read();
        let mut union = RangeMap::new();
        for &id in layers {
            for (s, e, ()) in maps.extents_of(id).iter() {
                union.add(s, e);
            }
        }
        Ok(to_extents(&union))
    }

    /// Reads the volume as of snapshot `snapshot` (`volume-head` = the live view).
    pub fn read_snapshot_at(&self, snapshot: &str, buf: &mut [u8], off: u64) -> Result<()> {
        self.check_range("read snapshot", off, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let chain = self.chain.read();
        let id = self.layer_id(&chain, snapshot)?;
        let view = chain.ancestry(id);
        let (s, e) = blocks_of(off, buf.len() as u64);
        let pieces = view_pieces(&self.maps.read(), &view, s, e);
        self.read_pieces(&chain, &pieces, buf, off)
    }

    /// Byte ranges holding data in the view of `snapshot` (for sparse export).
    pub(crate) fn view_data_ranges(&self, snapshot: &str) -> Result<Vec<Extent>> {
        let chain = self.chain.read();
        let id = self.layer_id(&chain, snapshot)?;
        let maps = self.maps.read();
        let mut union = RangeMap::new();
        for id in chain.ancestry(id) {
            for (s, e, ()) in maps.extents_of(id).iter() {
                union.add(s, e);
            }
        }
        Ok(to_extents(&union))
    }
}

/// Owners of blocks `[s, e)` in the view of `layers` (newest first), gaps as `None`, in order.
pub(crate) fn view_pieces(
    maps: &crate::replica::Maps,
    layers: &[LayerId],
    s: u64,
    e: u64,
) -> Vec<(u64, u64, Option<LayerId>)> {
    let mut out = Vec::new();
    let mut gaps = vec![(s, e)];
    for &id in layers {
        if gaps.is_empty() {
            break;
        }
        let ext = maps.extents_of(id);
        let mut next = Vec::new();
        for (gs, ge) in gaps {
            let mut pos = gs;
            ext.for_each_piece(gs, ge, |ps, pe, ()| {
                if ps > pos {
                    next.push((pos, ps));
                }
                out.push((ps, pe, Some(id)));
                pos = pe;
            });
            if pos < ge {
                next.push((pos, ge));
            }
        }
        gaps = next;
    }
    out.extend(gaps.into_iter().map(|(a, b)| (a, b, None)));
    out.sort_unstable_by_key(|p| p.0);
    out
}
