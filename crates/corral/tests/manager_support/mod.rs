//! A one-node cluster for the manager's API tests, in this test process so that a test can look
//! into the datastore and the instance manager: a manager on a redb store in a temp dir, and an
//! in-process instance manager (`corral_im::Supervisor`) whose binary is the real `corral`, so
//! every engine and replica is a real process serving real data. Plus a small JSON client and
//! qemu-io helpers to check that data through a volume's endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use corral_im::{Supervisor, SupervisorConfig};
use corral_manager::{Manager, ManagerConfig};
use serde_json::Value;

pub const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

pub struct Cluster {
    pub url: String,
    pub http: reqwest::Client,
    pub manager: Option<Manager>,
    pub supervisor: Supervisor,
    pub dir: tempfile::TempDir,
    im_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Cluster {
    pub async fn start(soft_anti_affinity: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SupervisorConfig::new("node-1");
        cfg.binary = CORRAL.into();
        cfg.port_range = free_range(200);
        cfg.stop_grace = Duration::from_secs(3);
        let supervisor = Supervisor::new(cfg).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let im_url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(corral_im::serve(listener, supervisor.clone(), async {
            let _ = rx.await;
        }));
        let store = Arc::new(corral_store::RedbStore::open(&dir.path().join("corral.redb")).unwrap());
        let mut mc = ManagerConfig::new("node-1", im_url);
        mc.listen = "127.0.0.1:0".parse().unwrap();
        mc.default_disk = Some(dir.path().join("disk"));
        mc.resync = Duration::from_millis(500);
        // The scheduler ignores how full the host's disk is: a shared test machine may be below the
        // default 10% `storage-minimal-available-percentage`, which these tests are not about.
        mc.initial_settings = vec![("storage-minimal-available-percentage".into(), "0".into())];
        if soft_anti_affinity {
            mc.initial_settings.push(("replica-soft-anti-affinity".into(), "true".into()));
        }
        let manager = Manager::start(mc, store).await.unwrap();
        let url = format!("http://{}", manager.local_addr());
        Cluster {
            url,
            http: reqwest::Client::new(),
            manager: Some(manager),
            supervisor,
            dir,
            im_stop: Some(tx),
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Poll a volume until `pred` holds (60 s at most: real replicas start, rebuild and restore).
    pub async fn wait_volume(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(&format!("/v1/volumes/{name}"), what, pred).await
    }

    /// Poll `GET path` until it answers 200 with a body for which `pred` holds (60 s at most).
    pub async fn wait_for(&self, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (code, v) = self.get(path).await;
            if code == 200 && pred(&v) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "{path} never became {what}: {code} {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the manager, then every engine and replica (the supervisor waits for each to exit).
    pub async fn shutdown(mut self) {
        if let Some(m) = self.manager.take() {
            m.shutdown().await;
        }
        self.supervisor.shutdown().await;
        if let Some(tx) = self.im_stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn free_range(n: u16) -> std::ops::RangeInclusive<u16> {
    loop {
        let start = corral_testkit::cluster::free_port();
        if start > 1024 && start < 65000 - n {
            return start..=start + n - 1;
        }
    }
}

/// Assert an API error: status and stable code, and return the message.
pub fn assert_error(resp: &(u16, Value), status: u16, code: &str) -> String {
    assert_eq!(resp.0, status, "unexpected answer: {resp:?}");
    assert_eq!(resp.1["code"], code, "unexpected answer: {resp:?}");
    let msg = resp.1["message"].as_str().unwrap_or_default().to_string();
    assert!(!msg.is_empty(), "error without a message: {resp:?}");
    msg
}

/// Run qemu-io commands against an NBD endpoint (off the runtime's threads: it blocks); panics
/// if qemu-io is missing, fails, or a pattern does not verify.
pub async fn qemu_io(endpoint: &str, commands: &[&str]) -> String {
    let endpoint = endpoint.to_string();
    let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw"]);
        for c in &commands {
            cmd.args(["-c", c]);
        }
        let out = cmd.arg(&endpoint).output().expect("qemu-io is required (Debian package qemu-utils)");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && !text.contains("failed") && !text.contains("error"),
            "qemu-io {commands:?} on {endpoint}: {text}"
        );
        text
    })
    .await
    .unwrap()
}

/// SHA-256 (hex) of the whole device behind an NBD endpoint, copied out with qemu-img.
pub async fn device_sha256(endpoint: &str, scratch: &Path) -> String {
    use sha2::{Digest, Sha256};
    let endpoint = endpoint.to_string();
    let image = scratch.join(format!("device-{}.img", corral_testkit::cluster::free_port()));
    tokio::task::spawn_blocking(move || {
        let out = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &endpoint])
            .arg(&image)
            .output()
            .expect("qemu-img is required (Debian package qemu-utils)");
        assert!(
            out.status.success(),
            "qemu-img convert {endpoint}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&image).unwrap();
        std::fs::remove_file(&image).unwrap();
        hex::encode(Sha256::digest(&bytes))
    })
    .await
    .unwrap()
}
