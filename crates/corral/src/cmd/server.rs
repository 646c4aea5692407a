//! `corral server`: everything one node runs, in one process, joined to its cluster through the
//! store: the manager (REST API), the instance manager (engine and replica processes) and a default
//! disk under the data directory. `corral quickstart` is this same code on the embedded store.
//!
//! Start, in an order that changes nothing until the node may run: the `--store` URL is parsed
//! (a bad one is refused before anything is touched), the store is reached (an unreachable one is
//! an error naming it), the node's lease `node/<name>` is taken (held by a running node of the same
//! name: refused, naming the holder), then the instance manager and the manager start.
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use corral_store::{Datastore, EtcdStore, Leases, LocalLeases, RedbStore, Store};

use super::control::{parse_port_range, start_instance_manager, stop_signal};

/// Cluster name (etcd key prefix `/corral/<cluster>/`) unless `--cluster` says otherwise.
const DEFAULT_CLUSTER: &str = "default";

#[derive(clap::Args)]
pub struct ServerArgs {
    /// This node's name (unique in the cluster).
    #[arg(long)]
    node: String,
    /// This node's address: the API, the instance manager, engines and replicas listen on it.
    #[arg(long)]
    address: IpAddr,
    /// The cluster's store: etcd://HOST:PORT[,HOST:PORT…], or `embedded` (redb under the data
    /// directory; one node only).
    #[arg(long)]
    store: String,
    /// Where this node keeps its data (the default disk is DATA_DIR/disks/default).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address of the REST API (default: ADDRESS:9500).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Ports handed to engines and replicas (and the instance manager's, unless --im-listen), as A-B.
    #[arg(long, default_value = "10000-30000", value_parser = parse_port_range)]
    port_range: std::ops::RangeInclusive<u16>,
    /// Address of the instance manager's gRPC API (default: ADDRESS and the last free port of
    /// the range).
    #[arg(long)]
    im_listen: Option<SocketAddr>,
    /// Seconds the node's lease lives without renewal (default: the `node-lease-ttl` setting).
    #[arg(long)]
    node_lease_ttl: Option<u64>,
    /// Name of the cluster in the store (several clusters can share one etcd).
    #[arg(long, default_value = DEFAULT_CLUSTER)]
    cluster: String,
}

/// Where a node keeps its state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StoreUrl {
    /// redb under the data directory.
    Embedded,
    /// An etcd cluster.
    Etcd(String),
}

impl StoreUrl {
    pub(crate) fn parse(s: &str) -> anyhow::Result<StoreUrl> {
        if s == "embedded" {
            return Ok(StoreUrl::Embedded);
        }
        if s.starts_with("etcd://") {
            corral_store::parse_etcd_url(s).with_context(|| format!("bad --store {s:?}"))?;
            return Ok(StoreUrl::Etcd(s.to_string()));
        }
        bail!("bad --store {s:?}: expected etcd://HOST:PORT[,HOST:PORT...] or embedded")
    }
}

/// Everything a node needs to start (what `corral server` and `corral quickstart` fill in).
pub(crate) struct NodeOptions {
    pub node: String,
    pub address: IpAddr,
    pub store: StoreUrl,
    pub cluster: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub port_range: std::ops::RangeInclusive<u16>,
    pub im_listen: Option<SocketAddr>,
    pub node_lease_ttl: Option<Duration>,
    /// Settings stored when not set yet.
    pub initial_settings: Vec<(String, String)>,
    /// Backup target set when none is.
    pub initial_backup_target: Option<String>,
}

/// A running node.
pub(crate) struct RunningNode {
    pub manager: corral_manager::Manager,
    pub im_url: String,
    supervisor: corral_im::Supervisor,
    im_stop: tokio::sync::oneshot::Sender<()>,
    im_server: tokio::task::JoinHandle<()>,
}

impl RunningNode {
    /// Stops the manager (its leases are given up), then the engines and replicas, then the
    /// instance manager's API.
    pub(crate) async fn stop(self) {
        self.manager.shutdown().await;
        self.supervisor.shutdown().await;
        let _ = self.im_stop.send(());
        let _ = self.im_server.await;
    }
}

async fn open_store(o: &NodeOptions) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Leases>)> {
    match &o.store {
        StoreUrl::Embedded => {
            std::fs::create_dir_all(&o.data_dir)
                .with_context(|| format!("cannot create {}", o.data_dir.display()))?;
            let path = o.data_dir.join("corral.redb");
            let store: Arc<dyn Store> = Arc::new(
                RedbStore::open(&path)
                    .with_context(|| format!("cannot open the datastore {}", path.display()))?,
            );
            let leases: Arc<dyn Leases> = Arc::new(LocalLeases::new(store.clone()));
            Ok((store, leases))
        }
        StoreUrl::Etcd(url) => {
            let etcd = EtcdStore::connect(url, &o.cluster)
                .await
                .with_context(|| format!("cannot reach the store {url}"))?;
            Ok((Arc::new(etcd.clone()), Arc::new(etcd)))
        }
    }
}

