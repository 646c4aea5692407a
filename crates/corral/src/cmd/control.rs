//! The control plane's subcommands: the daemons (`server`, `manager`, `instance-manager`,
//! `quickstart`; `server` and `quickstart` run one node, see [`super::server`]) and
//! the API client commands (`volume`, `snapshot`, `node`, `disk`, `job`, `setting`; see
//! `control/api_commands.rs`). The daemons run in the foreground and stop cleanly on SIGINT/SIGTERM.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};

mod api_commands;

pub use api_commands::{
    DiskCommand, JobCommand, NodeCommand, SettingCommand, SnapshotCommand, VolumeCommand,
};

#[derive(clap::Subcommand)]
pub enum ControlCommand {
    /// Run one node of a cluster (foreground): manager, instance manager and a default disk,
    /// joined to the cluster through its store (etcd, or embedded for a single node).
    Server(super::server::ServerArgs),
    /// Run the manager of one node: REST API, scheduler and reconcilers (foreground).
    Manager(ManagerArgs),
    /// Run the instance manager of one node: it starts and supervises engine and replica processes (foreground).
    InstanceManager(InstanceManagerArgs),
    /// Bring up a complete single-node cluster in the foreground: manager, instance manager,
    /// embedded store, a default disk and a local backup target under the data directory.
    Quickstart(QuickstartArgs),
    /// Create, list, inspect, attach, detach, expand and delete volumes (through the API).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Create, list, delete and revert snapshots of a volume (through the API).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// List nodes (through the API).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Add and remove disks of a node (through the API).
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Create, list and delete recurring snapshot/backup jobs (through the API).
    #[command(subcommand)]
    Job(JobCommand),
    /// Read and change settings (through the API).
    #[command(subcommand)]
    Setting(SettingCommand),
}

#[derive(clap::Args)]
pub struct ManagerArgs {
    /// This node's name.
    #[arg(long)]
    node: String,
    /// Address of the REST API.
    #[arg(long, default_value = "127.0.0.1:9500")]
    listen: SocketAddr,
    /// Directory of the embedded datastore (and of the default disk, unless --default-disk).
    #[arg(long)]
    data_dir: PathBuf,
    /// This node's instance manager.
    #[arg(long, default_value = "http://127.0.0.1:9501")]
    instance_manager: String,
    /// Address this node's replicas and engines listen on.
    #[arg(long, default_value = "127.0.0.1")]
    node_address: String,
    /// Disk registered when the node first registers (default: DATA_DIR/disks/default).
    #[arg(long)]
    default_disk: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct InstanceManagerArgs {
    /// This node's name.
    #[arg(long)]
    node: String,
    /// Address of the gRPC API.
    #[arg(long, default_value = "127.0.0.1:9501")]
    listen: SocketAddr,
    /// Ports handed to engines and replicas, as A-B.
    #[arg(long, default_value = "10000-30000", value_parser = parse_port_range)]
    port_range: std::ops::RangeInclusive<u16>,
    /// The program run for instances (default: this executable).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when stopping an instance.
    #[arg(long, default_value_t = 10)]
    stop_grace: u64,
}

#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Where everything is kept (default: $XDG_DATA_HOME/corral or ~/.local/share/corral).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the REST API.
    #[arg(long, default_value = "127.0.0.1:9500")]
    listen: SocketAddr,
    /// Ports handed to engines and replicas, as A-B.
    #[arg(long, default_value = "10000-30000", value_parser = parse_port_range)]
    port_range: std::ops::RangeInclusive<u16>,
    /// This node's name.
    #[arg(long, default_value = "local")]
    node: String,
}

pub(crate) fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("expected A-B, got {s:?}"))?;
    let a: u16 = a.trim().parse().map_err(|_| format!("bad port {a:?}"))?;
    let b: u16 = b.trim().parse().map_err(|_| format!("bad port {b:?}"))?;
    if a == 0 || a > b {
        return Err(format!("bad port range {s:?}: need 0 < A <= B"));
    }
    Ok(a..=b)
}

pub fn run(command: ControlCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        match command {
            ControlCommand::Server(a) => super::server::server(a).await,
            ControlCommand::Manager(a) => manager(a).await,
            ControlCommand::InstanceManager(a) => instance_manager(a).await,
            ControlCommand::Quickstart(a) => quickstart(a).await,
            ControlCommand::Volume(c) => api_commands::volume(c).await,
            ControlCommand::Snapshot(c) => api_commands::snapshot(c).await,
            ControlCommand::Node(c) => api_commands::node(c).await,
            ControlCommand::Disk(c) => api_commands::disk(c).await,
            ControlCommand::Job(c) => api_commands::job(c).await,
            ControlCommand::Setting(c) => api_commands::setting(c).await,
        }
    })
}

/// Installs SIGINT/SIGTERM handlers now (before the ready message is printed, so an early signal
/// is not lost to the default action) and returns a future that resolves on the first of them.
pub(crate) fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

