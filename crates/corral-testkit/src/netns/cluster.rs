//! [`MultiNodeCluster`]: a real Corral cluster of several nodes, each a network namespace of a
//! [`Network`] running `corral server`, all of them on one etcd ([`BridgeEtcd`]) on the host side.
//!
//! Node `i` (1 to n) is named `nI`, has the address `10.77.X.(10+i)`, serves its API on port 9500 of it
//! and keeps its data in a directory of its own. The test talks to any node's API from the host (the
//! calls take the node to ask), kills a node (every process of its namespace, SIGKILL), cuts its link
//! and restores it, starts it again, and stops and starts the whole cluster, etcd included.
//!
//! The server contract this starts (`corral server`, see the README's "Several nodes"):
//! `corral server --node NAME --address IP --store etcd://HOST:PORT[,…] --data-dir DIR --listen IP:PORT
//! [--node-lease-ttl SECS]`, which prints `corral server of node NAME serving http://IP:PORT` once its
//! API answers.
//!
//! HTTP calls are blocking (`reqwest::blocking`, no proxy): call them from plain `#[test]` functions.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::etcd::BridgeEtcd;
use super::Network;
use crate::process::Process;

/// The port of every node's API (each node has its own address).
pub const API_PORT: u16 = 9500;
/// How long a node has to print its serving line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node has to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds a [`MultiNodeCluster`]; see [`MultiNodeCluster::builder`].
#[derive(Debug, Default)]
pub struct MultiNodeBuilder {
    binary: Option<PathBuf>,
    nodes: Option<usize>,
    etcd_members: Option<usize>,
    node_lease_ttl: Option<u32>,
    settings: Vec<(String, String)>,
    server_args: Vec<String>,
}

impl MultiNodeBuilder {
    /// The `corral` executable (`env!("CARGO_BIN_EXE_corral")` in the `corral` package's tests).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// How many nodes (default 3).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = Some(n);
        self
    }

    /// How many etcd members (1, the default, or 3).
    pub fn etcd_members(mut self, n: usize) -> Self {
        self.etcd_members = Some(n);
        self
    }

    /// `--node-lease-ttl SECS` for every node (a node is `down` this long after its death, about).
    pub fn node_lease_ttl(mut self, secs: u32) -> Self {
        self.node_lease_ttl = Some(secs);
        self
    }

    /// Settings applied through node 1's API once every node is ready, in order.
    pub fn settings<K: Into<String>, V: Into<String>>(
        mut self,
        settings: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.settings.extend(settings.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// More arguments for every `corral server`.
    pub fn server_args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.server_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Makes the network and etcd, starts every node, waits until `GET /v1/nodes` shows all of them
    /// `ready`, and applies the settings; panics with what failed.
    pub fn build(self) -> MultiNodeCluster {
        let binary = self
            .binary
            .unwrap_or_else(|| panic!("MultiNodeCluster needs .binary(env!(\"CARGO_BIN_EXE_corral\"))"));
        assert!(binary.exists(), "the corral binary {} does not exist", binary.display());
        let nodes = self.nodes.unwrap_or(3);
        let network = Network::new(nodes);
        let etcd = BridgeEtcd::start(&network, self.etcd_members.unwrap_or(1));
        let dir = tempfile::Builder::new()
            .prefix("corral-multinode-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temp dir: {e}"));
        let mut args = self.server_args;
        if let Some(ttl) = self.node_lease_ttl {
            args.extend(["--node-lease-ttl".to_string(), ttl.to_string()]);
        }
        let mut cluster = MultiNodeCluster {
            servers: (0..nodes).map(|_| None).collect(),
            binary,
            server_args: args,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                // A cut-off node drops packets: fail its calls fast rather than after the whole timeout.
                .connect_timeout(Duration::from_secs(3))
                .no_proxy()
                .build()
                .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}")),
            dir,
            etcd,
            network,
        };
        cluster.start_nodes();
        // The scheduler ignores how full the host's disk is: a shared test machine may be below the
        // default `storage-minimal-available-percentage` (10%), which these tests are not about.
        let mut settings = vec![("storage-minimal-available-percentage".to_string(), "0".to_string())];
        settings.extend(self.settings);
        for (name, value) in settings {
            let (status, body) = cluster.put(1, &format!("/v1/settings/{name}"), json!({ "value": value }));
            assert_eq!(status, 200, "setting {name}={value} refused: {body}");
        }
        cluster
    }
}