/// The node lease's TTL: the flag, else the cluster's setting, else the default.
async fn lease_ttl(o: &NodeOptions, store: &Arc<dyn Store>) -> anyhow::Result<Duration> {
    if let Some(ttl) = o.node_lease_ttl {
        return Ok(ttl);
    }
    use corral_manager::model::settings::{definition, validate, NODE_LEASE_TTL};
    let ds = Datastore::new(store.clone());
    let stored = ds
        .try_get::<corral_store::resources::Setting>(NODE_LEASE_TTL)
        .await
        .context("cannot read the node-lease-ttl setting")?;
    let value = match stored {
        Some(s) => validate(definition(NODE_LEASE_TTL)?, &s.spec.value)?,
        None => definition(NODE_LEASE_TTL)?.default.to_string(),
    };
    Ok(Duration::from_secs(value.parse().context("bad node-lease-ttl setting")?))
}

/// The instance manager's listener: `--im-listen`, else the last port of the range free on the
/// node's address (it is then left out of the range handed to instances).
async fn im_listener(
    o: &NodeOptions,
) -> anyhow::Result<(tokio::net::TcpListener, std::ops::RangeInclusive<u16>)> {
    if let Some(at) = o.im_listen {
        let l = tokio::net::TcpListener::bind(at).await.with_context(|| format!("cannot listen on {at}"))?;
        return Ok((l, o.port_range.clone()));
    }
    let (first, last) = (*o.port_range.start(), *o.port_range.end());
    for port in (first..=last).rev().take(100) {
        if let Ok(l) = tokio::net::TcpListener::bind(SocketAddr::new(o.address, port)).await {
            if port == first {
                bail!("port range {first}-{last} leaves no port for instances");
            }
            return Ok((l, first..=port - 1));
        }
    }
    bail!("no free port for the instance manager at the end of {first}-{last} on {}", o.address)
}

/// Starts a node: store, node lease, instance manager, manager (see the module doc for the order).
pub(crate) async fn start_node(o: NodeOptions) -> anyhow::Result<RunningNode> {
    let (store, leases) = open_store(&o).await?;
    let ttl = lease_ttl(&o, &store).await?;
    let claim = corral_manager::cluster::node_lease_name(&o.node);
    let holder = format!("{} at {} (pid {})", o.node, o.address, std::process::id());
    let Some(node_lease) =
        leases.acquire_lease(&claim, &holder, ttl).await.context("cannot take the node lease")?
    else {
        let by = leases.lease_holder(&claim).await.ok().flatten().unwrap_or_else(|| "another process".into());
        bail!("node {:?} is running already: its node lease is held by {by}", o.node);
    };
    std::fs::create_dir_all(&o.data_dir)
        .with_context(|| format!("cannot create {}", o.data_dir.display()))?;
    let (listener, instance_ports) = im_listener(&o).await?;
    let (supervisor, im_url, im_stop, im_server) =
        start_instance_manager(&o.node, listener, instance_ports, None, 10).await?;
    let mut config = corral_manager::ManagerConfig::new(o.node.clone(), im_url.clone());
    config.listen = o.listen;
    config.node_address = o.address.to_string();
    config.default_disk = Some(o.data_dir.join("disks/default"));
    config.initial_settings = o.initial_settings;
    config.initial_backup_target = o.initial_backup_target;
    let membership = corral_manager::ClusterMembership { leases, node_lease, holder };
    let manager = match corral_manager::Manager::start_in_cluster(config, store, membership).await {
        Ok(m) => m,
        Err(e) => {
            supervisor.shutdown().await;
            let _ = im_stop.send(());
            return Err(anyhow::Error::new(e).context("cannot start the manager"));
        }
    };
    Ok(RunningNode { manager, im_url, supervisor, im_stop, im_server })
}

/// `corral server`.
pub async fn server(a: ServerArgs) -> anyhow::Result<ExitCode> {
    let store = StoreUrl::parse(&a.store)?;
    let stopped = stop_signal()?;
    let options = NodeOptions {
        listen: a.listen.unwrap_or(SocketAddr::new(a.address, 9500)),
        node: a.node,
        address: a.address,
        store,
        cluster: a.cluster,
        data_dir: a.data_dir,
        port_range: a.port_range,
        im_listen: a.im_listen,
        node_lease_ttl: a.node_lease_ttl.map(Duration::from_secs),
        initial_settings: Vec::new(),
        initial_backup_target: None,
    };
    let node = options.node.clone();
    let running = start_node(options).await?;
    println!("corral server of node {node} serving http://{}", running.manager.local_addr());
    stopped.await;
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::StoreUrl;

    #[test]
    fn store_urls() {
        assert_eq!(StoreUrl::parse("embedded").unwrap(), StoreUrl::Embedded);
        assert_eq!(
            StoreUrl::parse("etcd://127.0.0.1:2379,10.0.0.1:2379").unwrap(),
            StoreUrl::Etcd("etcd://127.0.0.1:2379,10.0.0.1:2379".into())
        );
        for bad in ["", "redb", "etcd://", "http://127.0.0.1:2379", "etcd://host"] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
