//! `/v1/volumes`: create, get, list, delete, and the actions attach, detach, expand, maintenance
//! and snapshots. Every change is validated first and written with the version check.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use corral_store::resources::{DataLocality, Node, Replica, Volume, VolumeSpec, VolumeState};
use corral_store::Resource;

use corral_api::{
    AttachVolume, CreateSnapshot, CreateVolume, DetachVolume, ExpandVolume, MaintenanceVolume, ReplicaView,
    SnapshotCreated, VolumeView,
};

use super::{convert, ApiJson, AppState, OptionalJson};
use crate::clients::engine::{EngineClient, EngineSnapshot};
use crate::error::{Code, ErrorBody, ManagerError, Result};
use crate::model::attach;
use crate::model::scheduler::{
    check_expand, placed_replicas, schedule_replicas, SchedulerSettings, VolumeRequest,
};
use crate::model::settings::{self, Settings};
use crate::model::validation::{
    check_backup_url, check_int64, check_labels, check_name, check_size, MAX_REPLICAS,
};
use crate::ops::backups::{backup_in_progress, size_from_backup};
use crate::ops::{snapshots, volumes};

pub(crate) fn view(v: &Volume, replicas: &[Replica]) -> VolumeView {
    let mut rs: Vec<ReplicaView> = replicas
        .iter()
        .filter(|r| r.spec.volume == v.metadata.name)
        .map(|r| ReplicaView {
            name: r.metadata.name.clone(),
            node: r.spec.node.clone(),
            disk: r.spec.disk.clone(),
            mode: r.status.mode.map(convert::replica_mode),
            rebuild_progress: r.status.rebuild_progress,
            state: serde_json::to_value(r.status.state)
                .ok()
                .and_then(|s| s.as_str().map(String::from))
                .unwrap_or_default(),
            failed_at: r.spec.failed_at.clone(),
            actual_size: r.status.actual_size,
        })
        .collect();
    rs.sort_by(|a, b| a.name.cmp(&b.name));
    let state = if v.metadata.deletion_requested.is_some() { VolumeState::Deleting } else { v.status.state };
    VolumeView {
        name: v.metadata.name.clone(),
        size: v.spec.size,
        actual_size: rs.iter().map(|r| r.actual_size).max().unwrap_or(0),
        number_of_replicas: v.spec.number_of_replicas,
        state: convert::volume_state(state),
        robustness: convert::robustness(v.status.robustness),
        endpoint: v.status.endpoint.clone(),
        replicas: rs,
        conditions: v.status.conditions.iter().map(convert::condition).collect(),
        stale_replica_timeout: v.spec.stale_replica_timeout,
        data_locality: convert::data_locality(v.spec.data_locality),
        from_backup: v.spec.from_backup.clone(),
        labels: v.metadata.labels.clone(),
        node_selector: v.spec.node_selector.clone(),
        disk_selector: v.spec.disk_selector.clone(),
        node_id: v.spec.node_id.clone(),
        maintenance: v.spec.maintenance,
        engine_epoch: v.status.engine_epoch,
        created: v.metadata.created.clone(),
        resource_version: v.metadata.resource_version.as_ref().map(|r| r.0.clone()).unwrap_or_default(),
    }
}

fn parse_locality(s: Option<&str>) -> Result<DataLocality> {
    match s {
        None | Some("disabled") => Ok(DataLocality::Disabled),
        Some("best-effort") => Ok(DataLocality::BestEffort),
        Some(other) => {
            Err(ManagerError::invalid(format!("dataLocality must be disabled or best-effort, not {other:?}")))
        }
    }
}

/// Read-modify-write of a volume through [`crate::ops::volumes::mutate`], waking the reconcilers.
async fn mutate(
    st: &AppState,
    name: &str,
    expected: Option<&str>,
    f: impl FnMut(&mut Volume) -> Result<()>,
) -> Result<Volume> {
    volumes::mutate(&st.ds, &st.wake, name, expected, f).await
}

async fn view_of(st: &AppState, v: &Volume) -> Result<VolumeView> {
    let replicas: Vec<Replica> = st.ds.list().await?;
    Ok(view(v, &replicas))
}

#[utoipa::path(get, path = "/v1/volumes", tag = "volumes",
    responses((status = 200, description = "Every volume", body = [VolumeView])))]