/// A running cluster of `corral server` processes, one per network namespace, on etcd. Dropping it
/// kills every process of every node (SIGKILL), then etcd, then removes the network.
pub struct MultiNodeCluster {
    // Fields drop in order: the node processes, etcd, the data, then the network.
    servers: Vec<Option<Process>>,
    binary: PathBuf,
    server_args: Vec<String>,
    http: reqwest::blocking::Client,
    dir: tempfile::TempDir,
    etcd: BridgeEtcd,
    network: Network,
}

impl MultiNodeCluster {
    /// A builder; `.binary(...)` is required.
    pub fn builder() -> MultiNodeBuilder {
        MultiNodeBuilder::default()
    }

    /// How many nodes (numbered 1 to that).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The network (namespaces, addresses, `command` to run something inside a node).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The etcd members (kill one, restart it, `etcdctl`).
    pub fn etcd(&mut self) -> &mut BridgeEtcd {
        &mut self.etcd
    }

    /// Node `i`'s name, `nI`.
    pub fn name(&self, i: usize) -> String {
        self.network.check(i);
        format!("n{i}")
    }

    /// Node `i`'s address.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        self.network.address(i)
    }

    /// Node `i`'s API, `http://10.77.X.(10+i):9500`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}:{API_PORT}", self.address(i))
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(self.name(i))
    }

    /// The `corral` executable.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Starts `corral server` on node `i` (not running) and waits for its serving line.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.servers[i - 1].is_none(), "node {i} is running already");
        let name = self.name(i);
        let address = self.address(i).to_string();
        let data_dir = self.data_dir(i);
        std::fs::create_dir_all(&data_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", data_dir.display()));
        let mut command = self.network.command(i, &self.binary);
        command
            .args(["server", "--node", &name, "--address", &address])
            .args(["--store", &self.etcd.url(), "--data-dir"])
            .arg(&data_dir)
            .args(["--listen", &format!("{address}:{API_PORT}")])
            .args(&self.server_args)
            .env("CORRAL_LOG", "info");
        let mut server = Process::spawn(&name, &mut command);
        let expected = format!("corral server of node {name} serving {}", self.url(i));
        let deadline = Instant::now() + START_TIMEOUT;
        while !server.stdout_lines().iter().any(|line| line.contains(&expected)) {
            if !server.is_running() {
                server.wait_exit(Duration::from_secs(2));
                panic!("node {name} exited while starting; stderr:\n{}", server.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "node {name} did not print {expected:?} within {START_TIMEOUT:?}; stdout {:?}; stderr:\n{}",
                server.stdout_lines(),
                server.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.servers[i - 1] = Some(server);
    }

    /// Starts every node that is not running (all at once), then waits until each is `ready`.
    pub fn start_nodes(&mut self) {
        for i in 1..=self.len() {
            if self.servers[i - 1].is_none() {
                self.start_node(i);
            }
        }
        for i in 1..=self.len() {
            self.wait_node_state(1, i, "ready", START_TIMEOUT);
        }
    }

    /// Whether node `i`'s server process runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.servers[i - 1].as_mut().is_some_and(Process::is_running)
    }

    /// SIGKILLs every process of node `i` (its server, engines, replicas): the node lost its power.
    pub fn kill_node(&mut self, i: usize) {
        self.network.kill_node(i);
        if let Some(mut server) = self.servers[i - 1].take() {
            server.kill9();
        }
    }

    /// Kills node `i` if it runs, restores its link and starts its server again on the same data.
    pub fn restart_node(&mut self, i: usize) {
        self.kill_node(i);
        self.network.heal(i);
        self.start_node(i);
    }

    /// Cuts node `i`'s link; its processes keep running.
    pub fn partition(&self, i: usize) {
        self.network.partition(i);
    }

    /// Restores node `i`'s link.
    pub fn heal(&self, i: usize) {
        self.network.heal(i);
    }

    /// SIGTERM to node `i`'s server; panics unless it exits with success and leaves nothing running in
    /// the node.
    pub fn stop_node(&mut self, i: usize) {
        let Some(mut server) = self.servers[i - 1].take() else { return };
        let status = server.terminate(STOP_TIMEOUT);
        assert!(
            status.is_some_and(|s| s.success()),
            "node {i} did not stop cleanly on SIGTERM ({status:?}); stderr:\n{}",
            server.stderr()
        );
        let left = self.network.pids(i);
        assert!(left.is_empty(), "node {i} stopped but left processes {left:?}");
    }

    /// The whole cluster stops: every node on SIGTERM, then every etcd member (SIGKILL).
    pub fn stop_all(&mut self) {
        for i in 1..=self.len() {
            self.stop_node(i);
        }
        self.etcd.kill_all();
    }

    /// The whole cluster starts again after [`MultiNodeCluster::stop_all`]: etcd, then every node.
    pub fn start_all(&mut self) {
        self.etcd.start_all();
        self.start_nodes();
    }

    /// Runs the CLI on the host against node `i`'s API; panics unless it succeeds; returns stdout.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli_output(i, args);
        assert!(
            out.status.success(),
            "corral {args:?} against node {i} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI against node `i`'s API, whatever its outcome.
    pub fn cli_output(&self, i: usize, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .args(args)
            .env("CORRAL_URL", self.url(i))
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} {args:?}: {e}", self.binary.display()))
    }

    /// One REST call to node `i`: status and body (JSON; other text as a string, empty as null).
    /// Panics when the node does not answer at all.
    pub fn call(&self, i: usize, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_call(i, method.clone(), path, body)
            .unwrap_or_else(|e| panic!("{method} {path} on node {i}: {e}"))
    }

    /// Like [`MultiNodeCluster::call`], with the transport error instead of a panic (a node that is
    /// down or cut off).
    pub fn try_call(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self.http.request(method, format!("{}{path}", self.url(i)));
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send()?;
        let status = response.status().as_u16();
        let text = response.text()?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    pub fn get(&self, i: usize, path: &str) -> (u16, Value) {
        self.call(i, reqwest::Method::GET, path, None)
    }
    pub fn post(&self, i: usize, path: &str, body: Value) -> (u16, Value) {
        self.call(i, reqwest::Method::POST, path, Some(body))
    }
    pub fn put(&self, i: usize, path: &str, body: Value) -> (u16, Value) {
        self.call(i, reqwest::Method::PUT, path, Some(body))
    }
    pub fn delete(&self, i: usize, path: &str) -> (u16, Value) {
        self.call(i, reqwest::Method::DELETE, path, None)
    }

    /// Polls `GET path` on node `asked` until it answers 200 with a body for which `pred` holds; panics
    /// after `timeout` with the last answer. Transport errors (a node restarting) are retried.
    pub fn wait_for(
        &self,
        asked: usize,
        path: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_call(asked, reqwest::Method::GET, path, None) {
                Ok((200, v)) if pred(&v) => return v,
                Ok((status, v)) => format!("{status} {v:#}"),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "{path} on node {asked} never became {what} in {timeout:?}: {last}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Node `i`'s view in `GET /v1/nodes` asked of node `asked`, if listed.
    pub fn node_view(&self, asked: usize, i: usize) -> Option<Value> {
        let (status, nodes) = self.get(asked, "/v1/nodes");
        assert_eq!(status, 200, "GET /v1/nodes: {nodes}");
        find_node(&nodes, &self.name(i)).cloned()
    }

    /// Waits until node `asked` reports node `i` in `state` (`ready` / `down`); returns how long it took.
    pub fn wait_node_state(&self, asked: usize, i: usize, state: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        let name = self.name(i);
        self.wait_for(asked, "/v1/nodes", &format!("node {name} {state}"), timeout, |nodes| {
            find_node(nodes, &name).is_some_and(|n| n["state"] == state)
        });
        started.elapsed()
    }
}

/// The node named `name` in a `GET /v1/nodes` answer (a list, or an object with `items` or `data`).
pub fn find_node<'a>(nodes: &'a Value, name: &str) -> Option<&'a Value> {
    let list = nodes.as_array().or_else(|| nodes["items"].as_array()).or_else(|| nodes["data"].as_array())?;
    list.iter().find(|n| n["name"] == name)
}

impl Drop for MultiNodeCluster {
    fn drop(&mut self) {
        // Quietly (a panic while a test already fails would abort and hide its message): the network's
        // own drop kills whatever is still running in a namespace.
        for server in self.servers.iter_mut().flatten() {
            server.kill9();
        }
        for i in 1..=self.servers.len() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.network.kill_node(i)));
        }
    }
}
