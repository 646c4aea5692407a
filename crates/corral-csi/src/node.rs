//! The Node service: stage (block device from the NBD endpoint, format when blank, mount, grow),
//! publish (bind mount, read-only honoured; block access binds the device node), unpublish,
//! unstage, volume stats with the volume condition, expansion and the node's topology.
//!
//! Every step first looks at what is already there (state file, mount table, loop devices), so a
//! repeated call, or a call after a plugin restart, finishes the work or answers OK.
use std::path::{Path, PathBuf};

use corral_api::VolumeState;
use tonic::{Request, Response, Status};

use crate::controller::{condition_of, require};
use crate::device;
use crate::error::{CsiError, Result};
use crate::mounts::{self, is_mounted, run};
use crate::proto::node_server::Node;
use crate::proto::node_service_capability::rpc::Type as Rpc;
use crate::proto::node_service_capability::{Rpc as RpcCap, Type as CapType};
use crate::proto::volume_capability::AccessType;
use crate::proto::*;
use crate::state::{StagedVolume, StateDir};
use crate::volume_args::unsupported;
use crate::{Driver, TOPOLOGY_NODE_KEY};

/// Filesystem of a mount request without one.
const DEFAULT_FS: &str = "ext4";

fn access_of(cap: Option<&VolumeCapability>) -> Result<(&VolumeCapability, bool, String, Vec<String>)> {
    let cap = cap.ok_or_else(|| CsiError::invalid("volume capability is missing"))?;
    if let Some(why) = unsupported(cap) {
        return Err(CsiError::invalid(why));
    }
    Ok(match &cap.access_type {
        Some(AccessType::Mount(m)) => {
            let fs = if m.fs_type.is_empty() { DEFAULT_FS.to_string() } else { m.fs_type.clone() };
            (cap, false, fs, m.mount_flags.clone())
        }
        _ => (cap, true, String::new(), Vec::new()),
    })
}

fn path_exists(what: &str, p: &Path) -> Result<()> {
    if !p.exists() {
        return Err(CsiError::not_found(format!("{what} {} does not exist", p.display())));
    }
    Ok(())
}

impl Driver {
    fn state(&self) -> StateDir {
        StateDir::new(&self.config.state_dir)
    }

