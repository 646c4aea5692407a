//! [`ApiClient`]: a typed client of the manager's REST API, used by the `corral` CLI and by tests.
//! Errors carry the API's stable [`Code`] and message.
use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backups::{BackupView, BackupVolumeView, CreateBackup};
use crate::engine::EngineSnapshot;
use crate::error::{ApiError, Code, ErrorBody, Result};
use crate::nodes::{AddDisk, NodeView, UpdateDisk, UpdateNode};
use crate::settings::{BackupTargetView, Health, RecurringJobView, SetBackupTarget, SetSetting, SettingView};
use crate::volumes::{
    AttachVolume, CreateSnapshot, CreateVolume, DetachVolume, ExpandVolume, MaintenanceVolume,
    SnapshotCreated, VolumeView,
};

/// Client of one manager. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

/// No request body.
const NO_BODY: Option<&()> = None;

impl ApiClient {
    /// `base` is `http://host:port`.
    pub fn new(base: &str) -> ApiClient {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap_or_default();
        ApiClient { base: base.trim_end_matches('/').to_string(), http }
    }

    /// The manager's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Any call; `body` is sent as JSON when given. Empty answers decode as `null`.
    pub async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            let message = format!(
                "cannot reach the Corral manager at {}: {e} (is it running? see --url / CORRAL_URL)",
                self.base
            );
            ApiError::with_source(Code::Unavailable, message, e)
        })?;
        let status = resp.status();
        let bytes =
            resp.bytes().await.map_err(|e| ApiError::with_source(Code::Unavailable, e.to_string(), e))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => ApiError::new(b.code, b.message),
                Err(_) => ApiError::new(
                    Code::Internal,
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
                ),
            });
        }
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::with_source(Code::Internal, format!("unexpected answer from {path}: {e}"), e)
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, NO_BODY).await
    }

    async fn post<T: DeserializeOwned, B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::DELETE, path, NO_BODY).await
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health> {
        self.get("/healthz").await
    }

    /// `GET /v1/volumes`.
    pub async fn volumes(&self) -> Result<Vec<VolumeView>> {
        self.get("/v1/volumes").await
    }

    /// `GET /v1/volumes/{name}`.
    pub async fn volume(&self, name: &str) -> Result<VolumeView> {
        self.get(&format!("/v1/volumes/{}", name)).await
    }

    /// `POST /v1/volumes`.
    pub async fn create_volume(&self, body: &CreateVolume) -> Result<VolumeView> {
        self.post("/v1/volumes", body).await
    }

    /// Attach `name` to `node` (default: the manager's node).
    pub async fn attach(&self, name: &str, node: Option<&str>, maintenance: bool) -> Result<VolumeView> {
        let body = AttachVolume { node: node.map(str::to_string), maintenance, ..AttachVolume::default() };
        self.post(&format!("/v1/volumes/{}/attach", name), &body).await
    }

    /// Attach `name` with every option of the body (e.g. `force`, which moves a volume off an attach
    /// node that is down and is refused while that node is ready).
    pub async fn attach_with(&self, name: &str, body: &AttachVolume) -> Result<VolumeView> {
        self.post(&format!("/v1/volumes/{}/attach", name), body).await
    }

    pub async fn detach(&self, name: &str) -> Result<VolumeView> {
        let body = DetachVolume { resource_version: None };
        self.post(&format!("/v1/volumes/{}/detach", name), &body).await
    }

    pub async fn expand(&self, name: &str, size: u64) -> Result<VolumeView> {
        let body = ExpandVolume { size, resource_version: None };
        self.post(&format!("/v1/volumes/{}/expand", name), &body).await
    }

    pub async fn maintenance(&self, name: &str, enabled: bool) -> Result<VolumeView> {
        let body = MaintenanceVolume { enabled, resource_version: None };
        self.post(&format!("/v1/volumes/{}/maintenance", name), &body).await
    }

    /// Request the deletion of a volume (it goes once the reconciler removed its replicas).
    pub async fn delete_volume(&self, name: &str) -> Result<VolumeView> {
        self.delete(&format!("/v1/volumes/{}", name)).await
    }

    pub async fn snapshots(&self, volume: &str) -> Result<Vec<EngineSnapshot>> {
        self.get(&format!("/v1/volumes/{}/snapshots", volume)).await
    }

    /// Take a snapshot (named `name`, or a generated name); returns its name.
    pub async fn snapshot_create(&self, volume: &str, name: Option<&str>) -> Result<String> {
        let body = CreateSnapshot { name: name.map(str::to_string), labels: BTreeMap::new() };
        let created: SnapshotCreated = self.post(&format!("/v1/volumes/{}/snapshots", volume), &body).await?;
        Ok(created.name)
    }

    pub async fn snapshot_delete(&self, volume: &str, name: &str) -> Result<()> {
        let path = format!("/v1/volumes/{}/snapshots/{}", volume, name);
        self.delete::<serde_json::Value>(&path).await.map(drop)
    }

    pub async fn snapshot_revert(&self, volume: &str, name: &str) -> Result<()> {
        let path = format!("/v1/volumes/{}/snapshots/{}/revert", volume, name);
        self.post::<serde_json::Value, _>(&path, &serde_json::json!({})).await.map(drop)
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>> {
        self.get("/v1/nodes").await
    }

    pub async fn node(&self, name: &str) -> Result<NodeView> {
        self.get(&format!("/v1/nodes/{}", name)).await
    }

    pub async fn node_update(&self, name: &str, body: &UpdateNode) -> Result<NodeView> {
        self.call(Method::PATCH, &format!("/v1/nodes/{}", name), Some(body)).await
    }

    pub async fn disk_add(&self, node: &str, body: &AddDisk) -> Result<NodeView> {
        self.post(&format!("/v1/nodes/{}/disks", node), body).await
    }

    pub async fn disk_update(&self, node: &str, disk: &str, body: &UpdateDisk) -> Result<NodeView> {
        let path = format!("/v1/nodes/{}/disks/{}", node, disk);
        self.call(Method::PATCH, &path, Some(body)).await
    }

    pub async fn disk_remove(&self, node: &str, disk: &str) -> Result<NodeView> {
        self.delete(&format!("/v1/nodes/{}/disks/{}", node, disk)).await
    }

    pub async fn settings(&self) -> Result<Vec<SettingView>> {
        self.get("/v1/settings").await
    }

    pub async fn setting(&self, name: &str) -> Result<SettingView> {
        self.get(&format!("/v1/settings/{}", name)).await
    }

    pub async fn setting_set(&self, name: &str, value: &str) -> Result<SettingView> {
        let body = SetSetting { value: value.to_string(), resource_version: None };
        self.call(Method::PUT, &format!("/v1/settings/{}", name), Some(&body)).await
    }

    pub async fn jobs(&self) -> Result<Vec<RecurringJobView>> {
        self.get("/v1/recurringjobs").await
    }

    pub async fn job(&self, name: &str) -> Result<RecurringJobView> {
        self.get(&format!("/v1/recurringjobs/{}", name)).await
    }

    /// Create a recurring job (`lastRun` is the server's to set and is not sent).
    pub async fn job_create(&self, job: &RecurringJobView) -> Result<RecurringJobView> {
        let body = RecurringJobView { last_run: None, ..job.clone() };
        self.post("/v1/recurringjobs", &body).await
    }

    pub async fn job_delete(&self, name: &str) -> Result<()> {
        self.delete::<serde_json::Value>(&format!("/v1/recurringjobs/{}", name)).await.map(drop)
    }

    pub async fn backup_target(&self) -> Result<BackupTargetView> {
        self.get("/v1/backuptarget").await
    }

    pub async fn backup_target_set(&self, url: &str) -> Result<BackupTargetView> {
        let body = SetBackupTarget { url: url.to_string() };
        self.call(Method::PUT, "/v1/backuptarget", Some(&body)).await
    }

    /// Back up `volume`: the given snapshot, or a new one (the volume must then be attached).
    pub async fn backup_create(
        &self,
        volume: &str,
        snapshot: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<BackupView> {
        let body = CreateBackup { snapshot: snapshot.map(str::to_string), labels: labels.clone() };
        self.post(&format!("/v1/volumes/{}/backups", volume), &body).await
    }

    pub async fn backup_volumes(&self) -> Result<Vec<BackupVolumeView>> {
        self.get("/v1/backupvolumes").await
    }

    pub async fn backup_volume(&self, volume: &str) -> Result<BackupVolumeView> {
        self.get(&format!("/v1/backupvolumes/{}", volume)).await
    }

    pub async fn backup_volume_delete(&self, volume: &str) -> Result<()> {
        self.delete::<serde_json::Value>(&format!("/v1/backupvolumes/{}", volume)).await.map(drop)
    }

    pub async fn backups(&self, volume: &str) -> Result<Vec<BackupView>> {
        self.get(&format!("/v1/backupvolumes/{}/backups", volume)).await
    }

    pub async fn backup(&self, volume: &str, backup: &str) -> Result<BackupView> {
        self.get(&format!("/v1/backupvolumes/{}/backups/{}", volume, backup)).await
    }

    pub async fn backup_delete(&self, volume: &str, backup: &str) -> Result<()> {
        let path = format!("/v1/backupvolumes/{}/backups/{}", volume, backup);
        self.delete::<serde_json::Value>(&path).await.map(drop)
    }

    /// Poll a backup until it completed (or failed: an error carrying its message), calling
    /// `progress` on every poll.
    pub async fn wait_backup(
        &self,
        volume: &str,
        backup: &str,
        timeout: Duration,
        mut progress: impl FnMut(&BackupView),
    ) -> Result<BackupView> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let b = self.backup(volume, backup).await?;
            progress(&b);
            match b.state.as_str() {
                "completed" => return Ok(b),
                "error" => {
                    return Err(ApiError::new(
                        Code::Internal,
                        format!("backup {backup} of volume {volume} failed: {}", b.error),
                    ));
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ApiError::new(
                    Code::Unavailable,
                    format!("backup {backup} is still {} ({}%) after {timeout:?}", b.state, b.progress),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Poll a volume until `done` holds, calling `progress` on every poll; fails when the volume
    /// reports a failed scheduling or restore condition, or `timeout` passes.
    pub async fn wait_volume(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&VolumeView) -> bool,
        mut progress: impl FnMut(&VolumeView),
    ) -> Result<VolumeView> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.volume(name).await?;
            progress(&v);
            if done(&v) {
                return Ok(v);
            }
            if let Some(c) = v
                .conditions
                .iter()
                .find(|c| !c.status && (c.reason == "SchedulingFailed" || c.reason == "RestoreFailed"))
            {
                return Err(ApiError::new(Code::FailedPrecondition, format!("volume {name}: {}", c.message)));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ApiError::new(
                    Code::Unavailable,
                    format!("volume {name} is still {:?}/{:?} after {timeout:?}", v.state, v.robustness),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
