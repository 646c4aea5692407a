//! Command semantics that real clients rarely show: FAST_ZERO and NO_HOLE honesty, FUA on
//! trim and write-zeroes reaching the backend as durability requests, the handshake timeout,
//! and server shutdown closing its clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::raw_client::RawClient;
use common::TestServer;
use corral_nbd::protocol::*;
use corral_nbd::{MemoryBackend, NbdBackend, NbdError, NbdServer};

const ENOTSUP: u32 = 95;

/// Memory backend that counts flushes, FUA writes and deallocating zeroes, and claims zeroing
/// is slow (so FAST_ZERO must be refused).
struct Counting {
    inner: MemoryBackend,
    flushes: AtomicUsize,
    fua_writes: AtomicUsize,
    zeroes: AtomicUsize,
}

impl NbdBackend for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.inner.read(offset, buf).await
    }
    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.write(offset, data, fua).await
    }
    async fn trim(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        self.inner.trim(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), NbdError> {
        self.zeroes.fetch_add(1, Ordering::SeqCst);
        self.inner.write_zeroes(offset, len, fua).await
    }
    async fn flush(&self) -> Result<(), NbdError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn counting() -> Arc<Counting> {
    Arc::new(Counting {
        inner: MemoryBackend::new(1 << 20),
        flushes: AtomicUsize::new(0),
        fua_writes: AtomicUsize::new(0),
        zeroes: AtomicUsize::new(0),
    })
}

fn request(c: &mut RawClient, command: u16, flags: u16, cookie: u64, offset: u64, length: u32) -> u32 {
    c.send_request(command, flags, cookie, offset, length, &[]);
    let (got, errno, _) = c.read_reply(|_| 0);
    assert_eq!(got, cookie);
    errno
}

#[test]
fn fast_zero_is_refused_when_zeroing_is_slow_and_no_hole_keeps_data_allocated() {
    let backend = counting();
    let server = TestServer::start("vol", Arc::clone(&backend));
    let (mut c, _, flags) = RawClient::handshake(server.addr, "vol", false);
    assert_ne!(flags & TFLAG_SEND_FAST_ZERO, 0);
    assert_eq!(c.write(1, 0, &[0xaa; 65536]), 0);
    // slow backend: FAST_ZERO → ENOTSUP and nothing changes
    assert_eq!(request(&mut c, CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 2, 0, 4096), ENOTSUP);
    assert_eq!(c.read(3, 0, 4096).unwrap(), vec![0xaa; 4096]);
    assert_eq!(backend.zeroes.load(Ordering::SeqCst), 0);
    // NO_HOLE: zeroes written as data (the deallocating call is not used)
    assert_eq!(request(&mut c, CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 4, 0, 8192), 0);
    assert_eq!(c.read(5, 0, 8192).unwrap(), vec![0; 8192]);
    assert_eq!(backend.zeroes.load(Ordering::SeqCst), 0);
    // plain write-zeroes uses the backend's zeroing
    assert_eq!(request(&mut c, CMD_WRITE_ZEROES, 0, 6, 8192, 8192), 0);
    assert_eq!(backend.zeroes.load(Ordering::SeqCst), 1);
    assert_eq!(c.read(7, 0, 65536).unwrap()[..16384], vec![0; 16384][..]);
    c.disconnect();

    // fast backend: FAST_ZERO succeeds, FAST_ZERO with NO_HOLE cannot be fast
    let server = TestServer::start("vol", Arc::new(MemoryBackend::new(1 << 20)));
    let (mut c, _, _) = RawClient::handshake(server.addr, "vol", true);
    assert_eq!(c.write(1, 0, &[0xbb; 8192]), 0);
    assert_eq!(request(&mut c, CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 2, 0, 4096), 0);
    assert_eq!(
        request(&mut c, CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE, 3, 4096, 4096),
        ENOTSUP
    );
    let data = c.read(4, 0, 8192).unwrap();
    assert_eq!(data[..4096], vec![0; 4096][..]);
    assert_eq!(data[4096..], vec![0xbb; 4096][..]);
    c.disconnect();
}

#[test]
fn fua_and_flush_reach_the_backend() {
    let backend = counting();
    let server = TestServer::start("vol", Arc::clone(&backend));
    let (mut c, _, _) = RawClient::handshake(server.addr, "vol", false);
    c.send_request(CMD_WRITE, CMD_FLAG_FUA, 1, 0, 4096, &[1; 4096]);
    assert_eq!(c.read_reply(|_| 0).1, 0);
    assert_eq!(backend.fua_writes.load(Ordering::SeqCst), 1);
    assert_eq!(request(&mut c, CMD_FLUSH, 0, 2, 0, 0), 0);
    assert_eq!(backend.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(request(&mut c, CMD_TRIM, CMD_FLAG_FUA, 3, 0, 4096), 0);
    assert_eq!(backend.flushes.load(Ordering::SeqCst), 2, "FUA trim must be made durable");
    assert_eq!(request(&mut c, CMD_WRITE_ZEROES, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE, 4, 0, 4096), 0);
    assert_eq!(backend.flushes.load(Ordering::SeqCst), 3, "FUA no-hole zeroes must be made durable");
    c.disconnect();
}

#[test]
fn silent_clients_are_dropped_after_the_handshake_timeout() {
    let server = TestServer::start_with(
        NbdServer::builder("vol", Arc::new(MemoryBackend::new(1 << 20)))
            .handshake_timeout(Duration::from_millis(300))
            .build(),
    );
    let (mut silent, _) = RawClient::connect(server.addr);
    server.wait_for_clients(1);
    assert!(silent.is_closed(), "a silent client was not disconnected");
    server.wait_for_clients(0);
    // a client that completes the handshake is not affected by the timeout
    let (mut c, _, _) = RawClient::handshake(server.addr, "vol", false);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.read(1, 0, 512).unwrap(), vec![0; 512]);
    c.disconnect();
}

#[test]
fn shutdown_closes_clients_and_stops_accepting() {
    let server = TestServer::start("vol", Arc::new(MemoryBackend::new(1 << 20)));
    let (mut c, _, _) = RawClient::handshake(server.addr, "vol", false);
    server.wait_for_clients(1);
    server.server.shutdown();
    assert!(c.is_closed());
    server.wait_for_clients(0);
    // the listener is gone or refuses: no greeting arrives
    if let Ok(stream) = std::net::TcpStream::connect(server.addr) {
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut byte = [0u8; 1];
        let n = std::io::Read::read(&mut &stream, &mut byte).unwrap_or(0);
        assert_eq!(n, 0, "a client was greeted after shutdown");
    }
}

#[test]
fn listen_addresses_from_the_command_line_work() {
    use corral_nbd::{ListenAddress, NbdListener};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vol.sock");
    std::fs::write(&socket, b"stale").unwrap(); // a stale file is replaced
    let server = NbdServer::new("vol", Arc::new(MemoryBackend::new(1 << 20)));
    let (tcp_addr, unix_addr) = rt.block_on(async {
        let tcp = NbdListener::bind(&"127.0.0.1:0".parse::<ListenAddress>().unwrap()).await.unwrap();
        let unix = NbdListener::bind(&format!("unix:{}", socket.display()).parse::<ListenAddress>().unwrap())
            .await
            .unwrap();
        let (tcp_addr, unix_addr) = (tcp.local_address(), unix.local_address());
        let s = server.clone();
        tokio::spawn(async move { s.serve(tcp).await });
        let s = server.clone();
        tokio::spawn(async move { s.serve(unix).await });
        (tcp_addr, unix_addr)
    });
    let ListenAddress::Tcp(tcp) = tcp_addr else { panic!("expected a TCP address") };
    assert_ne!(tcp, "127.0.0.1:0", "the real port is reported");
    let (c, size, _) = RawClient::handshake(tcp.parse().unwrap(), "vol", false);
    assert_eq!(size, 1 << 20);
    c.disconnect();
    assert_eq!(unix_addr, ListenAddress::Unix(socket.clone()));
    let mut unix = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    unix.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; GREETING_LEN];
    std::io::Read::read_exact(&mut unix, &mut greeting).unwrap();
    assert_eq!(decode_greeting(&greeting), Ok(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    server.shutdown();
    rt.shutdown_timeout(Duration::from_secs(5));
}
