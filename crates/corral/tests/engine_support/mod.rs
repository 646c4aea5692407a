//! Helpers for the `engine_*` tests: real `corral replica serve` and `corral engine serve` processes
//! (SIGKILLed on drop), the control CLI, qemu-io, and a minimal synchronous NBD client for workloads.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod nbd_client;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// Reads the first stdout line of `child` within 30 s.
fn first_line(child: &mut Child, what: &str) -> (String, BufReader<std::process::ChildStdout>) {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        let _ = sender.send((read.map(|_| line), reader));
    });
    match receiver.recv_timeout(Duration::from_secs(30)) {
        Ok((Ok(line), reader)) if !line.is_empty() => (line.trim_end().to_string(), reader),
        _ => {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("{what} did not start: {err}");
        }
    }
}

/// A `corral replica serve` process.
pub struct Replica {
    pub child: Option<Child>,
    pub address: String,
    pub dir: PathBuf,
    _stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Replica {
    /// Starts a replica in `dir` listening on `listen` (`127.0.0.1:0` for any port).
    pub fn start(dir: &Path, size: &str, listen: &str) -> Replica {
        let mut child = Command::new(CORRAL)
            .args(["replica", "serve", "--dir"])
            .arg(dir)
            .args(["--size", size, "--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CORRAL}: {e}"));
        let (line, reader) = first_line(&mut child, "replica");
        let address = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected replica line {line:?}"))
            .to_string();
        Replica { child: Some(child), address, dir: dir.to_path_buf(), _stdout: Some(reader) }
    }

    /// `host:port` of a tcp address (for restarting on the same port).
    pub fn listen_arg(&self) -> String {
        self.address.trim_start_matches("tcp://").to_string()
    }

    /// Restarts on the same directory and address.
    pub fn restart(&mut self, size: &str) {
        self.kill9();
        let listen = self.listen_arg();
        // The port was just freed; retry briefly in case the kernel holds it.
        let started = Instant::now();
        loop {
            let attempt = std::panic::catch_unwind(|| Replica::start(&self.dir, size, &listen));
            match attempt {
                Ok(r) => {
                    *self = r;
                    return;
                }
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `corral engine serve` process.
pub struct EngineProc {
    pub child: Option<Child>,
    /// `nbd://…` or `nbd+unix://…`.
    pub nbd: String,
    /// Control API `HOST:PORT`.
    pub control: String,
    _stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl EngineProc {
    /// Starts an engine for `volume` with these replicas; `nbd` is `127.0.0.1:0` or `unix:PATH`.
    pub fn start(volume: &str, size: &str, replicas: &[String], nbd: &str, extra: &[&str]) -> EngineProc {
        let mut cmd = Command::new(CORRAL);
        cmd.args([
            "engine",
            "serve",
            "--volume",
            volume,
            "--size",
            size,
            "--nbd",
            nbd,
            "--listen",
            "127.0.0.1:0",
        ]);
        for r in replicas {
            cmd.args(["--replica", r]);
        }
        cmd.args(extra);
        let mut child = cmd
            .env("CORRAL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CORRAL}: {e}"));
        let (line, reader) = first_line(&mut child, "engine");
        let mut nbd = None;
        let mut control = None;
        for word in line.split_whitespace() {
            if let Some(v) = word.strip_prefix("nbd=") {
                nbd = Some(v.to_string());
            }
            if let Some(v) = word.strip_prefix("control=") {
                control = Some(v.to_string());
            }
        }
        match (nbd, control) {
            (Some(nbd), Some(control)) if line.starts_with("ready ") => {
                EngineProc { child: Some(child), nbd, control, _stdout: Some(reader) }
            }
            _ => panic!("unexpected engine ready line {line:?}"),
        }
    }

    /// Runs `corral engine ARGS --url CONTROL`, returning the output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(CORRAL).arg("engine").args(args).args(["--url", &self.control]).output().unwrap()
    }

    /// Runs the CLI and requires success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "corral engine {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `replica ls --json` as (address, mode, progress).
    pub fn replicas(&self) -> Vec<(String, String, u64)> {
        let text = self.cli_ok(&["replica", "ls", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["address"].as_str().unwrap().to_string(),
                    r["mode"].as_str().unwrap().to_string(),
                    r["rebuildProgress"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Mode of one replica.
    pub fn mode_of(&self, address: &str) -> String {
        self.replicas().into_iter().find(|r| r.0 == address).map(|r| r.1).unwrap_or_else(|| "absent".into())
    }

    /// Waits (up to `secs`) until `address` has `mode`.
    pub fn wait_mode(&self, address: &str, mode: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let now = self.mode_of(address);
            if now == mode {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{address} is {now}, not {mode}, after {secs}s: {:?}",
                self.replicas()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `host`, `port` of a TCP NBD endpoint.
    pub fn nbd_tcp(&self) -> (String, u16) {
        let hp = self.nbd.trim_start_matches("nbd://");
        let (h, p) = hp.rsplit_once(':').unwrap();
        (h.to_string(), p.parse().unwrap())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Checks that an external tool exists; fails the test with a clear message if not.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{tool}` on PATH (Debian: qemu-utils / libnbd-bin / e2fsprogs / fuse3 / util-linux)"
    );
}

/// Runs `qemu-io -f raw -c CMD… URI` and requires success (qemu-io exits 1 on a pattern mismatch).
pub fn qemu_io(uri: &str, commands: &[&str]) -> String {
    require_tool("qemu-io");
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.arg(uri).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("failed") && !stdout.contains("error"),
        "qemu-io {commands:?} {uri} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Three (or `n`) fresh replicas of `size` under `root`.
pub fn replicas(root: &Path, n: usize, size: &str) -> Vec<Replica> {
    (0..n).map(|i| Replica::start(&root.join(format!("r{i}")), size, "127.0.0.1:0")).collect()
}

/// Addresses of replicas.
pub fn addresses(rs: &[Replica]) -> Vec<String> {
    rs.iter().map(|r| r.address.clone()).collect()
}

/// Deterministic data for block `block` written in round `round`.
pub fn block_data(block: u64, round: u64, len: usize) -> Vec<u8> {
    let mut x =
        block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
