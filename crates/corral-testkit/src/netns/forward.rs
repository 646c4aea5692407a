//! [`Forward`]: a TCP port on the host's loopback whose connections are carried to an address as seen
//! from inside a node, `127.0.0.1` of the node included (where an engine serves NBD): so host-side
//! clients (qemu-io, the libnbd workload) reach what only the node sees.
//!
//! Each accepted connection gets a thread that moves itself into the node's network namespace
//! (`setns`, which changes only the calling thread) before it connects: the socket belongs to the node
//! from then on, and the bytes are copied both ways by plain threads. A connection ends when either
//! side closes; dropping the [`Forward`] stops accepting (live connections run until they end).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sched::{setns, CloneFlags};

/// A loopback port forwarded into a node; stops accepting on drop.
pub struct Forward {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Forward {
    /// Listens on `127.0.0.1:0` and carries each connection to `target` inside namespace `ns`.
    pub(super) fn start(ns: &str, target: SocketAddr) -> Forward {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|err| panic!("cannot listen on a loopback port for a forward: {err}"));
        let local = listener.local_addr().unwrap_or_else(|err| panic!("no local address: {err}"));
        let stop = Arc::new(AtomicBool::new(false));
        let ns_path = format!("/var/run/netns/{ns}");
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let ns_path = ns_path.clone();
                std::thread::spawn(move || carry(client, &ns_path, target));
            }
        });
        Forward { local, stop }
    }

    /// The host-side address, `127.0.0.1:PORT`.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// `nbd://127.0.0.1:PORT` for this port.
    pub fn nbd_uri(&self) -> String {
        format!("nbd://{}", self.local)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect(self.local);
    }
}

/// Connects to `target` from inside the namespace at `ns_path` and copies both ways until one side
/// closes. A failure to enter or connect closes the client's connection (what a refused port does).
fn carry(client: TcpStream, ns_path: &str, target: SocketAddr) {
    let entered = File::open(ns_path).ok().is_some_and(|ns| setns(&ns, CloneFlags::CLONE_NEWNET).is_ok());
    if !entered {
        eprintln!("forward: cannot enter {ns_path}");
        return;
    }
    let Ok(server) = TcpStream::connect(target) else { return };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (Ok(client_reader), Ok(server_reader)) = (client.try_clone(), server.try_clone()) else { return };
    let upstream = std::thread::spawn(move || copy(client_reader, server));
    copy(server_reader, client);
    let _ = upstream.join();
}

/// Copies until `from` ends or `to` fails, then shuts both down so the other direction ends too.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
