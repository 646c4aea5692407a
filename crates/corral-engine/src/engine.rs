//! The engine's state and its data path: replicated writes, reads with failover, flush, and the failure
//! handling that keeps every acknowledged write recognisable at the next start (generation bumps).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{join_all, BoxFuture};
use parking_lot::{Mutex, RwLock};

use crate::error::{EngineError, ErrorKind, Result};
use corral_wire::{ErrorKind as WireErrorKind, ReplicaProtocol, Result as WireResult, WireError};

use crate::connector::Connector;
use crate::replica_set::{Mode, ReplicaSlot, SlotList};

/// Block size inside replicas; writes are widened to it while a WO replica exists.
pub const BLOCK: u64 = 4096;
/// Writes while a WO replica exists lock 1 MiB regions (striped) so that a widened write's
/// read-patch-write cannot interleave with another write to the same block.
const REGION_SHIFT: u32 = 20;
const STRIPES: usize = 256;

/// Zero data for WO replicas (see [`Engine::zero`]).
static ZERO_CHUNK: [u8; 1 << 20] = [0u8; 1 << 20];

/// A write to one replica; with `fua` the replica syncs before answering (one round trip, where a
/// write followed by a flush fan-out would take two).
fn write_link<'a>(
    link: &'a Arc<dyn ReplicaProtocol>,
    off: u64,
    data: &Bytes,
    fua: bool,
) -> BoxFuture<'a, WireResult<()>> {
    if fua {
        link.write_fua(off, data.clone())
    } else {
        link.write(off, data.clone())
    }
}

fn write_zero_data(link: &Arc<dyn ReplicaProtocol>, off: u64, len: u64) -> BoxFuture<'_, WireResult<()>> {
    Box::pin(async move {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK.len() as u64);
            link.write(off + done, Bytes::from_static(&ZERO_CHUNK[..n as usize])).await?;
            done += n;
        }
        Ok(())
    })
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Volume name.
    pub volume: String,
    /// Requested size in bytes (multiple of 4096).
    pub size: u64,
    /// A replica that does not answer a data request within this time is set ERR (default 8 s).
    pub replica_timeout: Duration,
    /// Time limit for control requests (snapshot, layer operations, …) per replica.
    pub control_timeout: Duration,
    /// Bytes per rebuild copy request.
    pub rebuild_batch: u64,
    /// Rebuild copy requests in flight.
    pub rebuild_concurrency: usize,
    /// Rebuild stale replicas found at start automatically.
    pub auto_rebuild: bool,
}

impl EngineConfig {
    /// Defaults for a volume of `size` bytes.
    pub fn new(volume: impl Into<String>, size: u64) -> Self {
        EngineConfig {
            volume: volume.into(),
            size,
            replica_timeout: Duration::from_secs(8),
            control_timeout: Duration::from_secs(120),
            rebuild_batch: 4 << 20,
            rebuild_concurrency: 8,
            auto_rebuild: true,
        }
    }
}

/// What the engine needs from its frontend (the NBD server): whether clients are attached, and how to
/// publish a new size.
pub trait Frontend: Send + Sync + 'static {
    /// Number of clients connected now.
    fn connected_clients(&self) -> usize;
    /// The frontend's address (`nbd://…`, `nbd+unix://…`).
    fn endpoint(&self) -> String;
    /// If no client is connected, a guard that keeps new clients out while it lives (for revert);
    /// `None` while a client is connected.
    fn detach_guard(&self) -> Option<Box<dyn Send>>;
}

/// A running volume engine. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: EngineConfig,
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) size: AtomicU64,
    pub(crate) slots: RwLock<SlotList>,
    /// Writes hold it shared; snapshot points (snapshot, rebuild start/finish, expand, revert) hold it
    /// exclusively, which drains in-flight writes and holds new ones back briefly.
    pub(crate) gate: tokio::sync::RwLock<()>,
    /// Current volume generation (the last one made durable on every RW replica).
    pub(crate) generation: AtomicU64,
    /// Count of replicas dropped so far, and how many of those drops a durable generation bump covers.
    pub(crate) drops: AtomicU64,
    pub(crate) covered: AtomicU64,
    pub(crate) bump_lock: tokio::sync::Mutex<()>,
    pub(crate) next_read: AtomicUsize,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Serialises control operations.
    pub(crate) admin: tokio::sync::Mutex<()>,
    pub(crate) rebuild: Mutex<crate::rebuild::RebuildTracker>,
    pub(crate) frontend: Mutex<Option<Arc<dyn Frontend>>>,
    /// Completed client I/O, for `info` (and the manager's metrics).
    pub(crate) io: IoCounters,
    /// Test-only crash points (empty and free unless built for tests or with `failpoints`).
    pub(crate) failpoints: crate::failpoint::Failpoints,
    /// Concurrent flushes share fan-outs (group commit).
    pub(crate) flushes: crate::group_commit::FlushGroup,
}

