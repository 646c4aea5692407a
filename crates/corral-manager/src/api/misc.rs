//! `/healthz`, `/v1/settings`, `/v1/events`, `/v1/backuptarget`, `/v1/recurringjobs`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use corral_store::resources::{
    BackupTarget, BackupTargetSpec, JobTask, RecurringJob, RecurringJobSpec, Setting, SettingSpec,
};
use serde::Deserialize;

use corral_api::{BackupTargetView, Health, RecurringJobView, SetBackupTarget, SetSetting, SettingView};

use super::{ApiJson, AppState};
use crate::error::{Code, ErrorBody, ManagerError, Result};
use crate::events::Event;
use crate::model::recurring::parse_cron;
use crate::model::settings::{self, SETTINGS};
use crate::model::validation::{check_backup_url, check_labels, check_name};
use crate::ops::backups::TARGET_RESOURCE as TARGET;

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn healthz(State(st): State<AppState>) -> Result<Json<Health>> {
    st.ds
        .list::<Setting>()
        .await
        .map_err(|e| ManagerError::new(Code::Unavailable, format!("datastore: {e}")))?;
    Ok(Json(Health { status: "ok".into(), node: st.node.clone() }))
}

/// The OpenAPI document (this document).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
#[allow(dead_code)]
pub async fn openapi_doc() {}

pub(super) async fn setting_view(st: &AppState, name: &str) -> Result<SettingView> {
    let def = settings::definition(name)?;
    let stored: Option<Setting> = st.ds.try_get(name).await?;
    Ok(SettingView {
        name: def.name.into(),
        value: stored.as_ref().map_or_else(|| def.default.to_string(), |s| s.spec.value.clone()),
        default: def.default.into(),
        description: def.description.into(),
        resource_version: stored.and_then(|s| s.metadata.resource_version).map(|v| v.0).unwrap_or_default(),
    })
}

#[utoipa::path(get, path = "/v1/settings", tag = "settings", responses((status = 200, body = [SettingView])))]
pub async fn settings_list(State(st): State<AppState>) -> Result<Json<Vec<SettingView>>> {
    let mut out = Vec::new();
    for def in SETTINGS {
        out.push(setting_view(&st, def.name).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/settings/{name}", tag = "settings", params(("name" = String, Path)),
    responses((status = 200, body = SettingView), (status = 404, body = ErrorBody)))]
pub async fn setting_get(State(st): State<AppState>, Path(name): Path<String>) -> Result<Json<SettingView>> {
    Ok(Json(setting_view(&st, &name).await?))
}

#[utoipa::path(put, path = "/v1/settings/{name}", tag = "settings", params(("name" = String, Path)), request_body = SetSetting,
    responses((status = 200, body = SettingView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn setting_set(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SetSetting>,
) -> Result<Json<SettingView>> {
    let def = settings::definition(&name)?;
    let value = settings::validate(def, &req.value)?;
    let stored: Option<Setting> = st.ds.try_get(&name).await?;
    match (stored, req.resource_version) {
        (Some(mut s), expected) => {
            if let Some(exp) = expected {
                if s.metadata.resource_version.as_ref().is_none_or(|c| c.0 != exp) {
                    return Err(ManagerError::new(
                        Code::Conflict,
                        format!("setting {name} changed since version {exp}"),
                    ));
                }
            }
            s.spec.value = value;
            st.ds.update(&s).await?;
        }
        (None, Some(exp)) if !exp.is_empty() => {
            return Err(ManagerError::new(
                Code::Conflict,
                format!("setting {name} changed since version {exp}"),
            ));
        }
        (None, _) => {
            st.ds.create(&Setting::new(name.clone(), SettingSpec { value })).await?;
        }
    }
    st.wake.notify_one();
    Ok(Json(setting_view(&st, &name).await?))
}

/// Filters of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Resource kind: volume, node, replica, engine, ...
    pub resource: Option<String>,
    pub name: Option<String>,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventFilter), responses((status = 200, body = [Event])))]
pub async fn events(
    State(st): State<AppState>,
    query: std::result::Result<Query<EventFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Event>>> {
    let Query(f) = query.map_err(|e| ManagerError::invalid(e.body_text()))?;
    Ok(Json(st.events.list(f.resource.as_deref(), f.name.as_deref())))
}

#[utoipa::path(get, path = "/v1/backuptarget", tag = "backups", responses((status = 200, body = BackupTargetView)))]
pub async fn backup_target_get(State(st): State<AppState>) -> Result<Json<BackupTargetView>> {
    let t: Option<BackupTarget> = st.ds.try_get(TARGET).await?;
    Ok(Json(target_view(t)))
}

pub(super) fn target_view(t: Option<BackupTarget>) -> BackupTargetView {
    t.map_or(
        BackupTargetView { url: String::new(), available: false, message: "no backup target set".into() },
        |t| BackupTargetView { url: t.spec.url, available: t.status.available, message: t.status.message },
    )
}

#[utoipa::path(put, path = "/v1/backuptarget", tag = "backups", request_body = SetBackupTarget,
    responses((status = 200, body = BackupTargetView), (status = 400, body = ErrorBody)))]
