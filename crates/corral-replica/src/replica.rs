//! The [`Replica`] handle: open/create/close, the in-memory layer table, recovery facts.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{ErrorKind, ReplicaError, Result};
use crate::failpoint::Failpoints;
use crate::flush::FlushGroup;
use crate::format::corral_state::{self, CorralState};
use crate::format::disk_meta::DiskMeta;
use crate::format::names;
use crate::format::revision_counter;
use crate::format::volume_meta::{self, VolumeMeta};
use crate::fsutil;
use crate::range_map::RangeMap;
use crate::scan;
use crate::{CreateOptions, RecoveryFacts, BLOCK_SIZE};

/// Stable in-memory identifier of a layer (survives renames such as head → snapshot).
pub(crate) type LayerId = u32;

/// Hasher for [`LayerId`] keys: ids are small distinct integers, so the id itself is a good hash
/// (SipHash would cost more than the whole index lookup on the read path).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by layer id.
pub(crate) type IdMap<V> = HashMap<LayerId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Number of stripe locks serialising writes to the same 1 MiB regions.
pub(crate) const STRIPES: usize = 64;
/// Blocks per stripe region (1 MiB).
pub(crate) const REGION_BLOCKS: u64 = 256;

/// One layer file (the head or a snapshot).
#[derive(Debug)]
pub(crate) struct Layer {
    /// `volume-head-NNN.img` or `volume-snap-<name>.img`.
    pub file_name: String,
    /// Its record.
    pub meta: DiskMeta,
    /// The open data file.
    pub file: File,
    /// Written or punched since the last fdatasync.
    pub dirty: AtomicBool,
}

impl Layer {
    /// Snapshot name, or `None` for the head.
    pub fn snapshot_name(&self) -> Option<&str> {
        names::snapshot_name_of_file(&self.file_name)
    }
}

/// The structure of the layers. Guarded by `Replica::chain`.
#[derive(Debug)]
pub(crate) struct Chain {
    pub layers: IdMap<Layer>,
    pub by_file: HashMap<String, LayerId>,
    pub head: LayerId,
    /// Live chain, head first.
    pub live: Vec<LayerId>,
    pub children: IdMap<Vec<LayerId>>,
    pub next_id: LayerId,
}

impl Chain {
    /// Recomputes `live` and `children` from the records' parent pointers.
    pub fn derive(&mut self) {
        self.children = self.layers.keys().map(|&id| (id, Vec::new())).collect();
        let mut ids: Vec<LayerId> = self.layers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let parent = &self.layers[&id].meta.parent;
            if let Some(&p) = self.by_file.get(parent) {
                if let Some(c) = self.children.get_mut(&p) {
                    c.push(id);
                }
            }
        }
        self.live.clear();
        let mut cur = Some(self.head);
        while let Some(id) = cur {
            if self.live.contains(&id) || self.live.len() > self.layers.len() {
                break;
            }
            self.live.push(id);
            cur = self.layers.get(&id).and_then(|l| self.by_file.get(&l.meta.parent).copied());
        }
    }

    /// Adds a layer for `file_name` (not yet reachable unless a record points at it) and returns its id.
    pub fn insert_layer(&mut self, file_name: String, meta: DiskMeta, file: std::fs::File) -> LayerId {
        let id = self.next_id;
        self.next_id += 1;
        self.by_file.insert(file_name.clone(), id);
        self.layers.insert(id, Layer { file_name, meta, file, dirty: AtomicBool::new(false) });
        id
    }

    pub fn layer(&self, id: LayerId) -> Result<&Layer> {
        self.layers.get(&id).ok_or_else(|| {
            ReplicaError::new(ErrorKind::Corrupt, "lookup layer", format!("layer id {id} vanished"))
        })
    }

    pub fn head_layer(&self) -> &Layer {
        // `head` is always present: every structural change installs the new head before switching.
        match self.layers.get(&self.head) {
            Some(l) => l,
            None => unreachable_layer(),
        }
    }

    /// The layer of snapshot `name`.
    pub fn snapshot_id(&self, name: &str) -> Result<LayerId> {
        if names::is_safe_existing_name(name) {
            if let Some(&id) = self.by_file.get(&names::snapshot_file(name)) {
                return Ok(id);
            }
        }
        Err(ReplicaError::new(
            ErrorKind::NotFound,
            "lookup snapshot",
            format!("snapshot {name:?} does not exist"),
        ))
    }

    pub fn child_count(&self, id: LayerId) -> usize {
        self.children.get(&id).map_or(0, Vec::len)
    }

    /// The chain of `id` (itself first, root last).
    pub fn ancestry(&self, id: LayerId) -> Vec<LayerId> {
        let mut out = Vec::new();
        let mut cur = Some(id);
        while let Some(c) = cur {
            if out.contains(&c) || out.len() > self.layers.len() {
                break;
            }
            out.push(c);
            cur = self.layers.get(&c).and_then(|l| self.by_file.get(&l.meta.parent).copied());
        }
        out
    }
}

