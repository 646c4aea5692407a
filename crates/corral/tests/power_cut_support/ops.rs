//! The replica-operations power-cut scenario: one replica in the VM driven over the wire protocol (as
//! `replica_crash.rs` does, with its model approach) by batches of writes (some FUA), flushes, snapshot
//! create, mark-removed + purge, revert to the newest snapshot and expand, the power cut either at a random
//! moment or a few milliseconds into a chosen snapshot operation. After the reboot (and `corral replica
//! check`):
//! - every block no unacknowledged write touched holds what the last acknowledged flush, FUA write,
//!   snapshot (it syncs the head first) or revert left;
//! - every acknowledged snapshot exists; one acknowledged as removed is gone or still marked removed; a
//!   snapshot whose creation or mark-removed was cut off may or may not be there / be marked;
//! - a cut-off revert left either the old volume or the snapshot's content; a cut-off expand either size.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corral_testkit::vm::Filesystem;
use corral_wire::{Bytes, ErrorKind, ReplicaClient, SnapshotRequest, WireError};
use rand::rngs::StdRng;
use rand::Rng;

use super::{seeded, CorralVm};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
const START_SIZE: u64 = 8 * MIB;
const MAX_SIZE: u64 = 20 * MIB;

/// What a campaign did.
#[derive(Debug, Default)]
pub struct Summary {
    pub cuts: usize,
    /// Acknowledged writes, flushes and snapshot operations (create, remove + purge, revert, expand).
    pub acked: [u64; 3],
    /// Acknowledged snapshot operations by kind.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// What was in flight at each cut ("writes" when no snapshot operation was).
    pub cut_during: Vec<&'static str>,
}

/// What the test knows about the replica.
#[derive(Default)]
struct Model {
    size: u64,
    /// The volume as acknowledged.
    current: Vec<u8>,
    /// The volume as of the last acknowledged flush, FUA write, snapshot or revert.
    durable: Vec<u8>,
    /// 4 KiB blocks written (or attempted) since they were last made durable.
    unsettled: HashSet<u64>,
    live: BTreeSet<String>,
    removed: BTreeSet<String>,
    /// Snapshots whose mark-removed was cut off.
    maybe_removed: BTreeSet<String>,
    /// A snapshot whose creation was cut off.
    maybe_created: Option<String>,
    /// The content a cut-off revert would have left.
    maybe_reverted: Option<Vec<u8>>,
    /// The size a cut-off expand would have left.
    maybe_expanded: Option<u64>,
    /// The content of each snapshot the test made.
    contents: HashMap<String, Vec<u8>>,
    /// The head's parent, when it is a live snapshot the test made (revert targets it).
    newest: Option<String>,
    next_snapshot: u32,
}

impl Model {
    fn touch(&mut self, offset: u64, len: u64) {
        self.unsettled.extend(offset / BLOCK..(offset + len).div_ceil(BLOCK));
    }

    fn settle_all(&mut self) {
        self.durable.clone_from(&self.current);
        self.unsettled.clear();
    }

    fn resize(&mut self, size: u64) {
        self.size = size;
        self.current.resize(size as usize, 0);
        self.durable.resize(size as usize, 0);
    }
}

fn is_connection_loss(err: &WireError) -> bool {
    matches!(err.kind(), ErrorKind::Closed | ErrorKind::Timeout)
}