fn open_store(data_dir: &Path) -> anyhow::Result<Arc<corral_store::RedbStore>> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let path = data_dir.join("corral.redb");
    Ok(Arc::new(
        corral_store::RedbStore::open(&path)
            .with_context(|| format!("cannot open the datastore {}", path.display()))?,
    ))
}

async fn manager(a: ManagerArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&a.data_dir)?;
    let mut config = corral_manager::ManagerConfig::new(a.node.clone(), a.instance_manager.clone());
    config.listen = a.listen;
    config.node_address = a.node_address;
    config.default_disk = Some(a.default_disk.unwrap_or_else(|| a.data_dir.join("disks/default")));
    let stopped = stop_signal()?;
    let m = corral_manager::Manager::start(config, store).await.context("cannot start the manager")?;
    println!("corral manager of node {} serving http://{}", a.node, m.local_addr());
    stopped.await;
    m.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn start_instance_manager(
    node: &str,
    listener: tokio::net::TcpListener,
    port_range: std::ops::RangeInclusive<u16>,
    binary: Option<PathBuf>,
    stop_grace: u64,
) -> anyhow::Result<(
    corral_im::Supervisor,
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    let mut cfg = corral_im::SupervisorConfig::new(node);
    cfg.port_range = port_range;
    cfg.stop_grace = std::time::Duration::from_secs(stop_grace);
    if let Some(b) = binary {
        cfg.binary = b;
    }
    let supervisor = corral_im::Supervisor::new(cfg)?;
    let url = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let sup = supervisor.clone();
    let server = tokio::spawn(async move {
        if let Err(e) = corral_im::serve(listener, sup, async {
            let _ = rx.await;
        })
        .await
        {
            tracing::error!(error = %e, "instance manager API failed");
        }
    });
    Ok((supervisor, url, tx, server))
}

async fn instance_manager(a: InstanceManagerArgs) -> anyhow::Result<ExitCode> {
    let stopped = stop_signal()?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let (supervisor, url, stop, server) =
        start_instance_manager(&a.node, listener, a.port_range, a.binary, a.stop_grace).await?;
    println!("corral instance manager of node {} serving {url}", a.node);
    stopped.await;
    // Children first (engines, then replicas), then the API.
    supervisor.shutdown().await;
    let _ = stop.send(());
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("corral"));
    }
    match std::env::var_os("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/corral")),
        None => bail!("no --data-dir given and neither XDG_DATA_HOME nor HOME is set"),
    }
}

async fn quickstart(a: QuickstartArgs) -> anyhow::Result<ExitCode> {
    let data_dir = match a.data_dir {
        Some(d) => d,
        None => default_data_dir()?,
    };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let data_dir =
        data_dir.canonicalize().with_context(|| format!("cannot resolve {}", data_dir.display()))?;
    let stopped = stop_signal()?;
    let backups = data_dir.join("backups");
    std::fs::create_dir_all(&backups).with_context(|| format!("cannot create {}", backups.display()))?;
    // The same node as `corral server`, on the embedded store.
    let options = super::server::NodeOptions {
        node: a.node.clone(),
        address: a.listen.ip(),
        store: super::server::StoreUrl::Embedded,
        cluster: "default".into(),
        data_dir: data_dir.clone(),
        listen: a.listen,
        port_range: a.port_range,
        im_listen: Some(SocketAddr::new(a.listen.ip(), 0)),
        node_lease_ttl: None,
        // One node: let several replicas of a volume share it.
        initial_settings: vec![("replica-soft-anti-affinity".into(), "true".into())],
        initial_backup_target: Some(format!("file://{}", backups.display())),
    };
    let node = super::server::start_node(options).await?;
    let im_url = node.im_url.clone();
    let m = &node.manager;
    let url = format!("http://{}", m.local_addr());
    println!("Corral is running (single node {:?}, data in {}).", a.node, data_dir.display());
    println!("  API:              {url}   (OpenAPI: {url}/v1/openapi.json)");
    println!("  instance manager: {im_url}");
    println!("  backup target:    file://{}", backups.display());
    println!();
    println!("Next, in another terminal:");
    let flag = if url == "http://127.0.0.1:9500" { String::new() } else { format!(" --url {url}") };
    println!("  corral volume create demo --size 1GiB --replicas 3 --wait{flag}");
    println!("  corral volume attach demo --wait{flag}        # prints the NBD endpoint");
    println!("  qemu-io -f raw -c 'write -P 0xab 0 1M' nbd://127.0.0.1:PORT");
    println!("  corral volume ls{flag}");
    println!();
    println!("Press Ctrl-C to stop (volumes come back when you start it again on the same --data-dir).");
    stopped.await;
    println!("Stopping: manager, then engines and replicas...");
    node.stop().await;
    println!("Stopped.");
    Ok(ExitCode::SUCCESS)
}
