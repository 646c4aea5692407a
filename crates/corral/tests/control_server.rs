//! `corral server` on one real etcd, several nodes in one machine (127.0.0.1, .2, .3; the
//! network-namespace cluster tests are elsewhere): every node's API shows every node; a node
//! SIGKILLed is `down` within 15 s and ready again when restarted; a second node of the same name,
//! an unreachable store and a `--store` that does not parse are refused with clear errors; and a
//! replica on a node that died is replaced on another node after the replenishment wait, rebuilt
//! over TCP from a healthy replica, with every byte still there.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod control_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use control_support::{endpoint, free_port, free_range, read_pattern, write_pattern, CORRAL};
use corral_testkit::etcd::EtcdCluster;
use corral_testkit::process::Process;
use serde_json::{json, Value};

struct Node {
    name: String,
    address: String,
    api: String,
    data_dir: PathBuf,
    ports: String,
    process: Option<Process>,
}

impl Node {
    fn new(name: &str, address: &str, root: &Path) -> Node {
        Node {
            name: name.into(),
            address: address.into(),
            api: format!("{address}:{}", free_port()),
            data_dir: root.join(name),
            ports: free_range(200),
            process: None,
        }
    }

    fn command(&self, store: &str) -> Command {
        let mut cmd = Command::new(CORRAL);
        cmd.args(["server", "--node", &self.name, "--address", &self.address, "--store", store])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.api, "--port-range", &self.ports, "--node-lease-ttl", "3"]);
        cmd
    }

    fn start(&mut self, store: &str) {
        let (process, line) = Process::start(&self.name, &mut self.command(store));
        assert_eq!(line, format!("corral server of node {} serving http://{}", self.name, self.api));
        self.process = Some(process);
    }

    fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::blocking::Client::new();
        let mut req = client.request(method, format!("{}{path}", self.url()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().unwrap();
        let code = resp.status().as_u16();
        (code, resp.json().unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> Value {
        let (code, v) = self.call(reqwest::Method::GET, path, None);
        assert_eq!(code, 200, "GET {path}: {v}");
        v
    }

    fn node_state(&self, node: &str) -> Value {
        self.get(&format!("/v1/nodes/{node}"))
    }
}

/// Runs `corral server` that must fail; returns its stderr.
fn refused(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "started: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    start.elapsed()
}

#[test]
fn nodes_join_through_etcd_and_a_dead_node_is_down_within_seconds() {
    let etcd = EtcdCluster::start(1);
    let store = etcd.url();
    let root = tempfile::tempdir().unwrap();
    let mut n1 = Node::new("n1", "127.0.0.1", root.path());
    let mut n2 = Node::new("n2", "127.0.0.2", root.path());
    n1.start(&store);
    n2.start(&store);

    // Any node's API answers for the whole cluster.
    for api in [&n1, &n2] {
        let nodes = api.get("/v1/nodes");
        let seen: Vec<(String, String, String)> = nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap().into(),
                    n["address"].as_str().unwrap().into(),
                    n["state"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("n1".into(), "127.0.0.1".into(), "ready".into()),
                ("n2".into(), "127.0.0.2".into(), "ready".into())
            ]
        );
        assert_eq!(nodes[1]["disks"][0]["name"], "default");
    }
    let table = String::from_utf8(
        Command::new(CORRAL).args(["node", "ls", "--url", &n2.url()]).output().unwrap().stdout,
    )
    .unwrap();
    assert!(table.contains("127.0.0.2") && table.contains("ready"), "{table}");

    // A second node called n1 is refused, naming the holder; nothing of it runs.
    let mut twin = Node::new("n1", "127.0.0.3", root.path());
    twin.data_dir = root.path().join("twin");
    let err = refused(twin.command(&store));
    assert!(
        err.contains("node \"n1\" is running already") && err.contains("held by n1 at 127.0.0.1"),
        "{err}"
    );

    // A store that does not answer, and one that does not parse: clear errors, nothing created.
    let dead = format!("etcd://127.0.0.1:{}", free_port());
    let err = refused(twin.command(&dead));
    assert!(err.contains(&format!("cannot reach the store {dead}")), "{err}");
    let err = refused(twin.command("etc://127.0.0.1:2379"));
    assert!(err.contains("bad --store \"etc://127.0.0.1:2379\""), "{err}");
    assert!(!twin.data_dir.exists(), "a refused server created its data directory");

    // SIGKILL n2: down within 15 s, with the reason, on every API.
    n2.process.as_mut().unwrap().kill9();
    let took = wait("n2 down", Duration::from_secs(15), || n1.node_state("n2")["state"] == "down");
    let n2_view = n1.node_state("n2");
    let ready = n2_view["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ready").unwrap();
    assert_eq!((ready["status"].clone(), ready["reason"].clone()), (json!(false), json!("NodeLeaseExpired")));
    assert!(!n2_view["ready"].as_bool().unwrap());
    eprintln!("n2 seen down {took:?} after its SIGKILL (lease TTL 3 s)");

    // Back: it takes its lease again and is ready.
    n2.start(&store);
    wait("n2 ready again", Duration::from_secs(15), || n1.node_state("n2")["state"] == "ready");
}

#[test]
fn a_replica_on_a_dead_node_is_replaced_on_another_and_rebuilt() {
    let etcd = EtcdCluster::start(1);
    let store = etcd.url();
    let root = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .enumerate()
        .map(|(i, a)| Node::new(&format!("n{}", i + 1), a, root.path()))
        .collect();
    for n in &mut nodes {
        n.start(&store);
    }
    let api = &nodes[0];
    // The test machine's disk may be nearly full: a 16 MiB replica fits anyway.
    for (name, value) in
        [("replica-replenishment-wait-interval", "2"), ("storage-minimal-available-percentage", "0")]
    {
        let path = format!("/v1/settings/{name}");
        let (code, v) = api.call(reqwest::Method::PUT, &path, Some(json!({ "value": value })));
        assert_eq!(code, 200, "{v}");
    }
    let (code, v) = api.call(
        reqwest::Method::POST,
        "/v1/volumes",
        Some(json!({"name": "data", "size": 16 << 20, "numberOfReplicas": 2})),
    );
    assert!(code == 200 || code == 201, "{v}");
    let (code, v) = api.call(reqwest::Method::POST, "/v1/volumes/data/attach", Some(json!({"node": "n1"})));
    assert!(code < 300, "{v}");
    let healthy = |v: &Value| v["state"] == "attached" && v["robustness"] == "healthy";
    wait("data attached and healthy", Duration::from_secs(60), || healthy(&api.get("/v1/volumes/data")));
    let v = api.get("/v1/volumes/data");
    let placed: Vec<String> =
        v["replicas"].as_array().unwrap().iter().map(|r| r["node"].as_str().unwrap().to_string()).collect();
    assert_eq!(placed.len(), 2);
    assert_ne!(placed[0], placed[1], "hard node anti-affinity: two replicas on one node");
    let nbd = endpoint(&v);
    assert!(nbd.starts_with("nbd://127.0.0.1:"), "{nbd}");
    write_pattern(&nbd, 0x5a, 0, 4 << 20);

    // Kill a node that holds a replica and is not the attach node.
    let victim = placed.iter().find(|n| *n != "n1").unwrap().clone();
    let spare = ["n2", "n3"].into_iter().find(|n| !placed.iter().any(|p| p == n));
    let index = nodes.iter().position(|n| n.name == victim).unwrap();
    nodes[index].process.as_mut().unwrap().kill9();
    let api = &nodes[0];
    wait("volume degraded", Duration::from_secs(20), || {
        api.get("/v1/volumes/data")["robustness"] == "degraded"
    });
    let v = api.get("/v1/volumes/data");
    let dead = v["replicas"].as_array().unwrap().iter().find(|r| r["node"] == victim.as_str()).unwrap();
    assert_eq!(dead["mode"], "ERR", "{v}");
    // The writes go on to the healthy replica.
    write_pattern(&nbd, 0x6b, 4 << 20, 1 << 20);
    // After the wait, a replacement on the node without a replica, rebuilt: healthy again.
    let took = wait("healthy again", Duration::from_secs(60), || {
        let v = api.get("/v1/volumes/data");
        healthy(&v)
            && v["replicas"].as_array().unwrap().iter().any(|r| {
                spare.is_none_or(|s| r["node"] == s) && r["node"] != victim.as_str() && r["mode"] == "RW"
            })
    });
    eprintln!("replacement rebuilt {took:?} after the volume was degraded");
    read_pattern(&nbd, 0x5a, 0, 4 << 20);
    read_pattern(&nbd, 0x6b, 4 << 20, 1 << 20);
}
