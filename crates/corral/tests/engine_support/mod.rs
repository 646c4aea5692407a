//! Helpers for the `engine_*` tests: real `corral replica serve` and `corral engine serve` processes
//! (SIGKILLed on drop) and the control CLI, on top of corral-testkit. NBD traffic goes through real
//! clients: qemu-io, libnbd's tools, and the testkit's libnbd workload.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub use corral_testkit::corral::ReplicaServer as Replica;
pub use corral_testkit::data::{block_data, sha256};
pub use corral_testkit::nbd::{qemu_io, require_tool, Workload};
use corral_testkit::process::Process;

pub const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// Starts a replica in `dir` listening on `listen` (`127.0.0.1:0` for any port).
pub fn start_replica(dir: &Path, size: &str, listen: &str) -> Replica {
    Replica::start(Path::new(CORRAL), dir, Some(size), listen)
}

/// A `corral engine serve` process.
pub struct EngineProc {
    pub process: Process,
    /// `nbd://…` or `nbd+unix://…`.
    pub nbd: String,
    /// Control API `HOST:PORT`.
    pub control: String,
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
        cmd.args(extra).env("CORRAL_LOG", "info");
        let (process, line) = Process::start("engine", &mut cmd);
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
            (Some(nbd), Some(control)) if line.starts_with("ready ") => EngineProc { process, nbd, control },
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

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM and wait (up to 20 s) for a clean exit.
    pub fn terminate(&mut self) {
        assert!(
            self.process.terminate(Duration::from_secs(20)).is_some(),
            "the engine ignored SIGTERM for 20 s"
        );
    }
}

/// `n` fresh replicas of `size` under `root`.
pub fn replicas(root: &Path, n: usize, size: &str) -> Vec<Replica> {
    (0..n).map(|i| start_replica(&root.join(format!("r{i}")), size, "127.0.0.1:0")).collect()
}

/// Addresses of replicas.
pub fn addresses(rs: &[Replica]) -> Vec<String> {
    rs.iter().map(|r| r.address.clone()).collect()
}

/// Restarts replicas on their directories and addresses.
pub fn restart_all(rs: &mut [Replica], size: &str) {
    for r in rs.iter_mut() {
        r.restart(Some(size));
    }
}

/// Reads `[0, len)` of the volume in 1 MiB requests through the libnbd workload, `passes` times (the engine
/// spreads reads over its RW replicas), and panics at the first MiB that differs from `want`.
pub fn assert_volume_holds(engine: &EngineProc, want: &[u8], passes: usize, what: &str) {
    let chunk = 1usize << 20;
    let mut plan = Workload::new();
    let chunks = want.len().div_ceil(chunk);
    for _ in 0..passes {
        for i in 0..chunks {
            plan.read((i * chunk) as u64, (want.len() - i * chunk).min(chunk) as u64);
        }
    }
    let report = plan.run(&engine.nbd);
    report.assert_all_ok();
    for seq in 0..(passes * chunks) as u64 {
        let i = seq as usize % chunks;
        let expected = sha256(&want[i * chunk..(want.len()).min((i + 1) * chunk)]);
        assert_eq!(report.read_sha256(seq), expected, "{what}: MiB {i} differs (read {seq})");
    }
}
