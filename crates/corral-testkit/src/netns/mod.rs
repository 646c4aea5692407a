//! Nodes as Linux network namespaces, for tests of several machines on one host (needs root).
//!
//! [`Network::new`]`(n)` makes a bridge on the host side with the address `10.77.X.1/24` and `n` nodes,
//! numbered **1 to n**: node `i` is the namespace `crlXnI` with `lo` up and an `eth0` (one end of a veth
//! pair whose other end, `crlXvI`, is a port of the bridge) at `10.77.X.(10+i)`. Nodes reach each other
//! and the host (`10.77.X.1`) through the bridge; the host reaches every node.
//!
//! - [`Network::command`] builds `ip netns exec crlXnI PROGRAM`, to run with [`crate::process::Process`]
//!   (killed on drop); `ip netns exec` execs the program, so the process is the program itself.
//! - [`Network::kill_node`] SIGKILLs every process whose network namespace is the node's, whoever started
//!   it (children, daemons), and waits until none is left: the node lost its power.
//! - [`Network::partition`] / [`Network::heal`] take the bridge's end of the node's link down and up:
//!   the node's processes keep running and no packet goes in or out meanwhile.
//! - [`Network::forward`]: a host loopback port carried to an address as node `i` sees it (its own
//!   `127.0.0.1` included), for host-side clients of what only the node reaches.
//! - [`etcd::BridgeEtcd`]: real etcd (one or three members) on the host side, on the bridge address.
//! - [`cluster::MultiNodeCluster`]: `corral server` on every node against that etcd.
//!
//! # Several networks at once
//! Tests run in parallel (nextest runs each in its own process), so every network takes its own `X`:
//! it holds an exclusive `flock` on `/run/corral-netns/X.lock` for its whole life, so two networks never
//! share a number, and a number whose holder died (a test SIGKILLed before its drop ran) is free again;
//! whoever takes it first removes what the dead holder left (its namespaces and bridge, found by name).
//! Everything a network made is removed on drop, also while a test is panicking.
//!
//! ```no_run
//! use corral_testkit::netns::Network;
//! use corral_testkit::process::Process;
//! let network = Network::new(2);
//! let (_server, _) = Process::start(
//!     "listener",
//!     network.command(2, "sh").args(["-c", "echo up; exec sleep 60"]),
//! );
//! network.run_ok(1, &["ping", "-c1", "-W1", &network.address(2).to_string()]);
//! network.partition(2);
//! network.heal(2);
//! network.kill_node(2);
//! ```

pub mod cluster;
pub mod etcd;
pub mod forward;

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// Where the locks that hand out network numbers live.
const LOCK_DIR: &str = "/run/corral-netns";
/// Network numbers handed out (`X` in `10.77.X.0/24`).
const NUMBERS: u32 = 250;
/// How long the processes of a killed node have to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Networks made by this process so far: spreads the first number tried.
static MADE: AtomicU32 = AtomicU32::new(0);

/// A bridge and `n` network namespaces plugged into it; all removed on drop.
pub struct Network {
    number: u8,
    nodes: usize,
    // Unlocked (closed) after the drop removed everything: the number is then free for another network.
    _lock: Flock<File>,
}

impl Network {
    /// Makes the bridge and nodes `1..=nodes`; panics with the failing `ip` command when it cannot
    /// (not root, no `ip`).
    pub fn new(nodes: usize) -> Network {
        assert!((1..=200).contains(&nodes), "a network has 1 to 200 nodes, not {nodes}");
        let (number, lock) = take_number();
        let network = Network { number, nodes, _lock: lock };
        // Anything a dead holder of this number left behind goes first.
        remove_leftovers(number);
        network.set_up();
        network
    }

