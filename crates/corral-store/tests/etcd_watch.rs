//! Watches over real etcd survive a member's death and a client reconnect with no event missed or
//! repeated (every write carries a sequence number, and the watcher must see each exactly once, in
//! order); a watch whose history was compacted while it was away ends, meaning "list again".
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::Arc;
use std::time::Duration;

use corral_store::{ErrorKind, EtcdStore, Kind, Store, WatchEvent, WatchStream};
use corral_testkit::etcd::EtcdCluster;
use futures::StreamExt;
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn connect(url: &str, cluster: &str) -> Arc<dyn Store> {
    Arc::new(EtcdStore::connect(url, cluster).await.unwrap())
}

/// Write number `seq`: when record `e<seq-1>` exists, every fifth write deletes it and every third
/// updates it; the others create `e<seq>`. Returns what a watcher must see for it: (put?, name, the
/// sequence number the record carries).
async fn write(store: &dyn Store, seq: u64) -> (bool, String, u64) {
    if let Some(prev) = seq.checked_sub(1).map(|p| format!("e{p}")) {
        if let Ok(cur) = store.get(Kind::Volume, &prev).await {
            if seq % 5 == 0 {
                store.delete(Kind::Volume, &prev, Some(&cur.version)).await.unwrap();
                return (false, prev, cur.value["seq"].as_u64().unwrap());
            }
            if seq % 3 == 0 {
                store.update(Kind::Volume, &prev, &cur.version, json!({"seq": seq})).await.unwrap();
                return (true, prev, seq);
            }
        }
    }
    let name = format!("e{seq}");
    store.create(Kind::Volume, &name, json!({"seq": seq})).await.unwrap();
    (true, name, seq)
}

/// Takes `expected.len()` events from `watch` and checks each against `expected`, then that no
/// other event comes.
async fn expect_exactly(watch: &mut WatchStream, expected: &[(bool, String, u64)]) {
    expect_next(watch, expected).await;
    let extra = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
    assert!(extra.is_err(), "an event came twice or from nowhere: {extra:?}");
}

/// Takes `expected.len()` events from `watch` and checks each against `expected`.
async fn expect_next(watch: &mut WatchStream, expected: &[(bool, String, u64)]) {
    for (i, want) in expected.iter().enumerate() {
        let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .unwrap_or_else(|_| panic!("event {i} ({want:?}) did not come"))
            .unwrap_or_else(|| panic!("the watch ended before event {i}"))
            .unwrap_or_else(|e| panic!("the watch failed before event {i}: {e}"));
        let record = event.record();
        let got =
            (matches!(event, WatchEvent::Put(_)), record.name.clone(), record.value["seq"].as_u64().unwrap());
        assert_eq!(&got, want, "event {i}");
    }
}

#[test]
fn a_watch_moves_to_another_member_when_its_member_is_killed() {
    let mut etcd = EtcdCluster::start(3);
    let rt = runtime();
    let cluster = "watch-kill";
    // The watcher talks to member 0 (its first endpoint); the writer to member 1.
    let watcher = rt.block_on(connect(&etcd.url_of(&[0, 1, 2]), cluster));
    let writer = rt.block_on(connect(&etcd.url_of(&[1, 2, 0]), cluster));
    let mut watch = rt.block_on(watcher.watch(Some(Kind::Volume))).unwrap();
    let mut all = rt.block_on(watcher.watch(None)).unwrap();
    let mut expected = Vec::new();
    rt.block_on(async {
        for seq in 0..150 {
            expected.push(write(&*writer, seq).await);
        }
    });
    // Killed while the watcher may still be behind: what it had not received yet must come from
    // another member, from the revision after the last event it delivered.
    etcd.kill(0);
    rt.block_on(async {
        for seq in 150..300 {
            expected.push(write(&*writer, seq).await);
        }
        expect_exactly(&mut watch, &expected).await;
        expect_exactly(&mut all, &expected).await;
    });
}

#[test]
fn a_watch_resumes_when_the_only_member_comes_back() {
    let mut etcd = EtcdCluster::start(1);
    let rt = runtime();
    let url = etcd.url();
    let watcher = rt.block_on(connect(&url, "watch-restart"));
    let mut watch = rt.block_on(watcher.watch(Some(Kind::Volume))).unwrap();
    let mut expected = Vec::new();
    rt.block_on(async {
        for seq in 0..100 {
            expected.push(write(&*watcher, seq).await);
        }
        // Part of it delivered before the member dies, the rest after it is back.
        expect_next(&mut watch, &expected[..50]).await;
    });
    etcd.kill(0);
    std::thread::sleep(Duration::from_millis(500));
    etcd.restart(0);
    rt.block_on(async {
        // A new client (the "reconnect") writes the rest; the old watch reopens by itself.
        let writer = connect(&url, "watch-restart").await;
        for seq in 100..200 {
            expected.push(write(&*writer, seq).await);
        }
        expect_exactly(&mut watch, &expected[50..]).await;
    });
}

#[test]
fn a_watch_ends_when_the_history_it_needs_was_compacted() {
    let mut etcd = EtcdCluster::start(3);
    let rt = runtime();
    let cluster = "watch-compacted";
    // The watcher knows only member 0, so it cannot follow the changes while member 0 is dead.
    let watcher = rt.block_on(connect(&etcd.url_of(&[0]), cluster));
    let writer = rt.block_on(connect(&etcd.url_of(&[1, 2]), cluster));
    let mut watch = rt.block_on(watcher.watch(Some(Kind::Volume))).unwrap();
    let mut expected = Vec::new();
    rt.block_on(async {
        for seq in 0..10 {
            expected.push(write(&*writer, seq).await);
        }
        expect_exactly(&mut watch, &expected).await;
    });
    etcd.kill(0);
    let last = rt.block_on(async {
        for seq in 10..20 {
            write(&*writer, seq).await;
        }
        writer.get(Kind::Volume, "e19").await.unwrap().version
    });
    etcd.etcdctl(1, &["compact", &last.0]);
    etcd.restart(0);
    rt.block_on(async {
        let end = tokio::time::timeout(Duration::from_secs(30), watch.next()).await.unwrap();
        let err = end.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.to_string().contains("list again"), "{err}");
        assert!(watch.next().await.is_none(), "the watch ends after its error");
    });
}