#[cold]
fn unreachable_layer() -> ! {
    // The head id is always in the table (see `Chain::head_layer`); reaching this is a bug in this
    // crate, not an input or I/O condition.
    panic!("corral-replica: head layer missing from the layer table")
}

/// Read index and extent sets. Guarded by `Replica::maps`.
#[derive(Debug, Default)]
pub(crate) struct Maps {
    /// Owner of each block in the live chain.
    pub top: RangeMap<LayerId>,
    /// Allocated blocks of every layer.
    pub extents: IdMap<RangeMap<()>>,
}

impl Maps {
    pub fn extents_of(&self, id: LayerId) -> &RangeMap<()> {
        static EMPTY: std::sync::OnceLock<RangeMap<()>> = std::sync::OnceLock::new();
        self.extents.get(&id).unwrap_or_else(|| EMPTY.get_or_init(RangeMap::new))
    }

    pub fn extents_mut(&mut self, id: LayerId) -> &mut RangeMap<()> {
        self.extents.entry(id).or_default()
    }

    /// Rebuilds `top` for the live chain `live` (head first).
    pub fn rebuild_top(&mut self, live: &[LayerId]) {
        let mut top = RangeMap::new();
        for &id in live.iter().rev() {
            for (s, e, ()) in self.extents_of(id).iter() {
                top.insert(s, e, id);
            }
        }
        self.top = top;
    }

    /// Heap bytes of the index and extent sets (approximate).
    pub fn heap_bytes(&self) -> usize {
        self.top.heap_bytes() + self.extents.values().map(RangeMap::heap_bytes).sum::<usize>()
    }
}

/// A replica directory opened for I/O. See the crate documentation.
#[derive(Debug)]
pub struct Replica {
    pub(crate) dir: PathBuf,
    pub(crate) read_only: bool,
    pub(crate) chain: RwLock<Chain>,
    pub(crate) maps: RwLock<Maps>,
    pub(crate) volume: Mutex<VolumeMeta>,
    pub(crate) state: Mutex<CorralState>,
    pub(crate) stripes: Box<[Mutex<()>]>,
    pub(crate) size: AtomicU64,
    pub(crate) revision: AtomicU64,
    pub(crate) persisted_revision: Mutex<u64>,
    pub(crate) revision_file: Option<File>,
    /// Group commit of flushes (see `flush.rs`).
    pub(crate) flush_group: FlushGroup,
    pub(crate) was_dirty: bool,
    /// Set when a commit failed midway: the in-memory state may not match the disk any more.
    pub(crate) poisoned: AtomicBool,
    pub(crate) purging: AtomicBool,
    pub(crate) purge_lock: Mutex<()>,
    pub(crate) failpoints: Failpoints,
}

/// Blocks `[start, end)` covered by a byte range `(offset, len)` (rounded outward).
pub(crate) fn blocks_of(offset: u64, len: u64) -> (u64, u64) {
    (offset / BLOCK_SIZE, (offset + len).div_ceil(BLOCK_SIZE))
}

pub(crate) fn open_layer_file(path: &Path, read_only: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| ReplicaError::io("open layer", path, e))
}

/// The allocated blocks of a layer file, from FIEMAP.
pub(crate) fn layer_extent_set(file: &File, path: &Path, sync: bool) -> Result<RangeMap<()>> {
    let mut set = RangeMap::new();
    for (off, len) in fsutil::fiemap(file, sync).map_err(|e| ReplicaError::io("FIEMAP", path, e))? {
        let (s, e) = blocks_of(off, len);
        set.add(s, e);
    }
    Ok(set)
}