/// Cumulative counts of completed client reads and writes (relaxed atomics: statistics only).
#[derive(Default)]
pub(crate) struct IoCounters {
    pub(crate) read_ops: AtomicU64,
    pub(crate) write_ops: AtomicU64,
    pub(crate) read_bytes: AtomicU64,
    pub(crate) write_bytes: AtomicU64,
}

/// How long a replica may take to answer a fanned-out request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    /// A data request: the replica timeout. Links that enforce it themselves
    /// ([`corral_wire::ReplicaProtocol::times_out_data_requests`]) get no extra timer.
    Data,
    /// A control request with its own limit (never enforced by the link).
    Control(Duration),
}

impl Engine {
    /// Runs one link call within `limit`; a call that runs out of time fails with `Timeout`.
    pub(crate) async fn bounded<T>(
        &self,
        limit: Limit,
        link: &Arc<dyn ReplicaProtocol>,
        call: BoxFuture<'_, WireResult<T>>,
    ) -> WireResult<T> {
        let after = match limit {
            // The link's own deadline scan replaces a timer per request on the hot path.
            Limit::Data if link.times_out_data_requests() => return call.await,
            Limit::Data => self.shared.config.replica_timeout,
            Limit::Control(after) => after,
        };
        match tokio::time::timeout(after, call).await {
            Ok(result) => result,
            Err(_) => Err(WireError::service(WireErrorKind::Timeout, format!("no answer within {after:?}"))),
        }
    }
}

impl Engine {
    pub(crate) fn from_parts(
        config: EngineConfig,
        connector: Arc<dyn Connector>,
        slots: Vec<Arc<ReplicaSlot>>,
        size: u64,
        generation: u64,
    ) -> Engine {
        Engine {
            shared: Arc::new(Shared {
                config,
                connector,
                size: AtomicU64::new(size),
                slots: RwLock::new(Arc::new(slots)),
                gate: tokio::sync::RwLock::new(()),
                generation: AtomicU64::new(generation),
                drops: AtomicU64::new(0),
                covered: AtomicU64::new(0),
                bump_lock: tokio::sync::Mutex::new(()),
                next_read: AtomicUsize::new(0),
                stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
                admin: tokio::sync::Mutex::new(()),
                rebuild: Mutex::new(Default::default()),
                frontend: Mutex::new(None),
                io: IoCounters::default(),
                failpoints: crate::failpoint::Failpoints::default(),
                flushes: crate::group_commit::FlushGroup::default(),
            }),
        }
    }

    /// Volume name.
    pub fn volume(&self) -> &str {
        &self.shared.config.volume
    }

    /// Current size in bytes.
    pub fn size(&self) -> u64 {
        self.shared.size.load(Ordering::SeqCst)
    }

    /// Current generation.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// Registers the frontend (for `info` and the revert check).
    pub fn set_frontend(&self, frontend: Arc<dyn Frontend>) {
        *self.shared.frontend.lock() = Some(frontend);
    }

    pub(crate) fn slots(&self) -> SlotList {
        self.shared.slots.read().clone()
    }

