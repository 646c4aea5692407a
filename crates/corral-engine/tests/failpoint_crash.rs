//! Crash tests at every engine and rebuild failpoint ([`corral_engine::failpoint::ALL`]).
//!
//! For each failpoint: an engine over three real replicas (replica directories behind the real wire
//! server, in this process) runs a workload of concurrent writes, flushes, a snapshot, a revert, an
//! expand and an online rebuild onto a fourth replica, with the failpoint armed. The engine dies there
//! (every connection closed at once, nothing rolled back); the replicas are then dropped without being
//! closed, reopened, and a new engine starts on them. Checked, right after the start and again once
//! every stale replica is rebuilt:
//! - every write acknowledged before the last acknowledged flush reads back intact (each 4 KiB block
//!   holds one of the values the model allows for it);
//! - no stale replica serves reads: every replica the new engine reads from returns the same bytes.
//!
//! The workload arms each failpoint by name at the step that reaches it; a name it does not know is
//! never reached, and the test fails, so a new failpoint cannot be added without a crash case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_engine::failpoint::{self, ALL};
use corral_engine::{Engine, EngineError, Mode};
use rand::seq::index::sample;
use rand::SeedableRng;
use support::{start_engine, test_config, ReplicaHost};

const BLOCK: u64 = 4096;
const SIZE: u64 = 2 << 20;
const GROWN: u64 = 3 << 20;
const WRITES_PER_ROUND: usize = 24;

/// Which values each block may hold after a crash (one byte repeated over the block).
struct Model {
    allowed: Vec<BTreeSet<u8>>,
    last: Vec<u8>,
    at_snapshot: Vec<u8>,
    next_value: u8,
    /// The volume size the control plane asked for last (what a restarted engine is given).
    size: u64,
}

impl Model {
    fn new() -> Model {
        let blocks = (GROWN / BLOCK) as usize;
        Model {
            allowed: vec![BTreeSet::from([0u8]); blocks],
            last: vec![0; blocks],
            at_snapshot: vec![0; blocks],
            next_value: 0,
            size: SIZE,
        }
    }

    fn value(&mut self) -> u8 {
        self.next_value = self.next_value % 255 + 1;
        self.next_value
    }

    /// After an acknowledged flush only the last acknowledged value of each block may be read.
    fn flushed(&mut self) {
        for (allowed, last) in self.allowed.iter_mut().zip(&self.last) {
            *allowed = BTreeSet::from([*last]);
        }
    }
}

struct Workload<'a> {
    engine: &'a Engine,
    model: Model,
    rng: rand::rngs::StdRng,
    point: &'static str,
}

