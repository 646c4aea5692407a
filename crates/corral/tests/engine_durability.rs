//! Durability and staleness with real processes: flushed data survives SIGKILL of the engine and every
//! replica; a replica that missed acknowledged writes is never RW (never read) until it is rebuilt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_support;

use engine_support::nbd_client::NbdClient;
use engine_support::*;

const SIZE: &str = "32MiB";
const BLOCKS: u64 = (32 << 20) / 4096;

fn write_round(engine: &EngineProc, round: u64, step: u64) {
    let (host, port) = engine.nbd_tcp();
    let mut c = NbdClient::connect(&host, port).unwrap();
    for b in (0..BLOCKS).step_by(step as usize) {
        c.write(b * 4096, &block_data(b, round, 4096), false).unwrap();
    }
    c.flush().unwrap();
    c.disconnect();
}

fn check_round(engine: &EngineProc, round: u64, step: u64, reads_per_block: usize) {
    let (host, port) = engine.nbd_tcp();
    let mut c = NbdClient::connect(&host, port).unwrap();
    for b in (0..BLOCKS).step_by(step as usize) {
        // Several reads per block: the engine spreads reads over its RW replicas.
        for _ in 0..reads_per_block {
            let got = c.read(b * 4096, 4096).unwrap();
            assert!(got == block_data(b, round, 4096), "block {b} does not hold round {round}");
        }
    }
    c.disconnect();
}