pub async fn backup_target_set(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<SetBackupTarget>,
) -> Result<Json<BackupTargetView>> {
    check_backup_url(&req.url)?;
    loop {
        let r = match st.ds.try_get::<BackupTarget>(TARGET).await? {
            Some(mut t) => {
                t.spec.url = req.url.clone();
                st.ds.update(&t).await
            }
            None => {
                st.ds
                    .create(&BackupTarget::new(
                        TARGET,
                        BackupTargetSpec { url: req.url.clone(), poll_interval: 300 },
                    ))
                    .await
            }
        };
        match r {
            Ok(_) => break,
            Err(e) if e.is_conflict() || e.kind() == corral_store::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    st.wake.notify_one();
    backup_target_get(State(st)).await
}

pub(super) fn job_view(j: &RecurringJob) -> RecurringJobView {
    RecurringJobView {
        name: j.metadata.name.clone(),
        task: match j.spec.task {
            JobTask::Snapshot => "snapshot".into(),
            JobTask::Backup => "backup".into(),
        },
        cron: j.spec.cron.clone(),
        retain: j.spec.retain,
        concurrency: j.spec.concurrency,
        groups: j.spec.groups.clone(),
        volumes: j.spec.volumes.clone(),
        labels: j.spec.labels.clone(),
        last_run: j.status.last_run.clone(),
    }
}

#[utoipa::path(get, path = "/v1/recurringjobs", tag = "recurringjobs", responses((status = 200, body = [RecurringJobView])))]
pub async fn jobs_list(State(st): State<AppState>) -> Result<Json<Vec<RecurringJobView>>> {
    let jobs: Vec<RecurringJob> = st.ds.list().await?;
    Ok(Json(jobs.iter().map(job_view).collect()))
}

#[utoipa::path(post, path = "/v1/recurringjobs", tag = "recurringjobs", request_body = RecurringJobView,
    responses((status = 201, body = RecurringJobView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn job_create(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<RecurringJobView>,
) -> Result<(StatusCode, Json<RecurringJobView>)> {
    check_name("recurring job", &req.name)?;
    let task = match req.task.as_str() {
        "snapshot" => JobTask::Snapshot,
        "backup" => JobTask::Backup,
        other => {
            return Err(ManagerError::invalid(format!("task must be snapshot or backup, not {other:?}")))
        }
    };
    parse_cron(&req.cron)?;
    if req.retain == 0 || req.retain > 100 {
        return Err(ManagerError::invalid(format!("retain must be from 1 to 100, not {}", req.retain)));
    }
    if req.concurrency == 0 {
        return Err(ManagerError::invalid("concurrency must be at least 1"));
    }
    for g in &req.groups {
        check_name("group", g)?;
    }
    for v in &req.volumes {
        check_name("volume", v)?;
    }
    if req.groups.is_empty() && req.volumes.is_empty() {
        return Err(ManagerError::invalid("a recurring job needs at least one volume or group"));
    }
    check_labels(&req.labels)?;
    let spec = RecurringJobSpec {
        task,
        cron: req.cron.clone(),
        retain: req.retain,
        concurrency: req.concurrency,
        groups: req.groups.clone(),
        volumes: req.volumes.clone(),
        labels: req.labels.clone(),
    };
    let j = st.ds.create(&RecurringJob::new(req.name.clone(), spec)).await?;
    st.wake.notify_one();
    Ok((StatusCode::CREATED, Json(job_view(&j))))
}

#[utoipa::path(get, path = "/v1/recurringjobs/{name}", tag = "recurringjobs", params(("name" = String, Path)),
    responses((status = 200, body = RecurringJobView), (status = 404, body = ErrorBody)))]
pub async fn job_get(State(st): State<AppState>, Path(name): Path<String>) -> Result<Json<RecurringJobView>> {
    let j: RecurringJob = st.ds.get(&name).await.map_err(|e| {
        if e.is_not_found() {
            ManagerError::not_found("recurring job", &name)
        } else {
            e.into()
        }
    })?;
    Ok(Json(job_view(&j)))
}

#[utoipa::path(delete, path = "/v1/recurringjobs/{name}", tag = "recurringjobs", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
pub async fn job_delete(State(st): State<AppState>, Path(name): Path<String>) -> Result<StatusCode> {
    st.ds.delete::<RecurringJob>(&name, None).await.map_err(|e| {
        if e.is_not_found() {
            ManagerError::not_found("recurring job", &name)
        } else {
            e.into()
        }
    })?;
    Ok(StatusCode::NO_CONTENT)
}
