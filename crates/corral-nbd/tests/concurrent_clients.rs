//! Several clients at once: concurrent qemu-io processes writing interleaved stripes over TCP
//! and Unix sockets; out-of-order completion inside one connection; client accounting used by
//! the engine to refuse a revert while a client is connected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw_client::RawClient;
use common::{require_tool, run_ok, TestServer};
use corral_nbd::protocol::*;
use corral_nbd::{MemoryBackend, NbdBackend, NbdError};

const STRIPE: u64 = 64 << 10;
const CLIENTS: u64 = 4;
const STRIPES_PER_CLIENT: u64 = 16;

#[test]
fn concurrent_qemu_io_clients_write_interleaved_stripes() {
    require_tool("qemu-io");
    let server = TestServer::start("vol", Arc::new(MemoryBackend::new(64 << 20)));
    let children: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let uri = if client % 2 == 0 { server.tcp_uri() } else { server.unix_uri() };
            let mut cmd = Command::new("qemu-io");
            cmd.args(["-f", "raw"]);
            for i in 0..STRIPES_PER_CLIENT {
                let offset = (i * CLIENTS + client) * STRIPE;
                cmd.args(["-c", &format!("aio_write -P {} {offset} {STRIPE}", 0x10 + client)]);
            }
            cmd.args(["-c", "aio_flush", &uri]);
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for stripe in 0..CLIENTS * STRIPES_PER_CLIENT {
        let expected = 0x10 + (stripe % CLIENTS) as u8;
        let bytes = server.backend_bytes(stripe * STRIPE, STRIPE as usize);
        assert!(bytes.iter().all(|&b| b == expected), "stripe {stripe} does not hold {expected:#x}");
    }
    // and every client sees every other client's data
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for stripe in 0..CLIENTS * STRIPES_PER_CLIENT {
        cmd.args(["-c", &format!("read -P {} {} {STRIPE}", 0x10 + stripe % CLIENTS, stripe * STRIPE)]);
    }
    let out = run_ok(cmd.arg(server.unix_uri()));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    server.wait_for_clients(0);
}

/// Memory backend whose reads at offset 0 take 2 s: a later request must overtake it.
struct SlowFirstBlock(MemoryBackend);

impl NbdBackend for SlowFirstBlock {
    fn size(&self) -> u64 {
        self.0.size()
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        if offset == 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.0.read(offset, buf).await
    }
    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        self.0.write(offset, data, fua).await
    }
    async fn trim(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        self.0.trim(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), NbdError> {
        self.0.write_zeroes(offset, len, fua).await
    }
    async fn flush(&self) -> Result<(), NbdError> {
        self.0.flush().await
    }
}

#[test]
fn requests_in_one_connection_complete_out_of_order() {
    let server = TestServer::start("vol", Arc::new(SlowFirstBlock(MemoryBackend::new(1 << 20))));
    let (mut c, _, _) = RawClient::handshake(server.addr, "vol", true);
    assert_eq!(c.write(1, 4096, &[9u8; 4096]), 0);
    let started = Instant::now();
    c.send_request(CMD_READ, 0, 10, 0, 4096, &[]); // slow
    c.send_request(CMD_READ, 0, 11, 4096, 4096, &[]); // fast
    let (first, errno, data) = c.read_reply(|_| 4096);
    assert_eq!((first, errno), (11, 0), "the fast read should be answered first");
    assert_eq!(data, vec![9u8; 4096]);
    assert!(started.elapsed() < Duration::from_millis(1500), "the fast read waited for the slow one");
    let (second, errno, data) = c.read_reply(|_| 4096);
    assert_eq!((second, errno), (10, 0));
    assert_eq!(data, vec![0u8; 4096]);
    c.disconnect();
}

#[test]
fn client_count_and_blocking_new_clients() {
    let server = TestServer::start("vol", Arc::new(MemoryBackend::new(1 << 20)));
    assert_eq!(server.server.connected_clients(), 0);
    let (a, _, _) = RawClient::handshake(server.addr, "vol", false);
    let (b, _, _) = RawClient::handshake(server.addr, "vol", true);
    server.wait_for_clients(2);
    assert!(server.server.block_new_clients().is_none(), "clients are connected: blocking must be refused");
    a.disconnect();
    server.wait_for_clients(1);
    drop(b); // hard disconnect counts too
    server.wait_for_clients(0);

    let guard = server.server.block_new_clients().expect("no client is connected");
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    let n = std::io::Read::read(&mut &stream, &mut byte).unwrap_or(0);
    assert_eq!(n, 0, "a new client was served while new clients were blocked");
    assert_eq!(server.server.connected_clients(), 0);
    drop(guard);
    let (c, _, _) = RawClient::handshake(server.addr, "vol", false);
    server.wait_for_clients(1);
    c.disconnect();
    server.wait_for_clients(0);
}
