//! Loopback ports for servers a test starts.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::process::Process;

/// A port that was free on 127.0.0.1 a moment ago (the kernel picks it; another process may still take it
/// before the server binds, which the callers' start-up checks report).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|err| panic!("cannot bind a loopback port: {err}"))
}

/// Waits until `server` accepts connections on `127.0.0.1:port`; panics with its stderr if it exits or
/// does not listen within `limit`.
pub fn wait_for_port(server: &mut Process, port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if !server.is_running() {
            panic!("{} exited before listening on port {port}; stderr:\n{}", server.name(), server.stderr());
        }
        if Instant::now() >= deadline {
            panic!(
                "{} did not listen on port {port} within {limit:?}; stderr:\n{}",
                server.name(),
                server.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
