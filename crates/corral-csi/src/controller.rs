//! The Controller service: volumes (create, delete, publish to a node, expand, list, get,
//! capacity, capability checks) through the manager's API. Snapshot calls are in
//! [`crate::snapshots`]. Every call is idempotent: it looks at what exists before it changes
//! anything, and answers from what it finds when the work was already done.
use std::collections::HashMap;
use std::time::Duration;

use corral_api::{ConditionType, Robustness, VolumeState, VolumeView};
use tonic::{Request, Response, Status};

use crate::error::{CsiError, Result};
use crate::names::{check_csi_name, corral_name, CSI_NAME_LABEL};
use crate::proto::controller_server::Controller;
use crate::proto::controller_service_capability::rpc::Type as Rpc;
use crate::proto::controller_service_capability::{Rpc as RpcCap, Type as CapType};
use crate::proto::*;
use crate::volume_args::{check_capabilities, create_body, size_of, unsupported, DEFAULT_SIZE};
use crate::{Driver, TOPOLOGY_NODE_KEY};

/// How long a call waits for the manager to create, attach or detach a volume.
pub const VOLUME_TIMEOUT: Duration = Duration::from_secs(120);

/// Publish context key carrying the volume's NBD endpoint to the node.
pub const ENDPOINT_KEY: &str = "corral.io/endpoint";

