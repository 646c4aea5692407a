//! Shared helpers of the corral-backup integration tests: fixtures, fast lock timings, a moto S3 server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod scenario;

use corral_backup::{LockTimings, RestoreOptions, S3Settings};
use sha2::{Digest, Sha256};

pub const FIXTURES: &str = "/work/shared/fixtures/longhorn";
pub const SNAP2_SHA256: &str = "f7c01b125079dcb2cdc9070d077363db89026ef00f66fbfad632aebaaee54647";
pub const SNAP3_SHA256: &str = "742a32de6696dbac0a89e8e8a8eed3840612870d72b74b3950409750d8a3a1a3";
pub const VOLUME_SIZE: u64 = 64 << 20;

/// Extracts a fixture tarball (sparse) into `dir`.
pub fn extract(name: &str, dir: &Path) {
    let tarball = fixture_path(name);
    let status = Command::new("tar").arg("-xSzf").arg(&tarball).arg("-C").arg(dir).status().expect("run tar");
    assert!(status.success(), "tar -xSzf {} failed", tarball.display());
}

pub fn fixture_path(name: &str) -> PathBuf {
    // CI may keep the fixtures in the repository; this machine has them in the shared directory.
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/longhorn").join(name);
    if local.exists() {
        local
    } else {
        Path::new(FIXTURES).join(name)
    }
}

/// The fixture replica directory (chain snap 68129740… <- snap2 <- head), extracted into `dir`.
pub fn fixture_replica(dir: &Path) -> PathBuf {
    extract("replica-two-snapshots.tar.gz", dir);
    dir.join("two-snapshots")
}

pub fn fast_locks() -> LockTimings {
    LockTimings {
        check_wait: Duration::from_millis(20),
        max_wait: Duration::from_millis(500),
        check_interval: Duration::from_millis(50),
        refresh: Duration::from_secs(60),
        expiry: Duration::from_secs(150),
    }
}

pub fn restore_opts() -> RestoreOptions {
    RestoreOptions { concurrency: 4, lock_timings: fast_locks() }
}

pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The whole volume as of `snapshot` (None = head), through the replica library.
pub fn read_volume(dir: &Path, snapshot: Option<&str>) -> Vec<u8> {
    let replica = corral_replica::Replica::open_read_only(dir).unwrap();
    let mut buf = vec![0u8; usize::try_from(replica.size()).unwrap()];
    match snapshot {
        Some(s) => replica.read_snapshot_at(s, &mut buf, 0).unwrap(),
        None => replica.read_at(&mut buf, 0).unwrap(),
    }
    buf
}

/// All files under `dir` with the given suffix.
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

/// A moto S3 server on a free loopback port, killed on drop.
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

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn settings(&self) -> S3Settings {
        S3Settings {
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            endpoint: Some(self.endpoint()),
            default_region: Some("us-east-1".into()),
            ..S3Settings::default()
        }
    }

    /// Sends one plain (unsigned) HTTP request; moto does not check signatures. Returns the status code.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> u16 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let status = self.request("PUT", &format!("/{bucket}"), b"");
        assert_eq!(status, 200, "creating bucket {bucket} on moto");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An s3s-fs server (checks SigV4 signatures; buckets are directories under `root`), killed on drop.
pub struct S3sFs {
    child: Child,
    pub port: u16,
}

impl S3sFs {
    pub fn start(root: &Path, access_key: &str, secret_key: &str) -> S3sFs {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "s3s-fs is required for this test (cargo install s3s-fs@0.14.1 --features binary --locked): {e}"
                )
            });
        let server = S3sFs { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn settings(&self, access_key: &str, secret_key: &str) -> S3Settings {
        S3Settings {
            access_key_id: Some(access_key.into()),
            secret_access_key: Some(secret_key.into()),
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            default_region: Some("us-east-1".into()),
            ..S3Settings::default()
        }
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
