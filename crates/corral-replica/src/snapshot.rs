//! Snapshot, revert, expand, mark-removed and listing.
//!
//! # Snapshot steps (crash-safe; commit = rename of `volume.meta`)
//! 1. fdatasync the head (the snapshot's content is durable before it exists).
//! 2. Create the new head `volume-head-<next>.img`, truncate to the size, fsync.
//! 3. Write its record (`Parent` = the new snapshot): tmp, fsync, rename.
//! 4. Hard-link the old head to `volume-snap-<name>.img`.
//! 5. Write the snapshot's record with its final fields (`Name` = old head file, Longhorn's quirk);
//!    fsync the directory once (steps 2–5 become durable together).
//! 6. **Commit**: rewrite `volume.meta` (`Head`, `Parent`, `Size`, `Dirty`), tmp+fsync+rename+dir fsync.
//! 7. Delete the old head's name and record (not fsync'd: a lost unlink leaves a stale head).
//!
//! Before 6 the directory opens as before (the new head is a stale head, the link shares the head's
//! inode: both are removed at open); after 6 it opens as after (the old head is a stale head).
//! Longhorn's own order rewrites the snapshot's record after the commit; we write it before so that a
//! crash cannot leave a committed snapshot without its labels.
//!
//! # Revert steps (commit = rename of `volume.meta`)
//! 1. Create the new head with `Parent` = target, and its record. 2. **Commit** `volume.meta`.
//! 3. Delete the old head.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::error::{ErrorKind, ReplicaError, Result};
use crate::failpoint::is_failpoint;
use crate::format::disk_meta::DiskMeta;
use crate::format::names;
use crate::fsutil;
use crate::replica::{now_rfc3339, Chain, LayerId, Replica};
use crate::{validate_name, SnapshotInfo, SnapshotOptions, BLOCK_SIZE, HEAD_NAME};

/// Removes `file` and its record if they exist (leftovers of a failed attempt; nothing refers to them).
fn remove_layer_files(dir: &Path, file: &str) -> Result<()> {
    fsutil::remove_if_exists(&dir.join(names::meta_file(file)))?;
    fsutil::remove_if_exists(&dir.join(file))
}

/// Creates the empty head file `name` of `size` bytes (replacing leftovers of a failed attempt) and
/// makes it durable; its record and the directory entry are made durable by the caller.
fn create_head_file(dir: &Path, name: &str, size: u64) -> Result<std::fs::File> {
    remove_layer_files(dir, name)?;
    let path = dir.join(name);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| ReplicaError::io("create head", &path, e))?;
    f.set_len(size).map_err(|e| ReplicaError::io("truncate head", &path, e))?;
    f.sync_all().map_err(|e| ReplicaError::io("fsync head", &path, e))?;
    Ok(f)
}

/// Label Longhorn puts on expansion snapshots.
pub const EXPANSION_LABEL: &str = "replica-expansion";

impl Replica {
    /// Takes a snapshot named `name` of the current head.
    pub fn snapshot(&self, name: &str, opts: SnapshotOptions) -> Result<()> {
        self.check_writable("snapshot")?;
        validate_name(name)?;
        let mut chain = self.chain.write();
        let created = opts.created.clone().unwrap_or_else(now_rfc3339);
        self.snapshot_locked(&mut chain, name, opts.user_created, opts.labels, created, None)
    }