impl Driver {
    /// The volume named `name`, or `None` when the manager has none.
    pub(crate) async fn find_volume(&self, name: &str) -> Result<Option<VolumeView>> {
        match self.api.volume(name).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code == corral_api::Code::NotFound => Ok(None),
            Err(e) => Err(CsiError::api(format!("cannot read volume {name}"), e)),
        }
    }

    /// The volume named `id`; NotFound when there is none.
    pub(crate) async fn volume(&self, id: &str) -> Result<VolumeView> {
        self.find_volume(id)
            .await?
            .ok_or_else(|| CsiError::not_found(format!("volume {id:?} does not exist")))
    }

    /// Wait until the manager shows `name` in a state `done` accepts.
    pub(crate) async fn wait_volume(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&VolumeView) -> bool,
    ) -> Result<VolumeView> {
        self.api
            .wait_volume(name, VOLUME_TIMEOUT, done, |_| {})
            .await
            .map_err(|e| CsiError::api(format!("volume {name} did not become {what}"), e))
    }

    async fn create_volume_inner(&self, req: CreateVolumeRequest) -> Result<Volume> {
        check_csi_name("volume", &req.name)?;
        check_capabilities(&req.volume_capabilities)?;
        let name = corral_name(&req.name);
        let _guard = self.lock(&name)?;
        let mut size = size_of(req.capacity_range.as_ref(), DEFAULT_SIZE)?;
        let mut body = create_body(&name, size, &req.parameters)?;
        body.labels.insert(CSI_NAME_LABEL.into(), req.name.clone());
        let source = match &req.volume_content_source {
            Some(src) => Some(self.content_source_backup(src, req.capacity_range.as_ref(), &name).await?),
            None => None,
        };
        if let Some(s) = &source {
            body.from_backup = Some(s.url.clone());
            // Without a size of its own, a volume from a source has the source's size.
            let asked = req.capacity_range.as_ref().is_some_and(|r| r.required_bytes > 0);
            size = if asked { size.max(s.size) } else { s.size };
            body.size = s.size;
        }
        if let Some(v) = self.find_volume(&name).await? {
            let owner = v.labels.get(CSI_NAME_LABEL).map(String::as_str).unwrap_or("");
            if owner != req.name {
                return Err(CsiError::already_exists(format!(
                    "volume {name} exists and was not created for CSI name {:?} (it belongs to {owner:?})",
                    req.name
                )));
            }
            // A volume restored from a source may not have been grown to the asked size yet.
            if v.size != size && !(source.is_some() && v.size == body.size) {
                return Err(CsiError::already_exists(format!(
                    "volume {:?} exists with {} bytes, not the {size} asked for",
                    req.name, v.size
                )));
            }
            if v.from_backup != body.from_backup {
                return Err(CsiError::already_exists(format!(
                    "volume {:?} exists with another content source",
                    req.name
                )));
            }
        } else if let Err(e) = self.api.create_volume(&body).await {
            match e.code {
                corral_api::Code::AlreadyExists => {}
                // The manager refuses a volume it cannot place at once (its message says
                // "scheduling failed"): for CSI that is a capacity the plugin cannot serve.
                corral_api::Code::InvalidArgument if e.message.contains("scheduling failed") => {
                    return Err(CsiError::out_of_range(format!(
                        "volume {:?} of {size} bytes cannot be placed: {}",
                        req.name, e.message
                    )))
                }
                _ => return Err(CsiError::api(format!("cannot create volume {name}"), e)),
            }
        }
        let restoring = body.from_backup.is_some();
        let created = self.wait_volume(&name, "ready", |v| {
            matches!(v.state, VolumeState::Detached | VolumeState::Attached)
                && (!restoring || v.conditions.iter().any(|c| c.kind == ConditionType::Restored && c.status))
        });
        let mut v = match created.await {
            Ok(v) => v,
            Err(e) if e.code == tonic::Code::FailedPrecondition => {
                // Its scheduling or restore failed: nothing must stay behind.
                let _ = self.api.delete_volume(&name).await;
                return Err(if restoring {
                    CsiError::internal(format!("volume {:?} could not be restored: {}", req.name, e.message))
                } else {
                    CsiError::out_of_range(format!(
                        "volume {:?} of {size} bytes cannot be placed: {}",
                        req.name, e.message
                    ))
                });
            }
            Err(e) => return Err(e),
        };
        if v.size < size {
            v = self
                .api
                .expand(&name, size)
                .await
                .map_err(|e| CsiError::api(format!("cannot grow {name} to {size} bytes"), e))?;
        }
        let mut volume = self.csi_volume(&v);
        volume.capacity_bytes = size as i64;
        volume.content_source = req.volume_content_source;
        Ok(volume)
    }

    /// The CSI view of a volume.
    pub(crate) fn csi_volume(&self, v: &VolumeView) -> Volume {
        let mut context = HashMap::new();
        if let Some(n) = v.labels.get(CSI_NAME_LABEL) {
            context.insert(CSI_NAME_LABEL.to_string(), n.clone());
        }
        Volume {
            capacity_bytes: v.size as i64,
            volume_id: v.name.clone(),
            volume_context: context,
            content_source: None,
            // Any node reaches a Corral volume (its engine starts where it is attached).
            accessible_topology: Vec::new(),
        }
    }

    async fn publish_inner(
        &self,
        req: ControllerPublishVolumeRequest,
    ) -> Result<ControllerPublishVolumeResponse> {
        require("volume ID", &req.volume_id)?;
        require("node ID", &req.node_id)?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| CsiError::invalid("volume capability is missing"))?;
        if let Some(why) = unsupported(cap) {
            return Err(CsiError::invalid(why));
        }
        let _guard = self.lock(&req.volume_id)?;
        let v = self.volume(&req.volume_id).await?;
        if let Err(e) = self.api.node(&req.node_id).await {
            return Err(match e.code {
                corral_api::Code::NotFound => {
                    CsiError::not_found(format!("node {:?} is not a Corral node", req.node_id))
                }
                _ => CsiError::api(format!("cannot read node {}", req.node_id), e),
            });
        }
        let elsewhere = v.node_id.as_deref().is_some_and(|n| n != req.node_id)
            && !matches!(v.state, VolumeState::Detached | VolumeState::Detaching);
        if elsewhere {
            return Err(CsiError::precondition(format!(
                "volume {} is published on node {} (detach it there first)",
                v.name,
                v.node_id.as_deref().unwrap_or("")
            )));
        }
        if v.node_id.as_deref() != Some(req.node_id.as_str()) || v.state != VolumeState::Attached {
            self.api
                .attach(&v.name, Some(&req.node_id), false)
                .await
                .map_err(|e| CsiError::api(format!("cannot attach {} to {}", v.name, req.node_id), e))?;
        }
        let v = self
            .wait_volume(&v.name, "attached", |v| v.state == VolumeState::Attached && v.endpoint.is_some())
            .await?;
        let endpoint = v.endpoint.unwrap_or_default();
        Ok(ControllerPublishVolumeResponse { publish_context: [(ENDPOINT_KEY.to_string(), endpoint)].into() })
    }

    async fn unpublish_inner(&self, req: ControllerUnpublishVolumeRequest) -> Result<()> {
        require("volume ID", &req.volume_id)?;
        let _guard = self.lock(&req.volume_id)?;
        let Some(v) = self.find_volume(&req.volume_id).await? else { return Ok(()) };
        let on_node = req.node_id.is_empty() || v.node_id.as_deref() == Some(req.node_id.as_str());
        if !on_node || v.state == VolumeState::Detached {
            return Ok(());
        }
        if v.state != VolumeState::Detaching {
            self.api
                .detach(&v.name)
                .await
                .map_err(|e| CsiError::api(format!("cannot detach {}", v.name), e))?;
        }
        self.wait_volume(&v.name, "detached", |v| v.state == VolumeState::Detached).await?;
        Ok(())
    }
}

