//! The engine's control API (HTTP/JSON, served by `corral engine serve --listen`): its types and
//! its one client, [`EngineClient`], used by the manager and by `corral engine <command>`.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/info` | | [`EngineInfo`] |
//! | GET | `/v1/replicas` | | `[`[`EngineReplica`]`]` |
//! | POST | `/v1/replicas/add` | [`AddressBody`] | `{}` once the replica is WO; the copy runs on |
//! | POST | `/v1/replicas/remove` | [`AddressBody`] | `{}` |
//! | GET | `/v1/rebuild` | | last finished [`RebuildReport`] or `null` |
//! | GET | `/v1/snapshots` | | `[`[`EngineSnapshot`]`]` (head excluded) |
//! | POST | `/v1/snapshots` | [`SnapshotBody`] | [`SnapshotCreated`] |
//! | DELETE | `/v1/snapshots/{name}` | | `{}` (marks removed) |
//! | POST | `/v1/snapshots/purge` | | `{}` when done |
//! | POST | `/v1/revert` | [`NameBody`] | `{}` |
//! | POST | `/v1/expand` | [`SizeBody`] | `{}` |
//!
//! Errors: an HTTP error status and [`EngineErrorBody`] (`{"kind": "notFound", "op", "message"}`).
use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Code, Result};
use crate::names::check_name;
use crate::volumes::{ReplicaMode, SnapshotCreated};

/// Overall health of an engine's volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EngineHealth {
    /// Every replica is RW.
    Healthy,
    /// At least one RW replica, and at least one replica is ERR.
    Degraded,
    /// A WO replica is being rebuilt.
    Rebuilding,
    /// No RW replica: I/O fails.
    Faulted,
    /// The engine did not say (an engine older than this field).
    #[default]
    Unknown,
}

/// `GET /v1/info`: what `corral engine info` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineInfo {
    /// Volume name.
    #[serde(default)]
    pub volume: String,
    /// Size in bytes.
    pub size: u64,
    /// Frontend endpoint (`nbd://…`), empty when none.
    #[serde(default)]
    pub frontend: String,
    /// NBD clients connected.
    #[serde(default)]
    pub clients: usize,
    /// Health.
    #[serde(default)]
    pub state: EngineHealth,
    /// Current generation.
    #[serde(default)]
    pub generation: u64,
    /// Replica count.
    #[serde(default)]
    pub replicas: usize,
    /// RW replicas.
    #[serde(default)]
    pub healthy_replicas: usize,
    /// Client reads completed since the engine started (absent from engines without counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ops: Option<u64>,
    /// Client writes completed since the engine started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_ops: Option<u64>,
    /// Bytes of those reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bytes: Option<u64>,
    /// Bytes of those writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bytes: Option<u64>,
}

/// Cumulative I/O counters of an engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineIo {
    pub read_ops: u64,
    pub write_ops: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
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

/// One entry of `GET /v1/replicas`: what `corral engine replica ls` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineReplica {
    /// Address (`tcp://host:port`).
    pub address: String,
    /// RW, WO or ERR.
    pub mode: ReplicaMode,
    /// Percent copied while WO; 100 for RW; 0 for ERR.
    #[serde(default)]
    pub rebuild_progress: u32,
    /// Why the replica is ERR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One entry of `GET /v1/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// Outcome of one rebuild (`GET /v1/rebuild`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildReport {
    /// Target address.
    pub address: String,
    /// Whether the target became RW.
    pub succeeded: bool,
    /// Error text when it did not.
    pub error: Option<String>,
    /// Allocated bytes of the source's layers.
    pub total_bytes: u64,
    /// Bytes sent to the target.
    pub copied_bytes: u64,
    /// Bytes found equal on the target and not sent.
    pub reused_bytes: u64,
    /// Wall time of the copy and verify phases.
    pub seconds: f64,
}

/// Body of replica add/remove.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddressBody {
    /// Replica address.
    pub address: String,
}

/// Body of snapshot create.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotBody {
    /// Name; a UUID when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Body of revert.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameBody {
    /// Snapshot name.
    pub name: String,
}

/// Body of expand.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizeBody {
    /// New size in bytes.
    pub size: u64,
}

/// Class of an engine failure; stable, the control API puts it in its JSON errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EngineErrorKind {
    /// A named replica or snapshot does not exist.
    NotFound,
    /// The thing to create exists already (duplicate replica address, snapshot name).
    AlreadyExists,
    /// A request reached beyond the end of the volume.
    OutOfRange,
    /// Malformed input: bad name, size, address.
    InvalidArgument,
    /// The operation is not allowed in the current state (client connected, rebuild running, …).
    Conflict,
    /// No healthy replica can serve the request: the volume is faulted.
    Unavailable,
    /// A replica or the network failed.
    Io,
    /// A replica ran out of space.
    NoSpace,
}

