//! A client of the engine's control API (HTTP/JSON, documented in corral-engine's
//! `control_api.rs`). Written against the wire contract rather than the engine crate's types so the
//! manager depends only on the API, as it would on an engine of another version.
use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Code, ManagerError, Result};

/// Cumulative I/O counters of an engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineIo {
    pub read_ops: u64,
    pub write_ops: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, Deserialize)]
pub struct EngineInfo {
    pub size: u64,
    #[serde(default)]
    pub frontend: String,
    #[serde(default)]
    pub clients: usize,
    /// Cumulative I/O counters since the engine started (absent from engines without them).
    #[serde(default, rename = "readOps")]
    pub read_ops: Option<u64>,
    #[serde(default, rename = "writeOps")]
    pub write_ops: Option<u64>,
    #[serde(default, rename = "readBytes")]
    pub read_bytes: Option<u64>,
    #[serde(default, rename = "writeBytes")]
    pub write_bytes: Option<u64>,
}

impl EngineInfo {
    /// The I/O counters, when the engine reports them.
    pub fn io(&self) -> Option<EngineIo> {
        Some(EngineIo {
            read_ops: self.read_ops?,
            write_ops: self.write_ops?,
            read_bytes: self.read_bytes?,
            write_bytes: self.write_bytes?,
        })
    }
}

/// One entry of `GET /v1/replicas`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineReplica {
    pub address: String,
    pub mode: String,
    #[serde(default)]
    pub rebuild_progress: u32,
    #[serde(default)]
    pub error: Option<String>,
}

/// One entry of `GET /v1/snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineSnapshot {
    pub name: String,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub children: Vec<String>,
    #[serde(default)]
    pub removed: bool,
    #[serde(default)]
    pub user_created: bool,
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct EngineErrorBody {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// Client of one engine.
#[derive(Clone)]
pub struct EngineClient {
    base: String,
    http: reqwest::Client,
}

impl EngineClient {
    /// `base` is `http://host:port`.
    pub fn new(base: &str) -> EngineClient {
        // One HTTP client (and connection pool) for every engine: building one is costly, and the
        // reconcile loop talks to every attached volume's engine on each pass.
        static SHARED: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let http = SHARED
            .get_or_init(|| {
                reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap_or_default()
            })
            .clone();
        EngineClient { base: base.trim_end_matches('/').to_string(), http }
    }

    async fn send<T: DeserializeOwned>(&self, op: &str, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = req.send().await.map_err(|e| {
            ManagerError::new(
                Code::Unavailable,
                format!("engine at {} does not answer ({op}): {e}", self.base),
            )
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ManagerError::new(Code::Unavailable, format!("engine {op}: {e}")))?;
        if !status.is_success() {
            let body: Option<EngineErrorBody> = serde_json::from_slice(&bytes).ok();
            let (kind, message) = body
                .map_or((String::new(), String::from_utf8_lossy(&bytes).to_string()), |b| {
                    (b.kind, b.message)
                });
            let code = match (status.as_u16(), kind.as_str()) {
                (404, _) | (_, "notFound") => Code::NotFound,
                (400, _) | (_, "invalidArgument") => Code::InvalidArgument,
                (409, _) => Code::FailedPrecondition,
                (503, _) => Code::Unavailable,
                _ => Code::Internal,
            };
            return Err(ManagerError::new(code, format!("engine {op}: {message}")));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ManagerError::new(Code::Internal, format!("engine {op}: unexpected answer: {e}")))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn info(&self) -> Result<EngineInfo> {
        self.send("info", self.http.get(self.url("/v1/info"))).await
    }

    pub async fn replicas(&self) -> Result<Vec<EngineReplica>> {
        self.send("replica ls", self.http.get(self.url("/v1/replicas"))).await
    }

    pub async fn add_replica(&self, address: &str) -> Result<()> {
        let body = serde_json::json!({ "address": address });
        self.send::<serde_json::Value>(
            "replica add",
            self.http.post(self.url("/v1/replicas/add")).json(&body),
        )
        .await
        .map(drop)
    }

    pub async fn remove_replica(&self, address: &str) -> Result<()> {
        let body = serde_json::json!({ "address": address });
        self.send::<serde_json::Value>(
            "replica rm",
            self.http.post(self.url("/v1/replicas/remove")).json(&body),
        )
        .await
        .map(drop)
    }

    pub async fn snapshot_create(
        &self,
        name: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        #[derive(Deserialize)]
        struct Created {
            name: String,
        }
        let body = serde_json::json!({ "name": name, "labels": labels });
        let c: Created =
            self.send("snapshot create", self.http.post(self.url("/v1/snapshots")).json(&body)).await?;
        Ok(c.name)
    }

    pub async fn snapshots(&self) -> Result<Vec<EngineSnapshot>> {
        self.send("snapshot ls", self.http.get(self.url("/v1/snapshots"))).await
    }

    pub async fn snapshot_remove(&self, name: &str) -> Result<()> {
        self.send::<serde_json::Value>(
            "snapshot rm",
            self.http.delete(self.url(&format!("/v1/snapshots/{name}"))),
        )
        .await
        .map(drop)
    }

    pub async fn snapshot_purge(&self) -> Result<()> {
        self.send::<serde_json::Value>("snapshot purge", self.http.post(self.url("/v1/snapshots/purge")))
            .await
            .map(drop)
    }

    pub async fn revert(&self, name: &str) -> Result<()> {
        let body = serde_json::json!({ "name": name });
        self.send::<serde_json::Value>("revert", self.http.post(self.url("/v1/revert")).json(&body))
            .await
            .map(drop)
    }

    pub async fn expand(&self, size: u64) -> Result<()> {
        let body = serde_json::json!({ "size": size });
        self.send::<serde_json::Value>("expand", self.http.post(self.url("/v1/expand")).json(&body))
            .await
            .map(drop)
    }
}
