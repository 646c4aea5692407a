//! Unit tests of the engine against in-memory replicas with fault injection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::memory::{MemoryCluster, MemoryReplica};
use crate::start::{decide, Verdict};
use crate::{Engine, EngineConfig, ErrorKind, Mode};
use corral_wire::RecoveryFacts;

const SIZE: u64 = 8 << 20;

fn addrs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tcp://r{i}:1")).collect()
}

fn config() -> EngineConfig {
    let mut c = EngineConfig::new("vol", SIZE);
    c.replica_timeout = Duration::from_millis(300);
    c.control_timeout = Duration::from_secs(5);
    c.rebuild_batch = 64 << 10;
    c
}

async fn cluster_engine(n: usize) -> (Arc<MemoryCluster>, Vec<Arc<MemoryReplica>>, Engine) {
    let cluster = MemoryCluster::new();
    let replicas: Vec<_> = addrs(n).iter().map(|a| cluster.add(a, SIZE)).collect();
    let engine = Engine::start(config(), cluster.clone(), &addrs(n)).await.unwrap();
    (cluster, replicas, engine)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i as u64).wrapping_mul(31).wrapping_add(seed * 7919) % 251) as u8).collect()
}

fn modes(engine: &Engine) -> Vec<Mode> {
    engine.replicas().iter().map(|r| r.mode).collect()
}

async fn wait_all_rw(engine: &Engine) {
    for _ in 0..500 {
        if engine.replicas().iter().all(|r| r.mode == Mode::ReadWrite) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("replicas never all RW: {:?} {:?}", engine.replicas(), engine.last_rebuild());
}

#[tokio::test]
async fn info_counts_completed_client_reads_and_writes() {
    let (_c, _replicas, engine) = cluster_engine(2).await;
    engine.write(0, Bytes::from(vec![1u8; 4096]), false).await.unwrap();
    engine.write(8192, Bytes::from(vec![2u8; 100]), true).await.unwrap();
    engine.read(0, 512).await.unwrap();
    // Refused requests are not counted.
    assert!(engine.read(SIZE, 1).await.is_err());
    let info = engine.info();
    assert_eq!((info.write_ops, info.write_bytes), (2, 4196));
    assert_eq!((info.read_ops, info.read_bytes), (1, 512));
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["writeBytes"], 4196, "{json}");
    assert_eq!(json["readOps"], 1, "{json}");
}

#[tokio::test]
async fn writes_reach_every_replica_and_reads_rotate() {
    let (_c, replicas, engine) = cluster_engine(3).await;
    let data = pattern(1, 10_000);
    engine.write(1000, Bytes::from(data.clone()), true).await.unwrap();
    for r in &replicas {
        assert_eq!(r.read_volume(1000, data.len()), data);
    }
    for _ in 0..6 {
        assert_eq!(&engine.read(1000, data.len()).await.unwrap()[..], &data[..]);
    }
    engine.zero(2000, 5000, false, false).await.unwrap();
    engine.zero(8192, 4096, true, false).await.unwrap();
    for r in &replicas {
        let got = r.read_volume(0, 20_000);
        assert!(got[2000..7000].iter().all(|&b| b == 0));
        assert!(got[8192..12288].iter().all(|&b| b == 0));
        assert_eq!(got[7000..8192], data[6000..7192]);
    }
    assert!(matches!(engine.read(SIZE - 10, 11).await, Err(e) if e.kind == ErrorKind::OutOfRange));
}

#[tokio::test]
async fn a_failed_replica_is_dropped_and_the_generation_bumped_before_the_ack() {
    let (_c, replicas, engine) = cluster_engine(3).await;
    engine.write(0, Bytes::from(vec![1u8; 4096]), false).await.unwrap();
    let start_generation = replicas[0].facts().generation;
    replicas[1].kill();
    engine.write(4096, Bytes::from(vec![2u8; 4096]), false).await.unwrap();
    assert_eq!(modes(&engine), [Mode::ReadWrite, Mode::Error, Mode::ReadWrite]);
    // Before the second write was acknowledged the survivors were moved past the dead replica.
    assert!(replicas[0].facts().generation > start_generation);
    assert_eq!(replicas[0].facts().generation, replicas[2].facts().generation);
    assert_eq!(replicas[1].facts().generation, start_generation);
    // The volume stays usable, reads keep working.
    assert_eq!(&engine.read(4096, 4096).await.unwrap()[..], &[2u8; 4096][..]);
}