/// Whether a volume is in trouble, as CSI's VolumeCondition says it.
pub fn condition_of(v: &VolumeView) -> VolumeCondition {
    let failed: Vec<&str> = v
        .replicas
        .iter()
        .filter(|r| {
            r.mode == Some(corral_api::ReplicaMode::Error) || r.failed_at.is_some() || r.state == "error"
        })
        .map(|r| r.name.as_str())
        .collect();
    let (abnormal, message) = match (v.state, v.robustness) {
        (VolumeState::Error, _) => (true, format!("volume {} is in error", v.name)),
        (_, Robustness::Faulted) => (true, format!("volume {} is faulted: no healthy replica", v.name)),
        (_, Robustness::Degraded) => (
            true,
            format!("volume {} is degraded: fewer than {} healthy replicas (failed: {failed:?}); it is being rebuilt", v.name, v.number_of_replicas),
        ),
        (_, r) => (false, format!("volume {} is {:?}, {:?}", v.name, v.state, r).to_lowercase()),
    };
    VolumeCondition { abnormal, message }
}

fn published_nodes(v: &VolumeView) -> Vec<String> {
    match (&v.node_id, v.state) {
        (Some(n), VolumeState::Attached | VolumeState::Attaching) => vec![n.clone()],
        _ => Vec::new(),
    }
}

/// InvalidArgument when a required string is empty.
pub(crate) fn require(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(CsiError::invalid(format!("{what} is missing")));
    }
    Ok(())
}

/// Paging tokens name the first entry of the next page (`next:<key>`, a form no key takes
/// alone), not its index, so a page boundary survives entries created or deleted in between.
const TOKEN_PREFIX: &str = "next:";

