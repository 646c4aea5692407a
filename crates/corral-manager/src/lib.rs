//! corral-manager: Corral's control plane — the REST API, the scheduler and the reconcilers.
//!
//! A manager runs on each node. It keeps desired state in a [`corral_store::Store`] (embedded redb
//! by default), serves the REST API (axum; OpenAPI at `/v1/openapi.json`, also in
//! `docs/openapi.json`), and runs level-triggered reconcilers that drive the node's instance manager
//! (gRPC, `corral-im`) and the engines' control APIs toward that state: replicas placed by the
//! [`model::scheduler`] and served by `corral replica serve`, an engine (`corral engine serve`) on the
//! attach node exposing the volume over NBD, failed replicas restarted and rebuilt or replaced.
//! The web UI ([`ui`]) is served at `/`, its live updates from `/v1/watch`. Prometheus metrics are
//! served at `/metrics` ([`api`]), events are kept in the store (the newest
//! 1000, [`events`]) and snapshots are mirrored into it ([`ops::snapshots`]).
//!
//! # Layout
//! Layers point one way: [`api`] (HTTP only) and [`reconcile`] (one module per resource) both
//! stand on [`ops`] (operations they share), [`clients`] (engines, instance manager, backup store,
//! disks) and [`model`] (pure rules), and never import each other. This file only wires them.
//!
//! # Threading
//! Tokio. The API serves requests concurrently; one reconcile loop per manager runs passes one at
//! a time (woken by store changes, instance events and a periodic resync), so reconcile steps never
//! race each other; API writes and reconciler writes are ordered by the store's version check.
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use corral_manager::{Manager, ManagerConfig};
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(corral_store::RedbStore::open("/var/lib/corral/corral.redb".as_ref())?);
//! let mut config = ManagerConfig::new("node-1", "http://127.0.0.1:9501");
//! config.listen = "127.0.0.1:9500".parse()?;
//! let manager = Manager::start(config, store).await?;
//! println!("API on http://{}", manager.local_addr());
//! manager.shutdown().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod clients;
pub mod cluster;
mod error;
pub mod events;
pub mod model;
pub mod ops;
pub mod reconcile;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use corral_store::{Datastore, LocalLeases, Store};

pub use cluster::ClusterMembership;
pub use error::{Code, ErrorBody, ManagerError, Result};

/// How a manager runs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// This node's name.
    pub node: String,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// The node's instance manager (`http://host:port`).
    pub instance_manager_url: String,
    /// Host the node's replicas and engines listen on.
    pub node_address: String,
    /// Disk registered when the node registers for the first time.
    pub default_disk: Option<PathBuf>,
    /// Settings stored if not set yet (quickstart turns soft anti-affinity on this way).
    pub initial_settings: Vec<(String, String)>,
    /// Backup target set if none is set yet.
    pub initial_backup_target: Option<String>,
    /// Longest time between two reconcile passes.
    pub resync: Duration,
}

impl ManagerConfig {
    pub fn new(node: impl Into<String>, instance_manager_url: impl Into<String>) -> Self {
        ManagerConfig {
            node: node.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9500)),
            instance_manager_url: instance_manager_url.into(),
            node_address: "127.0.0.1".into(),
            default_disk: None,
            initial_settings: Vec::new(),
            initial_backup_target: None,
            resync: Duration::from_secs(3),
        }
    }
}

/// A running manager: API server and reconcile loop.
pub struct Manager {
    local_addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    api: tokio::task::JoinHandle<()>,
    reconciler: tokio::task::JoinHandle<()>,
    liveness: tokio::task::JoinHandle<()>,
    claims: Arc<cluster::Claims>,
    ds: Datastore,
    events: Arc<events::EventLog>,
}

