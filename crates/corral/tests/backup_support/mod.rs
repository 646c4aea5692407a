//! Helpers of the `corral backup` CLI tests: running the binary; fixtures, S3 servers (moto, moto over
//! HTTPS with a test CA, s3s-fs) and the recording proxy come from corral-testkit.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

pub use corral_testkit::data::{files_with_suffix, sha256_file};
pub use corral_testkit::fixtures::{extract_longhorn as extract, HEAD_SHA256 as SNAP3_SHA256, SNAP2_SHA256};
pub use corral_testkit::s3::{RecordingProxy, S3Server as Server, TestCertificates};

/// Runs `corral backup ARGS…` with short lock waits and extra environment.
pub fn corral(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.arg("backup").args(args).env("CORRAL_BACKUP_LOCK_CHECK_WAIT_MS", "20");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run corral")
}

/// Runs and requires success; returns stdout.
pub fn corral_ok(args: &[&str], env: &[(&str, String)]) -> String {
    let out = corral(args, env);
    assert!(
        out.status.success(),
        "corral backup {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn corral_json(args: &[&str], env: &[(&str, String)]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&corral_ok(&all, env)).unwrap()
}

/// The volume as of the head of a replica directory, through the replica library.
pub fn read_head(dir: &Path) -> Vec<u8> {
    let replica = corral_replica::Replica::open_read_only(dir).unwrap();
    let mut buf = vec![0u8; usize::try_from(replica.size()).unwrap()];
    replica.read_at(&mut buf, 0).unwrap();
    buf
}

/// moto over HTTP, with the environment the `corral backup` CLI reads.
pub struct Moto(pub Server);

impl Moto {
    pub fn start() -> Moto {
        Moto(Server::moto())
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.0.moto_env()
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.0.create_bucket(bucket);
    }
}
