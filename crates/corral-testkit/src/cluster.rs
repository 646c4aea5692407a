//! A real Corral cluster for tests: [`TestCluster::builder()`] starts the `corral` binary on ports
//! picked free at run time and a data directory of its own, and gives the test its REST API (JSON
//! in, JSON out), its CLI, SIGKILL, restart and a clean stop.
//!
//! Today a cluster is one node: one `corral quickstart` process (manager, instance manager and the
//! embedded store in one process, the engines and replicas its children). The shape is made for
//! several: every node is a [`NodeProcess`] with its own data dir, API address and port range, and
//! the cluster-wide calls (`kill`, `restart`, `stop`) go over all of them. A later `.nodes(3)` adds
//! a store (etcd) and starts `corral server` processes inside network namespaces, one per node.
//!
//! # Processes never outlive the cluster
//! Engines and replicas are children of the node process and get a parent-death signal when it
//! dies. A kill or stop records the node's descendants *before* signalling (afterwards they are
//! reparented and no longer found from the node's pid), then waits until every one of them is
//! gone, and fails the test with their command lines if one is left. Dropping the cluster kills
//! what still runs and checks the same, so a failing test does not leave processes behind either.
//!
//! The HTTP helper is blocking (`reqwest::blocking`): call it from plain `#[test]` functions, not
//! from inside a tokio runtime.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long a node has to answer `/healthz` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node has to exit after SIGINT (it stops engines, then replicas, each with a grace).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the children of a dead node have to die (their parent-death signal is SIGTERM).
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(15);
/// Ports the instance manager of one node hands to engines and replicas.
const PORTS_PER_NODE: u16 = 300;

/// Builds a [`TestCluster`]; see [`TestCluster::builder`].
#[derive(Debug, Default)]
pub struct TestClusterBuilder {
    binary: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    soft_anti_affinity: Option<bool>,
    settings: Vec<(String, String)>,
    backup_target: Option<String>,
}

impl TestClusterBuilder {
    /// The `corral` executable (`env!("CARGO_BIN_EXE_corral")` in the `corral` package's tests).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Keep the node's data under this directory (default: a temp dir removed with the cluster).
    /// Node `local` uses `DIR` itself and logs to `DIR.log`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The `replica-soft-anti-affinity` setting: `true` lets several replicas of one volume share a
    /// node (quickstart's default, needed for more than one replica on one node).
    pub fn soft_anti_affinity(mut self, on: bool) -> Self {
        self.soft_anti_affinity = Some(on);
        self
    }

    /// Settings applied through the API once the cluster is up (after the builder's own), in order.
    pub fn settings<K: Into<String>, V: Into<String>>(
        mut self,
        settings: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.settings.extend(settings.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The backup target URL (default: quickstart's `file://DATA_DIR/backups`).
    pub fn backup_target(mut self, url: impl Into<String>) -> Self {
        self.backup_target = Some(url.into());
        self
    }

    /// Start the cluster and wait until its API answers; panics with the node's log if it does not.
    pub fn build(self) -> TestCluster {
        let binary = self
            .binary
            .unwrap_or_else(|| panic!("TestCluster needs .binary(env!(\"CARGO_BIN_EXE_corral\"))"));
        assert!(binary.exists(), "the corral binary {} does not exist", binary.display());
        let (temp, data_dir) = match self.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temp dir: {e}"));
                let d = t.path().join("local");
                (Some(t), d)
            }
        };
        let node = NodeProcess::new("local", data_dir);
        let mut cluster = TestCluster {
            binary,
            nodes: vec![node],
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}")),
            _temp: temp,
        };
        cluster.start_all();
        // The scheduler ignores how full the host's disk is: a shared test machine may be below the
        // default `storage-minimal-available-percentage` (10%), which these tests are not about.
        let mut settings = vec![("storage-minimal-available-percentage".to_string(), "0".to_string())];
        if let Some(on) = self.soft_anti_affinity {
            settings.push(("replica-soft-anti-affinity".into(), on.to_string()));
        }
        settings.extend(self.settings);
        for (name, value) in settings {
            let (status, body) = cluster.put(&format!("/v1/settings/{name}"), json!({ "value": value }));
            assert_eq!(status, 200, "setting {name}={value} refused: {body}");
        }
        if let Some(url) = self.backup_target {
            let (status, body) = cluster.put("/v1/backuptarget", json!({ "url": url }));
            assert_eq!(status, 200, "backup target {url} refused: {body}");
        }
        cluster
    }
}

