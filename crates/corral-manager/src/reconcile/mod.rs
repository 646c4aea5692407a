//! Level-triggered reconcilers. One loop runs a pass over every resource whenever something may have
//! changed (a store change, an instance-manager event, an API call) and at least every few seconds;
//! each pass compares desired state (specs in the store) with actual state (the instance manager's
//! processes, the engines' control APIs, the disks) and takes the next step toward the former.
//! Every step is idempotent and recorded in the store *before* the action it leads to (a replica
//! record exists before its process is started, under a deterministic instance name), so a manager
//! killed at any point converges after a restart without duplicates or leaks.
use std::sync::Arc;
use std::time::Duration;

use corral_store::Datastore;
use futures::StreamExt;

use crate::clients::instance_manager::ImClient;
use crate::error::Result;
use crate::events::EventLog;
use crate::ops::stats::ManagerStats;

mod backup;
mod jobs;
pub(crate) mod liveness;
mod node;
mod restore;
mod volume;

pub use backup::backup_job_name;
pub use restore::restore_job_name;
pub use volume::{engine_instance_name, replica_instance_name};

/// What the reconcilers of one manager need.
#[derive(Clone)]
pub struct Reconciler {
    pub(crate) ds: Datastore,
    pub(crate) im: ImClient,
    pub(crate) node: String,
    /// Host replicas and engines of this node listen on.
    pub(crate) node_address: String,
    pub(crate) events: Arc<EventLog>,
    pub(crate) wake: Arc<tokio::sync::Notify>,
    pub(crate) restarts: Arc<parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
    /// Pass counters for `/metrics`.
    pub(crate) stats: Arc<ManagerStats>,
    /// What the volume reconciler remembers of each attached volume between passes.
    pub(crate) volume_cache: Arc<parking_lot::Mutex<std::collections::HashMap<String, volume::VolumeCache>>>,
    /// This node's lease and the leader claim (see [`crate::cluster`]).
    pub(crate) claims: Arc<crate::cluster::Claims>,
}

impl Reconciler {
    /// One pass over every volume, then the backups, then (on the leader) the recurring jobs
    /// that are due.
    pub(crate) async fn pass(&self) -> Result<()> {
        let leader = self.claims.leader().await;
        volume::pass(self, leader.clone()).await?;
        if let Err(e) = backup::pass(self).await {
            tracing::warn!(error = %e, "backup pass failed");
        }
        if leader.is_none() {
            return Ok(());
        }
        let volumes: Vec<corral_store::resources::Volume> = self.ds.list().await?;
        jobs::run_due_jobs(self, &volumes).await
    }
}

/// Run the reconcile loop until `shutdown` fires.
pub(crate) async fn run(
    rec: Reconciler,
    default_disk: Option<std::path::PathBuf>,
    im_url: String,
    resync: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // Store changes and instance events wake the loop; the loop itself reads everything fresh.
    let store_watch = rec.ds.watch_raw(None).await;
    let wake = rec.wake.clone();
    let watcher = tokio::spawn(async move {
        if let Ok(mut s) = store_watch {
            while let Some(ev) = s.next().await {
                // Events explain changes; they are not changes to reconcile.
                if ev.is_ok_and(|e| e.record().kind == corral_store::Kind::Event) {
                    continue;
                }
                wake.notify_one();
            }
        }
    });
    let im = rec.im.clone();
    let wake = rec.wake.clone();
    let im_watcher = tokio::spawn(async move {
        loop {
            if let Ok(mut s) = im.watch().await {
                while let Some(Ok(_)) = s.next().await {
                    wake.notify_one();
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    loop {
        if *shutdown.borrow() {
            break;
        }
        if let Err(e) = rec.reconcile_node(default_disk.as_deref(), &im_url).await {
            rec.events.warning("node", &rec.node, "ReconcileFailed", e.to_string());
        }
        let started = std::time::Instant::now();
        if let Err(e) = rec.pass().await {
            tracing::warn!(error = %e, "reconcile pass failed");
        }
        rec.stats.pass_done(started.elapsed());
        tokio::select! {
            () = rec.wake.notified() => {
                // Let a burst of changes settle into one pass.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            () = tokio::time::sleep(resync) => {}
            _ = shutdown.changed() => {}
        }
    }
    watcher.abort();
    im_watcher.abort();
}
