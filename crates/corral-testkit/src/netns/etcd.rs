//! Real etcd (Debian `etcd-server`) on the host side of a [`Network`], listening on the bridge address
//! so that every node reaches it: one member or three, each on its own ports of `10.77.X.1`, a member
//! SIGKILLed and restarted on its data, all of them stopped and started again, everything killed and
//! removed on drop.
//!
//! The ports are fixed (`12379 + 2k` for clients, `12380 + 2k` for peers): the address is this
//! network's alone, so no other test binds them, and a restarted member is where it was.
//! Data directories live on tmpfs (`/dev/shm`) when there is one, as in [`crate::etcd`].

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::Network;
use crate::process::Process;

/// How long a member may take to report itself healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The first client port; peers use the next one, the next member the two after.
const FIRST_PORT: u16 = 12379;

struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data_dir: PathBuf,
    process: Option<Process>,
}

/// etcd members on the bridge address of a network.
pub struct BridgeEtcd {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    // Dropped after the members (fields drop in order): the processes die before their data goes.
    _dir: tempfile::TempDir,
}

impl BridgeEtcd {
    /// Starts `members` members (1 or 3) on `network`'s host address and waits until each is healthy.
    pub fn start(network: &Network, members: usize) -> BridgeEtcd {
        assert!((1..=9).contains(&members), "an etcd cluster has 1 to 9 members, not {members}");
        let bin = "/usr/bin/etcd";
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: install Debian's etcd-server (apt-get install etcd-server etcd-client)"
        );
        let dir = if Path::new("/dev/shm").is_dir() {
            tempfile::Builder::new().prefix("corral-netns-etcd-").tempdir_in("/dev/shm")
        } else {
            tempfile::Builder::new().prefix("corral-netns-etcd-").tempdir()
        }
        .unwrap_or_else(|err| panic!("cannot make a directory for etcd: {err}"));
        let host: Ipv4Addr = network.host_address();
        let members: Vec<Member> = (0..members)
            .map(|k| {
                let name = format!("m{k}");
                let port = FIRST_PORT + 2 * k as u16;
                Member {
                    data_dir: dir.path().join(&name),
                    name,
                    client: SocketAddr::from((host, port)),
                    peer: SocketAddr::from((host, port + 1)),
                    process: None,
                }
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let token = format!("corral-netns-{}-{}", network.number(), std::process::id());
        let mut etcd = BridgeEtcd { members, initial_cluster, token, _dir: dir };
        etcd.start_all();
        etcd
    }

    /// Starts every member that is not running and waits until all are healthy (members of a cluster
    /// wait for each other, so all are started before any is awaited).
    pub fn start_all(&mut self) {
        let stopped: Vec<usize> =
            (0..self.members.len()).filter(|&k| self.members[k].process.is_none()).collect();
        for &k in &stopped {
            self.spawn(k);
        }
        for &k in &stopped {
            self.wait_healthy(k);
        }
    }

    fn spawn(&mut self, k: usize) {
        let member = &self.members[k];
        let client = format!("http://{}", member.client);
        let peer = format!("http://{}", member.peer);
        let mut command = Command::new("/usr/bin/etcd");
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--logger", "zap", "--log-level", "warn"]);
        let process = Process::spawn(&format!("etcd-{}", member.name), &mut command);
        self.members[k].process = Some(process);
    }

    /// Waits until every running member is healthy (the cluster has a leader again, e.g. after one
    /// was killed); panics with the stderr of one that is not.
    pub fn wait_quorum(&mut self) {
        for k in 0..self.members.len() {
            if self.members[k].process.is_some() {
                self.wait_healthy(k);
            }
        }
    }

    /// Waits until member `k` answers `/health` with `"health":"true"`; panics with its stderr if not.
    fn wait_healthy(&mut self, k: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let address = self.members[k].client;
        while !health(address) {
            let member = &mut self.members[k];
            let Some(process) = member.process.as_mut() else {
                panic!("etcd {} is not running", member.name);
            };
            if !process.is_running() {
                process.wait_exit(Duration::from_secs(2));
                panic!("etcd {} exited before it was healthy; stderr:\n{}", member.name, process.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "etcd {} was not healthy within {READY_TIMEOUT:?}; stderr:\n{}",
                member.name,
                process.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many members there are (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: there is at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `k`'s client address, `10.77.X.1:PORT`.
    pub fn endpoint(&self, k: usize) -> SocketAddr {
        self.members[k].client
    }

    /// Corral's store URL with every member: `etcd://10.77.X.1:P1[,…]`.
    pub fn url(&self) -> String {
        let endpoints: Vec<String> = self.members.iter().map(|m| m.client.to_string()).collect();
        format!("etcd://{}", endpoints.join(","))
    }

    /// Whether member `k` runs.
    pub fn is_running(&mut self, k: usize) -> bool {
        self.members[k].process.as_mut().is_some_and(Process::is_running)
    }

    /// SIGKILLs member `k` (the crash a test means).
    pub fn kill(&mut self, k: usize) {
        if let Some(mut process) = self.members[k].process.take() {
            process.kill9();
        }
    }

    /// SIGKILLs every member (etcd flushes each write before it answers, so nothing acknowledged is lost).
    pub fn kill_all(&mut self) {
        for k in 0..self.members.len() {
            self.kill(k);
        }
    }

    /// Starts member `k` again on its data directory and waits until it is healthy (with a quorum).
    pub fn restart(&mut self, k: usize) {
        assert!(self.members[k].process.is_none(), "etcd {} is still running", self.members[k].name);
        self.spawn(k);
        self.wait_healthy(k);
    }

    /// Runs `etcdctl` (API v3) against member `k` and returns its stdout; panics if it fails.
    pub fn etcdctl(&self, k: usize, args: &[&str]) -> String {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint(k).to_string())
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run etcdctl (install Debian's etcd-client): {err}"));
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for BridgeEtcd {
    fn drop(&mut self) {
        // SIGKILL: a member that lost quorum takes seconds to exit on SIGTERM.
        self.kill_all();
    }
}

/// Whether etcd's `/health` at `address` says healthy (HTTP/1.0 by hand: no blocking HTTP client,
/// which may not run inside an async test).
fn health(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: {address}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}
