//! Backups: `POST /v1/volumes/{name}/backups` (the volume action "backup create") and
//! `/v1/backupvolumes[/{name}[/backups[/{backup}]]]` (list, get, delete).
//!
//! Listing reads the backup target through corral-backup, so backups written by another cluster or
//! by Longhorn show up; the store's `Backup` records add what the target cannot tell yet (pending,
//! in-progress and failed backups, with progress and error message). A backup is created by storing
//! a `pending` record; the backup reconciler runs it on the node of a healthy replica.
use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use corral_backup::{BackupSummary, LockTimings};
use corral_store::resources::{Backup, BackupState, BackupVolume, Replica, Volume, VolumeState};

use super::{AppState, OptionalJson};
use corral_api::{BackupView, BackupVolumeView, CreateBackup};

use crate::clients::backup_store::{backup_error, open_target};
use crate::clients::engine::EngineClient;
use crate::error::{ErrorBody, ManagerError, Result};
use crate::model::validation::{check_labels, check_name};
use crate::ops::backups::{backup_in_progress, request_backup, target_url};

fn state_name(s: BackupState) -> &'static str {
    match s {
        BackupState::Pending | BackupState::InProgress => "in-progress",
        BackupState::Completed => "completed",
        BackupState::Error => "error",
    }
}

pub(super) fn view_of_record(b: &Backup) -> BackupView {
    BackupView {
        name: b.metadata.name.clone(),
        volume: b.spec.volume.clone(),
        snapshot: b.spec.snapshot.clone(),
        url: b.status.url.clone().unwrap_or_default(),
        state: state_name(b.status.state).into(),
        progress: b.status.progress,
        size: b.status.size,
        created: b.metadata.created.clone(),
        labels: b.spec.labels.clone(),
        error: if b.status.state == BackupState::Error { b.status.message.clone() } else { String::new() },
    }
}

fn view_of_summary(s: &BackupSummary) -> BackupView {
    BackupView {
        name: s.name.clone(),
        volume: s.volume.clone(),
        snapshot: s.snapshot.clone(),
        url: s.url.clone(),
        state: if s.in_progress { "in-progress".into() } else { "completed".into() },
        progress: if s.in_progress { 0 } else { 100 },
        size: s.size,
        created: if s.created.is_empty() { s.snapshot_created_at.clone() } else { s.created.clone() },
        labels: s.labels.clone(),
        error: String::new(),
    }
}

/// The target's backups merged with the store's records: a record still running (or failed)
/// describes the backup better than the target's in-progress config; a record of a completed
/// backup that is no longer in the target was deleted by someone else and is not shown.
fn merge(in_target: &[BackupSummary], records: &[Backup]) -> Vec<BackupView> {
    let mut out: Vec<BackupView> = Vec::new();
    for s in in_target {
        let rec = records.iter().find(|r| r.metadata.name == s.name);
        out.push(match rec {
            Some(r) if r.status.state != BackupState::Completed => {
                let mut v = view_of_record(r);
                v.url = s.url.clone();
                v
            }
            Some(r) => BackupView { created: r.metadata.created.clone(), ..view_of_summary(s) },
            None => view_of_summary(s),
        });
    }
    let known: BTreeSet<&str> = in_target.iter().map(|s| s.name.as_str()).collect();
    out.extend(
        records
            .iter()
            .filter(|r| !known.contains(r.metadata.name.as_str()) && r.status.state != BackupState::Completed)
            .map(view_of_record),
    );
    out
}

async fn require_target(st: &AppState) -> Result<String> {
    target_url(&st.ds).await?.ok_or_else(|| {
        ManagerError::precondition(
            "no backup target is set; set one with PUT /v1/backuptarget (corral backup target set URL)",
        )
    })
}

async fn records_of(st: &AppState, volume: &str) -> Result<Vec<Backup>> {
    let all: Vec<Backup> = st.ds.list().await?;
    Ok(all.into_iter().filter(|b| b.spec.volume == volume).collect())
}

/// The target's backups of `volume` (none when the target has no such volume).
async fn target_backups(target_url: &str, volume: &str) -> Result<Vec<BackupSummary>> {
    let target = open_target(target_url)?;
    match corral_backup::list_backups(&target, volume).await {
        Ok(list) => Ok(list),
        // Not in the target, or a name the backup store cannot hold: nothing there.
        Err(e)
            if matches!(
                e.kind(),
                corral_backup::ErrorKind::NotFound | corral_backup::ErrorKind::InvalidArgument
            ) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(backup_error(e)),
    }
}