/// Current time as Longhorn writes it (RFC3339, UTC, seconds).
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Replica {
    /// Creates a new replica of `opts.size` bytes in `dir` (created if absent; it must not hold a
    /// replica already) and opens it.
    pub fn create(dir: &Path, opts: CreateOptions) -> Result<Replica> {
        if opts.size == 0 || opts.size % BLOCK_SIZE != 0 || opts.size > i64::MAX as u64 {
            return Err(ReplicaError::new(
                ErrorKind::InvalidArgument,
                "create",
                format!("size {} must be a positive multiple of 4096", opts.size),
            )
            .with_path(dir));
        }
        std::fs::create_dir_all(dir).map_err(|e| ReplicaError::io("create directory", dir, e))?;
        let entries = std::fs::read_dir(dir).map_err(|e| ReplicaError::io("list directory", dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == volume_meta::FILE_NAME
                || name.starts_with(names::HEAD_PREFIX)
                || name.starts_with(names::SNAP_PREFIX)
            {
                return Err(ReplicaError::new(
                    ErrorKind::AlreadyExists,
                    "create",
                    format!("directory already holds a replica ({name} exists)"),
                )
                .with_path(dir));
            }
        }
        let head = names::head_file(0);
        let head_path = dir.join(&head);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&head_path)
            .map_err(|e| ReplicaError::io("create head", &head_path, e))?;
        f.set_len(opts.size).map_err(|e| ReplicaError::io("truncate head", &head_path, e))?;
        f.sync_all().map_err(|e| ReplicaError::io("fsync head", &head_path, e))?;
        let meta = DiskMeta { name: head.clone(), created: now_rfc3339(), ..Default::default() };
        fsutil::atomic_write(dir, &names::meta_file(&head), &meta.to_bytes(), 0o644)?;
        write_revision_file(dir, 0)?;
        // volume.meta last: it is what makes the directory a replica.
        let vm = VolumeMeta::new(opts.size, &head);
        fsutil::atomic_write(dir, volume_meta::FILE_NAME, &vm.to_bytes(), 0o644)?;
        Self::open(dir)
    }

    /// Opens an existing replica for reading and writing; sets `Dirty` durably.
    pub fn open(dir: &Path) -> Result<Replica> {
        Self::open_impl(dir, false)
    }

    /// Opens an existing replica without writing anything (for export, backup, info).
    pub fn open_read_only(dir: &Path) -> Result<Replica> {
        Self::open_impl(dir, true)
    }

    fn open_impl(dir: &Path, read_only: bool) -> Result<Replica> {
        let first = scan::scan(dir)?;
        // Validate before touching anything: bad input changes nothing on disk.
        scan::tree(&first)?;
        if !first.volume.backing_file_path.is_empty() {
            // Reads would silently miss the backing image's data: refuse rather than serve wrong bytes.
            return Err(ReplicaError::new(
                ErrorKind::InvalidArgument,
                "open",
                format!(
                    "backing images are not supported (BackingFilePath {:?})",
                    first.volume.backing_file_path
                ),
            )
            .with_path(&dir.join(volume_meta::FILE_NAME)));
        }
        let scan = if !read_only && scan::repair(&first)? { scan::scan(dir)? } else { first };
        let tree = scan::tree(&scan)?;
        let (chain, maps) = build_layers(dir, &tree, read_only, false)?;
        let mut volume = scan.volume.clone();
        let was_dirty = volume.dirty;
        let revision = scan.revision.unwrap_or(0);
        let mut revision_file = None;
        if !read_only {
            if scan.revision.is_none() {
                write_revision_file(dir, 0)?;
            }
            let rc_path = dir.join(revision_counter::FILE_NAME);
            revision_file = Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .mode(0o600)
                    .open(&rc_path)
                    .map_err(|e| ReplicaError::io("open revision counter", &rc_path, e))?,
            );
            volume.dirty = true;
            fsutil::atomic_write(dir, volume_meta::FILE_NAME, &volume.to_bytes(), 0o644)?;
        }
        let size = volume.size_bytes();
        Ok(Replica {
            dir: dir.to_path_buf(),
            read_only,
            chain: RwLock::new(chain),
            maps: RwLock::new(maps),
            volume: Mutex::new(volume),
            state: Mutex::new(scan.state.clone()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            size: AtomicU64::new(size),
            revision: AtomicU64::new(revision),
            persisted_revision: Mutex::new(revision),
            revision_file,
            flush_group: FlushGroup::default(),
            was_dirty,
            poisoned: AtomicBool::new(false),
            purging: AtomicBool::new(false),
            purge_lock: Mutex::new(()),
            failpoints: Failpoints::default(),
        })
    }

    /// Flushes, clears `Dirty` durably and closes.
    pub fn close(self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush()?;
        // A flush leaves the counter unsynced (see `flush.rs`); a clean replica's counter is exact.
        self.sync_revision()?;
        let _chain = self.chain.write();
        let mut volume = self.volume.lock();
        volume.dirty = false;
        fsutil::atomic_write(&self.dir, volume_meta::FILE_NAME, &volume.to_bytes(), 0o644)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Volume size in bytes.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// True if opened with [`Replica::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Revision, generation, flags and chain, for choosing the newest replica at engine start.
    pub fn recovery_facts(&self) -> RecoveryFacts {
        let (revision, persisted) = {
            let persisted = self.persisted_revision.lock();
            (self.revision.load(Ordering::Acquire), *persisted)
        };
        let chain = self.chain.read();
        let volume = self.volume.lock();
        RecoveryFacts {
            size: self.size(),
            revision,
            unflushed_writes: revision > persisted,
            generation: self.state.lock().generation,
            dirty: volume.dirty,
            was_dirty_at_open: self.was_dirty,
            rebuilding: volume.rebuilding,
            head: volume.head.clone(),
            chain: chain
                .live
                .iter()
                .skip(1)
                .filter_map(|id| chain.layers.get(id).and_then(|l| l.snapshot_name().map(str::to_string)))
                .collect(),
        }
    }

    /// Sets the generation and makes it durable before returning.
    pub fn set_generation(&self, generation: u64) -> Result<()> {
        self.check_writable("set generation")?;
        let mut state = self.state.lock();
        let new = CorralState { generation, ..state.clone() };
        fsutil::atomic_write(&self.dir, corral_state::FILE_NAME, &new.to_bytes(), 0o644)?;
        *state = new;
        Ok(())
    }

    /// The highest engine epoch this replica accepted (0: none); see [`Replica::accept_engine_epoch`].
    pub fn engine_epoch(&self) -> u64 {
        self.state.lock().engine_epoch
    }

    /// Makes `epoch` the highest engine epoch accepted, durably (`corral-state.json` written and
    /// fsync'd) before returning. Fencing: the data-protocol server refuses engines with an older epoch
    /// once this returned, even after a restart. An epoch below the current one is refused (`Busy`).
    pub fn accept_engine_epoch(&self, epoch: u64) -> Result<()> {
        self.check_writable("accept engine epoch")?;
        let mut state = self.state.lock();
        if epoch < state.engine_epoch {
            return Err(ReplicaError::new(
                ErrorKind::Busy,
                "accept engine epoch",
                format!("engine epoch {epoch} is older than {} accepted by this replica", state.engine_epoch),
            )
            .with_path(&self.dir));
        }
        if epoch == state.engine_epoch {
            return Ok(());
        }
        let new = CorralState { engine_epoch: epoch, ..state.clone() };
        fsutil::atomic_write(&self.dir, corral_state::FILE_NAME, &new.to_bytes(), 0o644)?;
        *state = new;
        Ok(())
    }

    /// Sets the revision counter and persists it at once.
    pub fn set_revision(&self, revision: u64) -> Result<()> {
        self.check_writable("set revision")?;
        if revision > i64::MAX as u64 {
            return Err(ReplicaError::new(
                ErrorKind::InvalidArgument,
                "set revision",
                "revision exceeds int64",
            ));
        }
        let mut persisted = self.persisted_revision.lock();
        self.revision.store(revision, Ordering::Release);
        self.write_revision(revision, true)?;
        *persisted = revision;
        Ok(())
    }

    /// Sets the `Rebuilding` flag durably.
    pub fn set_rebuilding(&self, rebuilding: bool) -> Result<()> {
        self.check_writable("set rebuilding")?;
        if rebuilding && self.purging.load(Ordering::Acquire) {
            return Err(ReplicaError::new(ErrorKind::Busy, "set rebuilding", "a purge is running"));
        }
        let mut volume = self.volume.lock();
        let new = VolumeMeta { rebuilding, ..volume.clone() };
        fsutil::atomic_write(&self.dir, volume_meta::FILE_NAME, &new.to_bytes(), 0o644)?;
        *volume = new;
        Ok(())
    }

    /// Arms a named failpoint (see [`crate::failpoint::ALL`]) to fail at its `nth` hit.
    #[cfg(any(test, feature = "failpoints"))]
    pub fn arm_failpoint(&self, name: &str, nth: u32) {
        self.failpoints.arm(name, nth);
    }

    /// Heap bytes used by the read index and the extent sets (approximate; the benchmark measures the
    /// allocator instead).
    pub fn index_heap_bytes(&self) -> usize {
        self.maps.read().heap_bytes()
    }

    pub(crate) fn check_writable(&self, op: &'static str) -> Result<()> {
        if self.read_only {
            return Err(ReplicaError::new(ErrorKind::InvalidArgument, op, "replica is open read-only")
                .with_path(&self.dir));
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(ReplicaError::new(
                ErrorKind::Io,
                op,
                "an earlier metadata commit failed; close and reopen the replica",
            )
            .with_path(&self.dir));
        }
        Ok(())
    }

    /// Writes the revision counter in place (one aligned 4 KiB `pwrite`), and syncs it when `sync`.
    pub(crate) fn write_revision(&self, revision: u64, sync: bool) -> Result<()> {
        let Some(f) = &self.revision_file else { return Ok(()) };
        f.write_all_at(&revision_counter::encode(revision), 0).map_err(|e| {
            ReplicaError::io("write revision counter", &self.dir.join(revision_counter::FILE_NAME), e)
        })?;
        if sync {
            self.sync_revision()?;
        }
        Ok(())
    }

    /// Makes the last written revision counter durable.
    pub(crate) fn sync_revision(&self) -> Result<()> {
        let Some(f) = &self.revision_file else { return Ok(()) };
        f.sync_data().map_err(|e| {
            ReplicaError::io("fdatasync revision counter", &self.dir.join(revision_counter::FILE_NAME), e)
        })
    }

    /// Writes `volume.meta` durably with `update` applied (caller holds the chain lock as needed).
    pub(crate) fn update_volume_meta(&self, update: impl FnOnce(&mut VolumeMeta)) -> Result<()> {
        let mut volume = self.volume.lock();
        let mut new = volume.clone();
        update(&mut new);
        fsutil::atomic_write(&self.dir, volume_meta::FILE_NAME, &new.to_bytes(), 0o644)?;
        *volume = new;
        Ok(())
    }

    /// Writes `corral-state.json` durably with `update` applied.
    pub(crate) fn update_state(&self, update: impl FnOnce(&mut CorralState)) -> Result<()> {
        let mut state = self.state.lock();
        let mut new = state.clone();
        update(&mut new);
        fsutil::atomic_write(&self.dir, corral_state::FILE_NAME, &new.to_bytes(), 0o644)?;
        *state = new;
        Ok(())
    }

    /// Re-reads the whole directory state (after `finish_rebuild`). Caller holds the chain write lock.
    pub(crate) fn reload_locked(&self, chain: &mut Chain) -> Result<()> {
        let scan = scan::scan(&self.dir)?;
        let tree = scan::tree(&scan)?;
        let (new_chain, new_maps) = build_layers(&self.dir, &tree, self.read_only, true)?;
        *chain = new_chain;
        *self.maps.write() = new_maps;
        *self.volume.lock() = scan.volume.clone();
        self.size.store(scan.volume.size_bytes(), Ordering::Release);
        Ok(())
    }
}

fn write_revision_file(dir: &Path, value: u64) -> Result<()> {
    fsutil::atomic_write(dir, revision_counter::FILE_NAME, &revision_counter::encode(value), 0o600)
}

/// Opens every layer of `tree`, reads its extents and builds the index.
pub(crate) fn build_layers(
    dir: &Path,
    tree: &scan::Tree,
    read_only: bool,
    sync: bool,
) -> Result<(Chain, Maps)> {
    let mut chain = Chain {
        layers: IdMap::default(),
        by_file: HashMap::new(),
        head: 0,
        live: Vec::new(),
        children: IdMap::default(),
        next_id: 0,
    };
    let mut maps = Maps::default();
    for (file_name, meta) in &tree.nodes {
        let path = dir.join(file_name);
        let file = open_layer_file(&path, read_only)?;
        let extents = layer_extent_set(&file, &path, sync)?;
        let id = chain.insert_layer(file_name.clone(), meta.clone(), file);
        maps.extents.insert(id, extents);
        if *file_name == tree.head {
            chain.head = id;
        }
    }
    chain.derive();
    maps.rebuild_top(&chain.live);
    Ok((chain, maps))
}
