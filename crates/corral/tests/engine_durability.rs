//! Durability and staleness with real processes and a real NBD client (libnbd: OPT_GO, structured replies,
//! four connections, 32 requests in flight): flushed data survives SIGKILL of the engine and every replica,
//! also in the middle of a workload; a replica that missed acknowledged writes is never RW (never read)
//! until it is rebuilt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_support;

use std::collections::HashSet;
use std::time::Duration;

use engine_support::*;

const SIZE: &str = "32MiB";
const BLOCKS: u64 = (32 << 20) / 4096;

/// The volume after `rounds` of writes to a zeroed volume, in order (each `(round, step)`: every `step`-th
/// block holds `block_data(b, round)`).
fn image(rounds: &[(u64, u64)]) -> Vec<u8> {
    let mut image = vec![0u8; (BLOCKS * 4096) as usize];
    for &(round, step) in rounds {
        for b in (0..BLOCKS).step_by(step as usize) {
            image[(b * 4096) as usize..((b + 1) * 4096) as usize]
                .copy_from_slice(&block_data(b, round, 4096));
        }
    }
    image
}

/// Writes round `round` to every `step`-th block through libnbd, pipelined over several connections, then
/// flushes (unless `flush` is false: acknowledged writes no flush covered yet).
fn write_round(engine: &EngineProc, round: u64, step: u64, flush: bool) {
    let mut plan = Workload::new();
    for b in (0..BLOCKS).step_by(step as usize) {
        plan.write(b * 4096, &block_data(b, round, 4096), false);
    }
    if flush {
        plan.flush();
    } else {
        // Leave as a crashed client would: no flush, no NBD_CMD_DISC.
        plan.disconnect = false;
    }
    let report = plan.run(&engine.nbd);
    report.assert_all_ok().assert_real_client(16);
}

