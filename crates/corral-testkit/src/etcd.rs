//! Real etcd (Debian `etcd-server`, 3.4) for tests: one member or several on loopback, each with its
//! own name, client and peer ports and data directory, started and waited for until healthy; a
//! member can be SIGKILLed and restarted on its data; everything is killed and removed on drop.
//!
//! Data directories live on tmpfs (`/dev/shm`) when there is one: etcd fsyncs every write, and
//! these tests are about the client, not the disk. A SIGKILL loses nothing the kernel already had,
//! so killing a member still tests what it must.
//!
//! ```no_run
//! use corral_testkit::etcd::EtcdCluster;
//! let mut etcd = EtcdCluster::start(3);
//! println!("store URL {}", etcd.url()); // etcd://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
//! etcd.kill(1);
//! etcd.restart(1);
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::ports::free_port;
use crate::process::Process;

/// How long a member may take to report itself healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The etcd binary; panics with what to install when it is missing.
fn etcd_binary() -> &'static str {
    let bin = "/usr/bin/etcd";
    if !Path::new(bin).exists() {
        panic!("{bin} is missing: install Debian's etcd-server (apt-get install etcd-server etcd-client)");
    }
    bin
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    process: Option<Process>,
}

/// A running etcd cluster of one or more members on 127.0.0.1.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    // Dropped after the members (fields drop in order): the processes die before their data goes.
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `members` members (1 or 3, usually) and waits until every one is healthy.
    ///
    /// A port from [`free_port`] may be taken by another process before etcd binds it (outgoing
    /// connections use the same ephemeral range): a member that exits with "address already in
    /// use" makes the cluster start again on new ports, up to three times.
    pub fn start(members: usize) -> EtcdCluster {
        assert!(members > 0, "an etcd cluster needs a member");
        for _ in 0..3 {
            match Self::try_start(members) {
                Ok(cluster) => return cluster,
                Err(stderr) if stderr.contains("address already in use") => continue,
                Err(stderr) => panic!("etcd did not start: {stderr}"),
            }
        }
        panic!("etcd did not start: its ports were taken three times in a row");
    }

    fn try_start(members: usize) -> Result<EtcdCluster, String> {
        let dir = if Path::new("/dev/shm").is_dir() {
            tempfile::Builder::new().prefix("corral-etcd-").tempdir_in("/dev/shm")
        } else {
            tempfile::Builder::new().prefix("corral-etcd-").tempdir()
        }
        .unwrap_or_else(|err| panic!("cannot make a directory for etcd: {err}"));
        let token = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "corral-etcd".to_string());
        let members: Vec<Member> = (0..members)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    data_dir: dir.path().join(&name),
                    name,
                    client_port: free_port(),
                    peer_port: free_port(),
                    process: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster { members, initial_cluster, token, _dir: dir };
        // Members of a new cluster wait for each other, so all are started before any is awaited.
        for i in 0..cluster.members.len() {
            cluster.spawn(i);
        }
        for i in 0..cluster.members.len() {
            cluster.try_wait_healthy(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let mut command = Command::new(etcd_binary());
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
        self.members[i].process = Some(process);
    }

    /// Waits until member `i` answers `/health` with `"health":"true"` (it has a leader); panics
    /// with its stderr if it does not.
    fn wait_healthy(&mut self, i: usize) {
        if let Err(message) = self.try_wait_healthy(i) {
            panic!("{message}");
        }
    }

    fn try_wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let port = self.members[i].client_port;
        loop {
            if health(port) {
                return Ok(());
            }
            let member = &mut self.members[i];
            let Some(process) = member.process.as_mut() else {
                return Err(format!("etcd {} is not running", member.name));
            };
            if !process.is_running() {
                // Reaped and its pipes drained, so the stderr below is complete.
                process.wait_exit(Duration::from_secs(2));
                return Err(format!(
                    "etcd {} exited before it was healthy; stderr:\n{}",
                    member.name,
                    process.stderr()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd {} was not healthy within {READY_TIMEOUT:?}; stderr:\n{}",
                    member.name,
                    process.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `127.0.0.1:PORT` of member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Corral's store URL for the members `order` (in that order: the first is tried first).
    pub fn url_of(&self, order: &[usize]) -> String {
        let endpoints: Vec<String> = order.iter().map(|&i| self.endpoint(i)).collect();
        format!("etcd://{}", endpoints.join(","))
    }

    /// Corral's store URL with every member, `etcd://127.0.0.1:P1[,…]`.
    pub fn url(&self) -> String {
        self.url_of(&(0..self.members.len()).collect::<Vec<_>>())
    }

    /// SIGKILLs member `i` (the crash a test means).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.members[i].process.take() {
            process.kill9();
        }
    }

    /// Starts member `i` again on its data directory and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].process.is_none(), "etcd {} is still running", self.members[i].name);
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// Runs `etcdctl` (API v3) against member `i` and returns its stdout; panics if it fails.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> String {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint(i))
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run etcdctl (install Debian's etcd-client): {err}"));
        if !output.status.success() {
            panic!(
                "etcdctl {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // SIGKILL: a member that lost quorum takes seconds to exit on SIGTERM.
        for member in &mut self.members {
            if let Some(mut process) = member.process.take() {
                process.kill9();
            }
        }
    }
}

/// Whether etcd's `/health` on `127.0.0.1:port` says healthy (HTTP/1.0 by hand: this runs inside
/// async tests too, where a blocking HTTP client may not be used).
fn health(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}
