//! What the control-plane tests share beyond the test kit's cluster: the cluster they all start,
//! qemu-io through a volume's endpoint, metrics and replica-directory checks.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unused_imports)]
use std::path::{Path, PathBuf};
use std::process::Command;

pub use corral_testkit::cluster::{
    assert_no_processes, free_port, free_range, processes_mentioning, TestCluster,
};
use serde_json::Value;
use sha2::Digest;

pub const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// A single-node cluster (`corral quickstart`) with its data in `data_dir` (its log in
/// `data_dir.log`), and quickstart's own defaults: soft anti-affinity, a `file://` backup target
/// under `data_dir/backups`.
pub fn start_cluster(data_dir: &Path) -> TestCluster {
    TestCluster::builder().binary(CORRAL).data_dir(data_dir).build()
}

/// SIGKILL (manager and instance manager at once; the kit checks that its engines and replicas
/// died with it), check that nothing mentioning the data dir runs, and start again on the same
/// data dir, address and ports.
pub fn kill_and_restart(cluster: &mut TestCluster) {
    cluster.kill();
    assert_no_processes(&cluster.data_dir().display().to_string());
    cluster.restart();
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

/// SHA-256 of the whole device behind an NBD endpoint, read with qemu-img.
pub fn device_sha256(endpoint: &str, scratch: &Path) -> String {
    let out_file = scratch.join(format!("dev-{}.img", free_port()));
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", endpoint])
        .arg(&out_file)
        .output()
        .expect("qemu-img is required (Debian package qemu-utils)");
    assert!(out.status.success(), "qemu-img convert {endpoint}: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&out_file).unwrap();
    std::fs::remove_file(&out_file).unwrap();
    hex::encode(sha2::Sha256::digest(&bytes))
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
