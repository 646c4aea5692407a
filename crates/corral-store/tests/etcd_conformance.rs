//! The conformance suite against real etcd (Debian `etcd-server`): one member; three members with
//! one SIGKILLed in the middle of the suite; two clients racing on one record; bad URLs and
//! unreachable endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_store::{conformance, ErrorKind, EtcdStore, Kind, Store};
use corral_testkit::etcd::EtcdCluster;
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A cluster name no other test of this process uses: every suite part starts from an empty store.
fn fresh_cluster(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{label}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

async fn connect(url: &str, cluster: &str) -> Arc<dyn Store> {
    Arc::new(EtcdStore::connect(url, cluster).await.unwrap())
}

/// `conformance::reopen` opens synchronously; the store's connect is async and needs the runtime.
async fn reopen_suite(url: &str) {
    let cluster = fresh_cluster("reopen");
    conformance::reopen(|| {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(connect(url, &cluster)))
    })
    .await;
}

#[test]
fn one_member_passes_the_conformance_suite() {
    let etcd = EtcdCluster::start(1);
    let url = etcd.url();
    let rt = runtime();
    rt.block_on(async {
        conformance::crud(&*connect(&url, &fresh_cluster("crud")).await).await;
        conformance::watch_in_order(&*connect(&url, &fresh_cluster("watch")).await).await;
        reopen_suite(&url).await;
    });
    let store = rt.block_on(connect(&url, &fresh_cluster("counter")));
    let conflicts = conformance::concurrent_updates(store, 4, 25);
    assert!(conflicts > 0, "no conflict was observed");
}

#[test]
fn three_members_pass_the_suite_with_one_killed_in_the_middle() {
    let mut etcd = EtcdCluster::start(3);
    let url = etcd.url();
    let rt = runtime();
    rt.block_on(async {
        conformance::crud(&*connect(&url, &fresh_cluster("crud")).await).await;
    });
    // Member 0 is the first endpoint, the one the store talks to: it dies while four threads do
    // read-modify-write on one record, and the count must still come out exact.
    let counter_cluster = fresh_cluster("counter");
    let store = rt.block_on(connect(&url, &counter_cluster));
    let counter = store.clone();
    let started = Instant::now();
    let observer = rt.block_on(connect(&etcd.url_of(&[1, 2]), &counter_cluster));
    let conflicts = std::thread::scope(|scope| {
        let updates = scope.spawn(move || conformance::concurrent_updates(counter, 4, 60));
        // Killed a quarter of the way through, while the updates run.
        loop {
            let done = rt.block_on(observer.get(Kind::Setting, "counter")).map(|r| r.value.as_u64().unwrap());
            if done.is_ok_and(|n| n >= 60) {
                break;
            }
            assert!(!updates.is_finished(), "the updates ended before the kill");
            std::thread::sleep(Duration::from_millis(5));
        }
        etcd.kill(0);
        let at_kill = rt.block_on(observer.get(Kind::Setting, "counter")).unwrap().value.as_u64().unwrap();
        assert!(at_kill < 240, "the updates ended before the kill: make them longer");
        updates.join().unwrap()
    });
    assert!(conflicts > 0, "no conflict was observed");
    eprintln!("240 increments with member 0 killed after 60 took {:?}", started.elapsed());
    rt.block_on(async {
        // The rest of the suite on the two members left, through the store that saw the kill and
        // through new ones whose first endpoint is dead.
        conformance::watch_in_order(&*connect(&url, &fresh_cluster("watch")).await).await;
        conformance::crud(&*connect(&url, &fresh_cluster("crud")).await).await;
        reopen_suite(&url).await;
        assert_eq!(store.get(Kind::Setting, "counter").await.unwrap().value, json!(240));
    });
    etcd.restart(0);
    rt.block_on(async {
        // Only the restarted member: it caught up with what was written while it was dead.
        let alone = etcd.url_of(&[0]);
        let counter = store.get(Kind::Setting, "counter").await.unwrap();
        let restarted = connect(&alone, &counter_cluster).await;
        assert_eq!(restarted.get(Kind::Setting, "counter").await.unwrap(), counter);
    });
}