impl EngineErrorKind {
    /// The HTTP status the control API answers with for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            EngineErrorKind::NotFound => 404,
            EngineErrorKind::AlreadyExists | EngineErrorKind::Conflict => 409,
            EngineErrorKind::OutOfRange | EngineErrorKind::InvalidArgument => 400,
            EngineErrorKind::Unavailable => 503,
            EngineErrorKind::Io | EngineErrorKind::NoSpace => 500,
        }
    }

    /// The manager API's code for this kind.
    pub fn code(self) -> Code {
        match self {
            EngineErrorKind::NotFound => Code::NotFound,
            EngineErrorKind::AlreadyExists => Code::AlreadyExists,
            EngineErrorKind::OutOfRange | EngineErrorKind::InvalidArgument => Code::InvalidArgument,
            EngineErrorKind::Conflict => Code::FailedPrecondition,
            EngineErrorKind::Unavailable => Code::Unavailable,
            EngineErrorKind::Io | EngineErrorKind::NoSpace => Code::Internal,
        }
    }
}

/// The JSON body of every control API error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineErrorBody {
    pub kind: EngineErrorKind,
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub message: String,
}

/// Client of one engine's control API. Cheap to clone.
#[derive(Clone)]
pub struct EngineClient {
    base: String,
    http: reqwest::Client,
}

impl EngineClient {
    /// A client for `http://HOST:PORT` (or `HOST:PORT`).
    pub fn new(url: &str) -> EngineClient {
        // One HTTP client (and connection pool) for every engine: building one is costly, and the
        // manager's reconcile loop talks to every attached volume's engine on each pass.
        static SHARED: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let http = SHARED
            .get_or_init(|| {
                reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap_or_default()
            })
            .clone();
        let base = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        EngineClient { base: base.trim_end_matches('/').to_string(), http }
    }

    /// The engine's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(&self, op: &str, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = req.send().await.map_err(|e| {
            let message = format!("engine at {} does not answer ({op}): {e}", self.base);
            ApiError::with_source(Code::Unavailable, message, e)
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ApiError::with_source(Code::Unavailable, format!("engine {op}: {e}"), e))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<EngineErrorBody>(&bytes) {
                Ok(b) => ApiError::new(b.kind.code(), format!("engine {op}: {}", b.message)),
                Err(_) => {
                    let code = match status.as_u16() {
                        404 => Code::NotFound,
                        400 => Code::InvalidArgument,
                        409 => Code::FailedPrecondition,
                        503 => Code::Unavailable,
                        _ => Code::Internal,
                    };
                    ApiError::new(
                        code,
                        format!("engine {op}: HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
                    )
                }
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::with_source(Code::Internal, format!("engine {op}: unexpected answer: {e}"), e)
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<EngineInfo> {
        self.send("info", self.http.get(self.url("/v1/info"))).await
    }

    /// `GET /v1/replicas`.
    pub async fn replicas(&self) -> Result<Vec<EngineReplica>> {
        self.send("replica ls", self.http.get(self.url("/v1/replicas"))).await
    }

    /// Add a replica; returns once it is WO (the rebuild runs on).
    pub async fn add_replica(&self, address: &str) -> Result<()> {
        let body = AddressBody { address: address.to_string() };
        self.send::<serde_json::Value>(
            "replica add",
            self.http.post(self.url("/v1/replicas/add")).json(&body),
        )
        .await
        .map(drop)
    }

    /// Remove a replica.
    pub async fn remove_replica(&self, address: &str) -> Result<()> {
        let body = AddressBody { address: address.to_string() };
        self.send::<serde_json::Value>(
            "replica rm",
            self.http.post(self.url("/v1/replicas/remove")).json(&body),
        )
        .await
        .map(drop)
    }

    /// The last finished rebuild, if any.
    pub async fn last_rebuild(&self) -> Result<Option<RebuildReport>> {
        self.send("rebuild status", self.http.get(self.url("/v1/rebuild"))).await
    }

    /// Take a snapshot (named `name`, or a generated name); returns its name.
    pub async fn snapshot_create(
        &self,
        name: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        let body = SnapshotBody { name: name.map(str::to_string), labels: labels.clone() };
        let created: SnapshotCreated =
            self.send("snapshot create", self.http.post(self.url("/v1/snapshots")).json(&body)).await?;
        Ok(created.name)
    }

    /// The snapshots (the head excluded).
    pub async fn snapshots(&self) -> Result<Vec<EngineSnapshot>> {
        self.send("snapshot ls", self.http.get(self.url("/v1/snapshots"))).await
    }

    /// Mark a snapshot removed (its data goes at the next purge).
    pub async fn snapshot_remove(&self, name: &str) -> Result<()> {
        // Checked here too: the name becomes a path segment.
        check_name("snapshot", name)?;
        self.send::<serde_json::Value>(
            "snapshot rm",
            self.http.delete(self.url(&format!("/v1/snapshots/{name}"))),
        )
        .await
        .map(drop)
    }

    /// Merge removed snapshots away; returns when done.
    pub async fn snapshot_purge(&self) -> Result<()> {
        self.send::<serde_json::Value>("snapshot purge", self.http.post(self.url("/v1/snapshots/purge")))
            .await
            .map(drop)
    }

    /// Revert the volume to a snapshot (no client may be connected).
    pub async fn revert(&self, name: &str) -> Result<()> {
        let body = NameBody { name: name.to_string() };
        self.send::<serde_json::Value>("revert", self.http.post(self.url("/v1/revert")).json(&body))
            .await
            .map(drop)
    }

    /// Grow the volume to `size` bytes.
    pub async fn expand(&self, size: u64) -> Result<()> {
        self.send::<serde_json::Value>(
            "expand",
            self.http.post(self.url("/v1/expand")).json(&SizeBody { size }),
        )
        .await
        .map(drop)
    }
}
