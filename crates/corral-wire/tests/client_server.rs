//! The client against the real server loop over TCP and unix sockets, with an in-memory service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_wire::{ClientOptions, ErrorKind, ReplicaClient, ServeOptions, SnapshotRequest};
use rand::{Rng, SeedableRng};
use support::{MemoryService, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: u64 = 16 << 20;

async fn random_workload_matches_model(address: &str) {
    let client = ReplicaClient::connect(address, 3).await.unwrap();
    let facts = client.hello("engine-a", false).await.unwrap();
    assert_eq!(facts.size, SIZE);
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..20 {
        // 32 writes in flight at once, non-overlapping so their order does not matter.
        let mut calls = tokio::task::JoinSet::new();
        for slot in 0..32u64 {
            let len = rng.random_range(1..20_000u64);
            let offset = slot * (SIZE / 32) + rng.random_range(0..(SIZE / 32 - len));
            let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (round as u8) ^ (slot as u8)).collect();
            model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
            let client = client.clone();
            calls.spawn(async move { client.write(offset, Bytes::from(data)).await });
        }
        for result in calls.join_all().await {
            result.unwrap();
        }
        if round % 5 == 4 {
            client.write_zeroes(4096, 8192).await.unwrap();
            model[4096..12288].fill(0);
            client.unmap(SIZE - 65536, 65536).await.unwrap();
            model[(SIZE - 65536) as usize..].fill(0);
        }
        client.flush().await.unwrap();
    }
    for chunk in 0..(SIZE / (1 << 20)) {
        let data = client.read(chunk << 20, 1 << 20).await.unwrap();
        assert!(
            data[..] == model[(chunk << 20) as usize..((chunk + 1) << 20) as usize],
            "chunk {chunk} differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_and_reads_match_a_model_over_tcp() {
    let server = TestServer::start(MemoryService::new(SIZE), "tcp://127.0.0.1:0").await;
    random_workload_matches_model(&server.address).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_and_reads_match_a_model_over_unix() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}", dir.path().join("replica.sock").display());
    let server = TestServer::start(MemoryService::new(SIZE), &address).await;
    assert!(server.address.starts_with("unix:///"), "{}", server.address);
    random_workload_matches_model(&server.address).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_and_reads_match_a_model_with_every_request_on_the_worker_pool() {
    let options = ServeOptions { workers: 4, inline_max: 0, ..ServeOptions::default() };
    let server = TestServer::start_with(MemoryService::new(SIZE), "tcp://127.0.0.1:0", options).await;
    random_workload_matches_model(&server.address).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_writes_are_served_inline_and_fua_or_large_writes_on_the_worker_pool() {
    let service = MemoryService::new(SIZE);
    let server = TestServer::start(service.clone(), "tcp://127.0.0.1:0").await;
    let client = ReplicaClient::connect(&server.address, 1).await.unwrap();
    client.hello("engine-a", false).await.unwrap();
    let ran_on = || service.last_write_thread.lock().clone().unwrap_or_default();
    let on_pool = |name: &str| name.starts_with("replica-worker-");

    client.write(4096, Bytes::from(vec![1u8; 4096])).await.unwrap();
    assert!(!on_pool(&ran_on()), "a 4 KiB write went to the pool ({})", ran_on());
    let limit = corral_wire::server::DEFAULT_INLINE_MAX;
    client.write(0, Bytes::from(vec![2u8; limit])).await.unwrap();
    assert!(!on_pool(&ran_on()), "a write of inline_max bytes went to the pool ({})", ran_on());
    client.write(0, Bytes::from(vec![3u8; limit + 1])).await.unwrap();
    assert!(on_pool(&ran_on()), "a write above inline_max ran inline ({})", ran_on());
    client.write_fua(8192, Bytes::from(vec![4u8; 512])).await.unwrap();
    assert!(on_pool(&ran_on()), "a FUA write ran inline ({})", ran_on());
    assert_eq!(service.flushes.load(Ordering::SeqCst), 1, "the FUA write did not flush");
    // Whichever path served them, the data is where it was written.
    assert_eq!(client.read(0, limit as u64 + 1).await.unwrap()[..8192], [3u8; 8192][..]);
    assert_eq!(client.read(8192, 512).await.unwrap()[..], [4u8; 512][..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_reads_are_served_inline_when_cached_and_on_the_worker_pool_when_not() {
    let service = MemoryService::new(SIZE);
    let server = TestServer::start(service.clone(), "tcp://127.0.0.1:0").await;
    let client = ReplicaClient::connect(&server.address, 1).await.unwrap();
    client.hello("engine-a", false).await.unwrap();
    let ran_on = || service.last_read_thread.lock().clone().unwrap_or_default();
    let on_pool = |name: &str| name.starts_with("replica-worker-");
    client.write(4096, Bytes::from(vec![7u8; 4096])).await.unwrap();

    assert_eq!(client.read(4096, 4096).await.unwrap()[..], [7u8; 4096][..]);
    assert!(!on_pool(&ran_on()), "a cached 4 KiB read went to the pool ({})", ran_on());
    service.cold.store(true, Ordering::SeqCst);
    assert_eq!(client.read(4096, 4096).await.unwrap()[..], [7u8; 4096][..]);
    assert!(on_pool(&ran_on()), "a read that missed the cache ran inline ({})", ran_on());
    // Reads after a miss in the same batch still get their own answers, in any order.
    let reads: Vec<_> = (0..16u64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.read(i * 512, 512).await })
        })
        .collect();
    for (i, read) in reads.into_iter().enumerate() {
        let expected = if (8..16).contains(&i) { 7u8 } else { 0 };
        assert_eq!(read.await.unwrap().unwrap()[..], [expected; 512][..], "read {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_operations_and_remote_errors_carry_their_kind() {
    let service = MemoryService::new(SIZE);
    let server = TestServer::start(service.clone(), "tcp://127.0.0.1:0").await;
    let client = ReplicaClient::connect(&server.address, 2).await.unwrap();
    client.hello("engine-a", false).await.unwrap();
    client.set_generation(42).await.unwrap();
    client.set_revision(7).await.unwrap();
    let facts = client.info().await.unwrap();
    assert_eq!((facts.generation, facts.revision), (42, 7));
    client.snapshot(SnapshotRequest { name: "s1".into(), ..SnapshotRequest::default() }).await.unwrap();
    let err = client
        .snapshot(SnapshotRequest { name: "s1".into(), ..SnapshotRequest::default() })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(err.to_string().contains("snapshot s1 exists"), "{err}");
    let names: Vec<String> = client.list_snapshots().await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["s1".to_string()]);
    assert_eq!(client.mark_removed("nope").await.unwrap_err().kind(), ErrorKind::NotFound);
    let out_of_range = client.read(SIZE - 4096, 8192).await.unwrap_err();
    assert_eq!(out_of_range.kind(), ErrorKind::OutOfRange, "{out_of_range}");
    assert_eq!(client.read(0, 64 << 20 | 1).await.unwrap_err().kind(), ErrorKind::Protocol);
    client.expand(SIZE * 2).await.unwrap();
    assert_eq!(client.info().await.unwrap().size, SIZE * 2);
    // Extents are clipped to the asked range.
    let extents = client.layer_extents_in("s1", 4096, (1 << 20) - 4096).await.unwrap();
    assert_eq!(extents, vec![corral_wire::Extent { offset: 4096, len: 4096 }]);
    assert_eq!(client.layer_extents("s1").await.unwrap().len(), 2);
    assert_eq!(client.layer_checksum("s1", 0, 5).await.unwrap(), [5u8; 32]);
    client.write_layer("s1", 8192, Bytes::from_static(b"layer")).await.unwrap();
    assert_eq!(&client.read_layer("s1", 8192, 5).await.unwrap()[..], b"layer");
    client.write_fua(0, Bytes::from_static(b"fua")).await.unwrap();
    assert!(service.flushes.load(Ordering::SeqCst) >= 1, "FUA write did not flush");
    client.ping().await.unwrap();
    assert!(!client.is_closed(), "a remote error must not close the client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_concurrently_and_answers_come_back_out_of_order() {
    let service = MemoryService::new(SIZE);
    *service.flush_delay.lock() = Duration::from_millis(400);
    let server = TestServer::start(service.clone(), "tcp://127.0.0.1:0").await;
    let client = ReplicaClient::connect(&server.address, 1).await.unwrap();
    client.hello("engine-a", false).await.unwrap();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.flush().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    client.write(0, Bytes::from(vec![9u8; 4096])).await.unwrap();
    assert_eq!(client.read(0, 4096).await.unwrap()[..], [9u8; 4096][..]);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the read waited for the slow flush on the same connection"
    );
    assert!(!slow.is_finished());
    slow.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_requests_before_hello_are_refused() {
    let server = TestServer::start(MemoryService::new(SIZE), "tcp://127.0.0.1:0").await;
    let client = ReplicaClient::connect(&server.address, 1).await.unwrap();
    client.ping().await.unwrap();
    assert_eq!(client.info().await.unwrap().size, SIZE);
    let err = client.write(0, Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.to_string().contains("Hello must be the first request"), "{err}");
    assert_eq!(client.read(0, 1).await.unwrap_err().kind(), ErrorKind::Protocol);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_is_refused_until_it_takes_over() {
    let service = MemoryService::new(SIZE);
    let server = TestServer::start(service.clone(), "tcp://127.0.0.1:0").await;
    let first = ReplicaClient::connect(&server.address, 2).await.unwrap();
    first.hello("engine-a", false).await.unwrap();
    // The same engine id from another client instance (a restarted engine) is a different session.
    for engine in ["engine-b", "engine-a"] {
        let second = ReplicaClient::connect(&server.address, 2).await.unwrap();
        let err = second.hello(engine, false).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
        assert!(err.to_string().contains("held by engine \"engine-a\""), "{err}");
    }
    first.write(0, Bytes::from_static(b"still mine")).await.unwrap();

    let taker = ReplicaClient::connect(&server.address, 2).await.unwrap();
    taker.hello("engine-b", true).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), first.closed()).await.expect("old holder not disconnected");
    assert_eq!(first.write(0, Bytes::from_static(b"x")).await.unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(&taker.read(0, 10).await.unwrap()[..], b"still mine");

    // When the holder goes away, the claim ends and anyone may say Hello.
    drop(taker);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let next = ReplicaClient::connect(&server.address, 1).await.unwrap();
        match next.hello("engine-c", false).await {
            Ok(_) => break,
            Err(err) if err.kind() == ErrorKind::Busy && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("claim not released: {err}"),
        }
    }
}

async fn raw_connect(address: &str) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(address.trim_start_matches("tcp://")).await.unwrap()
}

/// Reads one response header (or None on EOF).
async fn read_response(stream: &mut tokio::net::TcpStream) -> Option<(corral_wire::frame::Header, Vec<u8>)> {
    let mut head = [0u8; corral_wire::frame::HEADER_LEN];
    if stream.read_exact(&mut head).await.is_err() {
        return None;
    }
    let header = corral_wire::frame::Header::decode(&head).unwrap();
    let mut payload = vec![0u8; header.payload_len as usize];
    stream.read_exact(&mut payload).await.unwrap();
    Some((header, payload))
}

async fn expect_closed(stream: &mut tokio::net::TcpStream) {
    let mut byte = [0u8; 1];
    let read =
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await.expect("not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "connection still open: {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_or_a_close_and_other_connections_keep_working() {
    use corral_wire::frame::{Header, Op, MAX_PAYLOAD};
    let server = TestServer::start(MemoryService::new(SIZE), "tcp://127.0.0.1:0").await;
    let healthy = ReplicaClient::connect(&server.address, 2).await.unwrap();
    healthy.hello("engine-a", false).await.unwrap();
    healthy.write(0, Bytes::from_static(b"healthy")).await.unwrap();

    // Bad magic: unanswerable, the connection is closed.
    let mut bad_magic = raw_connect(&server.address).await;
    bad_magic.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\0\0\0\0\0\0\0\0\0\0\0\0\0").await.unwrap();
    expect_closed(&mut bad_magic).await;

    // Unknown type: answered with a Protocol error carrying the request id; the connection stays usable.
    let mut unknown = raw_connect(&server.address).await;
    let header = Header { msg_type: 0x7e, request_id: 4242, ..Header::default() };
    unknown.write_all(&header.to_bytes()).await.unwrap();
    let (answer, message) = read_response(&mut unknown).await.expect("no answer to an unknown type");
    assert_eq!(answer.request_id, 4242);
    assert_eq!(answer.status, ErrorKind::Protocol.code());
    assert!(String::from_utf8_lossy(&message).contains("unknown message type 0x7e"));
    let ping = Header { msg_type: Op::Ping as u8, request_id: 5, ..Header::default() };
    unknown.write_all(&ping.to_bytes()).await.unwrap();
    let (answer, _) = read_response(&mut unknown).await.expect("no answer to ping after a bad frame");
    assert_eq!((answer.request_id, answer.status), (5, 0));

    // Huge payload length: answered with an error, then closed, without reading (or allocating) 4 GiB.
    let mut huge = raw_connect(&server.address).await;
    let header =
        Header { msg_type: Op::Write as u8, request_id: 77, payload_len: u32::MAX, ..Header::default() };
    huge.write_all(&header.to_bytes()).await.unwrap();
    let (answer, message) = read_response(&mut huge).await.expect("no answer to a huge frame");
    assert_eq!((answer.request_id, answer.status), (77, ErrorKind::Protocol.code()));
    assert!(String::from_utf8_lossy(&message).contains("exceeds the maximum"));
    expect_closed(&mut huge).await;
    let mut just_over = raw_connect(&server.address).await;
    let header = Header {
        msg_type: Op::Write as u8,
        request_id: 78,
        payload_len: MAX_PAYLOAD + 1,
        ..Header::default()
    };
    just_over.write_all(&header.to_bytes()).await.unwrap();
    assert_eq!(read_response(&mut just_over).await.unwrap().0.request_id, 78);
    expect_closed(&mut just_over).await;

    // Truncated frame then EOF: the server just drops the connection.
    let mut truncated = raw_connect(&server.address).await;
    truncated
        .write_all(&Header { msg_type: Op::Ping as u8, ..Header::default() }.to_bytes()[..20])
        .await
        .unwrap();
    truncated.shutdown().await.unwrap();
    expect_closed(&mut truncated).await;

    // Random garbage on many connections.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..20 {
        let mut garbage = raw_connect(&server.address).await;
        let mut bytes = vec![0u8; rng.random_range(1..300)];
        rng.fill(&mut bytes[..]);
        if rng.random_bool(0.5) {
            bytes[..4].copy_from_slice(b"CRWL");
        }
        let _ = garbage.write_all(&bytes).await;
    }

    assert_eq!(&healthy.read(0, 7).await.unwrap()[..], b"healthy");
    healthy.flush().await.unwrap();
    assert!(!healthy.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_fail_promptly_when_the_connection_drops() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    let fake = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        // Swallow requests without answering, then hang up.
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        while got < 3 * 40 {
            got += socket.read(&mut buf).await.unwrap();
        }
        drop(socket);
    });
    let client = ReplicaClient::connect(&address, 1).await.unwrap();
    let calls: Vec<_> = (0..3u64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.read(i * 4096, 4096).await })
        })
        .collect();
    let started = Instant::now();
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(client.is_closed());
    assert_eq!(client.ping().await.unwrap_err().kind(), ErrorKind::Closed);
    fake.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_request_without_answer_times_out_and_closes_the_client() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    let _fake = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        while socket.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
    });
    let options = ClientOptions {
        connections: 1,
        request_timeout: Some(Duration::from_millis(300)),
        ..ClientOptions::default()
    };
    let client = ReplicaClient::connect_with(&address, options).await.unwrap();
    let other = {
        let client = client.clone();
        tokio::spawn(async move { client.purge().await })
    };
    let started = Instant::now();
    let err = client.write(0, Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert!(started.elapsed() < Duration::from_secs(3));
    // The untimed control request in flight fails too, at once.
    assert_eq!(other.await.unwrap().unwrap_err().kind(), ErrorKind::Closed);
    assert!(client.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_running_requests_and_releases_the_service() {
    let service = MemoryService::new(SIZE);
    *service.flush_delay.lock() = Duration::from_millis(200);
    let server = TestServer::start(service.clone(), "tcp://127.0.0.1:0").await;
    let client = ReplicaClient::connect(&server.address, 1).await.unwrap();
    client.hello("engine-a", false).await.unwrap();
    let flush = {
        let client = client.clone();
        tokio::spawn(async move { client.flush().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown().await.unwrap();
    // The flush that was running completed on the service, even though its answer may be lost.
    assert_eq!(service.flushes.load(Ordering::SeqCst), 1);
    let _ = flush.await.unwrap();
    assert_eq!(Arc::strong_count(&service), 1, "the server still holds the service");
    tokio::time::timeout(Duration::from_secs(5), client.closed()).await.expect("client not told");
}