    async fn stage(&self, req: NodeStageVolumeRequest) -> Result<()> {
        require("volume ID", &req.volume_id)?;
        require("staging target path", &req.staging_target_path)?;
        let (_, block, fs, flags) = access_of(req.volume_capability.as_ref())?;
        let staging = PathBuf::from(&req.staging_target_path);
        let _guard = self.lock(&req.volume_id)?;
        let state = self.state();
        if let Some(s) = state.load(&req.volume_id)? {
            if s.staging_path != staging || s.block != block || (!block && s.fs_type != fs) {
                return Err(CsiError::already_exists(format!(
                    "volume {} is staged at {} ({}) already",
                    req.volume_id,
                    s.staging_path.display(),
                    if s.block { "block".to_string() } else { s.fs_type.clone() }
                )));
            }
        }
        let v = self.volume(&req.volume_id).await?;
        let endpoint = match (&v.endpoint, v.state, v.node_id.as_deref()) {
            (Some(e), VolumeState::Attached, Some(n)) if n == self.config.node_id => e.clone(),
            _ => {
                return Err(CsiError::precondition(format!(
                    "volume {} is not attached to node {} (ControllerPublishVolume first)",
                    v.name, self.config.node_id
                )))
            }
        };
        if !block {
            path_exists("staging target path", &staging)?;
        }
        let fuse_dir = state.fuse_dir(&v.name);
        let mut record = state.load(&v.name)?.unwrap_or(StagedVolume {
            volume_id: v.name.clone(),
            staging_path: staging.clone(),
            fuse_dir: fuse_dir.clone(),
            fuse_pid: None,
            loop_device: None,
            block,
            fs_type: fs.clone(),
            publishes: Vec::new(),
        });
        // Recorded before anything is started, so an interrupted stage is undone by unstage.
        state.save(&record)?;
        let log = self.config.state_dir.join(format!("{}.nbdfuse.log", v.name));
        if !is_mounted(&fuse_dir)? {
            device::wait_export_size(&endpoint, v.size).await?;
        }
        if let Some(pid) = device::start_fuse(&endpoint, &fuse_dir, &log).await? {
            record.fuse_pid = Some(pid);
            state.save(&record)?;
        }
        let dev = device::attach_loop(&device::export_file(&fuse_dir)).await?;
        record.loop_device = Some(dev.clone());
        state.save(&record)?;
        if block || is_mounted(&staging)? {
            return Ok(());
        }
        match mounts::filesystem_of(&dev).await? {
            None => mounts::make_filesystem(&fs, &dev).await?,
            Some(found) if found == fs && fs == "ext4" => mounts::grow_ext4_unmounted(&dev).await?,
            Some(found) if found == fs => {}
            Some(found) => {
                return Err(CsiError::precondition(format!(
                    "volume {} holds a {found} filesystem, not {fs}: stage it as {found}",
                    v.name
                )))
            }
        }
        let mut options = flags;
        if fs == "xfs" {
            // Restored and cloned volumes carry their source's UUID.
            options.push("nouuid".into());
        }
        let mut args = vec!["-t".to_string(), fs.clone()];
        if !options.is_empty() {
            args.push("-o".into());
            args.push(options.join(","));
        }
        args.push(dev.to_string_lossy().into_owned());
        args.push(req.staging_target_path.clone());
        run("mount", &args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
        // The volume may have grown while it was not staged (offline expansion); ext4 grew above.
        if fs == "xfs" {
            mounts::grow_filesystem(&fs, &dev, &staging).await?;
        }
        Ok(())
    }

    async fn unstage(&self, req: NodeUnstageVolumeRequest) -> Result<()> {
        require("volume ID", &req.volume_id)?;
        require("staging target path", &req.staging_target_path)?;
        let _guard = self.lock(&req.volume_id)?;
        let state = self.state();
        let staging = PathBuf::from(&req.staging_target_path);
        mounts::unmount_all(&staging).await?;
        let record = state.load(&req.volume_id)?;
        let fuse_dir = state.fuse_dir(&req.volume_id);
        let (dev, pid) = record.as_ref().map(|r| (r.loop_device.clone(), r.fuse_pid)).unwrap_or((None, None));
        device::stop(&fuse_dir, dev.as_deref(), pid).await?;
        state.remove(&req.volume_id)
    }

    async fn publish(&self, req: NodePublishVolumeRequest) -> Result<()> {
        require("volume ID", &req.volume_id)?;
        require("staging target path", &req.staging_target_path)?;
        require("target path", &req.target_path)?;
        let (_, block, _, flags) = access_of(req.volume_capability.as_ref())?;
        let _guard = self.lock(&req.volume_id)?;
        let state = self.state();
        let Some(mut record) = state.load(&req.volume_id)? else {
            self.volume(&req.volume_id).await?;
            return Err(CsiError::precondition(format!(
                "volume {} is not staged on this node (NodeStageVolume first)",
                req.volume_id
            )));
        };
        if record.staging_path != Path::new(&req.staging_target_path) {
            return Err(CsiError::invalid(format!(
                "volume {} is staged at {}, not {}",
                req.volume_id,
                record.staging_path.display(),
                req.staging_target_path
            )));
        }
        if record.block != block {
            return Err(CsiError::invalid(format!(
                "volume {} is staged for {} access",
                req.volume_id,
                if record.block { "block" } else { "filesystem" }
            )));
        }
        let target = PathBuf::from(&req.target_path);
        if is_mounted(&target)? {
            let ro = mount_is_readonly(&target)?;
            if ro != req.readonly {
                return Err(CsiError::already_exists(format!(
                    "{} is published already with readonly={ro}",
                    target.display()
                )));
            }
            return Ok(());
        }
        let source = if block {
            let dev = record
                .loop_device
                .clone()
                .ok_or_else(|| CsiError::precondition("volume has no block device; stage it again"))?;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| CsiError::io(format!("cannot create {}", parent.display()), e))?;
            }
            if !target.exists() {
                std::fs::File::create(&target)
                    .map_err(|e| CsiError::io(format!("cannot create {}", target.display()), e))?;
            }
            dev
        } else {
            std::fs::create_dir_all(&target)
                .map_err(|e| CsiError::io(format!("cannot create {}", target.display()), e))?;
            record.staging_path.clone()
        };
        let (src, tgt) = (source.to_string_lossy().into_owned(), req.target_path.clone());
        run("mount", &["--bind", &src, &tgt]).await?;
        let mut options = vec!["remount".to_string(), "bind".to_string()];
        if req.readonly {
            options.push("ro".into());
        }
        options.extend(flags.into_iter().filter(|f| f != "bind" && f != "remount"));
        if options.len() > 2 {
            run("mount", &["-o", &options.join(","), &tgt]).await?;
        }
        if !record.publishes.contains(&target) {
            record.publishes.push(target);
            state.save(&record)?;
        }
        Ok(())
    }

    async fn unpublish(&self, req: NodeUnpublishVolumeRequest) -> Result<()> {
        require("volume ID", &req.volume_id)?;
        require("target path", &req.target_path)?;
        let _guard = self.lock(&req.volume_id)?;
        let target = PathBuf::from(&req.target_path);
        let state = self.state();
        let record = state.load(&req.volume_id)?;
        if record.is_none() && !is_mounted(&target)? {
            // Nothing to undo; but a volume that does not exist at all is NotFound, as the spec's
            // sanity suite checks.
            self.volume(&req.volume_id).await?;
        }
        mounts::unmount_all(&target).await?;
        if target.is_dir() {
            let _ = std::fs::remove_dir(&target);
        } else if target.exists() {
            let _ = std::fs::remove_file(&target);
        }
        if let Some(mut record) = record {
            record.publishes.retain(|p| *p != target);
            state.save(&record)?;
        }
        Ok(())
    }

    async fn stats(&self, req: NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse> {
        require("volume ID", &req.volume_id)?;
        require("volume path", &req.volume_path)?;
        let path = PathBuf::from(&req.volume_path);
        let v = self.volume(&req.volume_id).await?;
        path_exists("volume path", &path)?;
        let record = self.state().load(&req.volume_id)?.ok_or_else(|| {
            CsiError::not_found(format!("volume {} is not staged on this node", req.volume_id))
        })?;
        let ours = record.staging_path == path || record.publishes.contains(&path);
        if !ours {
            return Err(CsiError::not_found(format!(
                "{} is not a path of volume {}",
                path.display(),
                req.volume_id
            )));
        }
        let usage = if record.block {
            let dev = record.loop_device.clone().unwrap_or_default();
            let size = mounts::device_size(&dev).await? as i64;
            vec![VolumeUsage { available: 0, total: size, used: 0, unit: volume_usage::Unit::Bytes as i32 }]
        } else {
            let [total, avail, used, inodes, ifree, iused] = mounts::usage(&path)?;
            let n = |x: u64| x.min(i64::MAX as u64) as i64;
            vec![
                VolumeUsage {
                    available: n(avail),
                    total: n(total),
                    used: n(used),
                    unit: volume_usage::Unit::Bytes as i32,
                },
                VolumeUsage {
                    available: n(ifree),
                    total: n(inodes),
                    used: n(iused),
                    unit: volume_usage::Unit::Inodes as i32,
                },
            ]
        };
        let mut condition = condition_of(&v);
        if let Some(fault) = device::fault(&record.fuse_dir, record.fuse_pid) {
            condition = VolumeCondition { abnormal: true, message: fault };
        }
        Ok(NodeGetVolumeStatsResponse { usage, volume_condition: Some(condition) })
    }

    async fn expand(&self, req: NodeExpandVolumeRequest) -> Result<NodeExpandVolumeResponse> {
        require("volume ID", &req.volume_id)?;
        require("volume path", &req.volume_path)?;
        let _guard = self.lock(&req.volume_id)?;
        self.volume(&req.volume_id).await?;
        let path = PathBuf::from(&req.volume_path);
        path_exists("volume path", &path)?;
        let record = self.state().load(&req.volume_id)?.ok_or_else(|| {
            CsiError::not_found(format!("volume {} is not staged on this node", req.volume_id))
        })?;
        let dev =
            record.loop_device.clone().ok_or_else(|| CsiError::precondition("volume has no block device"))?;
        if !record.block {
            mounts::grow_filesystem(&record.fs_type, &dev, &record.staging_path).await?;
        }
        Ok(NodeExpandVolumeResponse { capacity_bytes: mounts::device_size(&dev).await? as i64 })
    }
}