pub async fn list(State(st): State<AppState>) -> Result<Json<Vec<VolumeView>>> {
    let volumes: Vec<Volume> = st.ds.list().await?;
    let replicas: Vec<Replica> = st.ds.list().await?;
    Ok(Json(volumes.iter().map(|v| view(v, &replicas)).collect()))
}

#[utoipa::path(post, path = "/v1/volumes", tag = "volumes", request_body = CreateVolume,
    responses((status = 201, body = VolumeView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<CreateVolume>,
) -> Result<(StatusCode, Json<VolumeView>)> {
    check_name("volume", &req.name)?;
    let size = match &req.from_backup {
        Some(url) => {
            check_backup_url(url)?;
            size_from_backup(url, req.size).await?
        }
        None => req.size,
    };
    check_size(size)?;
    let settings = Settings::load(&st.ds).await?;
    let replicas = req.number_of_replicas.unwrap_or(settings.int(settings::DEFAULT_REPLICA_COUNT) as u32);
    if replicas == 0 || replicas > MAX_REPLICAS {
        return Err(ManagerError::invalid(format!(
            "numberOfReplicas must be from 1 to {MAX_REPLICAS}, not {replicas}"
        )));
    }
    let stale = req.stale_replica_timeout.unwrap_or(settings.int(settings::DEFAULT_STALE_REPLICA_TIMEOUT));
    check_int64("staleReplicaTimeout", stale)?;
    if stale == 0 {
        return Err(ManagerError::invalid("staleReplicaTimeout must be at least 1 (minute)"));
    }
    let locality = parse_locality(req.data_locality.as_deref())?;
    if let Some(url) = &req.from_backup {
        check_backup_url(url)?;
    }
    check_labels(&req.labels)?;
    for tag in req.node_selector.iter().chain(&req.disk_selector) {
        check_name("tag", tag)?;
    }
    // More replicas than the cluster can place is bad input, refused before anything is stored.
    let nodes: Vec<Node> = st.ds.list().await?;
    let existing: Vec<Replica> = st.ds.list().await?;
    let vr = VolumeRequest {
        volume: &req.name,
        size,
        node_selector: &req.node_selector,
        disk_selector: &req.disk_selector,
        data_locality: locality,
        attach_node: None,
    };
    schedule_replicas(&vr, replicas, &nodes, &placed_replicas(&existing), SchedulerSettings::from(&settings))
        .map_err(|f| ManagerError::invalid(f.to_string()))?;
    let spec = VolumeSpec {
        size,
        number_of_replicas: replicas,
        stale_replica_timeout: stale,
        data_locality: locality,
        from_backup: req.from_backup,
        node_id: None,
        maintenance: false,
        node_selector: req.node_selector,
        disk_selector: req.disk_selector,
    };
    let mut v = Volume::new(req.name.clone(), spec);
    v.metadata.labels = req.labels;
    let v = st.ds.create(&v).await?;
    st.events.normal("volume", v.name(), "Created", format!("{} bytes, {} replicas", v.spec.size, replicas));
    st.wake.notify_one();
    Ok((StatusCode::CREATED, Json(view_of(&st, &v).await?)))
}

#[utoipa::path(get, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path)),
    responses((status = 200, body = VolumeView), (status = 404, body = ErrorBody)))]
pub async fn get(State(st): State<AppState>, Path(name): Path<String>) -> Result<Json<VolumeView>> {
    let v = volumes::load(&st.ds, &name).await?;
    Ok(Json(view_of(&st, &v).await?))
}