#[test]
fn two_clients_racing_on_one_record_exactly_one_wins() {
    let etcd = EtcdCluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let cluster = fresh_cluster("race");
        // Two clients on different members.
        let a = connect(&etcd.url_of(&[0, 1, 2]), &cluster).await;
        let b = connect(&etcd.url_of(&[1, 2, 0]), &cluster).await;
        let (ca, cb) =
            tokio::join!(a.create(Kind::Volume, "v", json!("a")), b.create(Kind::Volume, "v", json!("b")));
        let created = match (ca, cb) {
            (Ok(r), Err(e)) | (Err(e), Ok(r)) => {
                assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
                r
            }
            other => panic!("exactly one create must win: {other:?}"),
        };
        let mut current = created;
        for round in 0..20 {
            let (ua, ub) = tokio::join!(
                a.update(Kind::Volume, "v", &current.version, json!({"a": round})),
                b.update(Kind::Volume, "v", &current.version, json!({"b": round})),
            );
            let winner = match (ua, ub) {
                (Ok(r), Err(e)) | (Err(e), Ok(r)) => {
                    assert_eq!(e.kind(), ErrorKind::Conflict, "round {round}: {e}");
                    r
                }
                other => panic!("round {round}: exactly one update must win: {other:?}"),
            };
            for client in [&a, &b] {
                assert_eq!(client.get(Kind::Volume, "v").await.unwrap(), winner, "round {round}");
            }
            current = winner;
        }
        let (da, db) = tokio::join!(
            a.delete(Kind::Volume, "v", Some(&current.version)),
            b.delete(Kind::Volume, "v", Some(&current.version)),
        );
        match (da, db) {
            (Ok(()), Err(e)) | (Err(e), Ok(())) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
            other => panic!("exactly one delete must win: {other:?}"),
        }
    });
}

#[test]
fn bad_urls_and_unreachable_stores_are_clear_errors() {
    let etcd = EtcdCluster::start(1);
    let rt = runtime();
    rt.block_on(async {
        for url in ["http://127.0.0.1:2379", "etcd://", "etcd://127.0.0.1", "etcd://127.0.0.1:0"] {
            let err = EtcdStore::connect(url, "c").await.err().unwrap();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
            assert!(err.to_string().contains(url), "{err}");
        }
        let err = EtcdStore::connect(&etcd.url(), "a/b").await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

        // Nothing listens on these ports.
        let dead = format!(
            "etcd://127.0.0.1:{},127.0.0.1:{}",
            corral_testkit::ports::free_port(),
            corral_testkit::ports::free_port()
        );
        let started = Instant::now();
        let err = EtcdStore::connect(&dead, "c").await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.to_string().contains(&dead), "the error names the store: {err}");
        eprintln!("unreachable store: {err}");
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());

        // A dead endpoint listed first is skipped for the live one.
        let first_dead =
            format!("etcd://127.0.0.1:{},{}", corral_testkit::ports::free_port(), etcd.endpoint(0));
        conformance::crud(&*connect(&first_dead, &fresh_cluster("crud")).await).await;
    });
}

#[test]
fn a_list_pages_through_many_records_and_sees_no_claims() {
    let etcd = EtcdCluster::start(1);
    let rt = runtime();
    rt.block_on(async {
        let store = EtcdStore::connect(&etcd.url(), &fresh_cluster("pages")).await.unwrap();
        let mut watch_all = store.watch(None).await.unwrap();
        // More than two pages of 500, written concurrently a hundred at a time.
        let names: Vec<String> = (0..1234).map(|i| format!("r{i}")).collect();
        for chunk in names.chunks(100) {
            let writes = chunk.iter().map(|n| store.create(Kind::Replica, n, json!({"n": n})));
            for result in futures::future::join_all(writes).await {
                result.unwrap();
            }
        }
        // A claim lives under the same prefix but is no record of any kind.
        let _lease = store.acquire_lease("node/n1", "n1", Duration::from_secs(5)).await.unwrap().unwrap();
        store.create(Kind::Node, "n1", json!({})).await.unwrap();
        let mut want = names.clone();
        want.sort();
        let got: Vec<String> = store.list(Kind::Replica).await.unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want, "every record once, sorted by name");
        let nodes: Vec<String> = store.list(Kind::Node).await.unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(nodes, ["n1"]);
        // The watch of every kind saw the records and the node, not the claim.
        use futures::StreamExt;
        for i in 0..=names.len() {
            let event = tokio::time::timeout(Duration::from_secs(10), watch_all.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let kind = event.record().kind;
            assert!(
                kind == Kind::Replica || (i == names.len() && kind == Kind::Node),
                "event {i}: {event:?}"
            );
        }
        assert!(tokio::time::timeout(Duration::from_millis(300), watch_all.next()).await.is_err());
    });
}