impl Workload<'_> {
    fn arm_at(&self, point: &str) {
        if self.point == point {
            self.engine.arm_failpoint(point);
        }
    }

    /// Writes distinct random blocks, all in flight at once.
    async fn write_round(&mut self) -> Result<(), EngineError> {
        let blocks = (self.engine.size() / BLOCK) as usize;
        let chosen = sample(&mut self.rng, blocks, WRITES_PER_ROUND.min(blocks));
        let mut writes = Vec::new();
        for block in chosen {
            let value = self.model.value();
            // Issued: it may land even if it is never acknowledged.
            self.model.allowed[block].insert(value);
            let engine = self.engine.clone();
            writes.push(async move {
                let data = Bytes::from(vec![value; BLOCK as usize]);
                (block, value, engine.write(block as u64 * BLOCK, data, false).await)
            });
        }
        let mut first_error = None;
        for (block, value, result) in futures::future::join_all(writes).await {
            match result {
                Ok(()) => self.model.last[block] = value,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn flush(&mut self) -> Result<(), EngineError> {
        self.engine.flush().await?;
        self.model.flushed();
        Ok(())
    }

    async fn run(&mut self, spare: &str) -> Result<(), EngineError> {
        for round in 0..3 {
            if round == 1 {
                self.arm_at(failpoint::FANOUT_AFTER_FIRST_ACK);
            }
            self.write_round().await?;
            if round == 1 {
                self.arm_at(failpoint::FLUSH_AFTER_SOME_REPLICAS);
            }
            self.flush().await?;
        }
        self.arm_at(failpoint::SNAPSHOT_AFTER_SOME_REPLICAS);
        self.engine.snapshot_create(Some("s1".into()), BTreeMap::new()).await?;
        self.model.at_snapshot = self.model.last.clone();

        self.write_round().await?;
        self.flush().await?;
        self.arm_at(failpoint::REVERT_AFTER_SOME_REPLICAS);
        for (allowed, old) in self.model.allowed.iter_mut().zip(&self.model.at_snapshot) {
            allowed.insert(*old);
        }
        self.engine.revert("s1").await?;
        self.model.last = self.model.at_snapshot.clone();
        self.flush().await?;

        self.write_round().await?;
        self.flush().await?;
        self.arm_at(failpoint::EXPAND_AFTER_SOME_REPLICAS);
        self.model.size = GROWN;
        self.engine.expand(GROWN).await?;
        self.write_round().await?;
        self.flush().await?;

        self.arm_at(failpoint::REBUILD_COPY_MID_EXTENT);
        self.arm_at(failpoint::REBUILD_BEFORE_SET_RW);
        self.arm_at(failpoint::REBUILD_AFTER_CLEAR_REBUILDING);
        self.engine.add_replica(spare).await?;
        // Writes and flushes go on while the rebuild copies in the background, until it dies.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            self.write_round().await?;
            self.flush().await?;
            if self.engine.died_at_failpoint() {
                return Ok(());
            }
            let rebuilt = self.engine.replicas().iter().all(|r| r.mode == Mode::ReadWrite);
            if rebuilt && self.engine.last_rebuild().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// Reads the whole volume once per replica slot (reads rotate over RW replicas, so every RW replica
/// answers at least once) and checks every block against the model and every answer against the first.
async fn check(engine: &Engine, model: &Model, label: &str) {
    let size = engine.size();
    assert!(size == SIZE || size == GROWN, "{label}: size {size}");
    let mut first: Option<Bytes> = None;
    for _ in 0..engine.replicas().len() {
        let data = engine.read(0, size as usize).await.unwrap_or_else(|e| panic!("{label}: read: {e}"));
        for (block, bytes) in data.chunks(BLOCK as usize).enumerate() {
            let value = bytes[0];
            assert!(bytes.iter().all(|b| *b == value), "{label}: block {block} is torn");
            assert!(
                model.allowed[block].contains(&value),
                "{label}: block {block} holds {value}, allowed {:?}",
                model.allowed[block]
            );
        }
        if let Some(first) = &first {
            assert!(first == &data, "{label}: two RW replicas disagree: a stale replica serves reads");
        }
        first = Some(data);
    }
}

async fn crash_case(point: &'static str, seed: u64) {
    let root = tempfile::tempdir().unwrap();
    let mut hosts = Vec::new();
    for name in ["r1", "r2", "r3", "spare"] {
        hosts.push(ReplicaHost::create(root.path(), name, SIZE).await);
    }
    let addresses: Vec<String> = hosts[..3].iter().map(|h| h.address.clone()).collect();
    let spare = hosts[3].address.clone();

    let engine = start_engine(test_config("vol", SIZE), "engine-1", &addresses).await;
    let mut workload = Workload {
        engine: &engine,
        model: Model::new(),
        rng: rand::rngs::StdRng::seed_from_u64(seed),
        point,
    };
    let outcome = workload.run(&spare).await;
    let rebuild_started = engine.replicas().iter().any(|r| r.address == spare);
    assert!(
        engine.died_at_failpoint(),
        "{point}: the workload never reached the failpoint (outcome {outcome:?})"
    );
    let model = workload.model;
    // The engine process is gone: nothing of it is used again.
    drop(engine);

    for host in &mut hosts {
        host.crash().await;
    }
    for host in &mut hosts {
        host.restart().await;
    }
    let mut in_volume = addresses.clone();
    if rebuild_started {
        in_volume.push(spare);
    }
    let engine = start_engine(test_config("vol", model.size), "engine-2", &in_volume).await;
    check(&engine, &model, &format!("{point}, right after the restart")).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    while !engine.replicas().iter().all(|r| r.mode == Mode::ReadWrite) {
        assert!(
            Instant::now() < deadline,
            "{point}: stale replicas not rebuilt: {:?} (last rebuild {:?})",
            engine.replicas(),
            engine.last_rebuild()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engine.replicas().len(), in_volume.len(), "{point}");
    check(&engine, &model, &format!("{point}, after every replica is RW again")).await;
    drop(engine);
    for host in &mut hosts {
        host.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failpoint_leaves_flushed_writes_intact_and_no_stale_replica_serving() {
    assert!(ALL.len() >= 4, "failpoint list lost entries: {ALL:?}");
    for (index, point) in ALL.iter().enumerate() {
        eprintln!("crash at {point}");
        crash_case(point, 1000 + index as u64).await;
    }
}

#[test]
fn the_workload_knows_every_failpoint() {
    // The names the workload arms; `crash_case` also fails for a name missing here, this only says so
    // early and plainly.
    let known = [
        failpoint::FANOUT_AFTER_FIRST_ACK,
        failpoint::FLUSH_AFTER_SOME_REPLICAS,
        failpoint::SNAPSHOT_AFTER_SOME_REPLICAS,
        failpoint::REVERT_AFTER_SOME_REPLICAS,
        failpoint::EXPAND_AFTER_SOME_REPLICAS,
        failpoint::REBUILD_COPY_MID_EXTENT,
        failpoint::REBUILD_BEFORE_SET_RW,
        failpoint::REBUILD_AFTER_CLEAR_REBUILDING,
    ];
    for point in ALL {
        assert!(known.contains(point), "no crash case for failpoint {point}");
    }
}
