//! The instance manager with real child processes, driven through its gRPC API on a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::PathBuf;
use std::time::Duration;

use corral_im::pb::{Instance, InstanceKind, InstanceState, StartRequest};
use corral_im::{ErrorKind, ImClient, Supervisor, SupervisorConfig};
use futures::StreamExt;

/// A child that listens on its port, logs, and runs until killed (ignores SIGTERM if asked).
const LISTENER: &str = r#"
import socket, sys, time, signal
if len(sys.argv) > 2 and sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("child starting", flush=True)
time.sleep(0.2)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("listening on", sys.argv[1], flush=True)
sys.stderr.write("a line on stderr\n"); sys.stderr.flush()
while True:
    time.sleep(1)
"#;

fn python() -> PathBuf {
    for p in ["/usr/bin/python3", "/bin/python3"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("python3 is required by these tests (a long-running child that listens on a port)");
}

struct Im {
    supervisor: Supervisor,
    client: ImClient,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Im {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn start_im(binary: PathBuf, ports: std::ops::RangeInclusive<u16>, grace: Duration) -> Im {
    let mut cfg = SupervisorConfig::new("node-test");
    cfg.binary = binary;
    cfg.port_range = ports;
    cfg.stop_grace = grace;
    let supervisor = Supervisor::new(cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(corral_im::serve(listener, supervisor.clone(), async {
        let _ = rx.await;
    }));
    Im { supervisor, client: ImClient::new(&url).unwrap(), shutdown: Some(tx) }
}

/// A port range of `n` ports that were free a moment ago (tests run in parallel).
fn free_range(n: u16) -> std::ops::RangeInclusive<u16> {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let start = l.local_addr().unwrap().port();
        drop(l);
        if start < 65000 - n {
            return start..=start + n - 1;
        }
    }
}

fn listener_req(name: &str, extra: &[&str]) -> StartRequest {
    let mut args = vec!["-c".to_string(), LISTENER.to_string(), "{port0}".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    StartRequest {
        name: name.into(),
        kind: InstanceKind::Replica as i32,
        args,
        port_count: 1,
        probe_host: String::new(),
        requested_ports: vec![],
    }
}

async fn wait_state(client: &ImClient, name: &str, state: InstanceState) -> Instance {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let i = client.get(name).await.unwrap();
        if i.state == state as i32 {
            return i;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never reached {state:?}: {i:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; its state letter is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_probe_list_watch_logs_and_stop() {
    let im = start_im(python(), free_range(50), Duration::from_secs(5)).await;
    let mut watch = im.client.watch().await.unwrap();
    let started = im.client.start(listener_req("r1", &[])).await.unwrap();
    assert_eq!(started.state, InstanceState::Starting as i32, "not yet listening: {started:?}");
    assert_eq!(started.ports.len(), 1);
    assert!(started.pid > 0);
    assert_eq!(im.supervisor.ports_in_use(), 1);
    let running = wait_state(&im.client, "r1", InstanceState::Running).await;
    // The port the child listens on is the allocated one.
    std::net::TcpStream::connect(("127.0.0.1", running.ports[0] as u16)).unwrap();
    assert!(running.args.contains(&running.ports[0].to_string()), "port substituted: {:?}", running.args);

    let list = im.client.list().await.unwrap();
    assert_eq!(list.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["r1"]);

    let logs = im.client.logs("r1", 0).await.unwrap();
    assert!(logs.iter().any(|l| l == &format!("listening on {}", running.ports[0])), "{logs:?}");
    assert!(logs.iter().any(|l| l == "a line on stderr"), "{logs:?}");
    assert_eq!(im.client.logs("r1", 1).await.unwrap().len(), 1);

    let stopped = im.client.stop("r1").await.unwrap();
    assert_eq!(stopped.state, InstanceState::Stopped as i32, "{stopped:?}");
    assert!(!alive(started.pid), "process {} still alive after stop", started.pid);
    assert_eq!(im.supervisor.ports_in_use(), 0, "port released");

    // The watch saw starting -> running -> stopped for r1, in order, with increasing revisions.
    let mut states = Vec::new();
    let mut last_rev = 0;
    while states.last() != Some(&(InstanceState::Stopped as i32)) {
        let ev = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap();
        assert!(ev.revision > last_rev, "revisions increase");
        last_rev = ev.revision;
        if states.last() != Some(&ev.state) {
            states.push(ev.state);
        }
    }
    assert_eq!(
        states,
        [InstanceState::Starting as i32, InstanceState::Running as i32, InstanceState::Stopped as i32]
    );

    let deleted = im.client.delete("r1").await.unwrap();
    assert_eq!(deleted.name, "r1");
    assert_eq!(im.client.get("r1").await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_child_is_reported_with_its_signal() {
    let im = start_im(python(), free_range(20), Duration::from_secs(5)).await;
    let i = im.client.start(listener_req("victim", &[])).await.unwrap();
    wait_state(&im.client, "victim", InstanceState::Running).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i.pid as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let dead = wait_state(&im.client, "victim", InstanceState::Error).await;
    assert_eq!(dead.signal, Some(9), "{dead:?}");
    assert_eq!(dead.exit_code, None);
    assert!(dead.message.contains("signal 9"), "{}", dead.message);
    assert_eq!(im.supervisor.ports_in_use(), 0);
    // A failed instance can be started again under the same name.
    im.client.start(listener_req("victim", &[])).await.unwrap();
    wait_state(&im.client, "victim", InstanceState::Running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_exits_is_reported_with_its_code_and_last_line() {
    let im = start_im(PathBuf::from("/bin/sh"), free_range(5), Duration::from_secs(5)).await;
    let req = StartRequest {
        name: "quitter".into(),
        kind: InstanceKind::Engine as i32,
        args: vec!["-c".into(), "echo about to fail; sleep 0.3; echo cannot open replica >&2; exit 3".into()],
        port_count: 0,
        probe_host: String::new(),
        requested_ports: vec![],
    };
    let started = im.client.start(req).await.unwrap();
    assert_eq!(started.state, InstanceState::Running as i32, "no port to probe: running at once");
    let dead = wait_state(&im.client, "quitter", InstanceState::Error).await;
    assert_eq!(dead.exit_code, Some(3));
    assert!(
        dead.message.contains("code 3") && dead.message.contains("cannot open replica"),
        "{}",
        dead.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_sigkill_after_the_grace_period() {
    let im = start_im(python(), free_range(5), Duration::from_millis(700)).await;
    let i = im.client.start(listener_req("stubborn", &["ignore-term"])).await.unwrap();
    wait_state(&im.client, "stubborn", InstanceState::Running).await;
    let t = std::time::Instant::now();
    let stopped = im.client.stop("stubborn").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(600), "SIGKILL came before the grace period");
    assert_eq!(stopped.state, InstanceState::Stopped as i32);
    assert_eq!(stopped.signal, Some(9), "{stopped:?}");
    assert!(!alive(i.pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_child_and_refuses_new_ones() {
    let im = start_im(PathBuf::from("/bin/sleep"), free_range(5), Duration::from_secs(5)).await;
    let mut pids = Vec::new();
    for (name, kind) in
        [("e", InstanceKind::Engine), ("r1", InstanceKind::Replica), ("r2", InstanceKind::Replica)]
    {
        let req = StartRequest {
            name: name.into(),
            kind: kind as i32,
            args: vec!["1000".into()],
            port_count: 0,
            probe_host: String::new(),
            requested_ports: vec![],
        };
        pids.push(im.client.start(req).await.unwrap().pid);
    }
    assert!(pids.iter().all(|p| alive(*p)));
    im.supervisor.shutdown().await;
    assert!(pids.iter().all(|p| !alive(*p)), "children left after shutdown");
    assert!(im.client.list().await.unwrap().iter().all(|i| i.state == InstanceState::Stopped as i32));
    let req = StartRequest {
        name: "late".into(),
        kind: 1,
        args: vec!["1".into()],
        port_count: 0,
        probe_host: String::new(),
        requested_ports: vec![],
    };
    assert_eq!(im.client.start(req).await.unwrap_err().kind(), ErrorKind::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_kind() {
    let im = start_im(python(), free_range(1), Duration::from_secs(5)).await;
    im.client.start(listener_req("one", &[])).await.unwrap();
    assert_eq!(im.client.start(listener_req("one", &[])).await.unwrap_err().kind(), ErrorKind::AlreadyExists);
    assert_eq!(im.client.start(listener_req("two", &[])).await.unwrap_err().kind(), ErrorKind::Exhausted);
    let mut bad = listener_req("three", &[]);
    bad.kind = 0;
    assert_eq!(im.client.start(bad).await.unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        im.client.start(listener_req("a/b", &[])).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(im.client.stop("nope").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(im.client.logs("nope", 1).await.unwrap_err().kind(), ErrorKind::NotFound);
    let info = im.client.info().await.unwrap();
    assert_eq!(info.node, "node-test");
    im.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_that_cannot_be_spawned_is_an_error_state() {
    let im = start_im(PathBuf::from("/nonexistent/corral"), free_range(3), Duration::from_secs(5)).await;
    let err = im.client.start(listener_req("ghost", &[])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    let i = im.client.get("ghost").await.unwrap();
    assert_eq!(i.state, InstanceState::Error as i32);
    assert!(i.message.contains("cannot spawn"), "{}", i.message);
    assert_eq!(im.supervisor.ports_in_use(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_exits_zero_succeeds_and_one_that_fails_is_an_error() {
    let im = start_im(PathBuf::from("/bin/sh"), free_range(5), Duration::from_secs(5)).await;
    let job = |name: &str, script: &str| StartRequest {
        name: name.into(),
        kind: InstanceKind::Job as i32,
        args: vec!["-c".into(), script.into()],
        port_count: 0,
        probe_host: String::new(),
        requested_ports: vec![],
    };
    let started = im.client.start(job("backup-ok", "echo progress: 50; sleep 0.2; echo done")).await.unwrap();
    assert_eq!(started.kind, InstanceKind::Job as i32);
    let done = wait_state(&im.client, "backup-ok", InstanceState::Succeeded).await;
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(im.client.logs("backup-ok", 0).await.unwrap(), ["progress: 50", "done"]);
    im.client.start(job("backup-bad", "echo block missing >&2; exit 2")).await.unwrap();
    let failed = wait_state(&im.client, "backup-bad", InstanceState::Error).await;
    assert_eq!(failed.exit_code, Some(2));
    assert!(failed.message.contains("block missing"), "{}", failed.message);
    // An engine or replica that exits 0 on its own is still a failure: only jobs succeed.
    let mut engine = job("engine-quits", "exit 0");
    engine.kind = InstanceKind::Engine as i32;
    im.client.start(engine).await.unwrap();
    wait_state(&im.client, "engine-quits", InstanceState::Error).await;
    // A finished job may be started again under its name (a retried backup).
    im.client.start(job("backup-ok", "exit 0")).await.unwrap();
    wait_state(&im.client, "backup-ok", InstanceState::Succeeded).await;
    im.supervisor.shutdown().await;
}
