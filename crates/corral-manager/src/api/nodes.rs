//! `/v1/nodes` and their disks: list, tag, enable/disable scheduling, add and remove disks.
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use corral_store::resources::{DiskSpec, Node, Replica};

use corral_api::{AddDisk, DiskView, NodeView, UpdateDisk, UpdateNode};

use super::{ApiJson, AppState};
use crate::clients::disks::disk_status;
use crate::error::{Code, ErrorBody, ManagerError, Result};
use crate::model::validation::{check_int64, check_name};

pub(crate) fn view(n: &Node, replicas: &[Replica]) -> NodeView {
    let disks = n
        .spec
        .disks
        .iter()
        .map(|(name, d)| {
            let st = n.status.disks.get(name).cloned().unwrap_or_default();
            let mine: Vec<&Replica> =
                replicas.iter().filter(|r| r.spec.node == n.metadata.name && &r.spec.disk == name).collect();
            DiskView {
                name: name.clone(),
                path: d.path.clone(),
                allow_scheduling: d.allow_scheduling,
                storage_reserved: d.storage_reserved,
                tags: d.tags.clone(),
                storage_maximum: st.storage_maximum,
                storage_available: st.storage_available,
                storage_scheduled: mine.iter().map(|r| r.spec.size).sum(),
                scheduled_replicas: mine.iter().map(|r| r.metadata.name.clone()).collect(),
            }
        })
        .collect();
    NodeView {
        name: n.metadata.name.clone(),
        address: n.spec.address.clone(),
        allow_scheduling: n.spec.allow_scheduling,
        tags: n.spec.tags.clone(),
        ready: crate::model::liveness::is_ready(n),
        state: crate::model::liveness::state(n).to_string(),
        conditions: n.status.conditions.iter().map(super::convert::condition).collect(),
        leader: false,
        disks,
        resource_version: n.metadata.resource_version.as_ref().map(|r| r.0.clone()).unwrap_or_default(),
    }
}

