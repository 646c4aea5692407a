//! corral-csi: Corral's Container Storage Interface driver, `driver.corral.io`.
//!
//! One process serves the three CSI services on one unix socket: Identity ([`identity`]),
//! Controller ([`controller`], [`snapshots`]) and Node ([`node`]). The controller is a client of the
//! manager's REST API through [`corral_api::ApiClient`] and keeps no state of its own; the node
//! turns an attached volume's NBD endpoint into a block device ([`device`]: `nbdfuse` exposes the
//! export as a file, a loop device makes it a block device, as this project's nodes have no kernel
//! NBD driver), formats it only when blank, mounts it ([`mounts`]) and records what it did under
//! its state directory ([`state`]) so a restarted plugin finds its staged volumes again.
//!
//! Threading model: the services run on the caller's tokio runtime; calls on different volumes run
//! concurrently, and a second call on a volume while one is in flight fails with `Aborted` (the
//! spec's answer, the CO retries). Commands (`mkfs`, `mount`, `losetup`, …) run as child
//! processes through `tokio::process`.
//!
//! Names and IDs: see [`names`]. Errors: [`CsiError`], a gRPC code the spec names plus a message.
//!
//! # Example
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = corral_csi::DriverConfig {
//!     node_id: "node-1".into(),
//!     manager_url: "http://127.0.0.1:9500".into(),
//!     state_dir: "/var/lib/corral-csi".into(),
//! };
//! let listener = tokio::net::UnixListener::bind("/run/csi/csi.sock")?;
//! corral_csi::serve(listener, config, std::future::pending()).await?;
//! # Ok(()) }
//! ```
use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use corral_api::ApiClient;

pub mod controller;
pub mod device;
mod error;
pub mod identity;
pub mod mounts;
pub mod names;
pub mod node;
pub mod snapshots;
pub mod state;
mod volume_args;

pub use error::{CsiError, Result};

/// The CSI v1 protobuf types, servers and clients, generated from `proto/csi.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

/// The driver's name, as the CO knows it (CSIDriver object, StorageClass provisioner).
pub const DRIVER_NAME: &str = "driver.corral.io";

/// The topology key naming the node a volume is reachable from.
pub const TOPOLOGY_NODE_KEY: &str = "topology.corral.io/node";

/// Volume sizes are multiples of this (the manager's granularity).
pub const SIZE_GRANULARITY: u64 = 2 * 1024 * 1024;

/// What a driver process needs to know.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// This node's name, as the manager knows it (a Corral node name).
    pub node_id: String,
    /// The manager's base URL.
    pub manager_url: String,
    /// Where the node service keeps its per-volume state and FUSE mount points.
    pub state_dir: PathBuf,
}

/// What the three services share.
#[derive(Clone)]
pub struct Driver {
    pub(crate) config: Arc<DriverConfig>,
    pub(crate) api: ApiClient,
    busy: Arc<Mutex<HashSet<String>>>,
}

/// A volume's in-flight marker; dropping it lets the next call on the volume in.
pub(crate) struct VolumeGuard {
    busy: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        if let Ok(mut set) = self.busy.lock() {
            set.remove(&self.key);
        }
    }
}

impl Driver {
    pub fn new(config: DriverConfig) -> Driver {
        let api = ApiClient::new(&config.manager_url);
        Driver { config: Arc::new(config), api, busy: Arc::default() }
    }

    /// Mark `key` (a volume ID or a snapshot name) in flight, or fail with `Aborted` when another
    /// call holds it.
    pub(crate) fn lock(&self, key: &str) -> Result<VolumeGuard> {
        let mut set = self.busy.lock().map_err(|_| CsiError::internal("volume lock poisoned"))?;
        if !set.insert(key.to_string()) {
            return Err(CsiError::new(
                tonic::Code::Aborted,
                format!("an operation on {key:?} is already in progress; retry when it finished"),
            ));
        }
        Ok(VolumeGuard { busy: self.busy.clone(), key: key.to_string() })
    }
}

/// Serve Identity, Controller and Node on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::UnixListener,
    config: DriverConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        CsiError::io(format!("cannot create the state directory {}", config.state_dir.display()), e)
    })?;
    let driver = Driver::new(config);
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(proto::identity_server::IdentityServer::new(driver.clone()))
        .add_service(proto::controller_server::ControllerServer::new(driver.clone()))
        .add_service(proto::node_server::NodeServer::new(driver))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| CsiError::internal(format!("the gRPC server failed: {e}")).with_source(e))
}

/// A gRPC channel to a CSI plugin listening on the unix socket `path` (for tests and tools).
pub async fn connect(path: &Path) -> Result<tonic::transport::Channel> {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://csi.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .map_err(|e| {
            CsiError::new(tonic::Code::Unavailable, format!("cannot connect to the CSI socket: {e}"))
                .with_source(e)
        })
}