impl Manager {
    /// Bind the API, register the node, start reconciling, on a store only this process uses
    /// (its leases are [`LocalLeases`]: this manager is the leader of a one-node cluster).
    pub async fn start(config: ManagerConfig, store: Arc<dyn Store>) -> Result<Manager> {
        let leases = Arc::new(LocalLeases::new(store.clone()));
        let claim = cluster::node_lease_name(&config.node);
        let node_lease = corral_store::Leases::acquire_lease(
            leases.as_ref(),
            &claim,
            &config.node,
            cluster::DEFAULT_LEASE_TTL,
        )
        .await?
        .ok_or_else(|| {
            ManagerError::new(Code::AlreadyExists, format!("node {} runs already", config.node))
        })?;
        let membership = ClusterMembership { leases, node_lease, holder: config.node.clone() };
        Manager::start_in_cluster(config, store, membership).await
    }

    /// Bind the API, register the node, start reconciling, as a member of the cluster whose
    /// store is `store`: its node lease taken already, its leases those of that store.
    pub async fn start_in_cluster(
        config: ManagerConfig,
        store: Arc<dyn Store>,
        membership: ClusterMembership,
    ) -> Result<Manager> {
        let claims = Arc::new(cluster::Claims::new(&config.node, membership));
        let ds = Datastore::new(store);
        for (name, value) in &config.initial_settings {
            model::settings::set_if_absent(&ds, name, value).await?;
        }
        if let Some(url) = &config.initial_backup_target {
            use corral_store::resources::{BackupTarget, BackupTargetSpec};
            if ds.try_get::<BackupTarget>("default").await?.is_none() {
                let t =
                    BackupTarget::new("default", BackupTargetSpec { url: url.clone(), poll_interval: 300 });
                match ds.create(&t).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == corral_store::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let im = corral_im::ImClient::new(&config.instance_manager_url)?;
        let events = Arc::new(events::EventLog::persistent(ds.clone(), events::DEFAULT_CAPACITY).await?);
        let wake = Arc::new(tokio::sync::Notify::new());
        let stats = Arc::new(ops::stats::ManagerStats::default());
        let rec = reconcile::Reconciler {
            ds: ds.clone(),
            im,
            node: config.node.clone(),
            node_address: config.node_address.clone(),
            events: events.clone(),
            wake: wake.clone(),
            restarts: Arc::default(),
            stats: stats.clone(),
            volume_cache: Arc::default(),
            claims: claims.clone(),
        };
        // Register the node before serving, so the first API request can attach and schedule.
        rec.reconcile_node(config.default_disk.as_deref(), &config.instance_manager_url).await?;
        // One pass before serving: after a restart the stored status still describes the
        // processes of the previous run; nobody may read "attached" before it was checked.
        if let Err(e) = rec.pass().await {
            tracing::warn!(error = %e, "first reconcile pass failed");
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| {
            ManagerError::new(Code::Unavailable, format!("cannot listen on {}: {e}", config.listen))
        })?;
        let local_addr =
            listener.local_addr().map_err(|e| ManagerError::new(Code::Internal, e.to_string()))?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let state =
            api::AppState { ds: ds.clone(), events: events.clone(), node: config.node.clone(), wake, stats };
        let mut api_stop = stop_rx.clone();
        let api = tokio::spawn(async move {
            let serve = axum::serve(listener, api::router(state).merge(ui::router())).with_graceful_shutdown(
                async move {
                    let _ = api_stop.wait_for(|s| *s).await;
                },
            );
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "API server failed");
            }
        });
        let liveness = tokio::spawn(reconcile::liveness::run(rec.clone(), stop_rx.clone()));
        let reconciler = tokio::spawn(reconcile::run(
            rec,
            config.default_disk.clone(),
            config.instance_manager_url.clone(),
            config.resync,
            stop_rx,
        ));
        Ok(Manager { local_addr, stop, api, reconciler, liveness, claims, ds, events })
    }

    /// Where the API listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The typed datastore (for tests and embedding).
    pub fn datastore(&self) -> &Datastore {
        &self.ds
    }

    /// Stop serving and reconciling (processes keep running: stopping them is the instance
    /// manager's job, so a manager restart does not disturb volumes).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.reconciler.await;
        let _ = self.liveness.await;
        let _ = self.api.await;
        self.claims.release().await;
        self.events.flush().await;
    }
}