/// Runs `rounds` cuts (and a final reboot and check) on a fresh disk image under `dir`.
pub fn run(corral: &Path, dir: &Path, filesystem: Filesystem, rounds: usize, seed: Option<u64>) -> Summary {
    let (seed, mut rng) = seeded(seed);
    eprintln!("power cut (replica operations, {filesystem:?}) seed {seed}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut vm = CorralVm::new(corral, &dir.join(format!("ops-{}.img", filesystem.name())), filesystem);
    let mut model = Model { size: START_SIZE, ..Default::default() };
    model.resize(START_SIZE);
    let mut summary = Summary::default();
    for round in 0..=rounds {
        let context = format!("round {round} (seed {seed}, {filesystem:?})");
        let started = Instant::now();
        vm.boot_and_check(&context);
        let size = format!("{START_SIZE}");
        let address = vm.start_replicas(1, (round == 0).then_some(size.as_str())).remove(0);
        let client = runtime.block_on(async {
            let client =
                ReplicaClient::connect(&address, 2).await.unwrap_or_else(|e| panic!("{context}: {e}"));
            client.hello("power-cut", false).await.unwrap_or_else(|e| panic!("{context}: {e}"));
            verify(&client, &mut model, &context).await;
            client
        });
        if round == rounds {
            break;
        }
        let pid = vm.vm.qemu_pid().unwrap_or_else(|| panic!("{context}: the VM is not running"));
        let fallback = Duration::from_millis(rng.random_range(300..6000));
        let (arm, armed) = mpsc::channel::<Duration>();
        let cutter = std::thread::spawn(move || {
            let delay = match armed.recv_timeout(fallback) {
                Ok(delay) => {
                    std::thread::sleep(delay);
                    delay
                }
                Err(_) => fallback,
            };
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            delay
        });
        runtime.block_on(async {
            let work = workload(&client, &mut model, &mut rng, &arm, &mut summary);
            tokio::time::timeout(Duration::from_secs(120), work)
                .await
                .unwrap_or_else(|_| panic!("{context}: the workload did not notice the power cut"));
        });
        let delay = cutter.join().unwrap_or_else(|_| panic!("the power-cut thread panicked"));
        vm.vm.cut_power();
        drop(client);
        summary.cuts += 1;
        eprintln!(
            "{context}: cut during {} ({delay:?} after arming); acknowledged so far: {} writes, {} flushes, {} \
             snapshot operations {:?}; {} unsettled blocks; round took {:?}",
            summary.cut_during.last().copied().unwrap_or("?"),
            summary.acked[0],
            summary.acked[1],
            summary.acked[2],
            summary.by_kind,
            model.unsettled.len(),
            started.elapsed()
        );
    }
    vm.vm.cut_power();
    summary
}

/// Reads the volume back and checks it and the snapshot list against the model; then makes what is on
/// disk the model's truth (flushed), as a new start.
async fn verify(client: &ReplicaClient, model: &mut Model, context: &str) {
    let info = client.info().await.unwrap_or_else(|e| panic!("{context}: info: {e}"));
    match model.maybe_expanded.take() {
        Some(size) if info.size == size => model.resize(size),
        _ => assert_eq!(info.size, model.size, "{context}: the volume has the wrong size"),
    }
    let mut volume = Vec::with_capacity(model.size as usize);
    for offset in (0..model.size).step_by(4 * MIB as usize) {
        let len = (4 * MIB).min(model.size - offset);
        volume.extend_from_slice(
            &client.read(offset, len).await.unwrap_or_else(|e| panic!("{context}: read: {e}")),
        );
    }
    let reverted = model.maybe_reverted.take().is_some_and(|content| content == volume);
    if !reverted {
        for block in 0..model.size / BLOCK {
            if model.unsettled.contains(&block) {
                continue;
            }
            let range = (block * BLOCK) as usize..((block + 1) * BLOCK) as usize;
            assert!(
                volume[range.clone()] == model.durable[range],
                "{context}: block {block} (offset {}) lost data acknowledged as durable",
                block * BLOCK
            );
        }
    }
    let snapshots = client.list_snapshots().await.unwrap_or_else(|e| panic!("{context}: list: {e}"));
    let find = |name: &str| snapshots.iter().find(|s| s.name == name);
    for name in &model.live {
        let found = find(name).unwrap_or_else(|| panic!("{context}: acknowledged snapshot {name} lost"));
        assert!(!found.removed, "{context}: snapshot {name} was never removed but is marked removed");
    }
    if let Some(name) = model.maybe_created.take() {
        if find(&name).is_some() {
            model.live.insert(name.clone());
            model.newest = Some(name);
        }
    }
    for name in std::mem::take(&mut model.maybe_removed) {
        match find(&name) {
            Some(found) if found.removed => {
                model.removed.insert(name);
            }
            Some(_) => {
                model.live.insert(name);
            }
            None => panic!("{context}: snapshot {name} lost (its mark-removed was cut off; no purge ran)"),
        }
    }
    for name in &model.removed {
        if let Some(found) = find(name) {
            assert!(found.removed, "{context}: snapshot {name} came back unremoved");
        }
    }
    model.removed.retain(|name| find(name).is_some());
    client.flush().await.unwrap_or_else(|e| panic!("{context}: flush: {e}"));
    model.current = volume;
    model.settle_all();
}

/// Writes and operations until the power cut. After a random number of snapshot operations the next one
/// is preceded by a message to the cutter, which strikes a few milliseconds into it.
async fn workload(
    client: &ReplicaClient,
    model: &mut Model,
    rng: &mut StdRng,
    arm: &mpsc::Sender<Duration>,
    summary: &mut Summary,
) {
    let mut arm_after = rng.random_range(0..5u32);
    let mut op_time = Duration::ZERO;
    loop {
        if !write_batch(client, model, rng, summary).await {
            return summary.cut_during.push("writes");
        }
        if rng.random_bool(0.4) {
            match client.flush().await {
                Ok(()) => {
                    model.settle_all();
                    summary.acked[1] += 1;
                }
                Err(err) if is_connection_loss(&err) => return summary.cut_during.push("flush"),
                Err(err) => panic!("flush failed: {err}"),
            }
        }
        if rng.random_bool(0.7) {
            if arm_after == 0 {
                // Aim inside the operation: operations under TCG take from milliseconds to a second, so
                // the delay is drawn from the longest one seen so far.
                let longest = op_time.as_micros().max(1000) as u64;
                let _ = arm.send(Duration::from_micros(rng.random_range(0..longest)));
            }
            arm_after = arm_after.wrapping_sub(1);
            let op_started = Instant::now();
            let (kind, result) = operation(client, model, rng).await;
            op_time = op_time.max(op_started.elapsed());
            match result {
                Ok(()) if kind == "nothing" => {}
                Ok(()) => {
                    summary.acked[2] += 1;
                    *summary.by_kind.entry(kind).or_default() += 1;
                }
                Err(err) if is_connection_loss(&err) => return summary.cut_during.push(kind),
                Err(err) => panic!("{kind} failed: {err}"),
            }
        }
    }
}

/// One batch of writes in distinct 1 MiB regions, all in flight at once; `false` once the power is cut.
async fn write_batch(
    client: &ReplicaClient,
    model: &mut Model,
    rng: &mut StdRng,
    summary: &mut Summary,
) -> bool {
    let mut regions: Vec<u64> = (0..model.size / MIB).collect();
    let count = rng.random_range(1..=regions.len().min(8));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..count {
        let region = regions.swap_remove(rng.random_range(0..regions.len()));
        let len = match rng.random_range(0..4) {
            0 => rng.random_range(1..BLOCK),
            1 => BLOCK,
            2 => BLOCK * rng.random_range(2..16),
            _ => rng.random_range(1..MIB / 4),
        };
        let mut offset = region * MIB + rng.random_range(0..MIB - len);
        if rng.random_bool(0.5) {
            offset -= offset % BLOCK;
        }
        let fua = rng.random_bool(0.2);
        let fill: u8 = rng.random();
        let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add((i / 512) as u8)).collect();
        model.touch(offset, len);
        let client = client.clone();
        calls.spawn(async move {
            let bytes = Bytes::from(data.clone());
            let result =
                if fua { client.write_fua(offset, bytes).await } else { client.write(offset, bytes).await };
            (offset, fua, result, data)
        });
    }
    let mut lost = false;
    while let Some(joined) = calls.join_next().await {
        let (offset, fua, result, data) = joined.unwrap_or_else(|e| panic!("a write task failed: {e}"));
        let range = offset as usize..offset as usize + data.len();
        match result {
            Ok(()) => {
                model.current[range.clone()].copy_from_slice(&data);
                summary.acked[0] += 1;
                if fua {
                    model.durable[range].copy_from_slice(&data);
                    // Blocks the FUA write covered whole are durable; partly covered ones may still hold
                    // bytes of an earlier unflushed write.
                    let end = offset + data.len() as u64;
                    for block in offset.div_ceil(BLOCK)..end / BLOCK {
                        model.unsettled.remove(&block);
                    }
                }
            }
            Err(err) if is_connection_loss(&err) => lost = true,
            Err(err) => panic!("write at {offset} failed: {err}"),
        }
    }
    !lost
}

