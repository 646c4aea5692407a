//! Property test against real etcd: random operation sequences agree with the in-memory model
//! (`support/model.rs`, shared with the redb backend's test), on one member, and on three members
//! of which the first endpoint is SIGKILLed half-way through the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use corral_store::{EtcdStore, Store};
use corral_testkit::etcd::EtcdCluster;
use futures::FutureExt;
use proptest::test_runner::{Config, TestRunner};
use support::model::{check_against_model, op};

/// Runs `cases` random sequences; `before_case(n)` runs before case `n`. Each case gets its own
/// cluster prefix, so it starts from an empty store; a `Reopen` connects a new client to it.
fn run_model(url: &str, cases: u32, mut before_case: impl FnMut(usize)) {
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let case = AtomicUsize::new(0);
    let hook = Mutex::new(&mut before_case);
    runner
        .run(&proptest::collection::vec(op(), 1..60), |ops| {
            let n = case.fetch_add(1, Ordering::SeqCst);
            (hook.lock().unwrap())(n);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let cluster = format!("model-{}-{n}", std::process::id());
            let url = url.to_string();
            let open = move || {
                let (url, cluster) = (url.clone(), cluster.clone());
                async move {
                    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&url, &cluster).await.unwrap());
                    store
                }
                .boxed()
            };
            rt.block_on(check_against_model(open, ops))
        })
        .unwrap();
}

#[test]
fn one_member_matches_the_model() {
    let etcd = EtcdCluster::start(1);
    run_model(&etcd.url(), 64, |_| {});
}

#[test]
fn three_members_match_the_model_with_one_killed_half_way() {
    let mut etcd = EtcdCluster::start(3);
    let url = etcd.url();
    let mut killed = false;
    run_model(&url, 48, |n| {
        // The first endpoint is the one every client prefers: from here on, each connects past it.
        if n == 24 && !killed {
            etcd.kill(0);
            killed = true;
        }
    });
    assert!(killed, "the member was never killed");
}