#[tokio::test]
async fn a_hanging_replica_times_out_and_the_last_loss_is_an_error() {
    let (_c, replicas, engine) = cluster_engine(2).await;
    replicas[0].set_hang(true);
    engine.write(0, Bytes::from(vec![9u8; 512]), false).await.unwrap();
    assert_eq!(modes(&engine), [Mode::Error, Mode::ReadWrite]);
    replicas[1].kill();
    let err = engine.write(0, Bytes::from(vec![9u8; 512]), false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(engine.read(0, 512).await.is_err());
    assert!(engine.flush().await.is_err());
}

#[tokio::test]
async fn reads_fail_over_to_another_replica() {
    let (_c, replicas, engine) = cluster_engine(2).await;
    engine.write(0, Bytes::from(vec![5u8; 4096]), false).await.unwrap();
    replicas[0].kill();
    for _ in 0..4 {
        assert_eq!(&engine.read(0, 4096).await.unwrap()[..], &[5u8; 4096][..]);
    }
    assert_eq!(modes(&engine), [Mode::Error, Mode::ReadWrite]);
}

fn facts(generation: u64, revision: u64, dirty: bool) -> Option<RecoveryFacts> {
    Some(RecoveryFacts { size: SIZE, generation, revision, was_dirty_at_open: dirty, ..Default::default() })
}

#[test]
fn the_start_rule_orders_generation_revision_dirty() {
    let up = Verdict::UpToDate;
    let is_stale = |v: &Verdict| matches!(v, Verdict::Stale(_));
    // Generation beats revision.
    let v = decide(&[facts(3, 10, false), facts(4, 2, false), None]);
    assert!(is_stale(&v[0]) && v[1] == up && is_stale(&v[2]));
    // Revision among equal generations.
    let v = decide(&[facts(4, 10, false), facts(4, 11, false)]);
    assert!(is_stale(&v[0]) && v[1] == up);
    // All clean: all RW.
    assert_eq!(decide(&[facts(4, 10, false), facts(4, 10, false)]), vec![up.clone(), up.clone()]);
    // Some dirty: one RW, preferring a clean one.
    let v = decide(&[facts(4, 10, true), facts(4, 10, false), facts(4, 10, true)]);
    assert!(is_stale(&v[0]) && v[1] == up && is_stale(&v[2]));
    let v = decide(&[facts(4, 10, true), facts(4, 10, true)]);
    assert!(v[0] == up && is_stale(&v[1]));
    // Writes after the last flush (the replicas stayed up, the engine crashed) count as dirty.
    let unflushed = |generation, revision| {
        facts(generation, revision, false).map(|f| RecoveryFacts { unflushed_writes: true, ..f })
    };
    let v = decide(&[unflushed(4, 10), unflushed(4, 10), unflushed(4, 10)]);
    assert!(v[0] == up && is_stale(&v[1]) && is_stale(&v[2]), "{v:?}");
    let v = decide(&[unflushed(4, 10), facts(4, 10, false)]);
    assert!(is_stale(&v[0]) && v[1] == up, "{v:?}");
    // An interrupted rebuild target is never up to date, whatever its generation.
    let mut rebuilding = facts(9, 99, false);
    if let Some(f) = rebuilding.as_mut() {
        f.rebuilding = true;
    }
    let v = decide(&[rebuilding, facts(4, 10, false)]);
    assert!(is_stale(&v[0]) && v[1] == up);
}

/// Kill a replica, keep writing, restart all: the stale one is not RW until rebuilt, reads never see its
/// old data, and after the automatic rebuild it holds the new data.
#[tokio::test]
async fn a_stale_replica_is_rebuilt_at_start_and_never_read_before() {
    let (cluster, replicas, engine) = cluster_engine(3).await;
    engine.write(0, Bytes::from(vec![1u8; 65536]), true).await.unwrap();
    replicas[2].kill();
    engine.write(0, Bytes::from(vec![2u8; 65536]), true).await.unwrap();
    drop(engine);
    for r in &replicas {
        r.restart();
        r.close_cleanly();
    }
    // Keep the stale replica hanging during the start so its rebuild cannot finish before we look.
    let engine = Engine::start(config(), cluster.clone(), &addrs(3)).await.unwrap();
    let status = engine.replicas();
    assert_eq!(status[0].mode, Mode::ReadWrite);
    assert_eq!(status[1].mode, Mode::ReadWrite);
    assert_ne!(status[2].mode, Mode::ReadWrite, "{status:?}");
    for _ in 0..9 {
        assert_eq!(&engine.read(0, 65536).await.unwrap()[..], &[2u8; 65536][..]);
    }
    wait_all_rw(&engine).await;
    assert_eq!(replicas[2].read_volume(0, 65536), vec![2u8; 65536]);
    assert!(engine.last_rebuild().unwrap().succeeded);
}

/// After an unclean stop every replica but one is stale; they are rebuilt behind one shared system
/// snapshot, so each reuses the data it already holds instead of the second one receiving a full copy.
#[tokio::test]
async fn stale_replicas_found_at_start_are_rebuilt_together_and_reuse_their_data() {
    let (cluster, replicas, engine) = cluster_engine(3).await;
    engine.write(0, Bytes::from(pattern(1, 1 << 20)), true).await.unwrap();
    drop(engine);
    for r in &replicas {
        r.restart();
    }
    let engine = Engine::start(config(), cluster.clone(), &addrs(3)).await.unwrap();
    assert_eq!(modes(&engine).iter().filter(|m| **m == Mode::ReadWrite).count(), 1, "{:?}", modes(&engine));
    wait_all_rw(&engine).await;
    let report = engine.last_rebuild().unwrap();
    assert!(report.succeeded, "{report:?}");
    assert_eq!(
        (report.copied_bytes, report.reused_bytes),
        (0, 1 << 20),
        "the last target copied: {report:?}"
    );
    for r in &replicas {
        assert_eq!(r.read_volume(0, 1 << 20), pattern(1, 1 << 20));
    }
}

/// Online rebuild with writes (many of them smaller than a block) flowing, then the originals die: the
/// rebuilt replica alone holds every byte.
#[tokio::test]
async fn online_rebuild_under_sub_block_writes_keeps_every_byte() {
    let (cluster, replicas, engine) = cluster_engine(2).await;
    let mut model = vec![0u8; SIZE as usize];
    // Data in two layers: a snapshot, then more writes in the head.
    for i in 0..64u64 {
        let data = pattern(i, 4096);
        let off = i * 16384;
        engine.write(off, Bytes::from(data.clone()), false).await.unwrap();
        model[off as usize..off as usize + 4096].copy_from_slice(&data);
    }
    engine.snapshot_create(Some("s1".into()), BTreeMap::new()).await.unwrap();
    for i in 0..64u64 {
        let data = pattern(100 + i, 3000);
        let off = i * 16384 + 8192 + 100;
        engine.write(off, Bytes::from(data.clone()), false).await.unwrap();
        model[off as usize..off as usize + 3000].copy_from_slice(&data);
    }
    let fresh = cluster.add("tcp://new:1", SIZE);
    let writer = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..200u64 {
                // Sub-block writes into blocks that live only in the snapshot layer, and zeroes over
                // blocks whose data is in the snapshot layer (not yet copied to the target).
                if i % 5 == 4 {
                    let off = (i % 64) * 16384;
                    engine.zero(off, 4096, i % 2 == 0, false).await.unwrap();
                    written.push((off, vec![0u8; 4096]));
                } else {
                    let off = (i % 64) * 16384 + 512 + (i % 7) * 100;
                    let data = pattern(1000 + i, 700);
                    engine.write(off, Bytes::from(data.clone()), false).await.unwrap();
                    written.push((off, data));
                }
                tokio::task::yield_now().await;
            }
            written
        })
    };
    engine.add_replica("tcp://new:1").await.unwrap();
    assert!(engine.replicas().iter().any(|r| r.mode == Mode::WriteOnly) || engine.last_rebuild().is_some());
    let written = writer.await.unwrap();
    for (off, data) in written {
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    wait_all_rw(&engine).await;
    let report = engine.last_rebuild().unwrap();
    assert!(report.succeeded, "{report:?}");
    assert_eq!(fresh.facts().generation, replicas[0].facts().generation);
    assert!(!fresh.facts().rebuilding);
    replicas[0].kill();
    replicas[1].kill();
    let all = engine.read(0, SIZE as usize).await.unwrap();
    assert!(all[..] == model[..], "the rebuilt replica differs from the model");
    engine.write(0, Bytes::from(vec![1u8; 4096]), false).await.unwrap();
    assert_eq!(modes(&engine), [Mode::Error, Mode::Error, Mode::ReadWrite]);
}

