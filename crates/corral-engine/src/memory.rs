//! In-memory replicas with fault injection: a model of a replica (head + snapshot layers at 4 KiB
//! granularity, recovery facts) behind the same [`ReplicaProtocol`] face as a remote replica, so the engine's
//! replicator, failure handling, start-up decision and rebuild are unit-tested without processes.
//!
//! The model reproduces the one behaviour that matters for rebuild correctness: a write smaller than a
//! block into a block the head does not hold reads the rest of the block *through the chain* (like the
//! real replica's read-modify-write), so a target whose lower layers are still incomplete would persist
//! wrong bytes if the engine did not widen such writes (reference §3.6).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
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
type Block = Box<[u8; BS as usize]>;
type Blocks = BTreeMap<u64, Block>;

#[derive(Default)]
struct Layer {
    info: SnapshotInfo,
    blocks: Blocks,
}

#[derive(Default)]
struct ReplicaState {
    size: u64,
    generation: u64,
    revision: u64,
    dirty: bool,
    rebuilding: bool,
    head: Blocks,
    layers: BTreeMap<String, Layer>,
    /// Live chain, root first.
    chain: Vec<String>,
}

/// One in-memory replica. Shared by the test (to inject faults and inspect data) and its links.
#[derive(Default)]
pub struct MemoryReplica {
    state: Mutex<ReplicaState>,
    down: AtomicBool,
    hang: AtomicBool,
    writes: AtomicU64,
}

impl MemoryReplica {
    /// A fresh replica of `size` bytes.
    pub fn new(size: u64) -> Arc<Self> {
        let replica = MemoryReplica::default();
        replica.state.lock().size = size;
        Arc::new(replica)
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
        read_through(&s, &mut out, off);
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

fn block_at(s: &ReplicaState, block: u64) -> Option<&Block> {
    if let Some(b) = s.head.get(&block) {
        return Some(b);
    }
    s.chain.iter().rev().find_map(|name| s.layers.get(name).and_then(|l| l.blocks.get(&block)))
}

fn read_through(s: &ReplicaState, out: &mut [u8], off: u64) {
    let mut done = 0usize;
    while done < out.len() {
        let pos = off + done as u64;
        let within = (pos % BS) as usize;
        let n = (BS as usize - within).min(out.len() - done);
        match block_at(s, pos / BS) {
            Some(b) => out[done..done + n].copy_from_slice(&b[within..within + n]),
            None => out[done..done + n].fill(0),
        }
        done += n;
    }
}

fn read_raw(blocks: &Blocks, out: &mut [u8], off: u64) {
    let mut done = 0usize;
    while done < out.len() {
        let pos = off + done as u64;
        let within = (pos % BS) as usize;
        let n = (BS as usize - within).min(out.len() - done);
        match blocks.get(&(pos / BS)) {
            Some(b) => out[done..done + n].copy_from_slice(&b[within..within + n]),
            None => out[done..done + n].fill(0),
        }
        done += n;
    }
}

/// Writes into the head; a partial block missing from the head is first filled from the chain.
fn write_head(s: &mut ReplicaState, data: &[u8], off: u64) {
    let mut done = 0usize;
    while done < data.len() {
        let pos = off + done as u64;
        let block = pos / BS;
        let within = (pos % BS) as usize;
        let n = (BS as usize - within).min(data.len() - done);
        if !s.head.contains_key(&block) {
            let base = block_at(s, block).cloned().unwrap_or_else(|| Box::new([0u8; BS as usize]));
            s.head.insert(block, base);
        }
        if let Some(b) = s.head.get_mut(&block) {
            b[within..within + n].copy_from_slice(&data[done..done + n]);
        }
        done += n;
    }
}

fn write_raw(blocks: &mut Blocks, data: &[u8], off: u64) {
    let mut done = 0usize;
    while done < data.len() {
        let pos = off + done as u64;
        let within = (pos % BS) as usize;
        let n = (BS as usize - within).min(data.len() - done);
        let b = blocks.entry(pos / BS).or_insert_with(|| Box::new([0u8; BS as usize]));
        b[within..within + n].copy_from_slice(&data[done..done + n]);
        done += n;
    }
}

fn extents_of(blocks: &Blocks) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for &b in blocks.keys() {
        match out.last_mut() {
            Some(last) if last.end() == b * BS => last.len += BS,
            _ => out.push(Extent { offset: b * BS, len: BS }),
        }
    }
    out
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
            read_through(s, &mut out, off);
            Ok(Bytes::from(out))
        })
    }
    fn write(&self, off: u64, data: Bytes) -> BoxFuture<'_, WireResult<()>> {
        let replica = self.replica.clone();
        self.op(move |s| {
            check(s, off, data.len() as u64)?;
            write_head(s, &data, off);
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
                    .any(|name| s.layers.get(name).is_some_and(|l| l.blocks.contains_key(&block)));
                if n == BS && !below {
                    s.head.remove(&block);
                } else {
                    write_head(s, &vec![0u8; n as usize], pos);
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
            let blocks = std::mem::take(&mut s.head);
            let info = SnapshotInfo {
                name: name.clone(),
                parent: s.chain.last().cloned(),
                user_created,
                labels,
                created: created.unwrap_or_default(),
                size: blocks.len() as u64 * BS,
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
                size: s.head.len() as u64 * BS,
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
                        for (b, data) in old.blocks {
                            c.blocks.entry(b).or_insert(data);
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
            s.head.clear();
            Ok(())
        })
    }
    fn expand(&self, size: u64) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            if size < s.size {
                return Err(WireError::service(WireErrorKind::InvalidArgument, "shrink"));
            }
            s.size = size;
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
            read_raw(&layer.blocks, &mut out, off);
            Ok(Bytes::from(out))
        })
    }
    fn layer_checksum(&self, name: String, off: u64, len: u64) -> BoxFuture<'_, WireResult<[u8; 32]>> {
        self.op(move |s| {
            let layer = s.layers.get(&name).ok_or_else(|| not_found(&name))?;
            let mut out = vec![0u8; len as usize];
            read_raw(&layer.blocks, &mut out, off);
            Ok(Sha256::digest(&out).into())
        })
    }
    fn begin_layer(&self, info: SnapshotInfo) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            let layer = s.layers.entry(info.name.clone()).or_default();
            layer.info = info;
            Ok(())
        })
    }
    fn write_layer(&self, name: String, off: u64, data: Bytes) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            let layer = s.layers.get_mut(&name).ok_or_else(|| not_found(&name))?;
            write_raw(&mut layer.blocks, &data, off);
            Ok(())
        })
    }
    fn punch_layer(&self, name: String, off: u64, len: u64) -> BoxFuture<'_, WireResult<()>> {
        self.op(move |s| {
            let layer = s.layers.get_mut(&name).ok_or_else(|| not_found(&name))?;
            let mut b = off.div_ceil(BS);
            while (b + 1) * BS <= off + len {
                layer.blocks.remove(&b);
                b += 1;
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