#[test]
fn flushed_data_survives_sigkill_of_the_engine_and_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = replicas(dir.path(), 3, SIZE);
    let mut engine = EngineProc::start("vol-durable", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    write_round(&engine, 1, 1, true);
    // FUA writes count as flushed too.
    let mut fua = Workload::new();
    fua.write(0, &block_data(0, 2, 4096), true);
    fua.run(&engine.nbd).assert_all_ok();
    engine.kill9();
    for r in rs.iter_mut() {
        r.kill9();
    }
    restart_all(&mut rs, SIZE);
    let engine = EngineProc::start("vol-durable", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    let mut want = image(&[(1, 1)]);
    want[..4096].copy_from_slice(&block_data(0, 2, 4096));
    assert_volume_holds(&engine, &want, 1, "after the crash");
    // After the crash, exactly one replica serves until the others are rebuilt (dirty rule), then all do.
    for r in &rs {
        engine.wait_mode(&r.address, "RW", 60);
    }
    assert_volume_holds(&engine, &want, 3, "after the rebuild");
}

/// Kills the engine and every replica with SIGKILL while a pipelined workload runs (4 KiB writes over four
/// connections, a flush every 64 requests), then checks each block: it holds the last write an
/// acknowledged flush (or FUA) covered, or a write issued after that one, never anything older.
#[test]
fn acknowledged_flushes_survive_a_sigkill_in_the_middle_of_a_pipelined_workload() {
    const REGION: u64 = 2048; // blocks written by the workload
    let dir = tempfile::tempdir().unwrap();
    let mut rs = replicas(dir.path(), 3, SIZE);
    let mut engine = EngineProc::start("vol-midkill", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    let mut plan = Workload::new();
    for i in 0..REGION * 2 {
        let block = (i * 7919) % REGION;
        plan.write(block * 4096, &block_data(block, i, 4096), i % 101 == 0);
        if i % 64 == 63 {
            plan.pipelined_flush();
        }
    }
    // Every pass writes bytes no earlier pass wrote, so an old block cannot pass for a new one.
    plan.pass_shift = 4096 * 3 + 512;
    let running = plan.start(&engine.nbd);
    running.wait_progress(6000, Duration::from_secs(120));
    engine.kill9();
    for r in rs.iter_mut() {
        r.kill9();
    }
    let report = running.finish();
    report.assert_real_client(16);
    let durable = report.durable_writes(&plan);
    assert!(durable.len() > 1000, "too few writes were flushed before the kill: {}", durable.len());
    let issued: Vec<u64> = {
        let mut seqs: Vec<u64> = report.acks.iter().map(|a| a.seq).collect();
        seqs.sort_unstable();
        seqs
    };

    restart_all(&mut rs, SIZE);
    let engine = EngineProc::start("vol-midkill", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    let mut check = Workload::new();
    for b in 0..REGION {
        check.read(b * 4096, 4096);
    }
    let read = check.run(&engine.nbd);
    read.assert_all_ok();

    let block_of = |seq: u64| match *plan.op_at(seq) {
        corral_testkit::nbd::Op::Write { offset, .. } => Some(offset / 4096),
        _ => None,
    };
    let mut last_durable = vec![None; REGION as usize];
    for &seq in &durable {
        let b = block_of(seq).unwrap() as usize;
        last_durable[b] = last_durable[b].max(Some(seq));
    }
    for b in 0..REGION {
        let floor = last_durable[b as usize];
        let mut allowed: HashSet<String> = issued
            .iter()
            .filter(|&&seq| block_of(seq) == Some(b) && floor.is_none_or(|f| seq >= f))
            .map(|&seq| sha256(plan.payload(seq)))
            .collect();
        if floor.is_none() {
            allowed.insert(sha256(&[0u8; 4096]));
        }
        let got = read.read_sha256(b);
        assert!(
            allowed.contains(got),
            "block {b} lost a flushed write: it holds none of the {} writes at or after the last durable one {floor:?}",
            allowed.len()
        );
    }
}

#[test]
fn a_stale_replica_is_not_rw_until_rebuilt_and_its_old_data_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = replicas(dir.path(), 3, SIZE);
    let mut engine = EngineProc::start("vol-stale", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    write_round(&engine, 1, 1, true);
    let stale = rs[2].address.clone();
    rs[2].kill9();
    write_round(&engine, 2, 2, true);
    engine.wait_mode(&stale, "ERR", 10);
    // Stop everything cleanly: the stale replica is as "clean" as the others, only its generation tells.
    engine.terminate();
    rs[0].terminate();
    rs[1].terminate();
    restart_all(&mut rs, SIZE);
    let engine = EngineProc::start("vol-stale", SIZE, &addresses(&rs), "127.0.0.1:0", &["--no-auto-rebuild"]);
    assert_eq!(engine.mode_of(&rs[0].address), "RW");
    assert_eq!(engine.mode_of(&rs[1].address), "RW");
    assert_eq!(engine.mode_of(&stale), "ERR", "the stale replica must not be RW: {:?}", engine.replicas());
    // Blocks written in round 2 never come back with round-1 data, whichever replica serves the read.
    let want = image(&[(1, 1), (2, 2)]);
    assert_volume_holds(&engine, &want, 4, "with the stale replica ERR");
    engine.cli_ok(&["replica", "add", &stale, "--wait"]);
    assert_eq!(engine.mode_of(&stale), "RW");
    // The rebuilt replica alone: round 2 where written, round 1 elsewhere.
    rs[0].kill9();
    rs[1].kill9();
    assert_volume_holds(&engine, &want, 1, "on the rebuilt replica");
    let mut fua = Workload::new();
    fua.write(0, &[1u8; 4096], true);
    fua.run(&engine.nbd).assert_all_ok();
    assert_eq!(engine.mode_of(&stale), "RW");
}

#[test]
fn a_stale_replica_is_rebuilt_automatically_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = replicas(dir.path(), 2, SIZE);
    let mut engine = EngineProc::start("vol-auto", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    write_round(&engine, 1, 1, true);
    let stale = rs[1].address.clone();
    rs[1].kill9();
    write_round(&engine, 2, 3, true);
    engine.kill9();
    rs[0].kill9();
    restart_all(&mut rs, SIZE);
    let engine = EngineProc::start("vol-auto", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    // While (or after) the stale replica is rebuilt, reads only ever see the new data.
    let want = image(&[(1, 1), (2, 3)]);
    assert_volume_holds(&engine, &want, 2, "during the automatic rebuild");
    engine.wait_mode(&stale, "RW", 60);
    rs[0].kill9();
    assert_volume_holds(&engine, &want, 1, "after the automatic rebuild");
}

#[test]
fn after_an_engine_crash_with_unflushed_writes_one_replica_serves_until_the_others_are_resynced() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = replicas(dir.path(), 3, SIZE);
    let mut engine = EngineProc::start("vol-unflushed", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    write_round(&engine, 1, 1, true);
    // Acknowledged writes that no flush covered yet.
    write_round(&engine, 2, 4, false);
    // Only the engine dies; the replicas keep what they applied, which after a real crash with writes
    // in flight may differ between them.
    engine.kill9();
    let engine =
        EngineProc::start("vol-unflushed", SIZE, &addresses(&rs), "127.0.0.1:0", &["--no-auto-rebuild"]);
    let modes: Vec<String> = rs.iter().map(|r| engine.mode_of(&r.address)).collect();
    assert_eq!(
        modes.iter().filter(|m| *m == "RW").count(),
        1,
        "after a crash with unflushed writes exactly one replica may serve: {modes:?}"
    );
    let serving = modes.iter().position(|m| m == "RW").unwrap();
    // The acknowledged writes are there (the replicas never went down).
    let want = image(&[(1, 1), (2, 4)]);
    assert_volume_holds(&engine, &want, 3, "on the one serving replica");
    for (i, r) in rs.iter().enumerate() {
        if i != serving {
            engine.cli_ok(&["replica", "add", &r.address, "--wait"]);
            assert_eq!(engine.mode_of(&r.address), "RW");
        }
    }
    // Each resynced replica alone holds every byte.
    let others: Vec<usize> = (0..rs.len()).filter(|&i| i != serving).collect();
    rs[serving].kill9();
    rs[others[0]].kill9();
    assert_volume_holds(&engine, &want, 1, "on a resynced replica");
}

#[test]
fn after_an_engine_crash_with_everything_flushed_every_replica_serves_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let rs = replicas(dir.path(), 3, SIZE);
    let mut engine = EngineProc::start("vol-flushed", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    write_round(&engine, 1, 2, true);
    engine.kill9();
    let engine =
        EngineProc::start("vol-flushed", SIZE, &addresses(&rs), "127.0.0.1:0", &["--no-auto-rebuild"]);
    for r in &rs {
        assert_eq!(engine.mode_of(&r.address), "RW", "{:?}", engine.replicas());
    }
    assert_volume_holds(&engine, &image(&[(1, 2)]), 3, "after a clean-flushed crash");
}
