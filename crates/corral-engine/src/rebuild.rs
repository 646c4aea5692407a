//! Online rebuild: bring a new (empty or stale) replica into the volume while I/O continues.
//!
//! 1. **Prepare** (admin lock, writes drained): connect, mark the target `rebuilding` (durably), take one
//!    system snapshot (UUID, `user_created = false`) on every RW replica and on the target at the same
//!    point of the write stream, and add the target as WO. From then on every write reaches its head, and
//!    everything older lives in snapshot layers that no longer change on the source. Several targets
//!    (the stale replicas found at start) are prepared together behind the same snapshot, then copied
//!    one after another.
//! 2. **Copy** (in the background): for every layer of an RW source, removed ones included, root first:
//!    `BeginLayer` on the target (which keeps an existing file, for reuse), punch what the target holds
//!    and the source does not, then walk the source's allocated extents in windows of `rebuild_batch`
//!    bytes with `rebuild_concurrency` windows in flight. For each window whose extents the target holds
//!    already, `LayerChecksum` on both sides is compared first and an equal window is skipped: a stale or
//!    half-rebuilt replica (crash of either side, retried `replica add`) reuses what it has. Otherwise one
//!    `ReadLayer` fetches the window and one `WriteLayer` per extent (pipelined) writes it, so holes stay
//!    holes and never hide older layers.
//! 3. **Finish**: `FinishRebuild` with the source's layers, then verify: same layer names, and equal
//!    checksums of every layer's allocated span. Then, with writes drained and no generation bump running,
//!    copy the source's revision, set the current generation, clear `rebuilding` and set RW.
//!
//! A failure of the target aborts (the target is ERR; a retry reuses its data). A failure of the source
//! drops the source and retries with another RW replica. Progress is the share of the source's allocated
//! bytes handled so far.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use futures::StreamExt;

use crate::engine::Engine;
use crate::error::{EngineError, ErrorKind, Result};
use crate::replica_set::{Mode, ReplicaSlot};
use crate::start::validate_address;
use corral_wire::{
    ErrorKind as WireErrorKind, Extent, ReplicaProtocol, Result as WireResult, SnapshotInfo, WireError,
    HEAD_NAME,
};

/// Bookkeeping of the rebuild in progress and the last finished one.
#[derive(Debug, Default)]
pub(crate) struct RebuildTracker {
    pub(crate) active: Option<String>,
    pub(crate) last: Option<RebuildReport>,
}

/// Outcome of one rebuild: the control API's own type, so the engine reports what `GET /v1/rebuild`
/// answers with no conversion.
pub use corral_api::engine::RebuildReport;

enum Side {
    Source,
    Target,
}

struct CopyFailure {
    side: Side,
    error: WireError,
}

fn on(side: Side) -> impl Fn(WireError) -> CopyFailure {
    move |error| CopyFailure {
        side: match side {
            Side::Source => Side::Source,
            Side::Target => Side::Target,
        },
        error,
    }
}

/// Runs a link call with the control timeout.
async fn timed<T>(limit: Duration, fut: impl std::future::Future<Output = WireResult<T>>) -> WireResult<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(WireError::service(WireErrorKind::Timeout, format!("no answer within {limit:?}"))),
    }
}

/// Orders layers root first (parents before children); layers whose parent is unknown count as roots.
fn root_first(mut layers: Vec<SnapshotInfo>) -> Vec<SnapshotInfo> {
    let mut ordered: Vec<SnapshotInfo> = Vec::with_capacity(layers.len());
    while !layers.is_empty() {
        let before = layers.len();
        let mut i = 0;
        while i < layers.len() {
            let ready = match &layers[i].parent {
                None => true,
                Some(p) => ordered.iter().any(|o| &o.name == p) || !layers.iter().any(|l| &l.name == p),
            };
            if ready {
                ordered.push(layers.remove(i));
            } else {
                i += 1;
            }
        }
        if layers.len() == before {
            // A parent cycle cannot come from a sane replica; keep the rest in listed order.
            ordered.append(&mut layers);
        }
    }
    ordered
}

/// `have` (sorted, non-overlapping) covers all of `want`.
fn covers(have: &[Extent], want: Extent) -> bool {
    let mut pos = want.offset;
    let mut i = have.partition_point(|e| e.end() <= pos);
    while pos < want.end() {
        match have.get(i) {
            Some(e) if e.offset <= pos => {
                pos = e.end();
                i += 1;
            }
            _ => return false,
        }
    }
    true
}