    fn snapshot_locked(
        &self,
        chain: &mut Chain,
        name: &str,
        user_created: bool,
        labels: BTreeMap<String, String>,
        created: String,
        new_size: Option<u64>,
    ) -> Result<()> {
        let snap_file = names::snapshot_file(name);
        if chain.by_file.contains_key(&snap_file) {
            return Err(ReplicaError::new(
                ErrorKind::AlreadyExists,
                "snapshot",
                format!("snapshot {name:?} already exists"),
            ));
        }
        let dir = self.dir.clone();
        let old_head_id = chain.head;
        let (old_head_file, old_head_parent) = {
            let h = chain.head_layer();
            h.file.sync_data().map_err(|e| ReplicaError::io("fdatasync", &dir.join(&h.file_name), e))?;
            (h.file_name.clone(), h.meta.parent.clone())
        };
        let size = new_size.unwrap_or_else(|| self.size());
        let new_head_file = names::next_head_file(&old_head_file);
        let snap_meta = DiskMeta {
            name: old_head_file.clone(),
            parent: old_head_parent,
            removed: false,
            user_created,
            created: created.clone(),
            labels,
        };
        let head_meta = DiskMeta {
            name: new_head_file.clone(),
            parent: snap_file.clone(),
            created,
            ..Default::default()
        };
        let fp = &self.failpoints;
        let prepared = (|| -> Result<std::fs::File> {
            // Leftovers of an earlier failed attempt would make link() fail; they are not referenced.
            remove_layer_files(&dir, &snap_file)?;
            let f = create_head_file(&dir, &new_head_file, size)?;
            fp.hit("snapshot.after_new_head")?;
            // The new files need not be durable one by one: nothing refers to them until the commit,
            // and one directory fsync before it makes them all durable.
            fsutil::replace_file(&dir, &names::meta_file(&new_head_file), &head_meta.to_bytes(), 0o644)?;
            fp.hit("snapshot.after_new_head_meta")?;
            std::fs::hard_link(dir.join(&old_head_file), dir.join(&snap_file))
                .map_err(|e| ReplicaError::io("link snapshot", &dir.join(&snap_file), e))?;
            fp.hit("snapshot.after_link")?;
            fsutil::replace_file(&dir, &names::meta_file(&snap_file), &snap_meta.to_bytes(), 0o644)?;
            fsutil::fsync_dir(&dir)?;
            fp.hit("snapshot.after_snap_meta")?;
            Ok(f)
        })();
        let new_file = match prepared {
            Ok(f) => f,
            Err(e) => {
                if !is_failpoint(&e) {
                    self.rollback_files(&[&new_head_file, &snap_file]);
                }
                return Err(e);
            }
        };
        self.commit(|v| {
            v.head = new_head_file.clone();
            v.parent = snap_file.clone();
            v.size = size as i64;
            v.dirty = true;
        })?;
        // Committed: from here on the in-memory state must follow, whatever happens to the cleanup.
        if let Some(old) = chain.layers.get_mut(&old_head_id) {
            old.file_name = snap_file.clone();
            old.meta = snap_meta;
        }
        chain.by_file.remove(&old_head_file);
        chain.by_file.insert(snap_file, old_head_id);
        let new_id = chain.insert_layer(new_head_file, head_meta, new_file);
        chain.head = new_id;
        chain.derive();
        self.maps.write().extents.insert(new_id, Default::default());
        self.size.store(size, Ordering::Release);
        self.failpoints.hit("snapshot.after_commit")?;
        // No directory fsync: if these unlinks are lost in a crash, the old head is a stale head that
        // the next open removes.
        fsutil::remove_if_exists(&dir.join(names::meta_file(&old_head_file)))?;
        fsutil::remove_if_exists(&dir.join(&old_head_file))?;
        self.failpoints.hit("snapshot.after_cleanup")?;
        Ok(())
    }

    /// Rewrites `volume.meta` as the commit point of a multi-file operation. If that fails, whether the
    /// rename reached the disk is unknown, so the handle refuses further writes until reopened.
    fn commit(&self, update: impl FnOnce(&mut crate::format::volume_meta::VolumeMeta)) -> Result<()> {
        self.update_volume_meta(update).inspect_err(|_| self.poisoned.store(true, Ordering::Release))
    }

    /// Best-effort removal of files of an operation that failed before its commit.
    fn rollback_files(&self, files: &[&str]) {
        for f in files {
            let _ = fsutil::remove_if_exists(&self.dir.join(names::meta_file(f)));
            let _ = fsutil::remove_if_exists(&self.dir.join(f));
        }
        let _ = fsutil::fsync_dir(&self.dir);
    }

    /// Grows the volume to `new_size` (a multiple of 4096): takes the system snapshot
    /// `expand-<new_size>` (label `replica-expansion`) and a new head of the new size, as Longhorn does.
    pub fn expand(&self, new_size: u64) -> Result<()> {
        self.check_writable("expand")?;
        let size = self.size();
        if new_size % BLOCK_SIZE != 0 || new_size < size || new_size > i64::MAX as u64 {
            return Err(ReplicaError::new(
                ErrorKind::InvalidArgument,
                "expand",
                format!(
                    "new size {new_size} must be a multiple of 4096 and at least the current size {size}"
                ),
            ));
        }
        if new_size == size {
            return Ok(());
        }
        let mut chain = self.chain.write();
        let labels = BTreeMap::from([(EXPANSION_LABEL.to_string(), new_size.to_string())]);
        self.snapshot_locked(
            &mut chain,
            &format!("expand-{new_size}"),
            false,
            labels,
            now_rfc3339(),
            Some(new_size),
        )
    }

