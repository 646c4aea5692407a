//! In-memory replicas with fault injection: a model of a replica (head + snapshot layers at 4 KiB
//! granularity, recovery facts) behind the same [`ReplicaProtocol`] face as a remote replica, so the engine's
//! replicator, failure handling, start-up decision and rebuild are unit-tested without processes.
//!
//! The head and every snapshot layer are `corral_block::MemoryDisk`s (the workspace's one in-memory
//! block store); which layer owns a block is which disk has it allocated, as with the real replica's
//! sparse files.
//!
//! The model reproduces the one behaviour that matters for rebuild correctness: a write smaller than a
//! block into a block the head does not hold reads the rest of the block *through the chain* (like the
//! real replica's read-modify-write), so a target whose lower layers are still incomplete would persist
//! wrong bytes if the engine did not widen such writes (reference §3.6).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use corral_block::{BlockDevice, BlockError, MemoryDisk};
use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use corral_wire::{
    ErrorKind as WireErrorKind, Extent, RecoveryFacts, ReplicaProtocol, Result as WireResult, SnapshotInfo,
    SnapshotRequest, WireError, HEAD_NAME,
};

use crate::connector::Connector;

const BS: u64 = 4096;
/// Layers are sparse and have no size of their own (a layer taken before an expand is read past its
/// old end during a rebuild): they are disks of this many bytes, of which only written blocks exist.
const LAYER_SPAN: u64 = 1 << 50;

struct Layer {
    info: SnapshotInfo,
    blocks: MemoryDisk,
}

impl Layer {
    fn new(info: SnapshotInfo) -> Layer {
        Layer { info, blocks: MemoryDisk::new(LAYER_SPAN) }
    }
}

struct ReplicaState {
    size: u64,
    generation: u64,
    revision: u64,
    dirty: bool,
    rebuilding: bool,
    head: MemoryDisk,
    layers: BTreeMap<String, Layer>,
    /// Live chain, root first.
    chain: Vec<String>,
}

/// One in-memory replica. Shared by the test (to inject faults and inspect data) and its links.
pub struct MemoryReplica {
    state: Mutex<ReplicaState>,
    down: AtomicBool,
    hang: AtomicBool,
    writes: AtomicU64,
}

impl MemoryReplica {
    /// A fresh replica of `size` bytes.
    pub fn new(size: u64) -> Arc<Self> {
        Arc::new(MemoryReplica {
            state: Mutex::new(ReplicaState {
                size,
                generation: 0,
                revision: 0,
                dirty: false,
                rebuilding: false,
                head: MemoryDisk::new(size),
                layers: BTreeMap::new(),
                chain: Vec::new(),
            }),
            down: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            writes: AtomicU64::new(0),
        })
    }

    /// Simulates a crash: every operation and every new connection fails until [`Self::restart`].
    pub fn kill(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    /// Brings a killed replica back (its data is kept, it is marked dirty, like a process restart).
    pub fn restart(&self) {
        self.state.lock().dirty = true;
        self.down.store(false, Ordering::SeqCst);
    }

    /// Makes every operation hang (never answer) while `on`.
    pub fn set_hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }

    /// Number of data writes applied so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Current recovery facts.
    pub fn facts(&self) -> RecoveryFacts {
        facts_of(&self.state.lock())
    }

    /// Reads the volume as this replica sees it (for assertions).
    pub fn read_volume(&self, off: u64, len: usize) -> Vec<u8> {
        let s = self.state.lock();
        let mut out = vec![0u8; len];
        if let Err(e) = read_through(&s, &mut out, off) {
            panic!("in-memory replica read at {off}+{len}: {e}");
        }
        out
    }

    /// Marks the replica clean (as a graceful close would).
    pub fn close_cleanly(&self) {
        self.state.lock().dirty = false;
    }
}

fn facts_of(s: &ReplicaState) -> RecoveryFacts {
    RecoveryFacts {
        size: s.size,
        revision: s.revision,
        generation: s.generation,
        // An in-memory replica has no open/close cycle: "dirty now" and "found dirty" are one flag.
        dirty: s.dirty,
        was_dirty_at_open: s.dirty,
        unflushed_writes: false,
        rebuilding: s.rebuilding,
        head: "volume-head-000.img".into(),
        chain: s.chain.iter().rev().cloned().collect(),
    }
}

/// The disk that owns the block containing `offset`: the head, else the newest chain layer holding it.
fn owner_of(s: &ReplicaState, offset: u64) -> Option<&MemoryDisk> {
    if s.head.is_allocated(offset) {
        return Some(&s.head);
    }
    s.chain
        .iter()
        .rev()
        .filter_map(|name| s.layers.get(name))
        .map(|layer| &layer.blocks)
        .find(|disk| disk.is_allocated(offset))
}

