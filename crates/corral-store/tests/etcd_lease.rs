//! Leases over real etcd: one holder of a claim at a time, kept alive past its TTL; a holder cut off
//! from etcd (its only member SIGKILLed) loses the claim to another within seconds and, once it can
//! reach etcd again, every write it guards with the old lease is refused and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::{Duration, Instant};

use corral_store::{ErrorKind, EtcdStore, Guarded, Kind, Store};
use corral_testkit::etcd::EtcdCluster;
use serde_json::json;

const TTL: Duration = Duration::from_secs(2);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn a_holder_cut_off_loses_its_claim_and_cannot_write_with_it() {
    let mut etcd = EtcdCluster::start(3);
    let rt = runtime();
    let cluster = "fence";
    // `a` reaches etcd only through member 0; `b` through the others.
    let a = rt.block_on(EtcdStore::connect(&etcd.url_of(&[0]), cluster)).unwrap();
    let b = rt.block_on(EtcdStore::connect(&etcd.url_of(&[1, 2]), cluster)).unwrap();
    let a_lease = rt.block_on(async {
        let a_lease = a.acquire_lease("leader", "a", TTL).await.unwrap().expect("the claim is free");
        assert!(b.acquire_lease("leader", "b", TTL).await.unwrap().is_none(), "two holders of one claim");
        assert_eq!(b.lease_holder("leader").await.unwrap().as_deref(), Some("a"));
        let Guarded::Written(v) = a.create_guarded(&a_lease, Kind::Volume, "v", json!(1)).await.unwrap()
        else {
            panic!("the holder's guarded create was refused");
        };
        // Kept alive well past its TTL.
        tokio::time::sleep(TTL * 2 + Duration::from_millis(500)).await;
        assert!(a_lease.is_held());
        assert_eq!(b.lease_holder("leader").await.unwrap().as_deref(), Some("a"));
        let written = a.update_guarded(&a_lease, Kind::Volume, "v", &v.version, json!(2)).await.unwrap();
        assert!(matches!(written, Guarded::Written(_)), "{written:?}");
        a_lease
    });

    etcd.kill(0);
    let killed = Instant::now();
    let (b_lease, current) = rt.block_on(async {
        let b_lease = loop {
            if let Some(lease) = b.acquire_lease("leader", "b", TTL).await.unwrap() {
                break lease;
            }
            assert!(killed.elapsed() < Duration::from_secs(20), "the claim was never freed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("claim taken over {:?} after its holder was cut off (TTL {TTL:?})", killed.elapsed());
        tokio::time::timeout(TTL + Duration::from_secs(2), a_lease.lost())
            .await
            .expect("the cut-off holder did not notice it lost its lease");
        assert!(!a_lease.is_held());
        let v = b.get(Kind::Volume, "v").await.unwrap();
        let Guarded::Written(current) =
            b.update_guarded(&b_lease, Kind::Volume, "v", &v.version, json!(3)).await.unwrap()
        else {
            panic!("the new holder's guarded update was refused");
        };
        (b_lease, current)
    });

    etcd.restart(0);
    rt.block_on(async {
        // The old holder reaches etcd again and tries with the current version: the lease decides.
        let update = a.update_guarded(&a_lease, Kind::Volume, "v", &current.version, json!(4)).await.unwrap();
        assert_eq!(update, Guarded::LeaseLost);
        let create = a.create_guarded(&a_lease, Kind::Volume, "w", json!(4)).await.unwrap();
        assert_eq!(create, Guarded::LeaseLost);
        let delete = a.delete_guarded(&a_lease, Kind::Volume, "v", Some(&current.version)).await.unwrap();
        assert_eq!(delete, Guarded::LeaseLost);
        assert_eq!(b.get(Kind::Volume, "v").await.unwrap(), current, "a refused write changed nothing");
        assert_eq!(b.get(Kind::Volume, "w").await.unwrap_err().kind(), ErrorKind::NotFound);
        // A stale version under a held lease is still a conflict, not a lost lease.
        let stale =
            b.update_guarded(&b_lease, Kind::Volume, "v", &v_version_before(&current), json!(5)).await;
        assert_eq!(stale.unwrap_err().kind(), ErrorKind::Conflict);
    });
}

/// A version of `v` older than `current` (any smaller revision is stale).
fn v_version_before(current: &corral_store::Record) -> corral_store::ResourceVersion {
    let revision: i64 = current.version.0.parse().unwrap();
    corral_store::ResourceVersion((revision - 1).to_string())
}

#[test]
fn a_revoked_claim_is_free_at_once_and_a_dropped_one_after_its_ttl() {
    let etcd = EtcdCluster::start(1);
    let rt = runtime();
    rt.block_on(async {
        let store = EtcdStore::connect(&etcd.url(), "liveness").await.unwrap();
        let lease = store.acquire_lease("node/n1", "n1", TTL).await.unwrap().unwrap();
        assert_eq!(store.lease_holder("node/n1").await.unwrap().as_deref(), Some("n1"));
        lease.revoke().await.unwrap();
        assert_eq!(store.lease_holder("node/n1").await.unwrap(), None);

        // A node that stops renewing (its process died) is gone within its TTL, and nobody sees
        // its claim as a record of any kind.
        let lease = store.acquire_lease("node/n1", "n1", TTL).await.unwrap().unwrap();
        assert!(store.list(Kind::Node).await.unwrap().is_empty());
        drop(lease);
        let dropped = Instant::now();
        while store.lease_holder("node/n1").await.unwrap().is_some() {
            assert!(dropped.elapsed() < TTL * 3, "the claim outlived its lease");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("claim gone {:?} after its keepalive stopped (TTL {TTL:?})", dropped.elapsed());
        assert!(store.acquire_lease("node/n1", "n1-again", TTL).await.unwrap().is_some());
        let err = store.acquire_lease("", "x", TTL).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    });
}