    fn set_up(&self) {
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}/24", self.host_address()), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 1..=self.nodes {
            let (ns, host_end, node_end) = (self.namespace(i), self.host_veth(i), self.node_veth(i));
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &node_end]);
            ip(&["link", "set", &node_end, "netns", &ns]);
            ip(&["link", "set", &host_end, "master", &bridge]);
            ip(&["link", "set", &host_end, "up"]);
            ip(&["-n", &ns, "link", "set", &node_end, "name", "eth0"]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.address(i)), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
    }

    /// How many nodes the network has (numbered 1 to that).
    pub fn len(&self) -> usize {
        self.nodes
    }

    /// Always false: a network has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    /// `X` in `10.77.X.0/24`: this network's number.
    pub fn number(&self) -> u8 {
        self.number
    }

    /// The host side's address on the bridge, `10.77.X.1` (where [`etcd::BridgeEtcd`] listens).
    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.number, 1)
    }

    /// Node `i`'s address, `10.77.X.(10+i)`.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        self.check(i);
        Ipv4Addr::new(10, 77, self.number, 10 + i as u8)
    }

    /// The bridge's name, `crlbX`.
    pub fn bridge(&self) -> String {
        format!("crlb{}", self.number)
    }

    /// Node `i`'s network namespace, `crlXnI`.
    pub fn namespace(&self, i: usize) -> String {
        self.check(i);
        format!("crl{}n{i}", self.number)
    }

    /// The bridge's end of node `i`'s link, `crlXvI` (what [`Network::partition`] takes down).
    pub fn host_veth(&self, i: usize) -> String {
        self.check(i);
        format!("crl{}v{i}", self.number)
    }

    /// The node's end before it moves into the namespace (named `eth0` there).
    fn node_veth(&self, i: usize) -> String {
        format!("crl{}p{i}", self.number)
    }

    fn check(&self, i: usize) {
        assert!((1..=self.nodes).contains(&i), "node {i} does not exist: nodes are 1 to {}", self.nodes);
    }

    /// `ip netns exec crlXnI PROGRAM`: a command run inside node `i` (add its arguments, then start it,
    /// e.g. with [`crate::process::Process::start`]).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace(i)]).arg(program);
        command
    }

    /// Runs `args` inside node `i` to completion.
    pub fn run(&self, i: usize, args: &[&str]) -> Output {
        let (program, rest) = args.split_first().unwrap_or_else(|| panic!("run needs a program"));
        let mut command = self.command(i, program);
        command.args(rest);
        command.output().unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"))
    }

    /// Runs `args` inside node `i`; panics with its output unless it succeeds; returns stdout.
    pub fn run_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.run(i, args);
        assert!(
            out.status.success(),
            "{args:?} in node {i} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A port on the host's loopback whose connections go to `target` as node `i` sees it (e.g. its
    /// `127.0.0.1:PORT`); see [`forward::Forward`].
    pub fn forward(&self, i: usize, target: std::net::SocketAddr) -> forward::Forward {
        forward::Forward::start(&self.namespace(i), target)
    }

    /// The processes running in node `i` (by their network namespace), as pids.
    pub fn pids(&self, i: usize) -> Vec<i32> {
        namespace_pids(&self.namespace(i))
    }

    /// SIGKILLs every process of node `i` and waits until none is left; panics if one survives.
    /// The node's network stays: it can run processes again (see [`Network::restart_node`]).
    pub fn kill_node(&self, i: usize) {
        kill_namespace(&self.namespace(i));
    }

    /// The node comes back after a crash: every process of it killed (if some still run) and its link
    /// up (if it was partitioned). What it runs is the caller's to start again.
    pub fn restart_node(&self, i: usize) {
        self.kill_node(i);
        self.heal(i);
    }

    /// Cuts node `i` off: the bridge's end of its link goes down. Its processes keep running; no packet
    /// reaches them or leaves the node until [`Network::heal`].
    pub fn partition(&self, i: usize) {
        ip(&["link", "set", &self.host_veth(i), "down"]);
    }

    /// Ends a [`Network::partition`] of node `i`.
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.host_veth(i), "up"]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Quietly: a panic here while a test is already failing would abort and hide its message.
        remove_leftovers(self.number);
    }
}

/// Takes the first free network number, starting at one derived from the process id.
fn take_number() -> (u8, Flock<File>) {
    std::fs::create_dir_all(LOCK_DIR).unwrap_or_else(|err| panic!("cannot create {LOCK_DIR}: {err}"));
    let start = std::process::id().wrapping_mul(7).wrapping_add(MADE.fetch_add(1, Ordering::SeqCst) * 31);
    for k in 0..NUMBERS {
        let number = ((start.wrapping_add(k)) % NUMBERS) as u8;
        let path: PathBuf = [LOCK_DIR, &format!("{number}.lock")].iter().collect();
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()));
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            return (number, lock);
        }
    }
    panic!("all {NUMBERS} test network numbers are in use (locks in {LOCK_DIR})");
}

/// Removes the namespaces (killing their processes) and the bridge of network `number`, whoever made
/// them. Errors are ignored: some of it may not exist.
fn remove_leftovers(number: u8) {
    let prefix = format!("crl{number}n");
    let list = Command::new("ip").args(["netns", "list"]).output();
    let names: Vec<String> = list
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|line| line.split_whitespace().next().map(str::to_string))
                .filter(|name| {
                    name.strip_prefix(&prefix).is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    for ns in names {
        let _ = std::panic::catch_unwind(|| kill_namespace(&ns));
        // Deleting the namespace deletes its veth end, and with it the bridge's end.
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    }
    let _ = Command::new("ip").args(["link", "del", &format!("crlb{number}")]).output();
}

/// The pids of every process whose network namespace is `ns`.
fn namespace_pids(ns: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap_or_else(|err| panic!("cannot run ip netns pids {ns}: {err}"));
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// SIGKILLs every process of namespace `ns` until none is left (a process may fork while it is being
/// killed); panics after [`KILL_TIMEOUT`] with those left.
fn kill_namespace(ns: &str) {
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids = namespace_pids(ns);
        if pids.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes of {ns} survived SIGKILL: {pids:?}");
        for pid in pids {
            // It may have exited meanwhile (ESRCH): the next round sees what is left.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `ip ARGS`; panics with its stderr unless it succeeds.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run ip (Debian iproute2) {args:?}: {err}"));
    assert!(
        out.status.success(),
        "ip {} failed ({}): {} (network namespaces need root)",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
