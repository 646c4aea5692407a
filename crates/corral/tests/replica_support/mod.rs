//! Helpers for the `replica_*` tests: the real `corral` binary (replica servers through corral-testkit),
//! the Longhorn fixture from the repository, checksums.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use corral_testkit::corral::ReplicaServer;
pub use corral_testkit::data::{sha256, sha256_file};
pub use corral_testkit::fixtures::{
    HEAD_SHA256 as FIXTURE_HEAD_SHA256, SNAP2_SHA256 as FIXTURE_SNAP2_SHA256,
    UUID_SNAPSHOT as FIXTURE_UUID_SNAPSHOT,
};

pub const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// Starts `corral replica serve` and waits for `listening on ADDRESS`; panics with its stderr otherwise.
pub fn start_replica(dir: &Path, size: Option<&str>, listen: &str) -> ReplicaServer {
    ReplicaServer::start(Path::new(CORRAL), dir, size, listen)
}

/// Like [`start_replica`], returning the failure (exit status and stderr) as text.
pub fn try_start_replica(dir: &Path, size: Option<&str>, listen: &str) -> Result<ReplicaServer, String> {
    ReplicaServer::try_start(Path::new(CORRAL), dir, size, listen).map_err(|err| err.to_string())
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
    corral_testkit::fixtures::extract_longhorn_replica(into)
}
