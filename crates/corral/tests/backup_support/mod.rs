//! Helpers of the `corral backup` CLI tests: running the binary, fixtures, a moto S3 server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const SNAP2_SHA256: &str = "f7c01b125079dcb2cdc9070d077363db89026ef00f66fbfad632aebaaee54647";
pub const SNAP3_SHA256: &str = "742a32de6696dbac0a89e8e8a8eed3840612870d72b74b3950409750d8a3a1a3";

pub fn fixture_path(name: &str) -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/longhorn").join(name);
    if local.exists() {
        local
    } else {
        Path::new("/work/shared/fixtures/longhorn").join(name)
    }
}

pub fn extract(name: &str, dir: &Path) {
    let tarball = fixture_path(name);
    let status = Command::new("tar").arg("-xSzf").arg(&tarball).arg("-C").arg(dir).status().expect("run tar");
    assert!(status.success(), "tar -xSzf {} failed", tarball.display());
}

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

pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The volume as of the head of a replica directory, through the replica library.
pub fn read_head(dir: &Path) -> Vec<u8> {
    let replica = corral_replica::Replica::open_read_only(dir).unwrap();
    let mut buf = vec![0u8; usize::try_from(replica.size()).unwrap()];
    replica.read_at(&mut buf, 0).unwrap();
    buf
}

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("moto_server is required for this test (pip install 'moto[server]'): {e}")
            });
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_ENDPOINTS", format!("http://127.0.0.1:{}", self.port)),
        ]
    }

    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let req = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(req.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(response.starts_with("HTTP/1.1 200"), "create bucket: {response}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
