//! `corral replica serve` as a real process, driven by `corral-wire`'s client and by raw bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod replica_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use corral_wire::frame::{Header, Op, HEADER_LEN};
use corral_wire::{Bytes, ErrorKind, ReplicaClient, SnapshotRequest};
use replica_support::*;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_creates_a_replica_and_data_snapshots_survive_a_clean_restart() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("r1");
    let mut server = start_replica(&dir, Some("64MiB"), "127.0.0.1:0");
    assert!(server.address.starts_with("tcp://127.0.0.1:"), "{}", server.address);
    assert!(!server.address.ends_with(":0"), "real port not printed: {}", server.address);

    let client = ReplicaClient::connect(&server.address, 3).await.unwrap();
    let facts = client.hello("engine-1", false).await.unwrap();
    assert_eq!(facts.size, 64 << 20);
    client.set_generation(5).await.unwrap();
    let a = pattern(65536, 1);
    let b = pattern(3000, 2);
    client.write(1 << 20, Bytes::from(a.clone())).await.unwrap();
    client.write(4096 + 100, Bytes::from(b.clone())).await.unwrap(); // unaligned, straddles blocks
    client.flush().await.unwrap();
    let mut labels = BTreeMap::new();
    labels.insert("purpose".to_string(), "test".to_string());
    client
        .snapshot(SnapshotRequest { name: "snap1".into(), user_created: true, labels, created: None })
        .await
        .unwrap();
    let c = pattern(4096, 3);
    client.write(1 << 20, Bytes::from(c.clone())).await.unwrap();
    client.write_zeroes(1 << 20 | 8192, 8192).await.unwrap();
    client.flush().await.unwrap();

    let snapshots = client.list_snapshots().await.unwrap();
    let snap1 = snapshots.iter().find(|s| s.name == "snap1").expect("snap1 listed");
    assert!(snap1.user_created);
    assert_eq!(snap1.labels.get("purpose").map(String::as_str), Some("test"));
    assert_eq!(client.info().await.unwrap().chain, vec!["snap1".to_string()]);
    let extents = client.layer_extents("snap1").await.unwrap();
    assert!(extents.iter().any(|e| e.offset <= 1 << 20 && e.offset + e.len > 1 << 20), "{extents:?}");
    assert_eq!(&client.read_layer("snap1", 1 << 20, 4096).await.unwrap()[..], &a[..4096]);

    let mut expected = a.clone();
    expected[..4096].copy_from_slice(&c);
    expected[8192..16384].fill(0);
    assert_eq!(&client.read(1 << 20, 65536).await.unwrap()[..], &expected[..]);
    assert_eq!(&client.read(4096 + 100, 3000).await.unwrap()[..], &b[..]);
    let err = client.read((64 << 20) - 4096, 8192).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange, "{err}");
    let err = client.revert("no-such-snapshot").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    drop(client);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");

    // Closed cleanly: Dirty=false, as the offline tool sees it.
    let output = corral(&["replica", "info", "--dir", dir.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["dirty"], serde_json::json!(false), "{info}");
    assert_eq!(info["generation"], serde_json::json!(5), "{info}");
    assert_eq!(info["chain"], serde_json::json!(["snap1"]), "{info}");

    // Reopen without --size; all data is there.
    let server = start_replica(&dir, None, "127.0.0.1:0");
    let client = ReplicaClient::connect(&server.address, 2).await.unwrap();
    let facts = client.hello("engine-1", false).await.unwrap();
    assert_eq!((facts.size, facts.generation), (64 << 20, 5));
    assert!(!facts.was_dirty_at_open, "a clean shutdown left Dirty=true");
    assert_eq!(&client.read(1 << 20, 65536).await.unwrap()[..], &expected[..]);
    assert_eq!(&client.read(4096 + 100, 3000).await.unwrap()[..], &b[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_a_unix_socket() {
    let temp = tempfile::tempdir().unwrap();
    let socket = temp.path().join("replica.sock");
    let mut server =
        start_replica(&temp.path().join("r"), Some("16MiB"), &format!("unix:{}", socket.display()));
    assert_eq!(server.address, format!("unix://{}", socket.display()));
    let client = ReplicaClient::connect(&server.address, 2).await.unwrap();
    client.hello("engine-1", false).await.unwrap();
    client.write(12345, Bytes::from_static(b"over a unix socket")).await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(&client.read(12345, 18).await.unwrap()[..], b"over a unix socket");
    drop(client);
    assert!(server.terminate().success());
    assert!(!socket.exists(), "socket file left behind after a clean stop");
}

#[test]
fn size_is_required_to_create_and_must_match_an_existing_replica() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("r");
    let err = try_start_replica(&dir, None, "127.0.0.1:0").err().expect("started without --size");
    assert!(err.contains("give --size"), "{err}");
    let err = try_start_replica(&dir, Some("12XB"), "127.0.0.1:0").err().expect("started with a bad size");
    assert!(err.contains("12XB"), "{err}");

    let mut server = start_replica(&dir, Some("8MiB"), "127.0.0.1:0");
    assert!(server.terminate().success());
    let err = try_start_replica(&dir, Some("16MiB"), "127.0.0.1:0").err().expect("size mismatch accepted");
    assert!(err.contains("has size 8388608") && err.contains("--size 16777216"), "{err}");
    let mut server = start_replica(&dir, Some("8388608"), "127.0.0.1:0");
    assert!(server.terminate().success());
    let err = try_start_replica(&dir, None, "nonsense").err().expect("bad address accepted");
    assert!(err.contains("invalid address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_is_refused_and_take_over_works() {
    let temp = tempfile::tempdir().unwrap();
    let server = start_replica(&temp.path().join("r"), Some("8MiB"), "127.0.0.1:0");
    let first = ReplicaClient::connect(&server.address, 2).await.unwrap();
    first.hello("engine-a", false).await.unwrap();
    first.write(0, Bytes::from_static(b"from a")).await.unwrap();

    let second = ReplicaClient::connect(&server.address, 2).await.unwrap();
    let err = second.hello("engine-b", false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    let err = second.write(0, Bytes::from_static(b"from b")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "data accepted without a Hello: {err}");
    assert_eq!(&first.read(0, 6).await.unwrap()[..], b"from a");

    second.hello("engine-b", true).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), first.closed()).await.expect("old engine not disconnected");
    assert!(first.write(0, Bytes::from_static(b"late a")).await.is_err());
    second.write(0, Bytes::from_static(b"from b")).await.unwrap();
    assert_eq!(&second.read(0, 6).await.unwrap()[..], b"from b");
}

fn raw(address: &str) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(address.trim_start_matches("tcp://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

fn read_answer(stream: &mut std::net::TcpStream) -> Option<(Header, String)> {
    let mut head = [0u8; HEADER_LEN];
    stream.read_exact(&mut head).ok()?;
    let header = Header::decode(&head).unwrap();
    let mut payload = vec![0u8; header.payload_len as usize];
    stream.read_exact(&mut payload).unwrap();
    Some((header, String::from_utf8_lossy(&payload).into_owned()))
}

fn assert_closed(stream: &mut std::net::TcpStream) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(err)
            if err.kind() != std::io::ErrorKind::WouldBlock && err.kind() != std::io::ErrorKind::TimedOut => {
        }
        other => panic!("connection not closed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_or_a_close_and_the_server_keeps_serving() {
    let temp = tempfile::tempdir().unwrap();
    let server = start_replica(&temp.path().join("r"), Some("8MiB"), "127.0.0.1:0");
    let client = ReplicaClient::connect(&server.address, 2).await.unwrap();
    client.hello("engine-a", false).await.unwrap();
    client.write(8192, Bytes::from_static(b"keep me")).await.unwrap();
    let address = server.address.clone();

    tokio::task::spawn_blocking(move || {
        // Bad magic: closed.
        let mut bad_magic = raw(&address);
        bad_magic.write_all(&[0xde; HEADER_LEN]).unwrap();
        assert_closed(&mut bad_magic);

        // Unknown type: an error answer with the request id, and the connection stays usable.
        let mut unknown = raw(&address);
        unknown
            .write_all(&Header { msg_type: 0x5a, request_id: 31337, ..Header::default() }.to_bytes())
            .unwrap();
        let (header, message) = read_answer(&mut unknown).expect("no answer to an unknown type");
        assert_eq!((header.request_id, header.status), (31337, ErrorKind::Protocol.code()));
        assert!(message.contains("unknown message type"), "{message}");
        unknown
            .write_all(&Header { msg_type: Op::Ping as u8, request_id: 2, ..Header::default() }.to_bytes())
            .unwrap();
        assert_eq!(read_answer(&mut unknown).expect("ping after error").0.status, 0);

        // Huge length: an error answer, then closed.
        let mut huge = raw(&address);
        let header = Header {
            msg_type: Op::Write as u8,
            request_id: 9,
            payload_len: 0xffff_fff0,
            ..Header::default()
        };
        huge.write_all(&header.to_bytes()).unwrap();
        let (header, message) = read_answer(&mut huge).expect("no answer to a huge length");
        assert_eq!((header.request_id, header.status), (9, ErrorKind::Protocol.code()));
        assert!(message.contains("exceeds the maximum"), "{message}");
        assert_closed(&mut huge);

        // A read larger than the maximum data length: refused, not allocated.
        let mut big_read = raw(&address);
        let header =
            Header { msg_type: Op::Read as u8, request_id: 10, length: u64::MAX, ..Header::default() };
        big_read.write_all(&header.to_bytes()).unwrap();
        assert_eq!(
            read_answer(&mut big_read).expect("no answer to a huge read").0.status,
            ErrorKind::Protocol.code()
        );
    })
    .await
    .unwrap();

    assert_eq!(&client.read(8192, 7).await.unwrap()[..], b"keep me");
    client.flush().await.unwrap();
    assert!(!client.is_closed());
}
