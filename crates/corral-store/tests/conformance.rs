//! The conformance suite against every backend of this crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::Arc;

use corral_store::{conformance, MemoryStore, RedbStore, Store};

fn redb_in(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(&dir.path().join("corral.redb")).unwrap())
}

#[tokio::test]
async fn memory_crud() {
    conformance::crud(&MemoryStore::new()).await;
}

#[tokio::test]
async fn redb_crud() {
    let dir = tempfile::tempdir().unwrap();
    conformance::crud(&*redb_in(&dir)).await;
}

#[test]
fn memory_concurrent_updates_never_lose_a_write() {
    conformance::concurrent_updates(Arc::new(MemoryStore::new()), 8, 100);
}

#[test]
fn redb_concurrent_updates_never_lose_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let conflicts = conformance::concurrent_updates(redb_in(&dir), 4, 25);
    // Four threads doing read-modify-write on one key through a store on a blocking pool: the
    // interleaving makes conflicts all but certain; if none happened the check was not exercised.
    assert!(conflicts > 0, "no conflict was observed");
}

#[tokio::test]
async fn memory_watch_in_order() {
    conformance::watch_in_order(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_watch_in_order() {
    let dir = tempfile::tempdir().unwrap();
    conformance::watch_in_order(&*redb_in(&dir)).await;
}

#[tokio::test]
async fn redb_reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    conformance::reopen(|| redb_in(&dir)).await;
}

#[tokio::test]
async fn redb_refuses_a_second_open_of_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let _first = redb_in(&dir);
    let err = RedbStore::open(&dir.path().join("corral.redb")).err().unwrap();
    assert_eq!(err.kind(), corral_store::ErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn typed_datastore_round_trip_and_conflict() {
    use corral_store::resources::{DataLocality, Volume, VolumeSpec};
    use corral_store::Datastore;
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::new(redb_in(&dir));
    let spec = VolumeSpec {
        size: 1 << 30,
        number_of_replicas: 3,
        stale_replica_timeout: 30,
        data_locality: DataLocality::BestEffort,
        from_backup: None,
        node_id: None,
        maintenance: false,
        node_selector: vec![],
        disk_selector: vec![],
    };
    let v = ds.create(&Volume::new("vol-1", spec.clone())).await.unwrap();
    let got: Volume = ds.get("vol-1").await.unwrap();
    assert_eq!(got.spec, spec);
    assert_eq!(got.metadata.resource_version, v.metadata.resource_version);
    let mut w = got.clone();
    w.spec.number_of_replicas = 2;
    ds.update(&w).await.unwrap();
    let mut stale = got;
    stale.spec.number_of_replicas = 1;
    assert!(ds.update(&stale).await.unwrap_err().is_conflict());
    let modified: Volume = ds
        .modify("vol-1", |v: &mut Volume| {
            v.spec.size *= 2;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!((modified.spec.size, modified.spec.number_of_replicas), (2 << 30, 2));
}