    /// Replaces the head with a new empty head on top of snapshot `name`. Snapshots newer than `name`
    /// stay, as another branch.
    pub fn revert(&self, name: &str) -> Result<()> {
        self.check_writable("revert")?;
        let mut chain = self.chain.write();
        let target = chain.snapshot_id(name)?;
        if chain.layer(target)?.meta.removed {
            return Err(ReplicaError::new(
                ErrorKind::InvalidArgument,
                "revert",
                format!("snapshot {name:?} is removed"),
            ));
        }
        let dir = self.dir.clone();
        let old_head_id = chain.head;
        let old_head_file = chain.head_layer().file_name.clone();
        let new_head_file = names::next_head_file(&old_head_file);
        let target_file = chain.layer(target)?.file_name.clone();
        let size = self.size();
        let head_meta = DiskMeta {
            name: new_head_file.clone(),
            parent: target_file.clone(),
            created: now_rfc3339(),
            ..Default::default()
        };
        let fp = &self.failpoints;
        let prepared = (|| -> Result<std::fs::File> {
            let f = create_head_file(&dir, &new_head_file, size)?;
            fsutil::replace_file(&dir, &names::meta_file(&new_head_file), &head_meta.to_bytes(), 0o644)?;
            fsutil::fsync_dir(&dir)?;
            fp.hit("revert.after_new_head")?;
            Ok(f)
        })();
        let new_file = match prepared {
            Ok(f) => f,
            Err(e) => {
                if !is_failpoint(&e) {
                    self.rollback_files(&[&new_head_file]);
                }
                return Err(e);
            }
        };
        self.commit(|v| {
            v.head = new_head_file.clone();
            v.parent = target_file.clone();
            v.dirty = true;
        })?;
        chain.layers.remove(&old_head_id);
        chain.by_file.remove(&old_head_file);
        let new_id = chain.insert_layer(new_head_file, head_meta, new_file);
        chain.head = new_id;
        chain.derive();
        {
            let mut maps = self.maps.write();
            maps.extents.remove(&old_head_id);
            maps.extents.insert(new_id, Default::default());
            maps.rebuild_top(&chain.live);
        }
        self.failpoints.hit("revert.after_commit")?;
        fsutil::remove_if_exists(&dir.join(names::meta_file(&old_head_file)))?;
        fsutil::remove_if_exists(&dir.join(&old_head_file))?;
        fsutil::fsync_dir(&dir)?;
        self.failpoints.hit("revert.after_cleanup")?;
        Ok(())
    }

    /// Marks snapshot `name` removed (its space is reclaimed by [`Replica::purge`]).
    pub fn mark_removed(&self, name: &str) -> Result<()> {
        self.check_writable("mark removed")?;
        let mut chain = self.chain.write();
        let id = chain.snapshot_id(name)?;
        self.set_removed_locked(&mut chain, id)
    }

    pub(crate) fn set_removed_locked(&self, chain: &mut Chain, id: LayerId) -> Result<()> {
        let layer = chain
            .layers
            .get_mut(&id)
            .ok_or_else(|| ReplicaError::new(ErrorKind::NotFound, "mark removed", "layer vanished"))?;
        if layer.meta.removed {
            return Ok(());
        }
        let meta = DiskMeta { removed: true, ..layer.meta.clone() };
        fsutil::atomic_write(&self.dir, &names::meta_file(&layer.file_name), &meta.to_bytes(), 0o644)?;
        layer.meta = meta;
        Ok(())
    }

    /// The snapshot tree: every snapshot plus the head (named `volume-head`), sorted by creation time
    /// then name.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let chain = self.chain.read();
        let display = |id: LayerId| -> Option<String> {
            let l = chain.layers.get(&id)?;
            Some(if id == chain.head { HEAD_NAME.to_string() } else { l.snapshot_name()?.to_string() })
        };
        let mut out = Vec::with_capacity(chain.layers.len());
        for (&id, layer) in &chain.layers {
            let Some(name) = display(id) else { continue };
            let size = layer
                .file
                .metadata()
                .map_err(|e| ReplicaError::io("stat", &self.dir.join(&layer.file_name), e))?
                .blocks()
                * 512;
            let mut children: Vec<String> =
                chain.children.get(&id).into_iter().flatten().filter_map(|&c| display(c)).collect();
            children.sort();
            out.push(SnapshotInfo {
                name,
                parent: names::snapshot_name_of_file(&layer.meta.parent).map(str::to_string),
                children,
                removed: layer.meta.removed,
                user_created: layer.meta.user_created,
                created: layer.meta.created.clone(),
                size,
                labels: layer.meta.labels.clone(),
            });
        }
        out.sort_by(|a, b| {
            (a.name == HEAD_NAME, &a.created, &a.name).cmp(&(b.name == HEAD_NAME, &b.created, &b.name))
        });
        Ok(out)
    }
}