#[test]
fn flushed_data_survives_sigkill_of_the_engine_and_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = replicas(dir.path(), 3, SIZE);
    let mut engine = EngineProc::start("vol-durable", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    write_round(&engine, 1, 1);
    {
        // FUA writes count as flushed too.
        let (host, port) = engine.nbd_tcp();
        let mut c = NbdClient::connect(&host, port).unwrap();
        c.write(0, &block_data(0, 2, 4096), true).unwrap();
        c.disconnect();
    }
    engine.kill9();
    for r in rs.iter_mut() {
        r.kill9();
    }
    for r in rs.iter_mut() {
        r.restart(SIZE);
    }
    let engine = EngineProc::start("vol-durable", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    let (host, port) = engine.nbd_tcp();
    let mut c = NbdClient::connect(&host, port).unwrap();
    assert!(c.read(0, 4096).unwrap() == block_data(0, 2, 4096), "the FUA write was lost");
    c.disconnect();
    check_round_from(&engine, 1, 1, 1);
    // After the crash, exactly one replica serves until the others are rebuilt (dirty rule), then all do.
    for r in &rs {
        engine.wait_mode(&r.address, "RW", 60);
    }
    check_round_from(&engine, 1, 1, 3);
}

fn check_round_from(engine: &EngineProc, round: u64, first: u64, reads: usize) {
    let (host, port) = engine.nbd_tcp();
    let mut c = NbdClient::connect(&host, port).unwrap();
    for b in first..BLOCKS {
        for _ in 0..reads {
            assert!(c.read(b * 4096, 4096).unwrap() == block_data(b, round, 4096), "block {b} lost");
        }
    }
    c.disconnect();
}

#[test]
fn a_stale_replica_is_not_rw_until_rebuilt_and_its_old_data_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = replicas(dir.path(), 3, SIZE);
    let mut engine = EngineProc::start("vol-stale", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    write_round(&engine, 1, 1);
    let stale = rs[2].address.clone();
    rs[2].kill9();
    write_round(&engine, 2, 2);
    engine.wait_mode(&stale, "ERR", 10);
    // Stop everything cleanly: the stale replica is as "clean" as the others, only its generation tells.
    engine.terminate();
    rs[0].terminate();
    rs[1].terminate();
    for r in rs.iter_mut() {
        r.restart(SIZE);
    }
    let engine = EngineProc::start("vol-stale", SIZE, &addresses(&rs), "127.0.0.1:0", &["--no-auto-rebuild"]);
    assert_eq!(engine.mode_of(&rs[0].address), "RW");
    assert_eq!(engine.mode_of(&rs[1].address), "RW");
    assert_eq!(engine.mode_of(&stale), "ERR", "the stale replica must not be RW: {:?}", engine.replicas());
    // Blocks written in round 2 never come back with round-1 data, whichever replica serves the read.
    check_round(&engine, 2, 2, 4);
    engine.cli_ok(&["replica", "add", &stale, "--wait"]);
    assert_eq!(engine.mode_of(&stale), "RW");
    // The rebuilt replica alone: round 2 where written, round 1 elsewhere.
    rs[0].kill9();
    rs[1].kill9();
    let (host, port) = engine.nbd_tcp();
    let mut c = NbdClient::connect(&host, port).unwrap();
    for b in 0..BLOCKS {
        let round = if b % 2 == 0 { 2 } else { 1 };
        assert!(
            c.read(b * 4096, 4096).unwrap() == block_data(b, round, 4096),
            "block {b} wrong on the rebuilt replica"
        );
    }
    c.write(0, &[1u8; 4096], true).unwrap();
    assert_eq!(engine.mode_of(&stale), "RW");
}

#[test]
fn a_stale_replica_is_rebuilt_automatically_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = replicas(dir.path(), 2, SIZE);
    let mut engine = EngineProc::start("vol-auto", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    write_round(&engine, 1, 1);
    let stale = rs[1].address.clone();
    rs[1].kill9();
    write_round(&engine, 2, 3);
    engine.kill9();
    rs[0].kill9();
    for r in rs.iter_mut() {
        r.restart(SIZE);
    }
    let engine = EngineProc::start("vol-auto", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    // While (or after) the stale replica is rebuilt, reads only ever see the new data.
    check_round(&engine, 2, 3, 2);
    engine.wait_mode(&stale, "RW", 60);
    rs[0].kill9();
    let (host, port) = engine.nbd_tcp();
    let mut c = NbdClient::connect(&host, port).unwrap();
    for b in 0..BLOCKS {
        let round = if b % 3 == 0 { 2 } else { 1 };
        assert!(
            c.read(b * 4096, 4096).unwrap() == block_data(b, round, 4096),
            "block {b} wrong after the automatic rebuild"
        );
    }
}

/// Writes round `round` to every `step`-th block without a flush and leaves without a clean
/// disconnect: acknowledged writes that no flush covered yet.
fn write_round_unflushed(engine: &EngineProc, round: u64, step: u64) {
    let (host, port) = engine.nbd_tcp();
    let mut c = NbdClient::connect(&host, port).unwrap();
    for b in (0..BLOCKS).step_by(step as usize) {
        c.write(b * 4096, &block_data(b, round, 4096), false).unwrap();
    }
}

#[test]
fn after_an_engine_crash_with_unflushed_writes_one_replica_serves_until_the_others_are_resynced() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = replicas(dir.path(), 3, SIZE);
    let mut engine = EngineProc::start("vol-unflushed", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    write_round(&engine, 1, 1);
    write_round_unflushed(&engine, 2, 4);
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
    check_round(&engine, 2, 4, 3);
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
    let (host, port) = engine.nbd_tcp();
    let mut c = NbdClient::connect(&host, port).unwrap();
    for b in 0..BLOCKS {
        let round = if b % 4 == 0 { 2 } else { 1 };
        assert!(c.read(b * 4096, 4096).unwrap() == block_data(b, round, 4096), "block {b} wrong");
    }
    c.disconnect();
}

#[test]
fn after_an_engine_crash_with_everything_flushed_every_replica_serves_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let rs = replicas(dir.path(), 3, SIZE);
    let mut engine = EngineProc::start("vol-flushed", SIZE, &addresses(&rs), "127.0.0.1:0", &[]);
    write_round(&engine, 1, 2);
    engine.kill9();
    let engine =
        EngineProc::start("vol-flushed", SIZE, &addresses(&rs), "127.0.0.1:0", &["--no-auto-rebuild"]);
    for r in &rs {
        assert_eq!(engine.mode_of(&r.address), "RW", "{:?}", engine.replicas());
    }
    check_round(&engine, 1, 2, 3);
}