/// One page of `keys` (sorted): the index range to answer and the next token (empty at the end).
/// A token this driver did not hand out is `Aborted`, a negative `max_entries` InvalidArgument.
pub(crate) fn page(keys: &[&str], token: &str, max_entries: i32) -> Result<(std::ops::Range<usize>, String)> {
    if max_entries < 0 {
        return Err(CsiError::invalid("max_entries must not be negative"));
    }
    let start = if token.is_empty() {
        0
    } else {
        let key = token.strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
            CsiError::new(
                tonic::Code::Aborted,
                format!("starting token {token:?} was not handed out by this driver"),
            )
        })?;
        keys.partition_point(|k| *k < key)
    };
    let end = if max_entries == 0 { keys.len() } else { (start + max_entries as usize).min(keys.len()) };
    let next = keys.get(end).map(|k| format!("{TOKEN_PREFIX}{k}")).unwrap_or_default();
    Ok((start..end, next))
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl Controller for Driver {
    async fn create_volume(&self, req: Request<CreateVolumeRequest>) -> Reply<CreateVolumeResponse> {
        let volume = self.create_volume_inner(req.into_inner()).await?;
        Ok(Response::new(CreateVolumeResponse { volume: Some(volume) }))
    }

    async fn delete_volume(&self, req: Request<DeleteVolumeRequest>) -> Reply<DeleteVolumeResponse> {
        let id = req.into_inner().volume_id;
        require("volume ID", &id)?;
        let _guard = self.lock(&id)?;
        if self.find_volume(&id).await?.is_none() {
            return Ok(Response::new(DeleteVolumeResponse {}));
        }
        match self.api.delete_volume(&id).await {
            Ok(_) => {}
            Err(e) if e.code == corral_api::Code::NotFound => {
                return Ok(Response::new(DeleteVolumeResponse {}))
            }
            Err(e) => return Err(CsiError::api(format!("cannot delete volume {id}"), e).into()),
        }
        let deadline = tokio::time::Instant::now() + VOLUME_TIMEOUT;
        while self.find_volume(&id).await?.is_some() {
            if tokio::time::Instant::now() > deadline {
                return Err(CsiError::new(
                    tonic::Code::DeadlineExceeded,
                    format!("volume {id} is still being deleted"),
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        req: Request<ControllerPublishVolumeRequest>,
    ) -> Reply<ControllerPublishVolumeResponse> {
        Ok(Response::new(self.publish_inner(req.into_inner()).await?))
    }

    async fn controller_unpublish_volume(
        &self,
        req: Request<ControllerUnpublishVolumeRequest>,
    ) -> Reply<ControllerUnpublishVolumeResponse> {
        self.unpublish_inner(req.into_inner()).await?;
        Ok(Response::new(ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Reply<ValidateVolumeCapabilitiesResponse> {
        let req = req.into_inner();
        require("volume ID", &req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(CsiError::invalid("volume capabilities are missing").into());
        }
        self.volume(&req.volume_id).await?;
        if let Some(why) = req.volume_capabilities.iter().find_map(unsupported) {
            return Ok(Response::new(ValidateVolumeCapabilitiesResponse { confirmed: None, message: why }));
        }
        let confirmed = validate_volume_capabilities_response::Confirmed {
            volume_context: req.volume_context,
            volume_capabilities: req.volume_capabilities,
            parameters: req.parameters,
            mutable_parameters: HashMap::new(),
        };
        Ok(Response::new(ValidateVolumeCapabilitiesResponse {
            confirmed: Some(confirmed),
            message: String::new(),
        }))
    }

    async fn list_volumes(&self, req: Request<ListVolumesRequest>) -> Reply<ListVolumesResponse> {
        let req = req.into_inner();
        let mut all = self.api.volumes().await.map_err(|e| CsiError::api("cannot list volumes", e))?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let keys: Vec<&str> = all.iter().map(|v| v.name.as_str()).collect();
        let (range, next_token) = page(&keys, &req.starting_token, req.max_entries)?;
        let entries = all[range]
            .iter()
            .map(|v| list_volumes_response::Entry {
                volume: Some(self.csi_volume(v)),
                status: Some(list_volumes_response::VolumeStatus {
                    published_node_ids: published_nodes(v),
                    volume_condition: Some(condition_of(v)),
                }),
            })
            .collect();
        Ok(Response::new(ListVolumesResponse { entries, next_token }))
    }

    async fn get_capacity(&self, req: Request<GetCapacityRequest>) -> Reply<GetCapacityResponse> {
        let req = req.into_inner();
        if req.volume_capabilities.iter().any(|c| unsupported(c).is_some()) {
            return Ok(Response::new(GetCapacityResponse { available_capacity: 0, ..Default::default() }));
        }
        let wanted =
            req.accessible_topology.as_ref().and_then(|t| t.segments.get(TOPOLOGY_NODE_KEY).cloned());
        let nodes = self.api.nodes().await.map_err(|e| CsiError::api("cannot list nodes", e))?;
        let (mut total, mut largest) = (0u64, 0u64);
        for n in nodes.iter().filter(|n| n.ready && n.allow_scheduling) {
            if wanted.as_ref().is_some_and(|w| *w != n.name) {
                continue;
            }
            for d in n.disks.iter().filter(|d| d.allow_scheduling) {
                total = total.saturating_add(d.storage_available);
                largest = largest.max(d.storage_available);
            }
        }
        Ok(Response::new(GetCapacityResponse {
            available_capacity: total.min(i64::MAX as u64) as i64,
            maximum_volume_size: Some(largest.min(i64::MAX as u64) as i64),
            minimum_volume_size: Some(crate::SIZE_GRANULARITY as i64),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<ControllerGetCapabilitiesRequest>,
    ) -> Reply<ControllerGetCapabilitiesResponse> {
        let rpcs = [
            Rpc::CreateDeleteVolume,
            Rpc::PublishUnpublishVolume,
            Rpc::ListVolumes,
            Rpc::GetCapacity,
            Rpc::CreateDeleteSnapshot,
            Rpc::ListSnapshots,
            Rpc::CloneVolume,
            Rpc::ExpandVolume,
            Rpc::ListVolumesPublishedNodes,
            Rpc::VolumeCondition,
            Rpc::GetVolume,
            Rpc::SingleNodeMultiWriter,
        ];
        let capabilities = rpcs
            .into_iter()
            .map(|t| ControllerServiceCapability { r#type: Some(CapType::Rpc(RpcCap { r#type: t as i32 })) })
            .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn create_snapshot(&self, req: Request<CreateSnapshotRequest>) -> Reply<CreateSnapshotResponse> {
        let snapshot = self.create_snapshot_inner(req.into_inner()).await?;
        Ok(Response::new(CreateSnapshotResponse { snapshot: Some(snapshot) }))
    }

    async fn delete_snapshot(&self, req: Request<DeleteSnapshotRequest>) -> Reply<DeleteSnapshotResponse> {
        self.delete_snapshot_inner(req.into_inner()).await?;
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(&self, req: Request<ListSnapshotsRequest>) -> Reply<ListSnapshotsResponse> {
        Ok(Response::new(self.list_snapshots_inner(req.into_inner()).await?))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<ControllerExpandVolumeRequest>,
    ) -> Reply<ControllerExpandVolumeResponse> {
        let req = req.into_inner();
        require("volume ID", &req.volume_id)?;
        let range =
            req.capacity_range.as_ref().ok_or_else(|| CsiError::invalid("capacity range is missing"))?;
        let size = size_of(Some(range), 0)?;
        if size == 0 {
            return Err(CsiError::invalid("capacity range asks for no bytes").into());
        }
        let _guard = self.lock(&req.volume_id)?;
        let v = self.volume(&req.volume_id).await?;
        let block = matches!(
            req.volume_capability.as_ref().and_then(|c| c.access_type.as_ref()),
            Some(volume_capability::AccessType::Block(_))
        );
        if size > v.size && v.state != VolumeState::Detached {
            return Err(CsiError::precondition(format!(
                "volume {} is published: Corral volumes expand offline through CSI (unpublish it first)",
                v.name
            ))
            .into());
        }
        if size > v.size {
            self.api
                .expand(&v.name, size)
                .await
                .map_err(|e| CsiError::api(format!("cannot expand {} to {size} bytes", v.name), e))?;
        }
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: size.max(v.size) as i64,
            node_expansion_required: !block,
        }))
    }

    async fn controller_get_volume(
        &self,
        req: Request<ControllerGetVolumeRequest>,
    ) -> Reply<ControllerGetVolumeResponse> {
        let id = req.into_inner().volume_id;
        require("volume ID", &id)?;
        let v = self.volume(&id).await?;
        Ok(Response::new(ControllerGetVolumeResponse {
            volume: Some(self.csi_volume(&v)),
            status: Some(controller_get_volume_response::VolumeStatus {
                published_node_ids: published_nodes(&v),
                volume_condition: Some(condition_of(&v)),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_resume_after_entries_come_and_go() -> Result<()> {
        let keys = ["a", "b", "c", "d", "e"];
        let (r, next) = page(&keys, "", 2)?;
        assert_eq!((r, next.as_str()), (0..2, "next:c"));
        // "c" was deleted before the next page was asked for.
        let keys = ["a", "b", "d", "e"];
        let (r, next) = page(&keys, &next, 2)?;
        assert_eq!((r, next.as_str()), (2..4, ""));
        assert_eq!(page(&keys, "", 0)?.0, 0..4);
        assert_eq!(page(&keys, "bogus", 1).map_err(|e| e.code).err(), Some(tonic::Code::Aborted));
        assert_eq!(page(&keys, "", -1).map_err(|e| e.code).err(), Some(tonic::Code::InvalidArgument));
        Ok(())
    }
}