/// A second rebuild of a replica that already holds the data reuses it (checksums equal, nothing sent).
#[tokio::test]
async fn a_retried_rebuild_reuses_what_the_target_holds() {
    let (_cluster, _replicas, engine) = cluster_engine(2).await;
    for i in 0..32u64 {
        engine.write(i * 65536, Bytes::from(pattern(i, 65536)), false).await.unwrap();
    }
    engine.remove_replica("tcp://r1:1").await.unwrap();
    engine.write(0, Bytes::from(vec![7u8; 4096]), false).await.unwrap();
    engine.add_replica("tcp://r1:1").await.unwrap();
    wait_all_rw(&engine).await;
    let report = engine.last_rebuild().unwrap();
    assert!(report.succeeded, "{report:?}");
    assert!(report.reused_bytes > report.copied_bytes, "{report:?}");
    assert!(report.copied_bytes > 0, "{report:?}");
    assert_eq!(&engine.read(0, 4096).await.unwrap()[..], &[7u8; 4096][..]);
}

#[tokio::test]
async fn bad_control_input_gets_clear_errors() {
    let (_c, _r, engine) = cluster_engine(2).await;
    let e = engine.add_replica("tcp://r0:1").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    assert_eq!(engine.add_replica("r9").await.unwrap_err().kind, ErrorKind::InvalidArgument);
    assert_eq!(engine.remove_replica("tcp://zz:1").await.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(
        engine.snapshot_create(Some("Bad Name".into()), BTreeMap::new()).await.unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
    assert_eq!(engine.snapshot_remove("nope").await.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(engine.revert("nope").await.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(engine.expand(SIZE - 4096).await.unwrap_err().kind, ErrorKind::InvalidArgument);
    assert_eq!(engine.expand(SIZE + 1).await.unwrap_err().kind, ErrorKind::InvalidArgument);
    engine.remove_replica("tcp://r0:1").await.unwrap();
    assert_eq!(engine.remove_replica("tcp://r1:1").await.unwrap_err().kind, ErrorKind::Conflict);
    let cluster = MemoryCluster::new();
    cluster.add("tcp://a:1", SIZE);
    let dup = vec!["tcp://a:1".to_string(), "tcp://a:1".to_string()];
    assert!(Engine::start(config(), cluster, &dup).await.is_err());
}

#[tokio::test]
async fn snapshot_revert_expand_round_trip() {
    let (_c, replicas, engine) = cluster_engine(2).await;
    engine.write(0, Bytes::from(vec![1u8; 4096]), false).await.unwrap();
    let name = engine.snapshot_create(None, BTreeMap::from([("k".into(), "v".into())])).await.unwrap();
    assert_eq!(name.len(), 36);
    engine.write(0, Bytes::from(vec![2u8; 4096]), false).await.unwrap();
    engine.snapshot_create(Some("second".into()), BTreeMap::new()).await.unwrap();
    let e = engine.snapshot_create(Some("second".into()), BTreeMap::new()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    let list = engine.snapshots().await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list
        .iter()
        .any(|s| s.name == name && s.labels.get("k").map(String::as_str) == Some("v") && s.user_created));
    engine.revert(&name).await.unwrap();
    assert_eq!(&engine.read(0, 4096).await.unwrap()[..], &[1u8; 4096][..]);
    for r in &replicas {
        assert_eq!(r.read_volume(0, 4096), vec![1u8; 4096]);
    }
    engine.snapshot_remove("second").await.unwrap();
    engine.snapshot_purge().await.unwrap();
    engine.expand(SIZE * 2).await.unwrap();
    assert_eq!(engine.size(), SIZE * 2);
    engine.write(SIZE * 2 - 4096, Bytes::from(vec![3u8; 4096]), false).await.unwrap();
    assert_eq!(replicas[1].facts().size, SIZE * 2);
}

#[tokio::test]
async fn a_replica_error_stays_reachable_through_source() {
    let cluster = MemoryCluster::new();
    cluster.add("tcp://r1:1", SIZE);
    let engine = Engine::start(EngineConfig::new("vol", SIZE), cluster.clone(), &["tcp://r1:1".to_string()])
        .await
        .unwrap();
    // Nothing listens at r9: the connector's error is the cause of the engine's.
    let err = engine.add_replica("tcp://r9:1").await.unwrap_err();
    let source = std::error::Error::source(&err).expect("the engine error has a source");
    let wire =
        source.downcast_ref::<corral_wire::WireError>().expect("the source is the replica's WireError");
    assert_eq!(wire.kind(), corral_wire::ErrorKind::Closed);
    assert!(err.to_string().contains("r9"), "{err}");
}
