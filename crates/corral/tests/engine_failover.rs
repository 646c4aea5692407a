//! Failover and online rebuild with real processes and a real NBD client (libnbd: four connections, 32
//! requests in flight): three replicas, one SIGKILLed during a running write workload, a fresh replica
//! rebuilt under load, then the two originals SIGKILLed: every byte written at any time must read back
//! from the rebuilt replica alone, and no request may fail on the way. Also: a rebuild interrupted by a
//! crash of its target is retried and reuses what was copied.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_support;

use std::time::{Duration, Instant};

use engine_support::*;
use nix::sys::signal::Signal;

const SIZE: u64 = 64 << 20;
const BLOCKS: u64 = SIZE / 4096;

/// A mixed workload over the whole volume: sub-block writes (widened by the engine while a WO replica
/// exists), write-zeroes, flushes, 16 KiB writes and FUA writes, at pseudo-random blocks.
fn mixed_workload() -> Workload {
    let mut plan = Workload::new();
    for round in 1..=2000u64 {
        let block = round.wrapping_mul(2_654_435_761) % BLOCKS;
        let off = block * 4096;
        match round % 10 {
            0..=2 => {
                let inner = (round % 7) * 512 + 100;
                plan.write(off + inner, &block_data(block, round, 700), false);
            }
            3 => {
                plan.zero(off, 4096, false);
            }
            4 => {
                plan.pipelined_flush();
            }
            _ => {
                let n = if round % 10 == 5 { 16384.min((BLOCKS - block) * 4096) } else { 4096 };
                plan.write(off, &block_data(block, round, n as usize), round % 10 == 6);
            }
        }
    }
    // Each pass writes bytes the previous ones did not.
    plan.pass_shift = 4096 * 5 + 100;
    plan
}

#[test]
fn kill_a_replica_under_load_rebuild_a_fresh_one_then_lose_the_originals() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = replicas(dir.path(), 3, "64MiB");
    let engine = EngineProc::start(
        "vol-failover",
        "64MiB",
        &addresses(&rs),
        "127.0.0.1:0",
        &["--replica-timeout", "3s"],
    );
    let tstart = Instant::now();
    // Older data, partly in a snapshot layer, partly in the head.
    let mut prefill = Workload::new();
    for b in 0..BLOCKS {
        if b % 3 != 0 {
            prefill.write(b * 4096, &block_data(b, 0, 4096), false);
        }
    }
    prefill.flush();
    prefill.run(&engine.nbd).assert_all_ok();
    let mut model = vec![0u8; SIZE as usize];
    prefill.apply(&mut model, prefill.ops.len() as u64);
    eprintln!("phase: prefill {:?}", tstart.elapsed());
    engine.cli_ok(&["snapshot", "create", "before-load"]);

    let plan = mixed_workload();
    let load = plan.start(&engine.nbd);
    let t0 = Instant::now();
    load.wait_progress(300, Duration::from_secs(60));
    eprintln!("phase: 300 requests in {:?}", t0.elapsed());
    let victim = rs[1].address.clone();
    rs[1].kill9();
    load.wait_progress(300, Duration::from_secs(60));
    engine.wait_mode(&victim, "ERR", 10);
    eprintln!("phase: victim ERR at {:?}", t0.elapsed());

    let fresh = start_replica(&dir.path().join("fresh"), "64MiB", "127.0.0.1:0");
    engine.cli_ok(&["replica", "add", &fresh.address]);
    let mut saw_wo = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mode = engine.mode_of(&fresh.address);
        saw_wo |= mode == "WO";
        if mode == "RW" {
            break;
        }
        assert!(mode == "WO", "the fresh replica is {mode}: {:?}", engine.replicas());
        assert!(Instant::now() < deadline, "rebuild did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saw_wo, "the fresh replica was never seen in WO mode");
    eprintln!("phase: rebuilt at {:?}", t0.elapsed());
    load.wait_progress(300, Duration::from_secs(60));
    let report = load.stop();
    // Failover and rebuild are invisible to the client: not one request failed.
    report.assert_all_ok().assert_real_client(16);
    plan.apply(&mut model, report.issued.unwrap());
    eprintln!("phase: workload done at {:?}: {} requests", t0.elapsed(), report.acks.len());

    rs[0].kill9();
    rs[2].kill9();
    assert_volume_holds(&engine, &model, 1, "the rebuilt replica alone");
    eprintln!("phase: verified {:?}", tstart.elapsed());
    let status = engine.replicas();
    let modes: Vec<_> = status.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert!(modes.contains(&(fresh.address.as_str(), "RW")), "{modes:?}");
    // The reads above failed over from the killed replicas; the engine knows them as ERR after a write.
    let mut fua = Workload::new();
    fua.write(0, &[9u8; 4096], true);
    fua.run(&engine.nbd).assert_all_ok();
    for r in [&rs[0].address, &rs[2].address, &victim] {
        assert_eq!(engine.mode_of(r), "ERR");
    }
}

