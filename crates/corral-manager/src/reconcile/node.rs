//! The node reconciler: registers this node (with its default disk on first registration) and
//! keeps its disks' capacity and its readiness (the instance manager answers) up to date.
use corral_store::resources::{ConditionType, DiskSpec, Node, NodeSpec};

use super::Reconciler;
use crate::clients::disks::disk_status;
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
        let ready = self.im.info().await.is_ok();
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
}