/// A running cluster of real `corral` processes. Dropping it kills them (SIGKILL) and checks that
/// no engine or replica process is left.
#[derive(Debug)]
pub struct TestCluster {
    binary: PathBuf,
    nodes: Vec<NodeProcess>,
    http: reqwest::blocking::Client,
    // Dropped after `nodes` (fields drop in order), so the processes are gone before their dir.
    _temp: Option<tempfile::TempDir>,
}

impl TestCluster {
    /// A builder; `.binary(...)` is required.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder::default()
    }

    /// The REST API's base URL (`http://127.0.0.1:PORT`) of the first node.
    pub fn url(&self) -> String {
        format!("http://{}", self.nodes[0].listen)
    }

    /// The first node's data directory (its store, `disks/default`, `backups`).
    pub fn data_dir(&self) -> &Path {
        &self.nodes[0].data_dir
    }

    /// The first node's process id; panics if it is not running.
    pub fn pid(&self) -> u32 {
        self.nodes[0].pid()
    }

    /// The `corral` executable the cluster runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Run the CLI against the cluster; panics with its output unless it succeeds; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "corral {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run the CLI against the cluster, whatever its outcome.
    pub fn cli_output(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .args(args)
            .env("CORRAL_URL", self.url())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} {args:?}: {e}", self.binary.display()))
    }

    /// One REST call: status and body (JSON; a body that is not JSON comes back as a string,
    /// an empty one as null).
    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.url()));
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None)
    }
    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body))
    }
    pub fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body))
    }
    pub fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body))
    }
    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None)
    }

    /// A GET whose answer is text (`/metrics`): status and body.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.url()))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().unwrap_or_else(|e| panic!("GET {path}: reading the body: {e}")))
    }

    /// `GET /v1/volumes/NAME`; panics unless it answers 200.
    pub fn volume(&self, name: &str) -> Value {
        let (status, v) = self.get(&format!("/v1/volumes/{name}"));
        assert_eq!(status, 200, "GET volume {name}: {v}");
        v
    }

    /// Poll the volume until `pred` holds; panics after `timeout` with its last state.
    pub fn wait_volume(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_for(&format!("/v1/volumes/{name}"), what, timeout, pred)
    }

    /// Poll `GET path` until it answers 200 with a body for which `pred` holds.
    pub fn wait_for(
        &self,
        path: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, v) = self.get(path);
            if status == 200 && pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{path} never became {what} in {timeout:?}: {status} {v:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL every node at once, as a crash; panics if one of their engines or replicas survives.
    pub fn kill(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// Start every node again on the same data dir, address and ports (after `kill` or `stop`).
    /// Settings and the backup target are in the store already: they are not applied again.
    pub fn restart(&mut self) {
        self.start_all();
    }

    /// Ctrl-C (SIGINT) to every node; panics unless each exits with success, leaving nothing behind.
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }

    fn start_all(&mut self) {
        for node in &mut self.nodes {
            node.start(&self.binary);
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let mut left = Vec::new();
        for node in &mut self.nodes {
            left.extend(node.kill_quietly());
        }
        // A panic here while the test is already failing would abort and hide its message.
        if !left.is_empty() && !std::thread::panicking() {
            panic!("processes outlived the cluster (killed now): {left:#?}");
        }
    }
}

/// One node's process and what it needs to be started again identically.
#[derive(Debug)]
pub struct NodeProcess {
    name: String,
    data_dir: PathBuf,
    listen: String,
    port_range: String,
    child: Option<Child>,
}

impl NodeProcess {
    fn new(name: &str, data_dir: PathBuf) -> NodeProcess {
        NodeProcess {
            name: name.into(),
            data_dir,
            listen: format!("127.0.0.1:{}", free_port()),
            port_range: free_range(PORTS_PER_NODE),
            child: None,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    fn pid(&self) -> u32 {
        match &self.child {
            Some(c) => c.id(),
            None => panic!("node {} is not running", self.name),
        }
    }

    fn start(&mut self, binary: &Path) {
        assert!(self.child.is_none(), "node {} is running already", self.name);
        if let Some(parent) = self.data_dir.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path().display()));
        let child = Command::new(binary)
            .args(["quickstart", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen", &self.listen, "--port-range", &self.port_range, "--node", &self.name])
            .env("CORRAL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} quickstart: {e}", binary.display()));
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
        let url = format!("http://{}/healthz", self.listen);
        loop {
            if client.get(&url).send().is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "node {} exited with {status} while starting; log:\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {} did not answer {url} in {START_TIMEOUT:?}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL; panics if a descendant survives its parent-death signal.
    fn kill(&mut self) {
        let left = self.kill_quietly();
        assert!(
            left.is_empty(),
            "node {}: processes survived its SIGKILL (killed now): {left:#?}",
            self.name
        );
    }

    /// SIGKILL and wait; returns the descendants that did not die by themselves (killed now).
    fn kill_quietly(&mut self) -> Vec<ProcessInfo> {
        let Some(mut child) = self.child.take() else { return Vec::new() };
        let family = descendants(child.id());
        let _ = child.kill();
        let _ = child.wait();
        reap_or_kill(family)
    }

    /// SIGINT, and wait for a clean exit of the node and of every descendant.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let family = descendants(child.id());
        signal(child.id(), nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                outcome => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let left = reap_or_kill(family);
                    panic!("node {} did not stop after SIGINT ({outcome:?}); left: {left:#?}", self.name);
                }
            }
        };
        let left = reap_or_kill(family);
        assert!(status.success(), "node {} exited with {status}; log:\n{}", self.name, self.log_tail());
        assert!(left.is_empty(), "node {} stopped but left processes (killed now): {left:#?}", self.name);
    }
}

/// A process seen in /proc: pid, start time (to tell a reused pid apart) and command line.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: u32,
    start_time: u64,
    pub command: String,
}

