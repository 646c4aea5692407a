//! A client of the manager's REST API (used by the `corral` CLI and tests). Errors carry the API's
//! stable code and message.
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::api::{
    BackupTargetView, BackupView, BackupVolumeView, NodeView, RecurringJobView, SettingView, VolumeView,
};
use crate::clients::engine::EngineSnapshot;
use crate::error::{Code, ErrorBody, ManagerError, Result};

/// Client of one manager. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// `base` is `http://host:port`.
    pub fn new(base: &str) -> ApiClient {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap_or_default();
        ApiClient { base: base.trim_end_matches('/').to_string(), http }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Any call; `body` is sent as JSON when given. Empty answers decode as `null`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            ManagerError::new(
                Code::Unavailable,
                format!(
                    "cannot reach the Corral manager at {}: {e} (is it running? see --url / CORRAL_URL)",
                    self.base
                ),
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ManagerError::new(Code::Unavailable, e.to_string()))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => ManagerError::new(b.code, b.message),
                Err(_) => ManagerError::new(
                    Code::Internal,
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
                ),
            });
        }
        let bytes = if bytes.is_empty() { bytes::Bytes::from_static(b"null") } else { bytes };
        serde_json::from_slice(&bytes)
            .map_err(|e| ManagerError::new(Code::Internal, format!("unexpected answer from {path}: {e}")))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn volumes(&self) -> Result<Vec<VolumeView>> {
        self.get("/v1/volumes").await
    }

    pub async fn volume(&self, name: &str) -> Result<VolumeView> {
        self.get(&format!("/v1/volumes/{name}")).await
    }

    /// `body` is the create request (see the API).
    pub async fn create_volume(&self, body: Value) -> Result<VolumeView> {
        self.post("/v1/volumes", body).await
    }

    pub async fn attach(&self, name: &str, node: Option<&str>, maintenance: bool) -> Result<VolumeView> {
        self.post(&format!("/v1/volumes/{name}/attach"), json!({"node": node, "maintenance": maintenance}))
            .await
    }

    pub async fn detach(&self, name: &str) -> Result<VolumeView> {
        self.post(&format!("/v1/volumes/{name}/detach"), json!({})).await
    }

    pub async fn expand(&self, name: &str, size: u64) -> Result<VolumeView> {
        self.post(&format!("/v1/volumes/{name}/expand"), json!({"size": size})).await
    }

    pub async fn delete_volume(&self, name: &str) -> Result<VolumeView> {
        self.call(reqwest::Method::DELETE, &format!("/v1/volumes/{name}"), None).await
    }

    pub async fn snapshots(&self, volume: &str) -> Result<Vec<EngineSnapshot>> {
        self.get(&format!("/v1/volumes/{volume}/snapshots")).await
    }

    pub async fn snapshot_create(&self, volume: &str, name: Option<&str>) -> Result<String> {
        let v: Value = self.post(&format!("/v1/volumes/{volume}/snapshots"), json!({"name": name})).await?;
        Ok(v["name"].as_str().unwrap_or_default().to_string())
    }

    pub async fn snapshot_delete(&self, volume: &str, name: &str) -> Result<()> {
        self.call::<Value>(reqwest::Method::DELETE, &format!("/v1/volumes/{volume}/snapshots/{name}"), None)
            .await
            .map(drop)
    }

    pub async fn snapshot_revert(&self, volume: &str, name: &str) -> Result<()> {
        self.post::<Value>(&format!("/v1/volumes/{volume}/snapshots/{name}/revert"), json!({}))
            .await
            .map(drop)
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>> {
        self.get("/v1/nodes").await
    }

    pub async fn node(&self, name: &str) -> Result<NodeView> {
        self.get(&format!("/v1/nodes/{name}")).await
    }

    pub async fn disk_add(&self, node: &str, path: &str, tags: &[String]) -> Result<NodeView> {
        self.post(&format!("/v1/nodes/{node}/disks"), json!({"path": path, "tags": tags})).await
    }

    pub async fn disk_remove(&self, node: &str, disk: &str) -> Result<NodeView> {
        self.call(reqwest::Method::DELETE, &format!("/v1/nodes/{node}/disks/{disk}"), None).await
    }

    pub async fn settings(&self) -> Result<Vec<SettingView>> {
        self.get("/v1/settings").await
    }

    pub async fn setting(&self, name: &str) -> Result<SettingView> {
        self.get(&format!("/v1/settings/{name}")).await
    }

    pub async fn setting_set(&self, name: &str, value: &str) -> Result<SettingView> {
        self.call(reqwest::Method::PUT, &format!("/v1/settings/{name}"), Some(json!({"value": value}))).await
    }

    pub async fn jobs(&self) -> Result<Vec<RecurringJobView>> {
        self.get("/v1/recurringjobs").await
    }

    pub async fn job_create(&self, job: &RecurringJobView) -> Result<RecurringJobView> {
        let mut body =
            serde_json::to_value(job).map_err(|e| ManagerError::new(Code::Internal, e.to_string()))?;
        if let Some(o) = body.as_object_mut() {
            o.remove("lastRun");
        }
        self.post("/v1/recurringjobs", body).await
    }

    pub async fn job_delete(&self, name: &str) -> Result<()> {
        self.call::<Value>(reqwest::Method::DELETE, &format!("/v1/recurringjobs/{name}"), None)
            .await
            .map(drop)
    }

    pub async fn backup_target(&self) -> Result<BackupTargetView> {
        self.get("/v1/backuptarget").await
    }

    pub async fn backup_target_set(&self, url: &str) -> Result<BackupTargetView> {
        self.call(reqwest::Method::PUT, "/v1/backuptarget", Some(json!({"url": url}))).await
    }

    /// Back up `volume`: the given snapshot, or a new one (the volume must then be attached).
    pub async fn backup_create(
        &self,
        volume: &str,
        snapshot: Option<&str>,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<BackupView> {
        self.post(&format!("/v1/volumes/{volume}/backups"), json!({"snapshot": snapshot, "labels": labels}))
            .await
    }

    pub async fn backup_volumes(&self) -> Result<Vec<BackupVolumeView>> {
        self.get("/v1/backupvolumes").await
    }

    pub async fn backups(&self, volume: &str) -> Result<Vec<BackupView>> {
        self.get(&format!("/v1/backupvolumes/{volume}/backups")).await
    }

    pub async fn backup(&self, volume: &str, backup: &str) -> Result<BackupView> {
        self.get(&format!("/v1/backupvolumes/{volume}/backups/{backup}")).await
    }

    pub async fn backup_delete(&self, volume: &str, backup: &str) -> Result<()> {
        self.call::<Value>(
            reqwest::Method::DELETE,
            &format!("/v1/backupvolumes/{volume}/backups/{backup}"),
            None,
        )
        .await
        .map(drop)
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
                    return Err(ManagerError::new(
                        Code::Internal,
                        format!("backup {backup} of volume {volume} failed: {}", b.error),
                    ));
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ManagerError::new(
                    Code::Unavailable,
                    format!("backup {backup} is still {} ({}%) after {timeout:?}", b.state, b.progress),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Poll a volume until `done` holds, calling `progress` on every change; fails when the
    /// volume reports a failed scheduling condition or `timeout` passes.
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
                return Err(ManagerError::new(
                    Code::FailedPrecondition,
                    format!("volume {name}: {}", c.message),
                ));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ManagerError::new(
                    Code::Unavailable,
                    format!("volume {name} is still {:?}/{:?} after {timeout:?}", v.state, v.robustness),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
