//! The conformance suite every backend must pass, written as plain functions so each backend's
//! tests call them (`tests/conformance.rs` runs them against the memory and redb backends,
//! `tests/etcd_conformance.rs` against real etcd; a Kubernetes backend would call the same
//! functions). They panic on a violation: this module is test support, not production code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use futures::StreamExt;
use serde_json::json;

use crate::error::ErrorKind;
use crate::store::{Kind, ResourceVersion, Store, WatchEvent};

/// create / get / list / update / delete, and the errors each must give.
pub async fn crud(store: &dyn Store) {
    let a = store.create(Kind::Volume, "a", json!({"n": 1})).await.unwrap();
    assert_eq!(a.value, json!({"n": 1}));
    assert_eq!(
        store.create(Kind::Volume, "a", json!({})).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    // Same name, other kind: independent.
    store.create(Kind::Replica, "a", json!({"r": true})).await.unwrap();
    store.create(Kind::Volume, "b", json!({"n": 2})).await.unwrap();
    assert_eq!(store.get(Kind::Volume, "a").await.unwrap(), a);
    assert_eq!(store.get(Kind::Volume, "zz").await.unwrap_err().kind(), ErrorKind::NotFound);
    let names: Vec<_> = store.list(Kind::Volume).await.unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(store.list(Kind::Node).await.unwrap().len(), 0);

    let a2 = store.update(Kind::Volume, "a", &a.version, json!({"n": 10})).await.unwrap();
    assert_ne!(a2.version, a.version, "a write must change the version");
    assert_eq!(store.get(Kind::Volume, "a").await.unwrap().value, json!({"n": 10}));
    let stale = store.update(Kind::Volume, "a", &a.version, json!({"n": 11})).await.unwrap_err();
    assert_eq!(stale.kind(), ErrorKind::Conflict);
    assert_eq!(
        store.get(Kind::Volume, "a").await.unwrap().value,
        json!({"n": 10}),
        "a conflict changes nothing"
    );
    assert_eq!(
        store.update(Kind::Volume, "zz", &a.version, json!({})).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Versions no backend issued (etcd compares an absent key's revision as 0) find nothing either.
    for bogus in ["0", "-1", "x"] {
        let bogus = ResourceVersion(bogus.to_string());
        assert_eq!(
            store.update(Kind::Volume, "zz", &bogus, json!({})).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            store.delete(Kind::Volume, "zz", Some(&bogus)).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    assert_eq!(
        store.delete(Kind::Volume, "a", Some(&a.version)).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    store.delete(Kind::Volume, "a", Some(&a2.version)).await.unwrap();
    assert_eq!(store.get(Kind::Volume, "a").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(store.delete(Kind::Volume, "a", None).await.unwrap_err().kind(), ErrorKind::NotFound);
    // A re-created name gets a version no earlier observer can hold.
    let a3 = store.create(Kind::Volume, "a", json!({"n": 3})).await.unwrap();
    assert_ne!(a3.version, a.version);
    assert_ne!(a3.version, a2.version);
    assert_eq!(store.get(Kind::Replica, "a").await.unwrap().value, json!({"r": true}));
    store.delete(Kind::Volume, "b", None).await.unwrap();

    assert_eq!(
        store.create(Kind::Volume, "", json!({})).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        store.create(Kind::Volume, "x/y", json!({})).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

/// `threads` threads each add 1 to a counter `rounds` times by read-modify-write with the version
/// check, retrying on `Conflict`. No increment may be lost (last-writer-wins would lose some) and
/// the returned number of conflicts shows the check was exercised.
pub fn concurrent_updates(store: Arc<dyn Store>, threads: usize, rounds: usize) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(store.create(Kind::Setting, "counter", json!(0))).unwrap();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let mut conflicts = 0;
                    for _ in 0..rounds {
                        loop {
                            let cur = store.get(Kind::Setting, "counter").await.unwrap();
                            let n = cur.value.as_u64().unwrap();
                            match store.update(Kind::Setting, "counter", &cur.version, json!(n + 1)).await {
                                Ok(_) => break,
                                Err(e) if e.kind() == ErrorKind::Conflict => conflicts += 1,
                                Err(e) => panic!("update failed: {e}"),
                            }
                        }
                    }
                    conflicts
                })
            })
        })
        .collect();
    let conflicts = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let total = rt.block_on(store.get(Kind::Setting, "counter")).unwrap().value;
    assert_eq!(total, json!((threads * rounds) as u64), "lost updates: conflicts={conflicts}");
    conflicts
}

/// A watcher sees every change after it subscribed, in order, filtered by kind; a second watcher
/// of all kinds sees the interleaving of kinds in commit order.
pub async fn watch_in_order(store: &dyn Store) {
    let mut volumes = store.watch(Some(Kind::Volume)).await.unwrap();
    let mut all = store.watch(None).await.unwrap();
    let mut expected_all = Vec::new();
    let mut expected_volumes = Vec::new();
    for i in 0..50u64 {
        let name = format!("w{}", i % 5);
        let put = match store.get(Kind::Volume, &name).await {
            Ok(cur) => store.update(Kind::Volume, &name, &cur.version, json!(i)).await.unwrap(),
            Err(_) => store.create(Kind::Volume, &name, json!(i)).await.unwrap(),
        };
        expected_all.push(("put", put.kind, put.name.clone(), put.value.clone()));
        expected_volumes.push(("put", put.name.clone(), put.value.clone()));
        if i % 7 == 0 {
            let r = store.create(Kind::Node, &format!("n{i}"), json!({"i": i})).await.unwrap();
            expected_all.push(("put", r.kind, r.name, r.value));
        }
        if i % 11 == 10 {
            let last = store.get(Kind::Volume, &name).await.unwrap();
            store.delete(Kind::Volume, &name, None).await.unwrap();
            expected_all.push(("del", Kind::Volume, name.clone(), last.value.clone()));
            expected_volumes.push(("del", name, last.value));
        }
    }
    let tag = |ev: &WatchEvent| if matches!(ev, WatchEvent::Put(_)) { "put" } else { "del" };
    for want in expected_volumes {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), volumes.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let r = ev.record();
        assert_eq!((tag(&ev), r.name.clone(), r.value.clone()), want);
    }
    for want in expected_all {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), all.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let r = ev.record();
        assert_eq!((tag(&ev), r.kind, r.name.clone(), r.value.clone()), want);
    }
    // Nothing more.
    assert!(tokio::time::timeout(std::time::Duration::from_millis(50), volumes.next()).await.is_err());
}

/// Data acknowledged before closing is there after reopening, with the same versions, and
/// versions keep changing after the reopen. `open` must open the same underlying store each time.
pub async fn reopen(open: impl Fn() -> Arc<dyn Store>) {
    let before = {
        let store = open();
        store.create(Kind::Volume, "keep", json!({"size": 4096})).await.unwrap();
        store.create(Kind::Volume, "gone", json!({})).await.unwrap();
        store.delete(Kind::Volume, "gone", None).await.unwrap();
        let cur = store.get(Kind::Volume, "keep").await.unwrap();
        store.update(Kind::Volume, "keep", &cur.version, json!({"size": 8192})).await.unwrap()
    };
    let store = open();
    let after = store.get(Kind::Volume, "keep").await.unwrap();
    assert_eq!(after, before);
    assert_eq!(store.get(Kind::Volume, "gone").await.unwrap_err().kind(), ErrorKind::NotFound);
    let next = store.update(Kind::Volume, "keep", &after.version, json!({"size": 1})).await.unwrap();
    assert_ne!(next.version, after.version);
    let again = store.create(Kind::Volume, "gone", json!({})).await.unwrap();
    assert_ne!(again.version, before.version);
}