/// Reads through the chain, block by block (unowned blocks read as zeros).
fn read_through(s: &ReplicaState, out: &mut [u8], off: u64) -> WireResult<()> {
    let mut done = 0usize;
    while done < out.len() {
        let pos = off + done as u64;
        let n = (BS - pos % BS).min((out.len() - done) as u64) as usize;
        match owner_of(s, pos) {
            Some(disk) => disk.read_at(&mut out[done..done + n], pos).map_err(block_error)?,
            None => out[done..done + n].fill(0),
        }
        done += n;
    }
    Ok(())
}

/// Writes into the head; a partial block missing from the head is first filled from the chain.
fn write_head(s: &mut ReplicaState, data: &[u8], off: u64) -> WireResult<()> {
    let mut done = 0usize;
    while done < data.len() {
        let pos = off + done as u64;
        let n = (BS - pos % BS).min((data.len() - done) as u64) as usize;
        if n as u64 != BS && !s.head.is_allocated(pos) {
            let start = pos / BS * BS;
            let mut base = [0u8; BS as usize];
            read_through(s, &mut base, start)?;
            s.head.write_at(&base, start).map_err(block_error)?;
        }
        s.head.write_at(&data[done..done + n], pos).map_err(block_error)?;
        done += n;
    }
    Ok(())
}

fn extents_of(disk: &MemoryDisk) -> Vec<Extent> {
    disk.extents().into_iter().map(|(offset, len)| Extent { offset, len }).collect()
}

/// A model-store failure as the replica would report it.
fn block_error(err: BlockError) -> WireError {
    let kind = match err {
        BlockError::OutOfRange { .. } => WireErrorKind::OutOfRange,
        _ => WireErrorKind::Io,
    };
    WireError::service(kind, err.to_string())
}

fn not_found(what: &str) -> WireError {
    WireError::service(WireErrorKind::NotFound, format!("no layer {what}"))
}

fn check(s: &ReplicaState, off: u64, len: u64) -> WireResult<()> {
    match off.checked_add(len) {
        Some(end) if end <= s.size => Ok(()),
        _ => Err(WireError::service(WireErrorKind::OutOfRange, format!("{off}+{len} beyond {}", s.size))),
    }
}

/// A link to a [`MemoryReplica`].
pub struct MemoryLink {
    replica: Arc<MemoryReplica>,
    closed: AtomicBool,
}

impl MemoryLink {
    /// Runs `f` on the state unless the replica is down, the link closed, or the replica hangs.
    fn op<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ReplicaState) -> WireResult<T> + Send + 'static,
    ) -> BoxFuture<'_, WireResult<T>> {
        async move {
            if self.replica.hang.load(Ordering::SeqCst) {
                futures::future::pending::<()>().await;
            }
            if self.closed.load(Ordering::SeqCst) || self.replica.down.load(Ordering::SeqCst) {
                return Err(WireError::service(WireErrorKind::Closed, "replica is down"));
            }
            // Yield once so that fan-outs really interleave, as over a network.
            tokio::task::yield_now().await;
            let mut s = self.replica.state.lock();
            f(&mut s)
        }
        .boxed()
    }
}

