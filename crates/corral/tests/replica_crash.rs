//! Crash tests: SIGKILL `corral replica serve` at random moments during a write workload and during
//! snapshot / mark-removed / purge operations, restart it on the same directory, and check that
//! - the directory always opens, and `corral replica check` passes on it after every crash;
//! - every write acknowledged before the last acknowledged FLUSH reads back exactly (a model of the
//!   flushed data is kept; blocks written after the last acknowledged flush may hold either version);
//! - every acknowledged snapshot still exists, and one acknowledged as removed is gone or marked removed;
//!   one whose mark-removed was cut off by the kill still exists, removed or not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod replica_support;

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::Duration;

use corral_wire::{Bytes, ErrorKind, ReplicaClient, SnapshotRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replica_support::*;

const SIZE: u64 = 16 << 20;
const REGION: u64 = 1 << 20;
const BLOCK: u64 = 4096;

/// What the test knows about the volume.
struct Model {
    /// The volume as the engine last saw it (all acknowledged writes).
    current: Vec<u8>,
    /// The volume as of the last acknowledged flush.
    durable: Vec<u8>,
    /// 4 KiB blocks written (or attempted) since the last acknowledged flush.
    unsettled: HashSet<u64>,
    /// Snapshots acknowledged as created and not (yet) acknowledged as removed.
    live_snapshots: BTreeSet<String>,
    /// Snapshots acknowledged as marked removed.
    removed_snapshots: BTreeSet<String>,
    /// Live snapshots whose mark-removed was sent but never acknowledged (the server died): each
    /// may or may not be marked removed, but it must still exist at the next restart (only a purge
    /// after an acknowledged mark-removed could delete it, and none ran since).
    maybe_removed: BTreeSet<String>,
    next_snapshot: u32,
    /// Counters for the log: acknowledged writes, flushes, snapshot operations.
    acked: [u64; 3],
}

impl Model {
    fn new() -> Model {
        Model {
            current: vec![0; SIZE as usize],
            durable: vec![0; SIZE as usize],
            unsettled: HashSet::new(),
            live_snapshots: BTreeSet::new(),
            removed_snapshots: BTreeSet::new(),
            maybe_removed: BTreeSet::new(),
            next_snapshot: 0,
            acked: [0; 3],
        }
    }

    fn touch(&mut self, offset: u64, len: u64) {
        for block in offset / BLOCK..(offset + len).div_ceil(BLOCK) {
            self.unsettled.insert(block);
        }
    }
}

fn is_connection_loss(err: &corral_wire::WireError) -> bool {
    matches!(err.kind(), ErrorKind::Closed | ErrorKind::Timeout)
}

/// Reads the whole volume and checks every settled block against the flushed model.
async fn verify_after_restart(client: &ReplicaClient, model: &mut Model, iteration: usize, seed: u64) {
    let mut volume = Vec::with_capacity(SIZE as usize);
    for chunk in 0..SIZE / (4 << 20) {
        volume.extend_from_slice(&client.read(chunk * (4 << 20), 4 << 20).await.unwrap());
    }
    for block in 0..SIZE / BLOCK {
        if model.unsettled.contains(&block) {
            continue;
        }
        let range = (block * BLOCK) as usize..((block + 1) * BLOCK) as usize;
        assert!(
            volume[range.clone()] == model.durable[range],
            "iteration {iteration} (seed {seed}): block {block} (offset {}) lost flushed data",
            block * BLOCK
        );
    }
    let snapshots = client.list_snapshots().await.unwrap();
    for name in &model.live_snapshots {
        let found = snapshots.iter().find(|s| &s.name == name);
        assert!(found.is_some(), "iteration {iteration} (seed {seed}): acknowledged snapshot {name} lost");
    }
    for name in std::mem::take(&mut model.maybe_removed) {
        match snapshots.iter().find(|s| s.name == name) {
            Some(found) if found.removed => {
                model.removed_snapshots.insert(name);
            }
            Some(_) => {
                model.live_snapshots.insert(name);
            }
            None => panic!(
                "iteration {iteration} (seed {seed}): snapshot {name} lost (its mark-removed was never acknowledged)"
            ),
        }
    }
    for name in &model.removed_snapshots {
        if let Some(found) = snapshots.iter().find(|s| &s.name == name) {
            assert!(
                found.removed,
                "iteration {iteration} (seed {seed}): snapshot {name} came back unremoved"
            );
        }
    }
    // From here on, what is on disk is the truth; make it durable so the next round starts settled.
    client.flush().await.unwrap();
    model.current = volume.clone();
    model.durable = volume;
    model.unsettled.clear();
    model.removed_snapshots.retain(|name| snapshots.iter().any(|s| &s.name == name));
}

/// Runs writes (and, with `with_snapshots`, snapshot / remove / purge) until the server dies. With
/// snapshots, the kill is aimed: after `arm_after` snapshot operations, the next one is preceded by a
/// message to the killer, which strikes a few milliseconds later, in the middle of that operation.
async fn workload(
    client: &ReplicaClient,
    model: &mut Model,
    rng: &mut StdRng,
    with_snapshots: bool,
    arm: &std::sync::mpsc::Sender<Duration>,
) {
    let mut arm_after = rng.random_range(0..6u32);
    loop {
        // One batch: a write in each of up to 16 distinct 1 MiB regions, all in flight at once.
        let mut regions: Vec<u64> = (0..SIZE / REGION).collect();
        let count = rng.random_range(1..=regions.len());
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..count {
            let region = regions.swap_remove(rng.random_range(0..regions.len()));
            let len = match rng.random_range(0..4) {
                0 => rng.random_range(1..BLOCK),
                1 => BLOCK,
                2 => BLOCK * rng.random_range(2..16),
                _ => rng.random_range(1..REGION / 4),
            };
            let aligned = rng.random_bool(0.5);
            let mut offset = region * REGION + rng.random_range(0..REGION - len);
            if aligned {
                offset -= offset % BLOCK;
            }
            let fill: u8 = rng.random();
            let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add((i / 512) as u8)).collect();
            model.touch(offset, len);
            let client = client.clone();
            calls.spawn(async move { (offset, client.write(offset, Bytes::from(data.clone())).await, data) });
        }
        let mut lost = false;
        while let Some(joined) = calls.join_next().await {
            let (offset, result, data) = joined.unwrap();
            match result {
                Ok(()) => {
                    model.current[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                    model.acked[0] += 1;
                }
                Err(err) if is_connection_loss(&err) => lost = true,
                Err(err) => panic!("write at {offset} failed: {err}"),
            }
        }
        if lost {
            return;
        }
        if rng.random_bool(0.5) {
            match client.flush().await {
                Ok(()) => {
                    model.durable.copy_from_slice(&model.current);
                    model.unsettled.clear();
                    model.acked[1] += 1;
                }
                Err(err) if is_connection_loss(&err) => return,
                Err(err) => panic!("flush failed: {err}"),
            }
        }
        if with_snapshots && rng.random_bool(0.8) {
            if arm_after == 0 {
                let _ = arm.send(Duration::from_micros(rng.random_range(0..20_000)));
            }
            arm_after = arm_after.wrapping_sub(1);
            let result = match rng.random_range(0..3) {
                0 | 1 => {
                    model.next_snapshot += 1;
                    let name = format!("crash-{}-{}", std::process::id(), model.next_snapshot);
                    let request =
                        SnapshotRequest { name: name.clone(), user_created: true, ..Default::default() };
                    client.snapshot(request).await.map(|()| {
                        model.live_snapshots.insert(name);
                    })
                }
                _ => {
                    // Remove the oldest live snapshot (it has data below newer ones), then purge.
                    let Some(name) = model.live_snapshots.iter().next().cloned() else { continue };
                    match client.mark_removed(&name).await {
                        Ok(()) => {
                            model.live_snapshots.remove(&name);
                            model.removed_snapshots.insert(name);
                            client.purge().await
                        }
                        Err(err) => {
                            if is_connection_loss(&err) {
                                model.live_snapshots.remove(&name);
                                model.maybe_removed.insert(name);
                            }
                            Err(err)
                        }
                    }
                }
            };
            match result {
                Ok(()) => model.acked[2] += 1,
                Err(err) if is_connection_loss(&err) => return,
                Err(err) => panic!("snapshot operation failed: {err}"),
            }
        }
    }
}

async fn crash_loop(dir: &Path, iterations: usize, with_snapshots: bool) {
    let seed: u64 = rand::random();
    eprintln!("crash test seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::new();
    for iteration in 0..=iterations {
        let size = (iteration == 0).then_some("16MiB");
        let mut server = start_replica(dir, size, "127.0.0.1:0");
        let client = ReplicaClient::connect(&server.address, 2).await.unwrap();
        client.hello("crash-engine", false).await.unwrap();
        verify_after_restart(&client, &mut model, iteration, seed).await;
        if iteration == iterations {
            break;
        }
        // Without snapshots: a random delay. With snapshots: aimed by the workload (see `workload`), with
        // a random delay as a fallback.
        let fallback = Duration::from_millis(rng.random_range(20..600) * if with_snapshots { 10 } else { 1 });
        let (arm, armed) = std::sync::mpsc::channel::<Duration>();
        let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
        let killer = std::thread::spawn(move || {
            let delay = match armed.recv_timeout(fallback) {
                Ok(delay) => {
                    std::thread::sleep(delay);
                    delay
                }
                Err(_) => fallback,
            };
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            delay
        });
        let work = workload(&client, &mut model, &mut rng, with_snapshots, &arm);
        tokio::time::timeout(Duration::from_secs(30), work)
            .await
            .expect("the workload did not notice the server's death");
        let delay = killer.join().unwrap();
        eprintln!(
            "iteration {iteration}: killed after {delay:?}; acknowledged so far: {} writes, {} flushes, {} snapshot operations; {} unsettled blocks",
            model.acked[0], model.acked[1], model.acked[2], model.unsettled.len()
        );
        server.kill9();
        drop(client);
        assert_check_passes(dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_never_loses_flushed_data() {
    let temp = tempfile::tempdir().unwrap();
    crash_loop(&temp.path().join("replica"), 8, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_snapshot_and_purge_never_loses_flushed_data_or_breaks_the_directory() {
    let temp = tempfile::tempdir().unwrap();
    crash_loop(&temp.path().join("replica"), 8, true).await;
}