async fn mutate_node(
    st: &AppState,
    name: &str,
    expected: Option<&str>,
    mut f: impl FnMut(&mut Node) -> Result<()>,
) -> Result<Node> {
    for _ in 0..20 {
        let mut n: Node = st.ds.get(name).await.map_err(|e| {
            if e.is_not_found() {
                ManagerError::not_found("node", name)
            } else {
                e.into()
            }
        })?;
        if let Some(exp) = expected {
            if n.metadata.resource_version.as_ref().is_none_or(|c| c.0 != exp) {
                return Err(ManagerError::new(
                    Code::Conflict,
                    format!("node {name:?} changed since version {exp}; read it again"),
                ));
            }
        }
        f(&mut n)?;
        match st.ds.update(&n).await {
            Ok(n) => {
                st.wake.notify_one();
                return Ok(n);
            }
            Err(e) if e.is_conflict() && expected.is_none() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ManagerError::new(Code::Conflict, format!("node {name:?} keeps changing; retry")))
}

async fn node_view(st: &AppState, n: &Node) -> Result<NodeView> {
    let replicas: Vec<Replica> = st.ds.list().await?;
    let mut v = view(n, &replicas);
    v.leader = st.claims.leader_node().await.as_deref() == Some(v.name.as_str());
    Ok(v)
}

fn check_tags(tags: &[String]) -> Result<()> {
    tags.iter().try_for_each(|t| check_name("tag", t))
}

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", responses((status = 200, body = [NodeView])))]
pub async fn list(State(st): State<AppState>) -> Result<Json<Vec<NodeView>>> {
    let nodes: Vec<Node> = st.ds.list().await?;
    let replicas: Vec<Replica> = st.ds.list().await?;
    let leader = st.claims.leader_node().await;
    let views = nodes.iter().map(|n| view(n, &replicas));
    Ok(Json(views.map(|v| NodeView { leader: leader.as_deref() == Some(v.name.as_str()), ..v }).collect()))
}

#[utoipa::path(get, path = "/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path)),
    responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
pub async fn get(State(st): State<AppState>, Path(name): Path<String>) -> Result<Json<NodeView>> {
    let n: Node = st.ds.get(&name).await.map_err(|e| {
        if e.is_not_found() {
            ManagerError::not_found("node", &name)
        } else {
            e.into()
        }
    })?;
    Ok(Json(node_view(&st, &n).await?))
}

#[utoipa::path(patch, path = "/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path)), request_body = UpdateNode,
    responses((status = 200, body = NodeView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateNode>,
) -> Result<Json<NodeView>> {
    if let Some(tags) = &req.tags {
        check_tags(tags)?;
    }
    let n = mutate_node(&st, &name, req.resource_version.as_deref(), |n| {
        if let Some(a) = req.allow_scheduling {
            n.spec.allow_scheduling = a;
        }
        if let Some(t) = &req.tags {
            n.spec.tags = t.clone();
        }
        Ok(())
    })
    .await?;
    Ok(Json(node_view(&st, &n).await?))
}

/// A disk name from its path: `/var/lib/corral/disk-2` → `disk-2`.
fn disk_name_from_path(path: &str) -> String {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("disk");
    let cleaned: String = last
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    let cleaned = cleaned.trim_start_matches(['-', '.', '_']).to_string();
    if cleaned.is_empty() {
        "disk".into()
    } else {
        cleaned.chars().take(63).collect()
    }
}

#[utoipa::path(post, path = "/v1/nodes/{name}/disks", tag = "nodes", params(("name" = String, Path)), request_body = AddDisk,
    responses((status = 201, body = NodeView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn disk_add(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<AddDisk>,
) -> Result<(StatusCode, Json<NodeView>)> {
    let trimmed = req.path.trim_end_matches('/');
    let path =
        if trimmed.is_empty() && req.path.starts_with('/') { "/".to_string() } else { trimmed.to_string() };
    if !path.starts_with('/')
        || path.split('/').any(|c| c == ".." || c == ".")
        || path.chars().any(char::is_control)
    {
        return Err(ManagerError::invalid(format!(
            "disk path {:?} must be an absolute path without . or ..",
            req.path
        )));
    }
    let disk = req.name.clone().unwrap_or_else(|| disk_name_from_path(&path));
    check_name("disk", &disk)?;
    check_tags(&req.tags)?;
    check_int64("storageReserved", req.storage_reserved)?;
    if name == st.node {
        // The directory must exist on this node; other nodes' managers check their own.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            _ => {
                return Err(ManagerError::invalid(format!(
                    "disk path {path:?} is not an existing directory on node {name}"
                )))
            }
        }
    }
    let local_status = if name == st.node { Some(disk_status(&path).await) } else { None };
    let n = mutate_node(&st, &name, None, |n| {
        if n.spec.disks.contains_key(&disk) {
            return Err(ManagerError::new(
                Code::AlreadyExists,
                format!("node {name} already has a disk named {disk:?}"),
            ));
        }
        if let Some((other, _)) = n.spec.disks.iter().find(|(_, d)| d.path == path) {
            return Err(ManagerError::new(
                Code::AlreadyExists,
                format!("path {path:?} is already disk {other:?} of node {name}"),
            ));
        }
        n.spec.disks.insert(
            disk.clone(),
            DiskSpec {
                path: path.clone(),
                allow_scheduling: req.allow_scheduling,
                storage_reserved: req.storage_reserved,
                tags: req.tags.clone(),
            },
        );
        if let Some(status) = &local_status {
            n.status.disks.insert(disk.clone(), status.clone());
        }
        Ok(())
    })
    .await?;
    st.events.normal("node", &name, "DiskAdded", format!("disk {disk} at {path}"));
    Ok((StatusCode::CREATED, Json(node_view(&st, &n).await?)))
}

#[utoipa::path(patch, path = "/v1/nodes/{name}/disks/{disk}", tag = "nodes", params(("name" = String, Path), ("disk" = String, Path)),
    request_body = UpdateDisk,
    responses((status = 200, body = NodeView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn disk_update(
    State(st): State<AppState>,
    Path((name, disk)): Path<(String, String)>,
    ApiJson(req): ApiJson<UpdateDisk>,
) -> Result<Json<NodeView>> {
    if let Some(tags) = &req.tags {
        check_tags(tags)?;
    }
    if let Some(r) = req.storage_reserved {
        check_int64("storageReserved", r)?;
    }
    let n = mutate_node(&st, &name, None, |n| {
        let d = n.spec.disks.get_mut(&disk).ok_or_else(|| ManagerError::not_found("disk", &disk))?;
        if let Some(a) = req.allow_scheduling {
            d.allow_scheduling = a;
        }
        if let Some(t) = &req.tags {
            d.tags = t.clone();
        }
        if let Some(r) = req.storage_reserved {
            d.storage_reserved = r;
        }
        Ok(())
    })
    .await?;
    Ok(Json(node_view(&st, &n).await?))
}

#[utoipa::path(delete, path = "/v1/nodes/{name}/disks/{disk}", tag = "nodes", params(("name" = String, Path), ("disk" = String, Path)),
    responses((status = 200, body = NodeView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn disk_remove(
    State(st): State<AppState>,
    Path((name, disk)): Path<(String, String)>,
) -> Result<Json<NodeView>> {
    let replicas: Vec<Replica> = st.ds.list().await?;
    let on_disk: Vec<&str> = replicas
        .iter()
        .filter(|r| r.spec.node == name && r.spec.disk == disk)
        .map(|r| r.metadata.name.as_str())
        .collect();
    if !on_disk.is_empty() {
        return Err(ManagerError::precondition(format!(
            "disk {disk:?} of node {name} still holds replicas ({}); move or delete their volumes first",
            on_disk.join(", ")
        )));
    }
    let n = mutate_node(&st, &name, None, |n| {
        n.spec.disks.remove(&disk).map(drop).ok_or_else(|| ManagerError::not_found("disk", &disk))?;
        n.status.disks.remove(&disk);
        Ok(())
    })
    .await?;
    st.events.normal("node", &name, "DiskRemoved", format!("disk {disk}"));
    Ok(Json(view(&n, &replicas)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn disk_names_from_paths() {
        assert_eq!(super::disk_name_from_path("/var/lib/corral/Disk 2/"), "disk-2");
        assert_eq!(super::disk_name_from_path("/"), "disk");
    }
}