    fn check_range(&self, op: &'static str, off: u64, len: u64) -> Result<()> {
        let size = self.size();
        match off.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(EngineError::new(
                ErrorKind::OutOfRange,
                op,
                format!("offset {off} length {len} is beyond the volume end ({size} bytes)"),
            )),
        }
    }

    /// Arms the named failpoint ([`crate::failpoint::ALL`]): when the engine reaches it, it dies there.
    #[cfg(any(test, feature = "failpoints"))]
    pub fn arm_failpoint(&self, name: &str) {
        self.shared.failpoints.arm(name);
    }

    /// True once the engine died at a failpoint.
    #[cfg(any(test, feature = "failpoints"))]
    pub fn died_at_failpoint(&self) -> bool {
        self.shared.failpoints.is_dead()
    }

    /// Dies at failpoint `point` as a killed process would: every replica connection is closed at once
    /// (requests not yet sent are dropped), nothing is rolled back, and no connection is opened again.
    /// Returns the error the interrupted operation reports.
    pub(crate) fn die_at(&self, point: &'static str, op: &'static str) -> EngineError {
        #[cfg(any(test, feature = "failpoints"))]
        {
            self.shared.failpoints.fire();
            for slot in self.slots().iter() {
                if let Some(link) = &slot.link {
                    link.close();
                }
            }
            tracing::warn!(volume = %self.volume(), %point, %op, "engine died at a failpoint");
        }
        EngineError::unavailable(op, format!("the engine died at failpoint {point}"))
    }

    /// Sets a replica ERR and closes its link. The drop is counted *before* the mode changes, so any
    /// write that no longer sees the replica also sees the drop and waits for the generation bump.
    pub(crate) fn fail_replica(&self, slot: &ReplicaSlot, op: &str, err: &WireError) {
        if slot.mode() == Mode::Error {
            return;
        }
        self.shared.drops.fetch_add(1, Ordering::SeqCst);
        let previous = slot.set_error(format!("{op}: {err}"));
        if previous != Mode::Error {
            tracing::warn!(volume = %self.volume(), replica = %slot.address, %op, error = %err, "replica set ERR");
            if let Some(link) = &slot.link {
                link.close();
            }
        }
    }

    /// Sends one mutation to every RW and WO replica in parallel and waits for all. Replicas that fail or
    /// time out are dropped. When every replica reports no space, the error goes to the client and no
    /// replica is dropped.
    pub(crate) async fn fan_out<'a, F>(
        &'a self,
        op: &'static str,
        slots: &'a [Arc<ReplicaSlot>],
        f: F,
    ) -> Result<()>
    where
        F: Fn(&'a Arc<dyn ReplicaProtocol>) -> BoxFuture<'a, WireResult<()>>,
    {
        self.fan_out_modal(op, slots, Limit::Data, |_, l| f(l)).await
    }

    /// [`Self::fan_out`] with an explicit per-replica time limit (control operations take longer).
    pub(crate) async fn fan_out_within<'a, F>(
        &'a self,
        op: &'static str,
        slots: &'a [Arc<ReplicaSlot>],
        timeout: Duration,
        f: F,
    ) -> Result<()>
    where
        F: Fn(&'a Arc<dyn ReplicaProtocol>) -> BoxFuture<'a, WireResult<()>>,
    {
        self.fan_out_modal(op, slots, Limit::Control(timeout), |_, l| f(l)).await
    }

    /// [`Self::fan_out_within`] where the request may depend on the replica's mode (RW or WO).
    pub(crate) async fn fan_out_modal<'a, F>(
        &'a self,
        op: &'static str,
        slots: &'a [Arc<ReplicaSlot>],
        limit: Limit,
        f: F,
    ) -> Result<()>
    where
        F: Fn(Mode, &'a Arc<dyn ReplicaProtocol>) -> BoxFuture<'a, WireResult<()>>,
    {
        let count = slots.iter().filter(|s| s.writable_link().is_some()).count();
        if count == 0 {
            return Err(EngineError::unavailable(op, "no healthy replica"));
        }
        #[cfg(any(test, feature = "failpoints"))]
        if count > 1 {
            if let Some(point) =
                crate::failpoint::for_fan_out(op).filter(|point| self.shared.failpoints.is_armed(point))
            {
                // The first replica completes the request; the engine dies before the others get it.
                if let Some((slot, link)) = slots.iter().find_map(|s| s.writable_link().map(|l| (s, l))) {
                    let _ = self.bounded(limit, link, f(slot.mode(), link)).await;
                }
                return Err(self.die_at(point, op));
            }
        }
        if count == 1 {
            // One replica: no join machinery.
            if let Some((slot, link)) = slots.iter().find_map(|s| s.writable_link().map(|l| (s, l))) {
                if let Err(err) = self.bounded(limit, link, f(slot.mode(), link)).await {
                    if err.kind() == WireErrorKind::NoSpace {
                        return Err(EngineError::from_replica(ErrorKind::NoSpace, op, &slot.address, err));
                    }
                    self.fail_replica(slot, op, &err);
                }
            }
        } else {
            let calls = slots
                .iter()
                .filter_map(|s| s.writable_link().map(|l| (s, l)))
                .map(|(slot, link)| {
                    let call = self.bounded(limit, link, f(slot.mode(), link));
                    async move { (slot, call.await.err()) }
                })
                .collect::<Vec<_>>();
            let results = join_all(calls).await;
            let failed: Vec<_> = results.iter().filter_map(|(s, e)| e.as_ref().map(|e| (s, e))).collect();
            if !failed.is_empty()
                && failed.len() == results.len()
                && failed.iter().all(|(_, e)| e.kind() == WireErrorKind::NoSpace)
            {
                return Err(EngineError::new(ErrorKind::NoSpace, op, "no space left on any replica"));
            }
            for (slot, err) in failed {
                self.fail_replica(slot, op, err);
            }
        }
        self.settle(op).await
    }

    /// Called before acknowledging a mutation or flush: if any replica was dropped since the last durable
    /// generation bump, bump the generation on every remaining RW replica first; fail if no RW is left.
    pub(crate) async fn settle(&self, op: &'static str) -> Result<()> {
        if self.shared.covered.load(Ordering::SeqCst) < self.shared.drops.load(Ordering::SeqCst) {
            self.bump_generation(op).await?;
        }
        if !self.slots().iter().any(|s| s.mode() == Mode::ReadWrite) {
            return Err(EngineError::unavailable(op, "no healthy replica left: the volume is faulted"));
        }
        Ok(())
    }

    /// Makes a new generation durable on every RW replica. WO replicas (rebuild targets) are left behind on
    /// purpose: their generation is set when they become RW, and until then their `rebuilding` flag keeps
    /// them out of the RW set at any start.
    pub(crate) async fn bump_generation(&self, op: &'static str) -> Result<()> {
        loop {
            let target = self.shared.drops.load(Ordering::SeqCst);
            if self.shared.covered.load(Ordering::SeqCst) >= target {
                return Ok(());
            }
            let _bump = self.shared.bump_lock.lock().await;
            let target = self.shared.drops.load(Ordering::SeqCst);
            if self.shared.covered.load(Ordering::SeqCst) >= target {
                continue;
            }
            let generation = self.generation() + 1;
            let slots = self.slots();
            let rw: Vec<_> = slots.iter().filter_map(|s| s.readable_link().map(|l| (s, l))).collect();
            if rw.is_empty() {
                return Err(EngineError::unavailable(op, "no healthy replica left: the volume is faulted"));
            }
            let limit = Limit::Control(self.shared.config.replica_timeout);
            let results = join_all(rw.iter().map(|(slot, link)| async move {
                (slot, self.bounded(limit, link, link.set_generation(generation)).await.err())
            }))
            .await;
            for (slot, err) in results {
                if let Some(err) = err {
                    self.fail_replica(slot, "set generation", &err);
                }
            }
            self.shared.generation.store(generation, Ordering::SeqCst);
            self.shared.covered.fetch_max(target, Ordering::SeqCst);
            tracing::info!(volume = %self.volume(), generation, "generation bumped after a replica was dropped");
        }
    }

    fn has_write_only(slots: &[Arc<ReplicaSlot>]) -> bool {
        slots.iter().any(|s| s.mode() == Mode::WriteOnly)
    }

    /// Locks the 1 MiB regions a request touches (ascending order: no deadlock). Only used while a WO
    /// replica exists.
    async fn lock_regions(&self, off: u64, len: u64) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let first = off >> REGION_SHIFT;
        let last = (off + len.max(1) - 1) >> REGION_SHIFT;
        let mut stripes: Vec<usize> =
            (first..=last.min(first + STRIPES as u64)).map(|r| (r % STRIPES as u64) as usize).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.shared.stripes[s].lock().await);
        }
        guards
    }

    /// Reads `len` bytes at `off` from one RW replica (round robin), failing over to the others.
    pub async fn read(&self, off: u64, len: usize) -> Result<Bytes> {
        self.check_range("read", off, len as u64)?;
        let data = self.read_unchecked(off, len).await?;
        self.shared.io.read_ops.fetch_add(1, Ordering::Relaxed);
        self.shared.io.read_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(data)
    }

    async fn read_unchecked(&self, off: u64, len: usize) -> Result<Bytes> {
        let slots = self.slots();
        let count = slots.len();
        let start = self.shared.next_read.fetch_add(1, Ordering::Relaxed);
        for attempt in 0..count {
            let slot = &slots[(start + attempt) % count];
            let Some(link) = slot.readable_link() else { continue };
            match self.bounded(Limit::Data, link, link.read(off, len as u64)).await {
                Ok(data) if data.len() == len => return Ok(data),
                Ok(data) => self.fail_replica(
                    slot,
                    "read",
                    &WireError::service(
                        WireErrorKind::Protocol,
                        format!("short read: {} of {len} bytes", data.len()),
                    ),
                ),
                Err(err) => self.fail_replica(slot, "read", &err),
            }
        }
        Err(EngineError::unavailable(
            "read",
            format!("offset {off} length {len}: no healthy replica could serve the read"),
        ))
    }

    /// Writes `data` at `off` to every RW and WO replica; with `fua`, also makes it durable on all of them.
    pub async fn write(&self, off: u64, data: Bytes, fua: bool) -> Result<()> {
        self.check_range("write", off, data.len() as u64)?;
        let _gate = self.shared.gate.read().await;
        let slots = self.slots();
        let needs_flush = if Self::has_write_only(&slots) {
            let _regions = self.lock_regions(off, data.len() as u64).await;
            if off % BLOCK != 0 || data.len() as u64 % BLOCK != 0 {
                self.write_widened(&slots, off, &data, None).await?;
                fua
            } else {
                self.fan_out("write", &slots, |l| write_link(l, off, &data, fua)).await?;
                false
            }
        } else {
            self.fan_out("write", &slots, |l| write_link(l, off, &data, fua)).await?;
            false
        };
        if needs_flush {
            self.flush_now(&slots).await?;
        }
        self.shared.io.write_ops.fetch_add(1, Ordering::Relaxed);
        self.shared.io.write_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Reference §3.6: a WO replica must only receive whole blocks, because its own read-modify-write
    /// would read lower layers that are not copied yet. Read the covering blocks from RW, patch, write all.
    /// `data = None` patches zeros in.
    async fn write_widened(
        &self,
        slots: &[Arc<ReplicaSlot>],
        off: u64,
        data: &[u8],
        zero_len: Option<u64>,
    ) -> Result<()> {
        let len = zero_len.unwrap_or(data.len() as u64);
        let start = off / BLOCK * BLOCK;
        let end = (off + len).div_ceil(BLOCK) * BLOCK;
        let end = end.min(self.size());
        let covering = self.read_unchecked(start, (end - start) as usize).await?;
        let mut buf = BytesMut::from(&covering[..]);
        let at = (off - start) as usize;
        match zero_len {
            Some(n) => buf[at..at + n as usize].fill(0),
            None => buf[at..at + data.len()].copy_from_slice(data),
        }
        let buf = buf.freeze();
        self.fan_out("write", slots, |l| l.write(start, buf.clone())).await
    }

    /// Zeroes (`trim = false`) or discards (`trim = true`) a range on every RW and WO replica.
    pub async fn zero(&self, off: u64, len: u64, trim: bool, fua: bool) -> Result<()> {
        let op = if trim { "trim" } else { "write-zeroes" };
        self.check_range(op, off, len)?;
        if len == 0 {
            return Ok(());
        }
        let _gate = self.shared.gate.read().await;
        let slots = self.slots();
        // A WO replica gets zero *data* instead: its own trim / write-zeroes decides between punching
        // and zero-filling from lower layers that are not copied yet, and a punched block would later
        // show the copied snapshot data through.
        let send = |o: u64, n: u64| {
            let slots = &slots;
            async move {
                self.fan_out_modal(op, slots, Limit::Data, |mode, l| match mode {
                    Mode::WriteOnly => write_zero_data(l, o, n),
                    _ if trim => l.unmap(o, n),
                    _ => l.write_zeroes(o, n),
                })
                .await
            }
        };
        if Self::has_write_only(&slots) {
            let _regions = self.lock_regions(off, len).await;
            let end = off + len;
            let inner_start = off.div_ceil(BLOCK) * BLOCK;
            let inner_end = end / BLOCK * BLOCK;
            if inner_start >= inner_end {
                self.write_widened(&slots, off, &[], Some(len)).await?;
            } else {
                if off < inner_start {
                    self.write_widened(&slots, off, &[], Some(inner_start - off)).await?;
                }
                send(inner_start, inner_end - inner_start).await?;
                if inner_end < end {
                    self.write_widened(&slots, inner_end, &[], Some(end - inner_end)).await?;
                }
            }
        } else {
            send(off, len).await?;
        }
        if fua {
            self.flush_now(&slots).await?;
        }
        Ok(())
    }

    /// Makes every completed write durable on every RW and WO replica. Flushes that arrive while one is
    /// running share the next fan-out ([`crate::group_commit`]).
    pub async fn flush(&self) -> Result<()> {
        self.shared
            .flushes
            .run(|| async {
                let slots = self.slots();
                self.fan_out("flush", &slots, |l| l.flush()).await
            })
            .await
    }

    /// A flush fan-out of its own to `slots` (for FUA, which must cover its own write only).
    async fn flush_now(&self, slots: &[Arc<ReplicaSlot>]) -> Result<()> {
        self.fan_out("flush", slots, |l| l.flush()).await
    }
}