#[utoipa::path(post, path = "/v1/volumes/{name}/backups", tag = "backups", params(("name" = String, Path)), request_body = CreateBackup,
    responses((status = 201, body = BackupView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    Path(name): Path<String>,
    OptionalJson(req): OptionalJson<CreateBackup>,
) -> Result<(StatusCode, Json<BackupView>)> {
    if let Some(s) = &req.snapshot {
        check_name("snapshot", s)?;
    }
    check_labels(&req.labels)?;
    require_target(&st).await?;
    check_name("volume", &name)?;
    let v: Volume = st.ds.try_get(&name).await?.ok_or_else(|| ManagerError::not_found("volume", &name))?;
    if v.metadata.deletion_requested.is_some() {
        return Err(ManagerError::precondition(format!("volume {name:?} is being deleted")));
    }
    if v.status.state == VolumeState::Attached && v.spec.node_id.is_none() {
        // Its engine is being stopped: neither it nor the replicas' files can be trusted now.
        return Err(ManagerError::precondition(format!("volume {name:?} is detaching; back it up after")));
    }
    let attached = v.status.state == VolumeState::Attached;
    let engine = v.status.engine_control_url.as_deref().filter(|_| attached).map(EngineClient::new);
    let snapshot = match (&req.snapshot, &engine) {
        (Some(s), Some(engine)) => {
            let known = engine
                .snapshots()
                .await?
                .iter()
                .any(|x| &x.name == s && !x.removed && x.name != "volume-head");
            if !known {
                return Err(ManagerError::not_found("snapshot", s));
            }
            s.clone()
        }
        (Some(s), None) => {
            // Detached: the snapshot must be in a replica directory of this node.
            let replicas: Vec<Replica> = st.ds.list().await?;
            let file = format!("volume-snap-{s}.img");
            let known = replicas.iter().any(|r| {
                r.spec.volume == name && std::path::Path::new(&r.spec.data_dir).join(&file).exists()
            });
            if !known {
                return Err(ManagerError::not_found("snapshot", s));
            }
            s.clone()
        }
        (None, Some(engine)) => {
            let mut labels = req.labels.clone();
            labels.insert("corral.io/backup".into(), "true".into());
            engine.snapshot_create(None, &labels).await?
        }
        (None, None) => {
            return Err(ManagerError::precondition(format!(
                "volume {name:?} is not attached: give the snapshot to back up, or attach it so a new snapshot can be taken"
            )));
        }
    };
    let b = request_backup(&st.ds, &name, &snapshot, req.labels.clone(), None).await?;
    st.events.normal(
        "volume",
        &name,
        "BackupRequested",
        format!("backup {} of snapshot {snapshot}", b.metadata.name),
    );
    st.wake.notify_one();
    Ok((StatusCode::CREATED, Json(view_of_record(&b))))
}

#[utoipa::path(get, path = "/v1/backupvolumes", tag = "backups",
    responses((status = 200, body = [BackupVolumeView]), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn volume_list(State(st): State<AppState>) -> Result<Json<Vec<BackupVolumeView>>> {
    let url = require_target(&st).await?;
    let target = open_target(&url)?;
    let mut out: Vec<BackupVolumeView> = corral_backup::list_volumes(&target)
        .await
        .map_err(backup_error)?
        .into_iter()
        .map(|v| BackupVolumeView {
            name: v.name,
            size: v.size,
            created: v.created,
            last_backup_name: v.last_backup_name,
            last_backup_at: v.last_backup_at,
            backup_count: v.backup_count,
            labels: v.labels,
        })
        .collect();
    // Volumes whose first backup is still running are not in the target yet.
    let records: Vec<Backup> = st.ds.list().await?;
    for r in
        records.iter().filter(|r| matches!(r.status.state, BackupState::Pending | BackupState::InProgress))
    {
        if !out.iter().any(|v| v.name == r.spec.volume) {
            out.push(BackupVolumeView {
                name: r.spec.volume.clone(),
                size: 0,
                created: r.metadata.created.clone(),
                last_backup_name: String::new(),
                last_backup_at: String::new(),
                backup_count: records.iter().filter(|x| x.spec.volume == r.spec.volume).count(),
                labels: BTreeMap::new(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/backupvolumes/{name}", tag = "backups", params(("name" = String, Path)),
    responses((status = 200, body = BackupVolumeView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn volume_get(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<BackupVolumeView>> {
    check_name("backup volume", &name)?;
    let Json(all) = volume_list(State(st)).await?;
    all.into_iter()
        .find(|v| v.name == name)
        .map(Json)
        .ok_or_else(|| ManagerError::not_found("backup volume", &name))
}

#[utoipa::path(get, path = "/v1/backupvolumes/{name}/backups", tag = "backups", params(("name" = String, Path)),
    responses((status = 200, body = [BackupView]), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn backup_list(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<BackupView>>> {
    check_name("backup volume", &name)?;
    let url = require_target(&st).await?;
    let in_target = target_backups(&url, &name).await?;
    let records = records_of(&st, &name).await?;
    let list = merge(&in_target, &records);
    if list.is_empty() && in_target.is_empty() {
        let target = open_target(&url)?;
        let exists =
            corral_backup::list_volumes(&target).await.map_err(backup_error)?.iter().any(|v| v.name == name);
        if !exists {
            return Err(ManagerError::not_found("backup volume", &name));
        }
    }
    Ok(Json(list))
}

#[utoipa::path(get, path = "/v1/backupvolumes/{name}/backups/{backup}", tag = "backups",
    params(("name" = String, Path), ("backup" = String, Path)),
    responses((status = 200, body = BackupView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn backup_get(
    State(st): State<AppState>,
    Path((name, backup)): Path<(String, String)>,
) -> Result<Json<BackupView>> {
    check_name("backup volume", &name)?;
    check_name("backup", &backup)?;
    let url = require_target(&st).await?;
    let in_target = target_backups(&url, &name).await?;
    let records = records_of(&st, &name).await?;
    merge(&in_target, &records)
        .into_iter()
        .find(|b| b.name == backup)
        .map(Json)
        .ok_or_else(|| ManagerError::not_found("backup", &backup))
}

#[utoipa::path(delete, path = "/v1/backupvolumes/{name}/backups/{backup}", tag = "backups",
    params(("name" = String, Path), ("backup" = String, Path)),
    responses((status = 204, description = "Deleted, with the blocks no other backup uses"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn backup_delete(
    State(st): State<AppState>,
    Path((name, backup)): Path<(String, String)>,
) -> Result<StatusCode> {
    check_name("backup volume", &name)?;
    check_name("backup", &backup)?;
    let url = require_target(&st).await?;
    let record: Option<Backup> = st.ds.try_get(&backup).await?;
    if let Some(r) = record.as_ref().filter(|r| r.spec.volume == name) {
        if matches!(r.status.state, BackupState::Pending | BackupState::InProgress) {
            return Err(ManagerError::precondition(format!("backup {backup:?} is still running")));
        }
    }
    let target = open_target(&url)?;
    let in_target = corral_backup::delete_backup(&target, &name, &backup, LockTimings::default()).await;
    match in_target {
        Ok(_) => {}
        // A failed backup that never reached the target: only its record is left.
        Err(e) if e.kind() == corral_backup::ErrorKind::NotFound && record.is_some() => {}
        Err(e) => return Err(backup_error(e)),
    }
    if record.is_some() {
        match st.ds.delete::<Backup>(&backup, None).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    st.events.normal("backupvolume", &name, "BackupDeleted", backup);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/backupvolumes/{name}", tag = "backups", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted with all its backups and blocks"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn volume_delete(State(st): State<AppState>, Path(name): Path<String>) -> Result<StatusCode> {
    check_name("backup volume", &name)?;
    let url = require_target(&st).await?;
    if let Some(running) = backup_in_progress(&st.ds, &name).await? {
        return Err(ManagerError::precondition(format!(
            "backup {running:?} of volume {name:?} is still running"
        )));
    }
    let target = open_target(&url)?;
    let records = records_of(&st, &name).await?;
    match corral_backup::delete_volume(&target, &name, LockTimings::default()).await {
        Ok(_) => {}
        Err(e) if e.kind() == corral_backup::ErrorKind::NotFound && !records.is_empty() => {}
        Err(e) => return Err(backup_error(e)),
    }
    for r in records {
        let _ = st.ds.delete::<Backup>(&r.metadata.name, None).await;
    }
    match st.ds.delete::<BackupVolume>(&name, None).await {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    st.events.normal("backupvolume", &name, "Deleted", "backup volume deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, in_progress: bool) -> BackupSummary {
        BackupSummary {
            name: name.into(),
            url: format!("file:///t?backup={name}&volume=v"),
            volume: "v".into(),
            snapshot: "s".into(),
            snapshot_created_at: "2026-01-01T00:00:00Z".into(),
            created: if in_progress { String::new() } else { "2026-01-01T00:00:01Z".into() },
            in_progress,
            size: 4 << 20,
            block_count: 2,
            block_size: 2 << 20,
            is_incremental: false,
            compression: "lz4".into(),
            newly_uploaded_data_size: 0,
            re_uploaded_data_size: 0,
            labels: BTreeMap::new(),
            parameters: BTreeMap::new(),
        }
    }

    fn record(name: &str, state: BackupState) -> Backup {
        let mut b = Backup::new(
            name,
            corral_store::resources::BackupSpec {
                volume: "v".into(),
                snapshot: "s".into(),
                labels: BTreeMap::new(),
                created_by_job: None,
            },
        );
        b.status.state = state;
        b.status.progress = 40;
        b.status.message = "boom".into();
        b
    }

    #[test]
    fn merge_prefers_running_records_and_keeps_foreign_backups() {
        let target = vec![summary("foreign", false), summary("mine", true), summary("done", false)];
        let records = vec![
            record("mine", BackupState::InProgress),
            record("failed", BackupState::Error),
            record("done", BackupState::Completed),
            record("deleted-elsewhere", BackupState::Completed),
        ];
        let m = merge(&target, &records);
        let names: Vec<&str> = m.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["foreign", "mine", "done", "failed"]);
        assert_eq!((m[0].state.as_str(), m[0].progress), ("completed", 100));
        assert_eq!((m[1].state.as_str(), m[1].progress), ("in-progress", 40));
        assert_eq!(m[1].url, "file:///t?backup=mine&volume=v");
        assert_eq!((m[2].state.as_str(), m[2].size), ("completed", 4 << 20));
        assert_eq!((m[3].state.as_str(), m[3].error.as_str()), ("error", "boom"));
    }
}
