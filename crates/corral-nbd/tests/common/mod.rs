//! Shared helpers of the corral-nbd integration tests: a server on its own runtime thread,
//! external-tool checks, a file-backed backend and a raw protocol client.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod file_backend;
pub mod raw_client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use corral_nbd::{NbdBackend, NbdServer};

// External tools: the checks shared by every test crate live in corral-testkit.
pub use corral_testkit::nbd::{require_tool, run, run_ok};

/// An NBD server on a dedicated runtime thread, listening on 127.0.0.1:0 and on a Unix socket
/// in a temporary directory. Shut down on drop.
pub struct TestServer<B: NbdBackend> {
    pub server: NbdServer<B>,
    pub addr: SocketAddr,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

impl<B: NbdBackend> TestServer<B> {
    pub fn start(export: &str, backend: Arc<B>) -> TestServer<B> {
        Self::start_with(NbdServer::builder(export, backend).description("corral test export").build())
    }

    pub fn start_with(server: NbdServer<B>) -> TestServer<B> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let (addr, tcp, unix) = runtime.block_on(async {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let unix = tokio::net::UnixListener::bind(&socket).unwrap();
            (tcp.local_addr().unwrap(), tcp, unix)
        });
        let s = server.clone();
        runtime.spawn(async move { s.serve_tcp(tcp).await });
        let s = server.clone();
        runtime.spawn(async move { s.serve_unix(unix).await });
        TestServer { server, addr, socket, _dir: dir, runtime: Some(runtime) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `nbd://127.0.0.1:PORT/EXPORT`
    pub fn tcp_uri(&self) -> String {
        format!("nbd://{}/{}", self.addr, self.server.export_name())
    }

    /// `nbd+unix:///EXPORT?socket=PATH`
    pub fn unix_uri(&self) -> String {
        format!("nbd+unix:///{}?socket={}", self.server.export_name(), self.socket.display())
    }

    pub fn backend(&self) -> &Arc<B> {
        self.server.backend()
    }

    /// Run an async backend call from the test thread.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().unwrap().block_on(f)
    }

    /// Read the backend directly (bypassing NBD) to check what clients wrote.
    pub fn backend_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.block_on(self.backend().read(offset, &mut buf)).unwrap();
        buf
    }

    /// Wait until the number of connected clients equals `n` (connections close asynchronously).
    pub fn wait_for_clients(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.server.connected_clients() != n {
            assert!(
                std::time::Instant::now() < deadline,
                "expected {n} connected clients, have {}",
                self.server.connected_clients()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl<B: NbdBackend> Drop for TestServer<B> {
    fn drop(&mut self) {
        self.server.shutdown();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
