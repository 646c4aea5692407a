//! Failover and online rebuild with real processes: three replicas, one SIGKILLed during a running write
//! workload, a fresh replica rebuilt under load, then the two originals SIGKILLed: every byte written at
//! any time must read back from the rebuilt replica alone. Also: a rebuild interrupted by a crash of its
//! target is retried and reuses what was copied.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine_support::nbd_client::NbdClient;
use engine_support::*;

const SIZE: u64 = 64 << 20;

/// A writer owning `[start, start+len)`: writes whole blocks, sub-block pieces, zeroes and flushes,
/// and keeps a byte model of its range. Any error fails the test.
fn writer(
    host: String,
    port: u16,
    start: u64,
    len: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut client = NbdClient::connect(&host, port).unwrap();
        let mut model = client.read(start, len as usize).unwrap();
        let blocks = len / 4096;
        let mut round = 0u64;
        while !stop.load(Ordering::SeqCst) {
            round += 1;
            let block = (round.wrapping_mul(2_654_435_761).wrapping_add(seed * 97)) % blocks;
            let off = start + block * 4096;
            let local = (off - start) as usize;
            match round % 10 {
                // Sub-block write (widened by the engine while a WO replica exists).
                0..=2 => {
                    let inner = (round % 7) as usize * 512 + 100;
                    let data = block_data(block, round + seed * 1_000_000, 700);
                    client
                        .write(off + inner as u64, &data, false)
                        .unwrap_or_else(|e| panic!("write failed at round {round}: {e}"));
                    model[local + inner..local + inner + 700].copy_from_slice(&data);
                }
                3 => {
                    client.write_zeroes(off, 4096).unwrap_or_else(|e| panic!("write-zeroes failed: {e}"));
                    model[local..local + 4096].fill(0);
                }
                4 => client.flush().unwrap_or_else(|e| panic!("flush failed: {e}")),
                _ => {
                    let n = if round % 10 == 5 { 16384.min((blocks - block) * 4096) as usize } else { 4096 };
                    let data = block_data(block, round + seed * 1_000_000, n);
                    client
                        .write(off, &data, round % 10 == 6)
                        .unwrap_or_else(|e| panic!("write failed at round {round}: {e}"));
                    model[local..local + n].copy_from_slice(&data);
                }
            }
            ops.fetch_add(1, Ordering::Relaxed);
        }
        client.flush().unwrap();
        client.disconnect();
        model
    })
}

fn wait_ops(ops: &AtomicU64, more: u64) {
    let target = ops.load(Ordering::SeqCst) + more;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ops.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "the workload stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let (host, port) = engine.nbd_tcp();
    let tstart = Instant::now();
    // Older data, partly in a snapshot layer, partly in the head.
    {
        let mut c = NbdClient::connect(&host, port).unwrap();
        for b in 0..(SIZE / 4096) {
            if b % 3 != 0 {
                c.write(b * 4096, &block_data(b, 0, 4096), false).unwrap();
            }
        }
        c.flush().unwrap();
        c.disconnect();
    }
    eprintln!("phase: prefill {:?}", tstart.elapsed());
    engine.cli_ok(&["snapshot", "create", "before-load"]);
    eprintln!("phase: snapshot {:?}", tstart.elapsed());

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let half = SIZE / 2;
    let writers: Vec<_> = (0..2u64)
        .map(|i| writer(host.clone(), port, i * half, half, i + 1, stop.clone(), ops.clone()))
        .collect();
    let t0 = Instant::now();
    wait_ops(&ops, 300);
    eprintln!("phase: 300 ops in {:?}", t0.elapsed());
    let victim = rs[1].address.clone();
    rs[1].kill9();
    wait_ops(&ops, 300);
    engine.wait_mode(&victim, "ERR", 10);
    eprintln!("phase: victim ERR at {:?}", t0.elapsed());

    let fresh = Replica::start(&dir.path().join("fresh"), "64MiB", "127.0.0.1:0");
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
    wait_ops(&ops, 300);
    stop.store(true, Ordering::SeqCst);
    let models: Vec<Vec<u8>> = writers.into_iter().map(|w| w.join().expect("a writer failed")).collect();
    eprintln!("phase: writers done at {:?}", t0.elapsed());

    rs[0].kill9();
    rs[2].kill9();
    let mut c = NbdClient::connect(&host, port).unwrap();
    for (i, model) in models.iter().enumerate() {
        for chunk in 0..(half / (1 << 20)) {
            let off = i as u64 * half + chunk * (1 << 20);
            let got = c.read(off, 1 << 20).unwrap();
            let want = &model[(chunk << 20) as usize..((chunk + 1) << 20) as usize];
            assert!(got == want, "bytes at {off} differ on the rebuilt replica");
        }
    }
    eprintln!("phase: verified {:?}", tstart.elapsed());
    let status = engine.replicas();
    let modes: Vec<_> = status.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert!(modes.contains(&(fresh.address.as_str(), "RW")), "{modes:?}");
    // The reads above failed over from the killed replicas; the engine knows them as ERR after a write.
    c.write(0, &[9u8; 4096], true).unwrap();
    eprintln!("phase: fua write {:?}", tstart.elapsed());
    for r in [&rs[0].address, &rs[2].address, &victim] {
        assert_eq!(engine.mode_of(r), "ERR");
    }
    eprintln!("phase: end {:?}", tstart.elapsed());
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
    let mut target = Replica::start(&dir.path().join("target"), "512MiB", "127.0.0.1:0");
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
    target.restart("512MiB");
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
    let (host, port) = engine.nbd_tcp();
    let mut c = NbdClient::connect(&host, port).unwrap();
    c.write(0, &block_data(0, 1, 4096), true).unwrap();
    let pid = nix::unistd::Pid::from_raw(rs[1].child.as_ref().unwrap().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    for b in 1..64u64 {
        c.write(b * 4096, &block_data(b, 1, 4096), false).unwrap();
    }
    c.flush().unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "the stopped replica cannot have answered: {took:?}");
    assert_eq!(engine.mode_of(&rs[1].address), "ERR");
    assert_eq!(engine.mode_of(&rs[0].address), "RW");
    for b in 0..64u64 {
        assert!(c.read(b * 4096, 4096).unwrap() == block_data(b, 1, 4096));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
}
