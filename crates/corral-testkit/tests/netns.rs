//! The network-namespace kit's own checks (root): a process in node 1 reaches node 2 and the host; a
//! partition cuts node 2 off while its processes keep running; heal restores it; `kill_node` leaves
//! nothing running in the node, daemons included; etcd on the bridge is reached from inside a node and
//! survives the loss of one of three members; everything is removed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use corral_testkit::netns::etcd::BridgeEtcd;
use corral_testkit::netns::Network;
use corral_testkit::process::Process;

/// A TCP echo server (python3) in node `i` on `port`, announcing itself on stdout.
fn echo_server(network: &Network, i: usize, port: u16) -> Process {
    let script = format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', {port})); s.listen(8)\n\
         print('listening', flush=True)\n\
         while True:\n\
         \x20   c, _ = s.accept(); c.sendall(c.recv(64)); c.close()\n"
    );
    let (process, line) =
        Process::start(&format!("echo-n{i}"), network.command(i, "/usr/bin/python3").args(["-c", &script]));
    assert_eq!(line, "listening");
    process
}

/// Whether a client in node `from` gets `ping` echoed back from `address:port` within 2 s.
fn reaches(network: &Network, from: usize, address: &str, port: u16) -> bool {
    let script =
        format!("exec 3<>/dev/tcp/{address}/{port}; echo ping >&3; read -r answer <&3; echo $answer");
    let out = network.run(from, &["timeout", "2", "bash", "-c", &script]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ping"
}

fn links() -> String {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nodes_reach_each_other_and_the_host_until_partitioned_and_again_once_healed() {
    let network = Network::new(2);
    let node2 = network.address(2).to_string();
    let mut server = echo_server(&network, 2, 7000);

    // The host listens on the bridge address; node 1 reaches it.
    let host = TcpListener::bind((network.host_address(), 0)).unwrap();
    let host_port = host.local_addr().unwrap().port();
    let host_echo = std::thread::spawn(move || {
        let (mut c, _) = host.accept().unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    assert!(reaches(&network, 1, &network.host_address().to_string(), host_port), "node 1 -> host");
    host_echo.join().unwrap();
    assert!(reaches(&network, 1, &node2, 7000), "node 1 -> node 2");
    // Each node is its own machine: node 1's loopback does not have node 2's server.
    assert!(!reaches(&network, 1, "127.0.0.1", 7000), "node 2's port seen on node 1's loopback");

    // A host-side client reaches node 2's loopback through a forward.
    let forward = network.forward(2, "127.0.0.1:7000".parse().unwrap());
    let mut client = std::net::TcpStream::connect(forward.local()).unwrap();
    client.write_all(b"hello").unwrap();
    let mut echoed = [0u8; 5];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"hello");
    drop((client, forward));

    network.partition(2);
    assert!(!reaches(&network, 1, &node2, 7000), "node 1 reached node 2 through a partition");
    assert!(server.is_running(), "a partitioned node's process keeps running");
    assert!(reaches(&network, 2, "127.0.0.1", 7000), "a partitioned node still reaches itself");

    network.heal(2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reaches(&network, 1, &node2, 7000) {
        assert!(std::time::Instant::now() < deadline, "node 2 not reachable again after heal");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_node_leaves_nothing_running_and_drop_removes_the_network() {
    let network = Network::new(2);
    let (namespace, bridge) = (network.namespace(2), network.bridge());
    let mut server = echo_server(&network, 2, 7000);
    // A daemon in its own session, reparented away from anything the test started.
    let _daemonizer = Process::start(
        "daemonizer",
        network.command(2, "sh").args(["-c", "setsid sleep 300 < /dev/null > /dev/null 2>&1 & echo forked"]),
    )
    .0;
    assert!(network.pids(2).len() >= 2, "node 2 runs the server and the daemon: {:?}", network.pids(2));
    let node1_pids = {
        let _idle =
            Process::start("idle-n1", network.command(1, "sh").args(["-c", "echo up; exec sleep 300"]));
        network.kill_node(2);
        network.pids(1)
    };
    assert!(network.pids(2).is_empty(), "processes left in node 2: {:?}", network.pids(2));
    assert!(!server.is_running(), "the server of a killed node still runs");
    assert_eq!(node1_pids.len(), 1, "killing node 2 touched node 1");

    // The node runs processes again after a restart.
    network.restart_node(2);
    let again = echo_server(&network, 2, 7000);
    assert!(reaches(&network, 1, &network.address(2).to_string(), 7000));

    assert!(namespaces().contains(&namespace) && links().contains(&bridge));
    drop(again);
    drop(network);
    assert!(!namespaces().contains(&namespace), "{namespace} outlived its network");
    assert!(!links().contains(&format!(" {bridge}:")), "{bridge} outlived its network");
}

#[test]
fn two_networks_at_once_get_their_own_numbers() {
    let (a, b) = (Network::new(1), Network::new(1));
    assert_ne!(a.number(), b.number());
    assert_ne!(a.address(1), b.address(1));
}

#[test]
fn etcd_on_the_bridge_is_reached_from_a_node_and_survives_losing_one_of_three_members() {
    let network = Network::new(1);
    let mut etcd = BridgeEtcd::start(&network, 3);
    let endpoints = (0..3).map(|k| etcd.endpoint(k).to_string()).collect::<Vec<_>>().join(",");
    assert_eq!(etcd.url(), format!("etcd://{endpoints}"));
    let etcdctl = |endpoints: &str, args: &[&str]| {
        let mut command = network.command(1, "etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoints, "--command-timeout", "5s"])
            .args(args);
        let out = command.output().unwrap();
        assert!(out.status.success(), "etcdctl {args:?} in node 1: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    etcdctl(&endpoints, &["put", "before", "1"]);
    etcd.kill(0);
    assert!(!etcd.is_running(0));
    // The two members left are a quorum (asked directly: this checks etcd on the bridge, not how
    // etcdctl's balancer leaves a dead endpoint). A write proposed while they replace the old leader
    // may fail ("request timed out, possibly due to previous leader failure"): once they are
    // healthy again, one of three tries within 15 s must succeed.
    etcd.wait_quorum();
    let survivors = format!("{},{}", etcd.endpoint(1), etcd.endpoint(2));
    let written = (0..3).any(|_| {
        let out = network
            .command(1, "etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &survivors, "--command-timeout", "5s", "put", "during", "2"])
            .output()
            .unwrap();
        out.status.success()
    });
    assert!(written, "two of three etcd members took no write within 15 s");
    etcd.restart(0);
    assert_eq!(etcd.etcdctl(0, &["get", "during", "--print-value-only"]).trim(), "2");

    // The whole of etcd stopped and started again keeps its data.
    etcd.kill_all();
    etcd.start_all();
    assert_eq!(etcdctl(&endpoints, &["get", "before", "--print-value-only"]).trim(), "1");
}

/// MultiNodeCluster's machinery, with a stand-in for `corral server` that keeps its contract
/// (`fake_corral_server.py`: a serving line, node liveness through an etcd lease, `GET /v1/nodes`).
#[test]
fn a_multi_node_cluster_starts_sees_a_killed_node_down_restarts_it_and_survives_a_full_stop() {
    use corral_testkit::netns::cluster::MultiNodeCluster;
    let fake = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_corral_server.py");
    let mut cluster =
        MultiNodeCluster::builder().binary(fake).nodes(3).etcd_members(3).node_lease_ttl(2).build();
    assert_eq!(cluster.url(2), format!("http://{}:9500", cluster.address(2)));
    for i in 1..=3 {
        // Any node answers for every node.
        assert_eq!(cluster.node_view(i, 3).unwrap()["state"], "ready", "node 3 seen from node {i}");
    }

    cluster.kill_node(3);
    assert!(cluster.network().pids(3).is_empty(), "node 3 runs something after kill_node");
    let took = cluster.wait_node_state(1, 3, "down", Duration::from_secs(15));
    assert!(took < Duration::from_secs(15));
    assert!(cluster.try_call(3, reqwest::Method::GET, "/v1/nodes", None).is_err(), "a dead node answers");

    cluster.restart_node(3);
    cluster.wait_node_state(2, 3, "ready", Duration::from_secs(15));

    cluster.partition(2);
    assert!(cluster.try_call(2, reqwest::Method::GET, "/v1/nodes", None).is_err(), "a cut-off node answers");
    assert!(cluster.is_running(2), "a partitioned node's server keeps running");
    cluster.heal(2);
    cluster.wait_node_state(2, 1, "ready", Duration::from_secs(15));

    cluster.etcd().kill(1);
    cluster.wait_node_state(1, 2, "ready", Duration::from_secs(15));
    cluster.etcd().restart(1);

    cluster.stop_all();
    for i in 1..=3 {
        assert!(cluster.network().pids(i).is_empty(), "node {i} runs something after stop_all");
    }
    cluster.start_all();
    for i in 1..=3 {
        assert_eq!(cluster.node_view(3, i).unwrap()["state"], "ready");
    }
}
