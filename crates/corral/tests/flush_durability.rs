//! Durability of group-committed flushes and of FUA writes, with real processes: a libnbd client keeps
//! many flushes (or FUA writes) in flight over four connections, so flushes arriving together share one
//! sync at the engine and at each replica; the engine and every replica are killed with SIGKILL right
//! after some acknowledgements, in a loop; then **each replica's directory** is read back on its own (not
//! through a new engine, which would pick one), and every block must hold the last write an acknowledged
//! flush or FUA covered, or a write issued after it, on every replica.
//!
//! SIGKILL keeps the page cache, so this checks the protocol (no flush or FUA is acknowledged before the
//! writes it covers reached every replica's file); the power-cut tests cover what a lost cache loses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use corral_testkit::nbd::Op;
use engine_support::*;

const SIZE: &str = "16MiB";
/// Blocks the workloads write (4 MiB).
const REGION: u64 = 1024;

/// The SHA-256 of each of the first `REGION` blocks of the replica in `dir`, read from its files.
fn replica_blocks(dir: &Path) -> Vec<String> {
    let replica = corral_replica::Replica::open_read_only(dir)
        .unwrap_or_else(|e| panic!("open {} read-only: {e}", dir.display()));
    let mut block = vec![0u8; 4096];
    (0..REGION)
        .map(|b| {
            replica.read_at(&mut block, b * 4096).unwrap();
            sha256(&block)
        })
        .collect()
}

/// Runs `plan` (repeating) until `acks` more reports came, SIGKILLs the engine and every replica, and
/// checks every replica's blocks against what the acknowledgements promise.
fn kill_after_acks_and_check(plan: &Workload, replicas: usize, acks: usize, round: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = engine_support::replicas(dir.path(), replicas, SIZE);
    let mut engine = EngineProc::start("vol-flush", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    let running = plan.start(&engine.nbd);
    running.wait_progress(acks, Duration::from_secs(120));
    engine.kill9();
    for r in rs.iter_mut() {
        r.kill9();
    }
    let report = running.finish();
    report.assert_real_client(16);
    let durable = report.durable_writes(plan);
    assert!(durable.len() > acks / 4, "round {round}: too few durable writes: {}", durable.len());
    let block_of = |seq: u64| match *plan.op_at(seq) {
        Op::Write { offset, .. } => Some(offset / 4096),
        _ => None,
    };
    let mut last_durable = vec![None; REGION as usize];
    for &seq in &durable {
        let b = block_of(seq).unwrap() as usize;
        last_durable[b] = last_durable[b].max(Some(seq));
    }
    let issued: Vec<u64> = report.acks.iter().map(|a| a.seq).collect();
    let allowed: Vec<HashSet<String>> = (0..REGION)
        .map(|b| {
            let floor = last_durable[b as usize];
            let mut allowed: HashSet<String> = issued
                .iter()
                .filter(|&&seq| block_of(seq) == Some(b) && floor.is_none_or(|f| seq >= f))
                .map(|&seq| sha256(plan.payload(seq)))
                .collect();
            if floor.is_none() {
                allowed.insert(sha256(&[0u8; 4096]));
            }
            allowed
        })
        .collect();
    for r in &rs {
        let blocks = replica_blocks(&r.dir);
        for b in 0..REGION as usize {
            assert!(
                allowed[b].contains(&blocks[b]),
                "round {round}: replica {} block {b} lost an acknowledged write (last durable: {:?})",
                r.address,
                last_durable[b]
            );
        }
    }
}

/// Writes to scattered blocks with a pipelined flush after every `flush_every` writes (or every write
/// FUA when `flush_every` is 0); every pass writes bytes no earlier pass wrote.
fn plan(flush_every: u64) -> Workload {
    let mut plan = Workload::new();
    for i in 0..REGION * 2 {
        let block = (i * 7919) % REGION;
        plan.write(block * 4096, &block_data(block, i, 4096), flush_every == 0);
        if flush_every > 0 && i % flush_every == flush_every - 1 {
            plan.pipelined_flush();
        }
    }
    plan.pass_shift = 4096 * 3 + 512;
    plan
}

#[test]
fn group_committed_flushes_are_durable_on_every_replica_after_sigkill() {
    // A flush after every 4 writes at depth 32: several flushes are always in flight together.
    let plan = plan(4);
    for (round, acks) in [1200, 2500, 4000].into_iter().enumerate() {
        kill_after_acks_and_check(&plan, 3, acks, round);
    }
}

#[test]
fn fua_writes_are_durable_on_every_replica_after_sigkill() {
    let plan = plan(0);
    for (round, acks) in [800, 2000].into_iter().enumerate() {
        kill_after_acks_and_check(&plan, 3, acks, round);
    }
}