/// `(ppid, start time, state)` of a live (non-zombie) process, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(u32, u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces or parentheses: split after the last.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    (state != 'Z').then_some((ppid, start_time, state))
}

fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim_end().to_string())
        .unwrap_or_default()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect())
        .unwrap_or_default()
}

/// Every live descendant of `root` (children, their children, ...).
pub fn descendants(root: u32) -> Vec<ProcessInfo> {
    let table: Vec<(u32, u32, u64)> = all_pids()
        .into_iter()
        .filter_map(|pid| stat(pid).map(|(ppid, start, _)| (pid, ppid, start)))
        .collect();
    let mut out: Vec<ProcessInfo> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, start_time) in &table {
            if ppid == parent && !out.iter().any(|p| p.pid == pid) {
                out.push(ProcessInfo { pid, start_time, command: command_line(pid) });
                frontier.push(pid);
            }
        }
    }
    out
}

fn is_alive(p: &ProcessInfo) -> bool {
    stat(p.pid).is_some_and(|(_, start, _)| start == p.start_time)
}

/// Wait until every process of `family` has exited; SIGKILL and return those still alive after
/// [`ORPHAN_TIMEOUT`].
fn reap_or_kill(family: Vec<ProcessInfo>) -> Vec<ProcessInfo> {
    let deadline = Instant::now() + ORPHAN_TIMEOUT;
    loop {
        let alive: Vec<ProcessInfo> = family.iter().filter(|p| is_alive(p)).cloned().collect();
        if alive.is_empty() {
            return alive;
        }
        if Instant::now() >= deadline {
            for p in &alive {
                signal(p.pid, nix::sys::signal::Signal::SIGKILL);
            }
            return alive;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    // The process may have exited meanwhile (ESRCH); the callers check what is left afterwards.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig);
}

/// Processes whose command line mentions `needle`, except this test process.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me && stat(pid).is_some())
        .map(|pid| (pid, command_line(pid)))
        .filter(|(_, cmd)| cmd.contains(needle))
        .collect()
}

/// Wait (10 s at most) until no process mentions `needle`; panics with those left.
pub fn assert_no_processes(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("no local address: {e}")).port()
}

/// `n` consecutive ports starting at one that was free, as `A-B` (the instance manager skips any
/// taken later).
pub fn free_range(n: u16) -> String {
    loop {
        let p = free_port();
        if p > 1024 && p < 65000 - n {
            return format!("{p}-{}", p + n - 1);
        }
    }
}