impl ReplicaProtocol for MemoryLink {
    fn read(&self, off: u64, len: u64) -> BoxFuture<'_, WireResult<Bytes>> {
        self.op(move |s| {
            check(s, off, len)?;
            let mut out = vec![0u8; len as usize];
            read_through(s, &mut out, off)?;
            Ok(Bytes::from(out))
        })
    }
    fn write(&self, off: u64, data: Bytes) -> BoxFuture<'_, WireResult<()>> {
        let replica = self.replica.clone();
        self.op(move |s| {
            check(s, off, data.len() as u64)?;
            write_head(s, &data, off)?;
            s.revision += 1;
            replica.writes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
    fn unmap(&self, off: u64, len: u64) -> BoxFuture<'_, WireResult<()>> {
        self.write_zeroes(off, len)
    }
    fn write_zeroes(&self, off: u64, len: u64) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            check(s, off, len)?;
            // Like the real replica: whole blocks no lower layer holds are punched from the head (they
            // read as zeros through the chain *as it is now*); the rest are zero-filled in the head.
            let mut pos = off;
            let end = off + len;
            while pos < end {
                let block = pos / BS;
                let within = pos % BS;
                let n = (BS - within).min(end - pos);
                let below = s
                    .chain
                    .iter()
                    .any(|name| s.layers.get(name).is_some_and(|l| l.blocks.is_allocated(block * BS)));
                if n == BS && !below {
                    s.head.unmap(pos, BS).map_err(block_error)?;
                } else {
                    write_head(s, &vec![0u8; n as usize], pos)?;
                }
                pos += n;
            }
            s.revision += 1;
            Ok(())
        })
    }
    fn flush(&self) -> BoxFuture<'_, WireResult<()>> {
        self.op(|_| Ok(()))
    }
    fn ping(&self) -> BoxFuture<'_, WireResult<()>> {
        self.op(|_| Ok(()))
    }
    fn info(&self) -> BoxFuture<'_, WireResult<RecoveryFacts>> {
        self.op(|s| Ok(facts_of(s)))
    }
    fn set_generation(&self, generation: u64) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            s.generation = generation;
            Ok(())
        })
    }
    fn set_revision(&self, revision: u64) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            s.revision = revision;
            Ok(())
        })
    }
    fn set_rebuilding(&self, rebuilding: bool) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            s.rebuilding = rebuilding;
            Ok(())
        })
    }
    fn snapshot(&self, request: SnapshotRequest) -> BoxFuture<'_, WireResult<()>> {
        let SnapshotRequest { name, user_created, labels, created } = request;
        self.op(move |s| {
            if s.layers.contains_key(&name) {
                return Err(WireError::service(WireErrorKind::AlreadyExists, name));
            }
            let blocks = std::mem::replace(&mut s.head, MemoryDisk::new(s.size));
            blocks.set_size(LAYER_SPAN);
            let info = SnapshotInfo {
                name: name.clone(),
                parent: s.chain.last().cloned(),
                user_created,
                labels,
                created: created.unwrap_or_default(),
                size: blocks.allocated_blocks() as u64 * BS,
                ..Default::default()
            };
            s.layers.insert(name.clone(), Layer { info, blocks });
            s.chain.push(name);
            Ok(())
        })
    }
    fn list_snapshots(&self) -> BoxFuture<'_, WireResult<Vec<SnapshotInfo>>> {
        self.op(|s| {
            let mut out: Vec<SnapshotInfo> = s.layers.values().map(|l| l.info.clone()).collect();
            out.push(SnapshotInfo {
                name: HEAD_NAME.into(),
                parent: s.chain.last().cloned(),
                size: s.head.allocated_blocks() as u64 * BS,
                ..Default::default()
            });
            Ok(out)
        })
    }
    fn mark_removed(&self, name: String) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            let layer = s.layers.get_mut(&name).ok_or_else(|| not_found(&name))?;
            layer.info.removed = true;
            Ok(())
        })
    }
    fn purge(&self) -> BoxFuture<'_, WireResult<()>> {
        self.op(|s| {
            // A removed layer is folded into its child layer in the chain; the newest layer (child = head)
            // stays, as in Longhorn.
            let mut i = 0;
            while i + 1 < s.chain.len() {
                let name = s.chain[i].clone();
                let removed = s.layers.get(&name).is_some_and(|l| l.info.removed);
                if !removed {
                    i += 1;
                    continue;
                }
                let child = s.chain[i + 1].clone();
                if let Some(old) = s.layers.remove(&name) {
                    if let Some(c) = s.layers.get_mut(&child) {
                        // The child's own blocks are newer; the removed layer fills only the rest.
                        let mut block = [0u8; BS as usize];
                        for (offset, len) in old.blocks.extents() {
                            for at in (offset..offset + len).step_by(BS as usize) {
                                if !c.blocks.is_allocated(at) {
                                    old.blocks.read_at(&mut block, at).map_err(block_error)?;
                                    c.blocks.write_at(&block, at).map_err(block_error)?;
                                }
                            }
                        }
                        c.info.parent = old.info.parent;
                    }
                }
                s.chain.remove(i);
            }
            let live: Vec<String> = s.chain.clone();
            s.layers.retain(|n, l| !l.info.removed || live.contains(n));
            Ok(())
        })
    }
    fn revert(&self, name: String) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            let pos = s.chain.iter().position(|n| *n == name).ok_or_else(|| not_found(&name))?;
            s.chain.truncate(pos + 1);
            s.head = MemoryDisk::new(s.size);
            Ok(())
        })
    }
    fn expand(&self, size: u64) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            if size < s.size {
                return Err(WireError::service(WireErrorKind::InvalidArgument, "shrink"));
            }
            s.size = size;
            s.head.set_size(size);
            Ok(())
        })
    }
    fn layer_extents(&self, name: String) -> BoxFuture<'_, WireResult<Vec<Extent>>> {
        self.op(move |s| Ok(extents_of(&s.layers.get(&name).ok_or_else(|| not_found(&name))?.blocks)))
    }
    fn read_layer(&self, name: String, off: u64, len: u64) -> BoxFuture<'_, WireResult<Bytes>> {
        self.op(move |s| {
            let layer = s.layers.get(&name).ok_or_else(|| not_found(&name))?;
            let mut out = vec![0u8; len as usize];
            layer.blocks.read_at(&mut out, off).map_err(block_error)?;
            Ok(Bytes::from(out))
        })
    }
    fn layer_checksum(&self, name: String, off: u64, len: u64) -> BoxFuture<'_, WireResult<[u8; 32]>> {
        self.op(move |s| {
            let layer = s.layers.get(&name).ok_or_else(|| not_found(&name))?;
            let mut out = vec![0u8; len as usize];
            layer.blocks.read_at(&mut out, off).map_err(block_error)?;
            Ok(Sha256::digest(&out).into())
        })
    }
    fn begin_layer(&self, info: SnapshotInfo) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            match s.layers.get_mut(&info.name) {
                Some(layer) => layer.info = info,
                None => {
                    s.layers.insert(info.name.clone(), Layer::new(info));
                }
            }
            Ok(())
        })
    }
    fn write_layer(&self, name: String, off: u64, data: Bytes) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            let layer = s.layers.get_mut(&name).ok_or_else(|| not_found(&name))?;
            layer.blocks.write_at(&data, off).map_err(block_error)
        })
    }
    fn punch_layer(&self, name: String, off: u64, len: u64) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            let layer = s.layers.get_mut(&name).ok_or_else(|| not_found(&name))?;
            // Whole blocks only, as punching a hole in a sparse file.
            let start = off.div_ceil(BS) * BS;
            let end = (off + len) / BS * BS;
            if start < end {
                layer.blocks.unmap(start, end - start).map_err(block_error)?;
            }
            Ok(())
        })
    }
    fn finish_rebuild(&self, chain: Vec<SnapshotInfo>) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            for info in &chain {
                let layer = s.layers.get_mut(&info.name).ok_or_else(|| not_found(&info.name))?;
                layer.info = info.clone();
            }
            let names: Vec<String> = chain.iter().map(|i| i.name.clone()).collect();
            s.layers.retain(|n, _| names.contains(n));
            // The live chain is the path from the root to the head's parent: follow parents from the
            // last entry that has no child in the list.
            let mut live = Vec::new();
            let mut cur =
                chain.iter().rev().find(|i| !chain.iter().any(|c| c.parent.as_ref() == Some(&i.name)));
            while let Some(info) = cur {
                live.push(info.name.clone());
                cur = info.parent.as_ref().and_then(|p| chain.iter().find(|c| &c.name == p));
            }
            live.reverse();
            s.chain = live;
            Ok(())
        })
    }
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// A set of in-memory replicas addressed by name: the [`Connector`] for unit tests.
#[derive(Default)]
pub struct MemoryCluster {
    replicas: Mutex<HashMap<String, Arc<MemoryReplica>>>,
}