/// One snapshot operation, with the model updated for its acknowledgement or its cut-off.
async fn operation(
    client: &ReplicaClient,
    model: &mut Model,
    rng: &mut StdRng,
) -> (&'static str, Result<(), WireError>) {
    match rng.random_range(0..6) {
        0..=2 => {
            model.next_snapshot += 1;
            let name = format!("cut-{}", model.next_snapshot);
            let request = SnapshotRequest { name: name.clone(), user_created: true, ..Default::default() };
            let result = client.snapshot(request).await;
            match &result {
                Ok(()) => {
                    // A snapshot syncs the head first: everything acknowledged before it is durable.
                    model.settle_all();
                    model.live.insert(name.clone());
                    model.newest = Some(name.clone());
                }
                Err(err) if is_connection_loss(err) => model.maybe_created = Some(name.clone()),
                Err(_) => {}
            }
            model.contents.insert(name, model.current.clone());
            ("snapshot", result)
        }
        3 => {
            let Some(name) = model.live.iter().next().cloned() else { return ("nothing", Ok(())) };
            let result = client.mark_removed(&name).await;
            match &result {
                Ok(()) => {
                    model.live.remove(&name);
                    model.removed.insert(name.clone());
                    if model.newest.as_ref() == Some(&name) {
                        model.newest = None;
                    }
                }
                Err(err) if is_connection_loss(err) => {
                    model.live.remove(&name);
                    model.maybe_removed.insert(name.clone());
                    if model.newest.as_ref() == Some(&name) {
                        model.newest = None;
                    }
                }
                Err(_) => {}
            }
            if result.is_err() {
                return ("mark-removed", result);
            }
            ("purge", client.purge().await)
        }
        4 => {
            let Some(name) = model.newest.clone() else { return ("nothing", Ok(())) };
            let Some(content) = model.contents.get(&name).filter(|c| c.len() as u64 == model.size).cloned()
            else {
                return ("nothing", Ok(()));
            };
            let result = client.revert(&name).await;
            match &result {
                Ok(()) => {
                    model.current = content;
                    model.settle_all();
                }
                Err(err) if is_connection_loss(err) => model.maybe_reverted = Some(content),
                Err(_) => {}
            }
            ("revert", result)
        }
        _ => {
            if model.size + 4 * MIB > MAX_SIZE {
                return ("nothing", Ok(()));
            }
            let size = model.size + 4 * MIB;
            let result = client.expand(size).await;
            match &result {
                Ok(()) => {
                    // Expand is a snapshot (the head is synced) with a new, larger head.
                    model.settle_all();
                    model.resize(size);
                    model.newest = None;
                }
                Err(err) if is_connection_loss(err) => {
                    model.maybe_expanded = Some(size);
                    model.newest = None;
                }
                Err(_) => {}
            }
            ("expand", result)
        }
    }
}
