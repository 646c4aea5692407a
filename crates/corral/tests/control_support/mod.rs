//! Shared by the control-plane tests: a `corral quickstart` process on a temp dir with ports picked
//! free at run time, the CLI against it, qemu-io through a volume's endpoint, and process checks.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `n` consecutive ports that look free now (the instance manager skips any taken later).
pub fn free_range(n: u16) -> String {
    loop {
        let p = free_port();
        if p > 1024 && p < 65000 - n {
            return format!("{p}-{}", p + n - 1);
        }
    }
}

/// A running `corral quickstart`. Killed with SIGKILL on drop if still running.
pub struct Quickstart {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    listen: String,
    ports: String,
}

impl Quickstart {
    pub fn start(data_dir: &Path) -> Quickstart {
        let listen = format!("127.0.0.1:{}", free_port());
        Self::start_with(data_dir, &listen, &free_range(300))
    }

    pub fn start_with(data_dir: &Path, listen: &str, ports: &str) -> Quickstart {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(CORRAL)
            .args(["quickstart", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", listen, "--port-range", ports, "--node", "local"])
            .env("CORRAL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let q = Quickstart {
            child: Some(child),
            url: format!("http://{listen}"),
            data_dir: data_dir.to_path_buf(),
            listen: listen.into(),
            ports: ports.into(),
        };
        q.wait_healthy();
        relax_disk_space(&q);
        q
    }

    /// Start again on the same data dir, address and ports.
    pub fn restart(&self) -> Quickstart {
        Self::start_with(&self.data_dir, &self.listen, &self.ports)
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get_ok(&self.listen, "/healthz") {
                return;
            }
            assert!(Instant::now() < deadline, "quickstart did not answer /healthz at {}", self.url);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Run the CLI against this cluster; panics with its output unless it succeeds.
    pub fn corral(&self, args: &[&str]) -> String {
        let out = self.corral_output(args);
        assert!(
            out.status.success(),
            "corral {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn corral_output(&self, args: &[&str]) -> Output {
        Command::new(CORRAL).args(args).env("CORRAL_URL", &self.url).output().unwrap()
    }

    /// `corral volume get NAME --json`.
    pub fn volume(&self, name: &str) -> Value {
        serde_json::from_str(&self.corral(&["volume", "get", name, "--json"])).unwrap()
    }

    /// Poll the volume until `pred` holds.
    pub fn wait_volume(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.volume(name);
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "volume {name} never became {what}: {v:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ctrl-C, and wait for a clean exit.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "quickstart exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "quickstart did not stop after SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (manager and instance manager at once), check that its children died with it,
    /// and start again on the same data dir, address and ports.
    pub fn kill_and_restart(self) -> Quickstart {
        let (dir, listen, ports) = (self.data_dir.clone(), self.listen.clone(), self.ports.clone());
        self.kill();
        assert_no_processes(&dir.display().to_string());
        Quickstart::start_with(&dir, &listen, &ports)
    }

    /// SIGKILL, as a crash.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP GET (no client library needed): true on a 200 answer.
fn http_get_ok(addr: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

/// Pids of processes whose command line mentions `needle`, except this test process.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // A zombie has an empty command line; it is not running.
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// Wait until no process mentions `needle` (processes stopped by a signal need a moment).
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

/// Run qemu-io commands against an NBD endpoint; panics if qemu-io is missing, fails, or a
/// pattern does not verify.
pub fn qemu_io(endpoint: &str, commands: &[String]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.arg(endpoint).output().expect("qemu-io is required (Debian package qemu-utils)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && !text.contains("failed") && !text.contains("error"),
        "qemu-io {commands:?} on {endpoint}: {text}"
    );
    text
}

pub fn write_pattern(endpoint: &str, pattern: u8, off: u64, len: u64) {
    qemu_io(endpoint, &[format!("write -P {pattern:#x} {off} {len}")]);
}

pub fn read_pattern(endpoint: &str, pattern: u8, off: u64, len: u64) {
    qemu_io(endpoint, &[format!("read -P {pattern:#x} {off} {len}")]);
}

pub fn endpoint(v: &Value) -> String {
    v["endpoint"].as_str().unwrap().to_string()
}

pub fn attached_healthy(v: &Value) -> bool {
    v["state"] == "attached" && v["robustness"] == "healthy" && v["endpoint"].is_string()
}

/// A minimal HTTP GET against `url` (`http://host:port`): status and body.
pub fn http_get(url: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((buf.as_str(), ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// The value of one Prometheus sample: `name{labels}` exactly as exposed (labels in order).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Directory of a replica listed in a volume's JSON, given its disk's path.
pub fn replica_dir(disk_path: &Path, replica: &str) -> PathBuf {
    disk_path.join("replicas").join(replica)
}

/// `corral replica info --dir DIR --json`.
pub fn replica_info(dir: &Path) -> Value {
    let out = Command::new(CORRAL).args(["replica", "info", "--json", "--dir"]).arg(dir).output().unwrap();
    assert!(out.status.success(), "replica info {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Let the scheduler ignore how full the host's disk is: a shared test machine may be below the
/// default `storage-minimal-available-percentage` (10%), which these tests are not about. Every
/// [`Quickstart::start_with`] does this.
fn relax_disk_space(q: &Quickstart) {
    q.corral(&["setting", "set", "storage-minimal-available-percentage", "0"]);
}