impl MemoryCluster {
    /// An empty cluster.
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryCluster::default())
    }

    /// Adds (or replaces) a replica of `size` bytes at `address` and returns it.
    pub fn add(&self, address: &str, size: u64) -> Arc<MemoryReplica> {
        let replica = MemoryReplica::new(size);
        self.replicas.lock().insert(address.to_string(), replica.clone());
        replica
    }

    /// The replica at `address`.
    pub fn get(&self, address: &str) -> Option<Arc<MemoryReplica>> {
        self.replicas.lock().get(address).cloned()
    }
}

impl Connector for MemoryCluster {
    fn connect(
        &self,
        address: String,
    ) -> BoxFuture<'_, WireResult<(Arc<dyn ReplicaProtocol>, RecoveryFacts)>> {
        async move {
            let replica = self
                .get(&address)
                .ok_or_else(|| WireError::service(WireErrorKind::Closed, format!("nothing at {address}")))?;
            if replica.down.load(Ordering::SeqCst) {
                return Err(WireError::service(WireErrorKind::Closed, format!("{address} is down")));
            }
            let facts = replica.facts();
            let link: Arc<dyn ReplicaProtocol> =
                Arc::new(MemoryLink { replica, closed: AtomicBool::new(false) });
            Ok((link, facts))
        }
        .boxed()
    }
}
