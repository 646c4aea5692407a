//! `corral instance-manager` as its own process, driving real `corral replica serve` children
//! through its gRPC API: they are reported, and they die with the instance manager (even when it
//! is killed with SIGKILL) or are stopped by it on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod control_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control_support::*;
use corral_im::pb::{InstanceKind, InstanceState, StartRequest};
use corral_im::ImClient;

struct Im {
    child: std::process::Child,
    client: ImClient,
}

impl Drop for Im {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_im() -> Im {
    let port = free_port();
    let child = Command::new(CORRAL)
        .args([
            "instance-manager",
            "--node",
            "n1",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--port-range",
            &free_range(50),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = ImClient::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.info().await.is_err() {
        assert!(Instant::now() < deadline, "instance manager did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Im { child, client }
}

async fn start_replica(im: &Im, name: &str, dir: &std::path::Path) -> corral_im::pb::Instance {
    let req = StartRequest {
        name: name.into(),
        kind: InstanceKind::Replica as i32,
        args: vec![
            "replica".into(),
            "serve".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--size".into(),
            "16MiB".into(),
            "--listen".into(),
            "127.0.0.1:{port0}".into(),
        ],
        port_count: 1,
        probe_host: String::new(),
        requested_ports: vec![],
    };
    im.client.start(req).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = im.client.get(name).await.unwrap();
        if i.state == InstanceState::Running as i32 {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "replica never running: {i:?} {:?}",
            im.client.logs(name, 20).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_supervised_and_die_with_a_killed_instance_manager() {
    let tmp = tempfile::tempdir().unwrap();
    let im = start_im().await;
    let r = start_replica(&im, "r1", &tmp.path().join("r1")).await;
    std::net::TcpStream::connect(("127.0.0.1", r.ports[0] as u16))
        .expect("replica listens on its allocated port");
    let logs = im.client.logs("r1", 0).await.unwrap();
    assert!(
        logs.iter().any(|l| l.contains(&format!("listening on tcp://127.0.0.1:{}", r.ports[0]))),
        "{logs:?}"
    );
    // A killed replica is reported with its signal.
    let r2 = start_replica(&im, "r2", &tmp.path().join("r2")).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(r2.pid as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let i = im.client.get("r2").await.unwrap();
        if i.state == InstanceState::Error as i32 {
            assert_eq!(i.signal, Some(9));
            break;
        }
        assert!(Instant::now() < deadline, "kill not reported: {i:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGKILL the instance manager: its children get the parent-death signal.
    let mut im = im;
    im.child.kill().unwrap();
    im.child.wait().unwrap();
    assert_no_processes(&tmp.path().display().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_children_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut im = start_im().await;
    start_replica(&im, "r1", &tmp.path().join("r1")).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(im.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = im.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_no_processes(&tmp.path().display().to_string());
    // Stopped with SIGTERM, the replica closed cleanly: the directory opens read-only as not dirty.
    let out = Command::new(CORRAL)
        .args(["replica", "info", "--dir"])
        .arg(tmp.path().join("r1"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["dirty"], false, "{info:#}");
}
