//! Fencing with engine epochs, with real processes: three `corral replica serve`, engine A started under
//! epoch 1 writes and flushes through a real NBD client; engine B starts under epoch 2 on the same
//! replicas while A still runs (A cut off from the control plane, not dead). A's next write must fail
//! (its NBD client sees an error, not success) and land nowhere; B reads back everything A flushed; a
//! replica SIGKILLed and restarted still refuses epoch 1 (the epoch was durable before B was answered).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_support;

use engine_support::*;

const SIZE: u64 = 16 << 20;

#[test]
fn a_newer_engine_fences_the_old_one_and_the_replicas_remember_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = replicas(dir.path(), 3, "16MiB");
    let addrs = addresses(&rs);
    let engine_a = EngineProc::start(
        "vol-epoch",
        "16MiB",
        &addrs,
        "127.0.0.1:0",
        &["--epoch", "1", "--replica-timeout", "3s"],
    );

    // A writes the first 2 MiB and flushes: all of it must survive the take-over.
    let mut before = Workload::new();
    for b in 0..512u64 {
        before.write(b * 4096, &block_data(b, 1, 4096), false);
    }
    before.flush();
    before.run(&engine_a.nbd).assert_all_ok();
    let mut model = vec![0u8; SIZE as usize];
    before.apply(&mut model, before.ops.len() as u64);

    let engine_b = EngineProc::start(
        "vol-epoch",
        "16MiB",
        &addrs,
        "127.0.0.1:0",
        &["--epoch", "2", "--replica-timeout", "3s"],
    );
    for address in &addrs {
        assert_eq!(engine_b.mode_of(address), "RW", "B did not take {address}: {:?}", engine_b.replicas());
    }

    // A's next write: its client must see the failure.
    let mut late = Workload::new();
    late.write(4 << 20, &[0xAB; 4096], false);
    late.flush();
    let report = late.run(&engine_a.nbd);
    let write = report.acks.iter().find(|a| a.seq == 0).expect("the write was never answered");
    assert!(!write.ok, "engine A's write after the take-over was acknowledged: {:?}", report.acks);
    let flush = report.acks.iter().find(|a| a.seq == 1);
    assert!(flush.is_none_or(|f| !f.ok), "engine A's flush after the take-over succeeded: {:?}", report.acks);

    // B holds everything A flushed, and nothing of A's late write.
    assert_volume_holds(&engine_b, &model, 2, "after the take-over");

    // A replica restarted (SIGKILL) still refuses epoch 1, also through a fresh engine A.
    rs[0].restart(Some("16MiB"));
    let state = std::fs::read_to_string(rs[0].dir.join("corral-state.json")).unwrap();
    assert!(state.contains("\"engine_epoch\":2"), "epoch 2 not persisted: {state}");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = corral_wire::ReplicaClient::connect(&rs[0].address, 1).await.unwrap();
        let err = client.hello_at_epoch("engine-vol-epoch", true, 1).await.unwrap_err();
        assert!(err.to_string().contains("engine epoch 1 is older than 2 accepted by this replica"), "{err}");
        let err = client.write(0, corral_wire::Bytes::from_static(b"stale")).await.unwrap_err();
        assert!(err.to_string().contains("Hello must be the first request"), "{err}");
    });
    let out = std::process::Command::new(CORRAL)
        .args(["engine", "serve", "--volume", "vol-epoch", "--size", "16MiB", "--epoch", "1"])
        .args(["--replica", &rs[0].address, "--nbd", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an engine under epoch 1 started on a replica that accepted epoch 2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no replica is reachable and up to date"), "{stderr}");
    drop(engine_a);
}
