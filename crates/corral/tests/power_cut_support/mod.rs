//! Power-cut scenarios shared by the `power_cut*` tests and `corral-bench power-cut` (which includes this
//! directory with `#[path]`): corral replicas (and optionally the engine) inside a VM of corral-testkit
//! whose power is cut (SIGKILL of qemu, the guest's page cache lost) at a random moment, then rebooted on
//! the same disk image and checked.
//!
//! - [`nbd`]: a pipelined NBD workload (libnbd, flushes and FUA writes) through an engine on the host or
//!   in the VM; after each cut every write an acknowledged flush covered, and every acknowledged FUA
//!   write, reads back.
//! - [`ops`]: writes, flushes, snapshot create, mark-removed + purge, revert and expand driven over the
//!   replica wire protocol, with a model of what was acknowledged (the approach of `replica_crash.rs`).
//! - [`rebuild`]: an engine's rebuild of a stale replica in the VM.
//! - [`restore`]: `corral backup restore` into a replica directory in the VM, full or incremental.
//!
//! After every cut each replica directory must pass `corral replica check` in the guest before it serves.
//! Every scenario takes a seed and puts it in its panic messages.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod nbd;
pub mod ops;
pub mod rebuild;
pub mod restore;

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_testkit::process::Process;
use corral_testkit::vm::{Filesystem, Vm};

/// Guest ports of the three replicas.
pub const REPLICA_PORTS: [u16; 3] = [9501, 9502, 9503];
/// Guest ports of an engine in the VM: NBD and control API.
pub const ENGINE_NBD_PORT: u16 = 10809;
pub const ENGINE_CONTROL_PORT: u16 = 9500;
/// How long a corral process in the guest may take to announce itself (TCG on a loaded machine).
const GUEST_START: Duration = Duration::from_secs(90);

/// A VM for corral: its disk holds replica directories `/mnt/r0`, `/mnt/r1`, …
pub struct CorralVm {
    pub vm: Vm,
    pub corral: PathBuf,
    /// Replica directories created so far (checked after every cut).
    pub replicas: usize,
}

impl CorralVm {
    /// A VM whose disk image is `disk` (formatted with `filesystem` if new), with the replica and engine
    /// ports forwarded. Not booted yet.
    pub fn new(corral: &Path, disk: &Path, filesystem: Filesystem) -> CorralVm {
        let ports: Vec<u16> =
            REPLICA_PORTS.iter().copied().chain([ENGINE_NBD_PORT, ENGINE_CONTROL_PORT]).collect();
        CorralVm { vm: Vm::new(corral, disk, filesystem, &ports), corral: corral.to_path_buf(), replicas: 0 }
    }

    /// Boots, then runs `corral replica check` on every replica directory made so far.
    pub fn boot_and_check(&mut self, context: &str) {
        self.vm.boot();
        for i in 0..self.replicas {
            let out = self.vm.sh(&format!("corral replica check --dir /mnt/r{i}"));
            assert!(
                out.code == 0,
                "{context}: replica check failed on /mnt/r{i} after a power cut:\n{}",
                out.output
            );
        }
    }

    /// Starts `count` replicas in the guest (`/mnt/rI` on port 9501+I; `size` to create them, or to check
    /// theirs); returns their host addresses (`tcp://127.0.0.1:PORT`).
    pub fn start_replicas(&mut self, count: usize, size: Option<&str>) -> Vec<String> {
        let size = size.map(|s| format!(" --size {s}")).unwrap_or_default();
        self.replicas = self.replicas.max(count);
        (0..count)
            .map(|i| {
                let port = REPLICA_PORTS[i];
                let line = self.vm.spawn(
                    &format!("replica{i}"),
                    &format!("exec corral replica serve --dir /mnt/r{i}{size} --listen 0.0.0.0:{port}"),
                    GUEST_START,
                );
                assert!(
                    line.starts_with("listening on"),
                    "replica {i} did not start in the guest: {line}\n{}",
                    self.vm.log(&format!("replica{i}"))
                );
                format!("tcp://{}", self.vm.host_address(port))
            })
            .collect()
    }

    /// Starts an engine in the guest over the guest's `count` replicas; returns the host's NBD URI.
    pub fn start_engine(&self, volume: &str, size: &str, count: usize) -> String {
        let replicas: String =
            REPLICA_PORTS[..count].iter().map(|p| format!(" --replica tcp://127.0.0.1:{p}")).collect();
        let line = self.vm.spawn(
            "engine",
            &format!(
                "exec corral engine serve --volume {volume} --size {size} --nbd 0.0.0.0:{ENGINE_NBD_PORT} \
                 --listen 0.0.0.0:{ENGINE_CONTROL_PORT} --replica-timeout 60s{replicas}"
            ),
            GUEST_START,
        );
        assert!(
            line.starts_with("ready "),
            "the engine did not start in the guest: {line}\n{}",
            self.vm.log("engine")
        );
        format!("nbd://{}", self.vm.host_address(ENGINE_NBD_PORT))
    }
}

/// `corral engine serve` on the host, over replicas in the VM.
pub struct HostEngine {
    pub process: Process,
    /// `nbd://127.0.0.1:PORT`.
    pub nbd: String,
    /// Control API `127.0.0.1:PORT`.
    pub control: String,
    corral: PathBuf,
}

impl HostEngine {
    /// Starts an engine for `volume` of `size` over `replicas`, with `extra` arguments. The replica
    /// timeout is long: replicas under TCG on a loaded machine are slow, and a cut is what should fail them.
    pub fn start(corral: &Path, volume: &str, size: &str, replicas: &[String], extra: &[&str]) -> HostEngine {
        let mut command = std::process::Command::new(corral);
        command.args(["engine", "serve", "--volume", volume, "--size", size]);
        command.args(["--nbd", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--replica-timeout", "60s"]);
        for r in replicas {
            command.args(["--replica", r]);
        }
        command.args(extra).env("CORRAL_LOG", "info");
        let (process, line) = Process::start("engine", &mut command);
        let word = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("unexpected engine ready line {line:?}"))
                .to_string()
        };
        HostEngine { nbd: word("nbd="), control: word("control="), process, corral: corral.to_path_buf() }
    }

    /// Runs `corral engine ARGS --url CONTROL` and requires success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        engine_cli(&self.corral, &self.control, args)
    }

    /// Each replica's address and mode.
    pub fn modes(&self) -> Vec<(String, String)> {
        replica_modes(&self.corral, &self.control)
    }
}

/// Runs `corral engine ARGS --url CONTROL` and requires success; returns stdout.
pub fn engine_cli(corral: &Path, control: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(corral)
        .arg("engine")
        .args(args)
        .args(["--url", control])
        .output()
        .unwrap_or_else(|err| panic!("cannot run corral engine {args:?}: {err}"));
    assert!(
        out.status.success(),
        "corral engine {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each replica's address and mode, as the engine at `control` lists them.
pub fn replica_modes(corral: &Path, control: &str) -> Vec<(String, String)> {
    let text = engine_cli(corral, control, &["replica", "ls", "--json"]);
    let value: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("bad replica ls output {text:?}: {err}"));
    value
        .as_array()
        .map(|replicas| {
            replicas
                .iter()
                .map(|r| {
                    (
                        r["address"].as_str().unwrap_or("").to_string(),
                        r["mode"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A seeded random source, with the seed for messages.
pub fn seeded(seed: Option<u64>) -> (u64, rand::rngs::StdRng) {
    use rand::SeedableRng;
    let seed = seed.unwrap_or_else(rand::random);
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}
