//! Engine epochs (fencing) in the session rules, against the real server loop with an in-memory service:
//! an older epoch is refused, an equal one is allowed (the same engine reconnecting), a newer one takes
//! the replica over and the old engine's next write fails without landing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use corral_wire::{ErrorKind, ReplicaClient};
use support::{MemoryService, TestServer};

const SIZE: u64 = 4 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_epoch_is_refused_with_a_clear_error() {
    let server = TestServer::start(MemoryService::new(SIZE), "tcp://127.0.0.1:0").await;
    let current = ReplicaClient::connect(&server.address, 2).await.unwrap();
    current.hello_at_epoch("engine-v", true, 5).await.unwrap();
    drop(current);

    for (epoch, take_over) in [(4, true), (4, false), (0, true)] {
        let old = ReplicaClient::connect(&server.address, 1).await.unwrap();
        let err = old.hello_at_epoch("engine-v", take_over, epoch).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
        assert!(
            err.to_string()
                .contains(&format!("engine epoch {epoch} is older than 5 accepted by this replica")),
            "{err}"
        );
        // Refused sessions get nothing done.
        let write = old.write(0, Bytes::from_static(b"stale")).await.unwrap_err();
        assert!(write.to_string().contains("Hello must be the first request"), "{write}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equal_epoch_is_allowed_for_the_same_engine_reconnecting() {
    let service = MemoryService::new(SIZE);
    let server = TestServer::start(service.clone(), "tcp://127.0.0.1:0").await;
    let first = ReplicaClient::connect(&server.address, 2).await.unwrap();
    first.hello_at_epoch("engine-v", true, 3).await.unwrap();
    first.write(0, Bytes::from_static(b"one")).await.unwrap();
    // A second client under the same epoch while the first holds the replica: the usual rule (Busy
    // without take-over).
    let second = ReplicaClient::connect(&server.address, 1).await.unwrap();
    let err = second.hello_at_epoch("engine-v", false, 3).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    // The engine reconnects (its old connections gone): same epoch, accepted.
    first.close();
    drop(first);
    let again = ReplicaClient::connect(&server.address, 2).await.unwrap();
    again.hello_at_epoch("engine-v", true, 3).await.unwrap();
    again.write(4096, Bytes::from_static(b"two")).await.unwrap();
    assert_eq!(&again.read(0, 3).await.unwrap()[..], b"one");
    assert_eq!(&again.read(4096, 3).await.unwrap()[..], b"two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_epoch_takes_over_and_the_old_engine_cannot_write_any_more() {
    let service = MemoryService::new(SIZE);
    let server = TestServer::start(service.clone(), "tcp://127.0.0.1:0").await;
    let old = ReplicaClient::connect(&server.address, 2).await.unwrap();
    old.hello_at_epoch("engine-v", false, 1).await.unwrap();
    old.write(0, Bytes::from(vec![1u8; 4096])).await.unwrap();
    old.flush().await.unwrap();

    // No take-over asked: the newer epoch alone takes the replica from the holder.
    let new = ReplicaClient::connect(&server.address, 2).await.unwrap();
    new.hello_at_epoch("engine-v", false, 2).await.unwrap();

    // Small (inline) and large (worker pool) writes of the old engine both fail and land nowhere.
    let small = old.write(8192, Bytes::from(vec![9u8; 4096])).await;
    assert!(small.is_err(), "the old engine's small write succeeded after a newer epoch took over");
    let large = old.write(1 << 20, Bytes::from(vec![9u8; 512 << 10])).await;
    assert!(large.is_err(), "the old engine's large write succeeded after a newer epoch took over");
    assert_eq!(new.read(0, 4096).await.unwrap()[..], [1u8; 4096][..], "the flushed write is there");
    assert_eq!(new.read(8192, 4096).await.unwrap()[..], [0u8; 4096][..]);
    assert_eq!(new.read(1 << 20, 512 << 10).await.unwrap()[..], vec![0u8; 512 << 10][..]);

    // The old engine's reconnect is refused too: the replica remembers epoch 2.
    let reconnect = ReplicaClient::connect(&server.address, 1).await.unwrap();
    let err = reconnect.hello_at_epoch("engine-v", true, 1).await.unwrap_err();
    assert!(err.to_string().contains("engine epoch 1 is older than 2"), "{err}");
    new.write(0, Bytes::from(vec![2u8; 4096])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_without_epochs_keep_todays_rules() {
    let server = TestServer::start(MemoryService::new(SIZE), "tcp://127.0.0.1:0").await;
    let a = ReplicaClient::connect(&server.address, 1).await.unwrap();
    a.hello("engine-a", false).await.unwrap();
    let b = ReplicaClient::connect(&server.address, 1).await.unwrap();
    assert_eq!(b.hello("engine-b", false).await.unwrap_err().kind(), ErrorKind::Busy);
    b.hello("engine-b", true).await.unwrap();
    b.write(0, Bytes::from_static(b"b")).await.unwrap();
    // The first epoch a replica sees raises it above 0; from then on epoch 0 is refused.
    let managed = ReplicaClient::connect(&server.address, 1).await.unwrap();
    managed.hello_at_epoch("engine-a", false, 1).await.unwrap();
    let by_hand = ReplicaClient::connect(&server.address, 1).await.unwrap();
    let err = by_hand.hello("engine-a", true).await.unwrap_err();
    assert!(err.to_string().contains("engine epoch 0 is older than 1"), "{err}");
}
