//! The node reconciler: registers this node (with its default disk on first registration) and
//! keeps its disks' capacity, its readiness (the instance manager answers and the node holds its
//! lease) and the space its
//! replicas hold on disk up to date.
use corral_store::resources::{ConditionType, DiskSpec, Node, NodeSpec, Replica};

use super::Reconciler;
use crate::clients::disks::{allocated_bytes, disk_status};
use crate::error::{Code, ManagerError, Result};

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
                        ManagerError::new(
                            Code::Internal,
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
        let im_ready = self.im.info().await.is_ok();
        let lease_held = self.claims.node_lease_held();
        let ready = im_ready && lease_held;
        let mut next = node.clone();
        next.spec.instance_manager_url = im_url.to_string();
        next.spec.address = self.node_address.clone();
        for (name, disk) in &node.spec.disks {
            let status = disk_status(&disk.path).await;
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
            match (im_ready, lease_held) {
                (true, true) => "InstanceManagerReady",
                (false, _) => "InstanceManagerDown",
                (true, false) => crate::model::liveness::NODE_LEASE_EXPIRED,
            },
            "",
        );
        if next != node {
            match self.ds.update(&next).await {
                Ok(_) => {}
                Err(e) if e.is_conflict() => self.wake.notify_one(),
                Err(e) => return Err(e.into()),
            }
        }
        self.measure_local_replicas().await
    }

    /// Records how much space each replica on this node holds on disk (`status.actual_size`). Only
    /// a change of a MiB or more (or to or from empty) is written, so idle replicas cause no writes.
    async fn measure_local_replicas(&self) -> Result<()> {
        let replicas: Vec<Replica> = self.ds.list().await?;
        let local: Vec<Replica> = replicas.into_iter().filter(|r| r.spec.node == self.node).collect();
        let dirs: Vec<String> = local.iter().map(|r| r.spec.data_dir.clone()).collect();
        let sizes = tokio::task::spawn_blocking(move || dirs.iter().map(|d| allocated_bytes(d)).collect())
            .await
            .unwrap_or_else(|_| Vec::new());
        for (replica, size) in local.into_iter().zip(sizes) {
            let old = replica.status.actual_size;
            if old.abs_diff(size) < 1 << 20 && (old == 0) == (size == 0) {
                continue;
            }
            let mut next = replica;
            next.status.actual_size = size;
            match self.ds.update(&next).await {
                Ok(_) => {}
                // Someone else changed the replica meanwhile: the next pass measures it again.
                Err(e) if e.is_conflict() || e.kind() == corral_store::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
