//! Helpers for the `replica_*` tests: run the real `corral` binary, wait for its ready line, kill it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

pub const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

pub const FIXTURE: &str = "/work/shared/fixtures/longhorn/replica-two-snapshots.tar.gz";
pub const FIXTURE_HEAD_SHA256: &str = "742a32de6696dbac0a89e8e8a8eed3840612870d72b74b3950409750d8a3a1a3";
/// The volume as of snapshot `snap2` (the fixture README's restored `bk-snap2` backup).
pub const FIXTURE_SNAP2_SHA256: &str = "f7c01b125079dcb2cdc9070d077363db89026ef00f66fbfad632aebaaee54647";
pub const FIXTURE_UUID_SNAPSHOT: &str = "68129740-95fa-41f1-9ff2-30a78ca4a61b";

/// A `corral replica serve` process; SIGKILLed on drop if still running.
pub struct ReplicaProcess {
    pub child: Child,
    pub address: String,
    pub dir: PathBuf,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl ReplicaProcess {
    /// Starts `corral replica serve` and waits (up to 20 s) for `listening on ADDRESS`.
    pub fn start(dir: &Path, size: Option<&str>, listen: &str) -> ReplicaProcess {
        Self::try_start(dir, size, listen).unwrap_or_else(|err| panic!("replica server did not start: {err}"))
    }

    /// Like [`Self::start`], returning the failure (exit status and stderr) instead of panicking.
    pub fn try_start(dir: &Path, size: Option<&str>, listen: &str) -> Result<ReplicaProcess, String> {
        let mut command = Command::new(CORRAL);
        command.args(["replica", "serve", "--dir"]).arg(dir).args(["--listen", listen]);
        if let Some(size) = size {
            command.args(["--size", size]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {CORRAL}: {err}"));
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            let _ = sender.send((read.map(|_| line), reader));
        });
        match receiver.recv_timeout(Duration::from_secs(20)) {
            Ok((Ok(line), reader)) if line.starts_with("listening on ") => {
                let address = line.trim_end().trim_start_matches("listening on ").to_string();
                Ok(ReplicaProcess { child, address, dir: dir.to_path_buf(), _stdout: reader })
            }
            other => {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                Err(format!(
                    "first stdout line {:?}, status {}, stderr: {}",
                    other.map(|(line, _)| line.ok()),
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (up to 20 s) for a clean exit.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        for _ in 0..2000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("replica server ignored SIGTERM for 20 s");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// Runs `corral ARGS` to completion.
pub fn corral(args: &[&str]) -> Output {
    Command::new(CORRAL).args(args).output().unwrap_or_else(|err| panic!("cannot run {CORRAL}: {err}"))
}

/// Runs `corral replica check --dir DIR` and panics with its output unless it succeeds.
pub fn assert_check_passes(dir: &Path) {
    let output = corral(&["replica", "check", "--dir", dir.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "replica check failed on {}:\nstdout: {}\nstderr: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Extracts the Longhorn fixture (sparse) into `into`; returns the replica directory inside it.
pub fn extract_fixture(into: &Path) -> PathBuf {
    let status = Command::new("tar")
        .args(["-xSzf", FIXTURE, "-C"])
        .arg(into)
        .status()
        .expect("tar is needed to extract the Longhorn fixture");
    assert!(status.success(), "tar failed on {FIXTURE}");
    find_replica_dir(into).unwrap_or_else(|| panic!("no volume.meta under {}", into.display()))
}

fn find_replica_dir(dir: &Path) -> Option<PathBuf> {
    if dir.join("volume.meta").exists() {
        return Some(dir.to_path_buf());
    }
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if entry.file_type().ok()?.is_dir() {
            if let Some(found) = find_replica_dir(&entry.path()) {
                return Some(found);
            }
        }
    }
    None
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// SHA-256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
