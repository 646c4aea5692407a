//! Level-triggered reconcilers. One loop runs a pass over every resource whenever something may have
//! changed (a store change, an instance-manager event, an API call) and at least every few seconds;
//! each pass compares desired state (specs in the store) with actual state (the instance manager's
//! processes, the engines' control APIs, the disks) and takes the next step toward the former.
//! Every step is idempotent and recorded in the store *before* the action it leads to (a replica
//! record exists before its process is started, under a deterministic instance name), so a manager
//! killed at any point converges after a restart without duplicates or leaks.
use std::sync::Arc;
use std::time::Duration;

use corral_im::ImClient;
use corral_store::resources::{ConditionType, DiskSpec, DiskStatus, Node, NodeSpec};
use corral_store::Datastore;
use futures::StreamExt;

use crate::error::Result;
use crate::events::EventLog;

pub(crate) mod backup;
mod jobs;
mod volume;

pub use backup::{backup_in_progress, backup_job_name, restore_job_name, size_from_backup, PROGRESS_PREFIX};
pub use jobs::JOB_LABEL;

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
    pub(crate) stats: Arc<crate::api::ManagerStats>,
    /// What the volume reconciler remembers of each attached volume between passes.
    pub(crate) volume_cache: Arc<parking_lot::Mutex<std::collections::HashMap<String, volume::VolumeCache>>>,
}

impl Reconciler {
    /// Register this node (with `default_disk` on first registration) and keep its disks' capacity
    /// and its readiness up to date.
    pub(crate) async fn reconcile_node(
        &self,
        default_disk: Option<&std::path::Path>,
        im_url: &str,
    ) -> Result<()> {
        let node = match self.ds.try_get::<Node>(&self.node).await? {
            Some(n) => n,
            None => {
                let mut disks = std::collections::BTreeMap::new();
                if let Some(d) = default_disk {
                    std::fs::create_dir_all(d).map_err(|e| {
                        crate::error::ManagerError::new(
                            crate::error::Code::Internal,
                            format!("cannot create default disk {}: {e}", d.display()),
                        )
                    })?;
                    disks.insert(
                        "default".to_string(),
                        DiskSpec {
                            path: d.display().to_string(),
                            allow_scheduling: true,
                            storage_reserved: 0,
                            tags: vec![],
                        },
                    );
                }
                let spec = NodeSpec {
                    address: self.node_address.clone(),
                    instance_manager_url: im_url.to_string(),
                    allow_scheduling: true,
                    tags: vec![],
                    disks,
                };
                match self.ds.create(&Node::new(self.node.clone(), spec)).await {
                    Ok(n) => {
                        self.events.normal(
                            "node",
                            &self.node,
                            "Registered",
                            format!("instance manager {im_url}"),
                        );
                        n
                    }
                    Err(e) if e.kind() == corral_store::ErrorKind::AlreadyExists => {
                        self.ds.get(&self.node).await?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let ready = self.im.info().await.is_ok();
        let mut next = node.clone();
        next.spec.instance_manager_url = im_url.to_string();
        next.spec.address = self.node_address.clone();
        for (name, disk) in &node.spec.disks {
            let status = disk_status(&disk.path);
            // Only real changes are written: a few MiB of churn on a busy disk is not news.
            let old = next.status.disks.get(name);
            let changed = old.is_none_or(|o| {
                o.storage_maximum != status.storage_maximum
                    || o.message != status.message
                    || o.storage_available.abs_diff(status.storage_available) > 64 << 20
            });
            if changed {
                next.status.disks.insert(name.clone(), status);
            }
        }
        next.status.disks.retain(|d, _| node.spec.disks.contains_key(d));
        corral_store::resources::set_condition(
            &mut next.status.conditions,
            ConditionType::Ready,
            ready,
            if ready { "InstanceManagerReady" } else { "InstanceManagerDown" },
            "",
        );
        if next != node {
            match self.ds.update(&next).await {
                Ok(_) => {}
                Err(e) if e.is_conflict() => self.wake.notify_one(),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// One pass over every volume, then the backups, then the recurring jobs that are due.
    pub(crate) async fn pass(&self) -> Result<()> {
        volume::pass(self).await?;
        if let Err(e) = backup::pass(self).await {
            tracing::warn!(error = %e, "backup pass failed");
        }
        let volumes: Vec<corral_store::resources::Volume> = self.ds.list().await?;
        jobs::run_due_jobs(self, &volumes).await
    }
}

/// Capacity and free space of the filesystem holding `path`.
pub(crate) fn disk_status(path: &str) -> DiskStatus {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => DiskStatus {
            storage_maximum: s.blocks().saturating_mul(s.fragment_size()),
            storage_available: s.blocks_available().saturating_mul(s.fragment_size()),
            ..DiskStatus::default()
        },
        Err(e) => DiskStatus { message: format!("cannot read {path}: {e}"), ..DiskStatus::default() },
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