/// Ranges of `a` not covered by `b` (both sorted, non-overlapping).
pub(crate) fn subtract(a: &[Extent], b: &[Extent]) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut j = 0;
    for e in a {
        let mut pos = e.offset;
        while j < b.len() && b[j].end() <= pos {
            j += 1;
        }
        let mut k = j;
        while pos < e.end() {
            match b.get(k) {
                Some(c) if c.offset < e.end() => {
                    if c.offset > pos {
                        out.push(Extent { offset: pos, len: c.offset - pos });
                    }
                    pos = pos.max(c.end());
                    k += 1;
                }
                _ => {
                    out.push(Extent { offset: pos, len: e.end() - pos });
                    pos = e.end();
                }
            }
        }
    }
    out
}

/// Groups extents into windows spanning at most `batch` bytes (large extents are split).
pub(crate) fn windows(extents: &[Extent], batch: u64) -> Vec<Vec<Extent>> {
    let batch = batch.max(4096);
    let mut out: Vec<Vec<Extent>> = Vec::new();
    let mut current: Vec<Extent> = Vec::new();
    for e in extents {
        let mut pos = e.offset;
        while pos < e.end() {
            if let Some(first) = current.first() {
                if pos >= first.offset + batch {
                    out.push(std::mem::take(&mut current));
                    continue;
                }
            }
            let start = current.first().map_or(pos, |f| f.offset);
            let len = (start + batch - pos).min(e.end() - pos);
            current.push(Extent { offset: pos, len });
            pos += len;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Runs `futures` with at most `limit` in flight; stops at the first error.
async fn run_bounded<F, E>(futures: Vec<F>, limit: usize) -> std::result::Result<(), E>
where
    F: std::future::Future<Output = std::result::Result<(), E>>,
{
    let mut queue = futures.into_iter();
    let mut running = futures::stream::FuturesUnordered::new();
    loop {
        while running.len() < limit.max(1) {
            match queue.next() {
                Some(f) => running.push(f),
                None => break,
            }
        }
        match running.next().await {
            Some(r) => r?,
            None => return Ok(()),
        }
    }
}

struct Counters {
    done: AtomicU64,
    copied: AtomicU64,
    reused: AtomicU64,
    total: u64,
}

impl Engine {
    /// `replica add`: prepares the rebuild (the target is WO when this returns) and copies in the
    /// background. Progress shows in [`Engine::replicas`].
    pub async fn add_replica(&self, address: &str) -> Result<()> {
        let targets = self.prepare_rebuild(&[address.to_string()]).await?;
        let engine = self.clone();
        tokio::spawn(async move {
            engine.run_rebuilds(targets).await;
        });
        Ok(())
    }

    /// Rebuilds the given replicas in a background task (used at start for stale ones). They are
    /// prepared together, so one system snapshot marks the same point on the sources and on every
    /// target: each target's own data then sits in a layer of the same name as the source's and is
    /// reused window by window. (Prepared one after another, the second target would lack the first
    /// rebuild's snapshot and receive a full copy of everything written since the last common one.)
    /// Then they are copied one after another.
    pub(crate) fn rebuild_in_background(&self, addresses: Vec<String>) {
        let engine = self.clone();
        tokio::spawn(async move {
            match engine.prepare_rebuild(&addresses).await {
                Ok(targets) => engine.run_rebuilds(targets).await,
                Err(e) => tracing::warn!(replicas = ?addresses, error = %e, "automatic rebuild not started"),
            }
        });
    }

    /// The last finished rebuild.
    pub fn last_rebuild(&self) -> Option<RebuildReport> {
        self.shared.rebuild.lock().last.clone()
    }

    /// Makes every target of `addresses` WO behind one system snapshot (see
    /// [`Self::rebuild_in_background`]). A target that cannot be prepared is left out (and reported
    /// when none is left); nothing is left half-added.
    async fn prepare_rebuild(&self, addresses: &[String]) -> Result<Vec<Arc<ReplicaSlot>>> {
        const OP: &str = "replica add";
        // Callers pass distinct addresses: `Engine::start` checked them, `replica add` gives one.
        for address in addresses {
            validate_address(OP, address)?;
        }
        let _admin = self.shared.admin.lock().await;
        if let Some(active) = self.shared.rebuild.lock().active.clone() {
            return Err(EngineError::conflict(
                OP,
                format!("replica {active} is being rebuilt; one rebuild at a time"),
            ));
        }
        if !self.slots().iter().any(|s| s.mode() == Mode::ReadWrite) {
            return Err(EngineError::unavailable(OP, "no healthy replica to rebuild from"));
        }
        let mut first_error = None;
        let mut connected = Vec::with_capacity(addresses.len());
        for address in addresses {
            match self.connect_target(address).await {
                Ok(link) => connected.push((address, link)),
                Err(e) => {
                    tracing::warn!(replica = %address, error = %e, "rebuild target not prepared");
                    first_error.get_or_insert(e);
                }
            }
        }
        if connected.is_empty() {
            return Err(first_error.unwrap_or_else(|| EngineError::invalid(OP, "no replica to add")));
        }
        let limit = self.shared.config.control_timeout;
        let name = uuid::Uuid::new_v4().to_string();
        let _gate = self.shared.gate.write().await;
        let slots = self.slots();
        let request = corral_wire::SnapshotRequest {
            name: name.clone(),
            user_created: false,
            labels: BTreeMap::new(),
            created: Some(crate::operations::now_rfc3339()),
        };
        if let Err(e) = self.fan_out_within(OP, &slots, limit, |l| l.snapshot(request.clone())).await {
            for (_, link) in &connected {
                link.close();
            }
            return Err(e);
        }
        let mut targets = Vec::with_capacity(connected.len());
        for (address, link) in connected {
            match timed(limit, link.snapshot(request.clone())).await {
                Ok(()) => targets.push(ReplicaSlot::new(address.clone(), Some(link), Mode::WriteOnly)),
                Err(e) => {
                    link.close();
                    tracing::warn!(replica = %address, error = %e, "rebuild target not prepared");
                    first_error.get_or_insert(EngineError::new(
                        ErrorKind::Io,
                        OP,
                        format!("replica {address}: {e}"),
                    ));
                }
            }
        }
        if targets.is_empty() {
            return Err(first_error.unwrap_or_else(|| EngineError::invalid(OP, "no replica to add")));
        }
        let mut list: Vec<Arc<ReplicaSlot>> =
            slots.iter().filter(|s| !targets.iter().any(|t| t.address == s.address)).cloned().collect();
        list.extend(targets.iter().cloned());
        *self.shared.slots.write() = Arc::new(list);
        let names: Vec<&str> = targets.iter().map(|t| t.address.as_str()).collect();
        self.shared.rebuild.lock().active = Some(names.join(", "));
        tracing::info!(volume = %self.volume(), replicas = ?names, snapshot = %name, "rebuild started; replicas are WO");
        Ok(targets)
    }

    /// Connects to a rebuild target, grows it to the volume's size and marks it `rebuilding`
    /// (durably). The caller holds the admin lock.
    async fn connect_target(&self, address: &str) -> Result<Arc<dyn ReplicaProtocol>> {
        const OP: &str = "replica add";
        if let Some(existing) = self.slots().iter().find(|s| s.address == address) {
            if existing.mode() != Mode::Error {
                return Err(EngineError::new(
                    ErrorKind::AlreadyExists,
                    OP,
                    format!("replica {address} is already in the volume ({:?})", existing.mode()),
                ));
            }
        }
        if self.shared.failpoints.is_dead() {
            return Err(EngineError::unavailable(OP, "the engine died at a failpoint"));
        }
        let limit = self.shared.config.control_timeout;
        let fail =
            |e: WireError| EngineError::from_replica(ErrorKind::Io, OP, format_args!("replica {address}"), e);
        let (link, facts) =
            timed(limit, self.shared.connector.connect(address.to_string())).await.map_err(fail)?;
        let size = self.size();
        let result = async {
            if facts.size > size {
                return Err(EngineError::invalid(
                    OP,
                    format!("replica {address} holds {} bytes, more than the volume's {size}", facts.size),
                ));
            }
            if facts.size < size {
                timed(limit, link.expand(size)).await.map_err(fail)?;
            }
            timed(limit, link.set_rebuilding(true)).await.map_err(fail)
        }
        .await;
        match result {
            Ok(()) => Ok(link),
            Err(e) => {
                link.close();
                Err(e)
            }
        }
    }

    /// Copies to each prepared target in turn, then ends the rebuild.
    async fn run_rebuilds(&self, targets: Vec<Arc<ReplicaSlot>>) {
        for slot in targets {
            self.run_rebuild(slot).await;
        }
        self.shared.rebuild.lock().active = None;
    }

    async fn run_rebuild(&self, slot: Arc<ReplicaSlot>) {
        let started = Instant::now();
        let outcome = self.copy_and_finish(&slot).await;
        let (succeeded, error, counters) = match outcome {
            Ok(c) => (true, None, Some(c)),
            Err((e, c)) => {
                if slot.mode() != Mode::Error {
                    self.fail_replica(
                        &slot,
                        "rebuild",
                        &WireError::service(WireErrorKind::Io, e.to_string()),
                    );
                }
                tracing::warn!(volume = %self.volume(), replica = %slot.address, error = %e, "rebuild failed");
                (false, Some(e.to_string()), c)
            }
        };
        let report = RebuildReport {
            address: slot.address.clone(),
            succeeded,
            error,
            total_bytes: counters.as_ref().map(|c| c.total).unwrap_or(0),
            copied_bytes: counters.as_ref().map(|c| c.copied.load(Ordering::SeqCst)).unwrap_or(0),
            reused_bytes: counters.as_ref().map(|c| c.reused.load(Ordering::SeqCst)).unwrap_or(0),
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(volume = %self.volume(), ?report, "rebuild ended");
        self.shared.rebuild.lock().last = Some(report);
    }

    async fn copy_and_finish(
        &self,
        slot: &Arc<ReplicaSlot>,
    ) -> std::result::Result<Arc<Counters>, (EngineError, Option<Arc<Counters>>)> {
        const OP: &str = "rebuild";
        let Some(target) = slot.link.clone() else {
            return Err((EngineError::new(ErrorKind::Io, OP, "target has no connection"), None));
        };
        let mut last_counters = None;
        for _attempt in 0..3 {
            let slots = self.slots();
            let Some(source_slot) = slots.iter().find(|s| s.mode() == Mode::ReadWrite).cloned() else {
                return Err((
                    EngineError::unavailable(OP, "no healthy replica left to copy from"),
                    last_counters,
                ));
            };
            let Some(source) = source_slot.link.clone() else { continue };
            match self.copy_from(&source, &target, slot).await {
                Ok((counters, chain)) => {
                    last_counters = Some(counters.clone());
                    return match self.finish(slot, &source, &target, chain).await {
                        Ok(()) => Ok(counters),
                        Err(e) => Err((e, last_counters)),
                    };
                }
                Err((failure, counters)) => {
                    last_counters = counters;
                    match failure.side {
                        Side::Source => {
                            self.fail_replica(&source_slot, "rebuild source", &failure.error);
                            // Anything acknowledged later must first bump the generation past the source.
                            if let Err(e) = self.settle(OP).await {
                                return Err((e, last_counters));
                            }
                        }
                        Side::Target => {
                            return Err((
                                EngineError::new(
                                    ErrorKind::Io,
                                    OP,
                                    format!("target {}: {}", slot.address, failure.error),
                                ),
                                last_counters,
                            ))
                        }
                    }
                }
            }
        }
        Err((EngineError::new(ErrorKind::Io, OP, "every source replica failed"), last_counters))
    }

    async fn copy_from(
        &self,
        source: &Arc<dyn ReplicaProtocol>,
        target: &Arc<dyn ReplicaProtocol>,
        slot: &ReplicaSlot,
    ) -> std::result::Result<(Arc<Counters>, Vec<SnapshotInfo>), (CopyFailure, Option<Arc<Counters>>)> {
        let limit = self.shared.config.control_timeout;
        let listed = timed(limit, source.list_snapshots()).await.map_err(|e| (on(Side::Source)(e), None))?;
        let chain = root_first(listed.into_iter().filter(|s| s.name != HEAD_NAME).collect());
        let mut plans = Vec::with_capacity(chain.len());
        let mut total = 0u64;
        for info in &chain {
            let src = timed(limit, source.layer_extents(info.name.clone()))
                .await
                .map_err(|e| (on(Side::Source)(e), None))?;
            timed(limit, target.begin_layer(info.clone())).await.map_err(|e| (on(Side::Target)(e), None))?;
            let dst = timed(limit, target.layer_extents(info.name.clone()))
                .await
                .map_err(|e| (on(Side::Target)(e), None))?;
            total += src.iter().map(|e| e.len).sum::<u64>();
            plans.push((info.name.clone(), src, dst));
        }
        let counters = Arc::new(Counters {
            done: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            total,
        });
        for (name, src, dst) in &plans {
            self.copy_layer(source, target, slot, name, src, dst, &counters)
                .await
                .map_err(|f| (f, Some(counters.clone())))?;
        }
        Ok((counters, chain))
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_layer(
        &self,
        source: &Arc<dyn ReplicaProtocol>,
        target: &Arc<dyn ReplicaProtocol>,
        slot: &ReplicaSlot,
        name: &str,
        src: &[Extent],
        dst: &[Extent],
        counters: &Counters,
    ) -> std::result::Result<(), CopyFailure> {
        let limit = self.shared.config.control_timeout;
        let concurrency = self.shared.config.rebuild_concurrency.max(1);
        // What the target holds and the source does not would shadow older layers: punch it.
        let extra = subtract(dst, src);
        let mut punches = Vec::with_capacity(extra.len());
        for e in &extra {
            punches.push(timed(limit, target.punch_layer(name.to_string(), e.offset, e.len)));
        }
        run_bounded(punches, concurrency).await.map_err(on(Side::Target))?;
        let kept: Vec<Extent> = subtract(dst, &extra);
        let mut copies = Vec::new();
        for window in windows(src, self.shared.config.rebuild_batch) {
            copies.push(self.copy_window(source, target, slot, name, window, &kept, counters));
        }
        run_bounded(copies, concurrency).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_window(
        &self,
        source: &Arc<dyn ReplicaProtocol>,
        target: &Arc<dyn ReplicaProtocol>,
        slot: &ReplicaSlot,
        name: &str,
        window: Vec<Extent>,
        kept: &[Extent],
        counters: &Counters,
    ) -> std::result::Result<(), CopyFailure> {
        if slot.mode() != Mode::WriteOnly {
            return Err(CopyFailure {
                side: Side::Target,
                error: WireError::service(WireErrorKind::Closed, "target left the volume"),
            });
        }
        let limit = self.shared.config.control_timeout;
        let (Some(first), Some(last)) = (window.first(), window.last()) else { return Ok(()) };
        let start = first.offset;
        let span = last.end() - start;
        let bytes: u64 = window.iter().map(|e| e.len).sum();
        if window.iter().all(|e| covers(kept, *e)) {
            let (a, b) = futures::join!(
                timed(limit, source.layer_checksum(name.to_string(), start, span)),
                timed(limit, target.layer_checksum(name.to_string(), start, span))
            );
            let a = a.map_err(on(Side::Source))?;
            let b = b.map_err(on(Side::Target))?;
            if a == b {
                counters.reused.fetch_add(bytes, Ordering::Relaxed);
                self.count_progress(slot, counters, bytes);
                return Ok(());
            }
        }
        if self.shared.failpoints.is_armed(crate::failpoint::REBUILD_COPY_MID_EXTENT) {
            // Half of the window's first extent reaches the target, then the engine dies.
            let half = (first.len / 2).max(1);
            let data = timed(limit, source.read_layer(name.to_string(), first.offset, half))
                .await
                .map_err(on(Side::Source))?;
            let _ = timed(limit, target.write_layer(name.to_string(), first.offset, data)).await;
            let error = self.die_at(crate::failpoint::REBUILD_COPY_MID_EXTENT, "rebuild");
            return Err(CopyFailure {
                side: Side::Target,
                error: WireError::service(WireErrorKind::Closed, error.to_string()),
            });
        }
        let data: Bytes =
            timed(limit, source.read_layer(name.to_string(), start, span)).await.map_err(on(Side::Source))?;
        if data.len() as u64 != span {
            return Err(CopyFailure {
                side: Side::Source,
                error: WireError::service(WireErrorKind::Protocol, "short layer read"),
            });
        }
        let writes = window.iter().map(|e| {
            let at = (e.offset - start) as usize;
            timed(limit, target.write_layer(name.to_string(), e.offset, data.slice(at..at + e.len as usize)))
        });
        for r in join_all(writes).await {
            r.map_err(on(Side::Target))?;
        }
        counters.copied.fetch_add(bytes, Ordering::Relaxed);
        self.count_progress(slot, counters, bytes);
        Ok(())
    }

    fn count_progress(&self, slot: &ReplicaSlot, counters: &Counters, bytes: u64) {
        let done = counters.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let percent = done.saturating_mul(100).checked_div(counters.total).map_or(99, |p| p.min(99));
        slot.set_progress(percent as u8);
    }

    async fn finish(
        &self,
        slot: &Arc<ReplicaSlot>,
        source: &Arc<dyn ReplicaProtocol>,
        target: &Arc<dyn ReplicaProtocol>,
        chain: Vec<SnapshotInfo>,
    ) -> Result<()> {
        const OP: &str = "rebuild finish";
        let limit = self.shared.config.control_timeout;
        let fail = |side: &str, e: WireError| EngineError::from_replica(ErrorKind::Io, OP, side, e);
        timed(limit, target.finish_rebuild(chain.clone())).await.map_err(|e| fail("target", e))?;
        self.verify(source, target, &chain).await?;
        let _admin = self.shared.admin.lock().await;
        let _bump = self.shared.bump_lock.lock().await;
        let _gate = self.shared.gate.write().await;
        if slot.mode() != Mode::WriteOnly {
            return Err(EngineError::new(ErrorKind::Io, OP, "the target failed during the rebuild"));
        }
        let facts = timed(limit, source.info()).await.map_err(|e| fail("source", e))?;
        timed(limit, target.set_revision(facts.revision)).await.map_err(|e| fail("target", e))?;
        timed(limit, target.set_generation(self.generation())).await.map_err(|e| fail("target", e))?;
        if self.shared.failpoints.is_armed(crate::failpoint::REBUILD_BEFORE_SET_RW) {
            return Err(self.die_at(crate::failpoint::REBUILD_BEFORE_SET_RW, OP));
        }
        timed(limit, target.set_rebuilding(false)).await.map_err(|e| fail("target", e))?;
        if self.shared.failpoints.is_armed(crate::failpoint::REBUILD_AFTER_CLEAR_REBUILDING) {
            return Err(self.die_at(crate::failpoint::REBUILD_AFTER_CLEAR_REBUILDING, OP));
        }
        slot.set_progress(100);
        slot.set_mode(Mode::ReadWrite);
        tracing::info!(volume = %self.volume(), replica = %slot.address, "rebuild verified; replica is RW");
        Ok(())
    }

    /// Same layer names on both sides, and equal checksums over each layer's allocated span.
    async fn verify(
        &self,
        source: &Arc<dyn ReplicaProtocol>,
        target: &Arc<dyn ReplicaProtocol>,
        chain: &[SnapshotInfo],
    ) -> Result<()> {
        const OP: &str = "rebuild verify";
        let limit = self.shared.config.control_timeout;
        let fail = |side: &str, e: WireError| EngineError::from_replica(ErrorKind::Io, OP, side, e);
        let mut on_target: Vec<String> = timed(limit, target.list_snapshots())
            .await
            .map_err(|e| fail("target", e))?
            .into_iter()
            .map(|s| s.name)
            .filter(|n| n != HEAD_NAME)
            .collect();
        let mut expected: Vec<String> = chain.iter().map(|s| s.name.clone()).collect();
        on_target.sort();
        expected.sort();
        if on_target != expected {
            return Err(EngineError::new(
                ErrorKind::Io,
                OP,
                format!("target layers {on_target:?} differ from the source's {expected:?}"),
            ));
        }
        const PIECE: u64 = 64 << 20;
        let mut ranges = Vec::new();
        for info in chain {
            let extents =
                timed(limit, source.layer_extents(info.name.clone())).await.map_err(|e| fail("source", e))?;
            if let (Some(first), Some(last)) = (extents.first(), extents.last()) {
                let mut pos = first.offset;
                while pos < last.end() {
                    let len = PIECE.min(last.end() - pos);
                    ranges.push((info.name.clone(), pos, len));
                    pos += len;
                }
            }
        }
        let mut checks = Vec::with_capacity(ranges.len());
        for (name, off, len) in ranges {
            checks.push(async move {
                let (a, b) = futures::join!(
                    timed(limit, source.layer_checksum(name.clone(), off, len)),
                    timed(limit, target.layer_checksum(name.clone(), off, len))
                );
                let (a, b) = (a.map_err(|e| fail("source", e))?, b.map_err(|e| fail("target", e))?);
                if a != b {
                    return Err(EngineError::new(
                        ErrorKind::Io,
                        OP,
                        format!("layer {name} differs at {off}+{len} after the copy"),
                    ));
                }
                Ok(())
            });
        }
        run_bounded(checks, 2).await
    }
}

#[cfg(test)]
#[path = "rebuild_tests.rs"]
mod tests;