#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path)),
    responses((status = 202, description = "Deletion started", body = VolumeView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<VolumeView>)> {
    let v = mutate(&st, &name, None, |v| {
        if let Some(node) = &v.spec.node_id {
            return Err(ManagerError::precondition(format!(
                "volume {name:?} is attached to {node}; detach it first"
            )));
        }
        if v.metadata.deletion_requested.is_none() {
            v.metadata.deletion_requested = Some(chrono::Utc::now().to_rfc3339());
        }
        Ok(())
    })
    .await?;
    st.events.normal("volume", &name, "Deleting", "deletion requested");
    Ok((StatusCode::ACCEPTED, Json(view_of(&st, &v).await?)))
}

fn not_deleting(v: &Volume) -> Result<()> {
    if v.metadata.deletion_requested.is_some() {
        return Err(ManagerError::precondition(format!("volume {:?} is being deleted", v.metadata.name)));
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/volumes/{name}/attach", tag = "volumes", params(("name" = String, Path)), request_body = AttachVolume,
    responses((status = 200, body = VolumeView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn attach(
    State(st): State<AppState>,
    Path(name): Path<String>,
    OptionalJson(req): OptionalJson<AttachVolume>,
) -> Result<Json<VolumeView>> {
    let node = req.node.clone().unwrap_or_else(|| st.node.clone());
    if st.ds.try_get::<Node>(&node).await?.is_none() {
        return Err(ManagerError::invalid(format!("no node {node:?} to attach to")));
    }
    // The attach node as it is now, for the force rule; re-checked below if the volume moved meanwhile.
    let seen = volumes::load(&st.ds, &name).await?.spec.node_id;
    let seen_node = match &seen {
        Some(cur) if req.force && *cur != node => st.ds.try_get::<Node>(cur).await?,
        _ => None,
    };
    let mut forced_from = None;
    let v = mutate(&st, &name, req.resource_version.as_deref(), |v| {
        not_deleting(v)?;
        if req.force && v.spec.node_id != seen {
            return Err(ManagerError::new(
                Code::Conflict,
                format!("volume {name:?} moved while it was being force-attached; retry"),
            ));
        }
        let current = v.spec.node_id.as_deref();
        if let Some(why) = attach::refuse_attach(&name, current, seen_node.as_ref(), &node, req.force) {
            return Err(ManagerError::precondition(why));
        }
        forced_from = current.filter(|c| *c != node).map(str::to_string);
        v.spec.node_id = Some(node.clone());
        v.spec.maintenance = req.maintenance;
        Ok(())
    })
    .await?;
    let forced = forced_from.map(|from| format!(", forced off {from}, which is down")).unwrap_or_default();
    st.events.normal(
        "volume",
        &name,
        "Attach",
        format!("to {node}{}{forced}", if req.maintenance { " (maintenance)" } else { "" }),
    );
    Ok(Json(view_of(&st, &v).await?))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/detach", tag = "volumes", params(("name" = String, Path)), request_body = DetachVolume,
    responses((status = 200, body = VolumeView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn detach(
    State(st): State<AppState>,
    Path(name): Path<String>,
    OptionalJson(req): OptionalJson<DetachVolume>,
) -> Result<Json<VolumeView>> {
    let v = mutate(&st, &name, req.resource_version.as_deref(), |v| {
        v.spec.node_id = None;
        v.spec.maintenance = false;
        Ok(())
    })
    .await?;
    st.events.normal("volume", &name, "Detach", "detach requested");
    Ok(Json(view_of(&st, &v).await?))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/expand", tag = "volumes", params(("name" = String, Path)), request_body = ExpandVolume,
    responses((status = 200, body = VolumeView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn expand(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ExpandVolume>,
) -> Result<Json<VolumeView>> {
    check_size(req.size)?;
    // Refused before anything changes when the replicas' disks cannot hold the new size.
    let settings = Settings::load(&st.ds).await?;
    let nodes: Vec<Node> = st.ds.list().await?;
    let replicas: Vec<Replica> = st.ds.list().await?;
    check_expand(&name, req.size, &nodes, &placed_replicas(&replicas), SchedulerSettings::from(&settings))
        .map_err(|e| ManagerError::invalid(e.to_string()))?;
    let v = mutate(&st, &name, req.resource_version.as_deref(), |v| {
        not_deleting(v)?;
        if req.size < v.spec.size {
            return Err(ManagerError::invalid(format!(
                "volume {name:?} cannot shrink from {} to {} bytes",
                v.spec.size, req.size
            )));
        }
        v.spec.size = req.size;
        Ok(())
    })
    .await?;
    st.events.normal("volume", &name, "Expand", format!("to {} bytes", req.size));
    Ok(Json(view_of(&st, &v).await?))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/maintenance", tag = "volumes", params(("name" = String, Path)), request_body = MaintenanceVolume,
    responses((status = 200, body = VolumeView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn maintenance(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<MaintenanceVolume>,
) -> Result<Json<VolumeView>> {
    let v = mutate(&st, &name, req.resource_version.as_deref(), |v| {
        not_deleting(v)?;
        v.spec.maintenance = req.enabled;
        Ok(())
    })
    .await?;
    Ok(Json(view_of(&st, &v).await?))
}

/// The engine of an attached volume.
async fn engine_of(st: &AppState, name: &str, action: &str) -> Result<(Volume, EngineClient)> {
    let v = volumes::load(&st.ds, name).await?;
    // A detach (or delete) asked for stops the engine before the status says so: refuse at once
    // rather than reach for an engine that is going away.
    let staying = v.spec.node_id.is_some() && v.metadata.deletion_requested.is_none();
    match (&v.status.engine_control_url, v.status.state) {
        (Some(url), VolumeState::Attached) if staying => {
            let c = EngineClient::new(url);
            Ok((v, c))
        }
        _ => Err(ManagerError::precondition(format!(
            "volume {name:?} must be attached to {action} (it is {:?})",
            v.status.state
        ))),
    }
}

/// Snapshots of a volume: from its engine while attached (the store's mirror is refreshed on the
/// way), else the mirror as the engine last showed it.
#[utoipa::path(get, path = "/v1/volumes/{name}/snapshots", tag = "snapshots", params(("name" = String, Path)),
    responses((status = 200, body = [EngineSnapshot]), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn snapshot_list(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<EngineSnapshot>>> {
    let v = volumes::load(&st.ds, &name).await?;
    if let (Some(url), VolumeState::Attached) = (&v.status.engine_control_url, v.status.state) {
        return Ok(Json(snapshots::refresh(&st.ds, &name, &EngineClient::new(url)).await?));
    }
    let stored = snapshots::stored(&st.ds, &name).await?;
    Ok(Json(stored.iter().map(snapshots::as_engine_snapshot).collect()))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/snapshots", tag = "snapshots", params(("name" = String, Path)), request_body = CreateSnapshot,
    responses((status = 201, body = SnapshotCreated), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn snapshot_create(
    State(st): State<AppState>,
    Path(name): Path<String>,
    OptionalJson(req): OptionalJson<CreateSnapshot>,
) -> Result<(StatusCode, Json<SnapshotCreated>)> {
    if let Some(s) = &req.name {
        check_name("snapshot", s)?;
    }
    check_labels(&req.labels)?;
    let (_, engine) = engine_of(&st, &name, "take a snapshot").await?;
    let created = engine.snapshot_create(req.name.as_deref(), &req.labels).await?;
    snapshots::refresh(&st.ds, &name, &engine).await?;
    st.events.normal("volume", &name, "Snapshot", format!("snapshot {created} created"));
    Ok((StatusCode::CREATED, Json(SnapshotCreated { name: created })))
}

#[utoipa::path(delete, path = "/v1/volumes/{name}/snapshots/{snapshot}", tag = "snapshots",
    params(("name" = String, Path), ("snapshot" = String, Path)),
    responses((status = 204, description = "Removed and purged"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn snapshot_delete(
    State(st): State<AppState>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Result<StatusCode> {
    check_name("snapshot", &snapshot)?;
    let (_, engine) = engine_of(&st, &name, "delete a snapshot").await?;
    // Purge merges snapshot files that a running backup of this volume may be reading.
    if let Some(b) = backup_in_progress(&st.ds, &name).await? {
        return Err(ManagerError::precondition(format!(
            "backup {b:?} of volume {name:?} is running; delete snapshots after it finished"
        )));
    }
    engine.snapshot_remove(&snapshot).await?;
    engine.snapshot_purge().await?;
    snapshots::refresh(&st.ds, &name, &engine).await?;
    st.events.normal("volume", &name, "SnapshotDeleted", format!("snapshot {snapshot} removed"));
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/volumes/{name}/snapshots/{snapshot}/revert", tag = "snapshots",
    params(("name" = String, Path), ("snapshot" = String, Path)),
    responses((status = 204, description = "Reverted"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn snapshot_revert(
    State(st): State<AppState>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Result<StatusCode> {
    check_name("snapshot", &snapshot)?;
    let v = volumes::load(&st.ds, &name).await?;
    if !v.spec.maintenance {
        return Err(ManagerError::precondition(format!(
            "volume {name:?} is not in maintenance mode: revert needs it (attach with maintenance, no client connected)"
        )));
    }
    let (_, engine) = engine_of(&st, &name, "revert").await?;
    engine.revert(&snapshot).await?;
    snapshots::refresh(&st.ds, &name, &engine).await?;
    st.events.normal("volume", &name, "Reverted", format!("to snapshot {snapshot}"));
    Ok(StatusCode::NO_CONTENT)
}