/// Whether the mount at `path` is read-only.
fn mount_is_readonly(path: &Path) -> Result<bool> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CsiError::io("cannot read mountinfo", e))?;
    let target = path.to_string_lossy();
    Ok(text
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(&target))
        .and_then(|l| l.split(' ').nth(5))
        .is_some_and(|opts| opts.split(',').any(|o| o == "ro")))
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl Node for Driver {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Reply<NodeStageVolumeResponse> {
        self.stage(req.into_inner()).await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Reply<NodeUnstageVolumeResponse> {
        self.unstage(req.into_inner()).await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Reply<NodePublishVolumeResponse> {
        self.publish(req.into_inner()).await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Reply<NodeUnpublishVolumeResponse> {
        self.unpublish(req.into_inner()).await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Reply<NodeGetVolumeStatsResponse> {
        Ok(Response::new(self.stats(req.into_inner()).await?))
    }

    async fn node_expand_volume(
        &self,
        req: Request<NodeExpandVolumeRequest>,
    ) -> Reply<NodeExpandVolumeResponse> {
        Ok(Response::new(self.expand(req.into_inner()).await?))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<NodeGetCapabilitiesRequest>,
    ) -> Reply<NodeGetCapabilitiesResponse> {
        let rpcs = [
            Rpc::StageUnstageVolume,
            Rpc::GetVolumeStats,
            Rpc::ExpandVolume,
            Rpc::VolumeCondition,
            Rpc::SingleNodeMultiWriter,
        ];
        let capabilities = rpcs
            .into_iter()
            .map(|t| NodeServiceCapability { r#type: Some(CapType::Rpc(RpcCap { r#type: t as i32 })) })
            .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(&self, _req: Request<NodeGetInfoRequest>) -> Reply<NodeGetInfoResponse> {
        let segments = [(TOPOLOGY_NODE_KEY.to_string(), self.config.node_id.clone())].into();
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(Topology { segments }),
        }))
    }
}