#[test]
fn a_rebuild_interrupted_by_a_target_crash_is_retried_and_reuses_the_copy() {
    require_tool("nbdcopy");
    let dir = tempfile::tempdir().unwrap();
    let rs = replicas(dir.path(), 1, "512MiB");
    let engine = EngineProc::start("vol-resume", "512MiB", &addresses(&rs), "127.0.0.1:0", &[]);
    let image = dir.path().join("image.raw");
    let mut data = vec![0u8; 512 << 20];
    for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
        chunk.copy_from_slice(&block_data(i as u64, 3, 1 << 20));
    }
    std::fs::write(&image, &data).unwrap();
    let st = std::process::Command::new("nbdcopy").arg(&image).arg(&engine.nbd).status().unwrap();
    assert!(st.success());
    let mut target = start_replica(&dir.path().join("target"), "512MiB", "127.0.0.1:0");
    engine.cli_ok(&["replica", "add", &target.address]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = engine.replicas();
        let t = status.iter().find(|r| r.0 == target.address).unwrap();
        assert!(t.1 == "WO", "the rebuild ended before it could be interrupted: {status:?}");
        if t.2 >= 10 {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    target.restart(Some("512MiB"));
    engine.wait_mode(&target.address, "ERR", 30);
    let out = engine.cli_ok(&["replica", "add", &target.address, "--wait", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["succeeded"], true, "{report}");
    let reused = report["reusedBytes"].as_u64().unwrap();
    assert!(reused >= 40 << 20, "the retried rebuild reused only {reused} bytes: {report}");
    // The target alone serves the image.
    drop(rs);
    let back = dir.path().join("back.raw");
    let st = std::process::Command::new("nbdcopy").arg(&engine.nbd).arg(&back).status().unwrap();
    assert!(st.success());
    assert!(std::fs::read(&back).unwrap() == data, "the rebuilt replica does not hold the image");
}

/// A replica that stops answering (SIGSTOP: the connection stays open) is set ERR after the replica
/// timeout, and I/O continues on the others without an error.
#[test]
fn a_replica_that_stops_answering_times_out_and_io_continues() {
    let dir = tempfile::tempdir().unwrap();
    let rs = replicas(dir.path(), 2, "16MiB");
    let engine =
        EngineProc::start("vol-hang", "16MiB", &addresses(&rs), "127.0.0.1:0", &["--replica-timeout", "1s"]);
    let mut first = Workload::new();
    first.write(0, &block_data(0, 1, 4096), true);
    first.run(&engine.nbd).assert_all_ok();
    rs[1].process.signal(Signal::SIGSTOP);
    let started = Instant::now();
    let mut plan = Workload::new();
    for b in 1..64u64 {
        plan.write(b * 4096, &block_data(b, 1, 4096), false);
    }
    plan.flush();
    plan.run(&engine.nbd).assert_all_ok();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "the stopped replica cannot have answered: {took:?}");
    assert_eq!(engine.mode_of(&rs[1].address), "ERR");
    assert_eq!(engine.mode_of(&rs[0].address), "RW");
    let want: Vec<u8> = (0..64u64).flat_map(|b| block_data(b, 1, 4096)).collect();
    assert_volume_holds(&engine, &want, 1, "after the timeout");
    rs[1].process.signal(Signal::SIGCONT);
}
