//! The engine's control API: HTTP/JSON on `--listen`, and its client ([`ControlClient`], used by
//! `corral engine <command> --url`).
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/info` | | [`EngineInfo`] |
//! | GET | `/v1/replicas` | | `[ReplicaStatus]` (`address`, `mode` RW/WO/ERR, `rebuildProgress`, `error`) |
//! | POST | `/v1/replicas/add` | `{"address"}` | `{}` once the replica is WO; the copy runs on |
//! | POST | `/v1/replicas/remove` | `{"address"}` | `{}` |
//! | GET | `/v1/rebuild` | | last finished [`RebuildReport`] or `null` |
//! | GET | `/v1/snapshots` | | `[SnapshotInfo]` (head excluded) |
//! | POST | `/v1/snapshots` | `{"name"?, "labels"?}` | `{"name"}` |
//! | DELETE | `/v1/snapshots/{name}` | | `{}` (marks removed) |
//! | POST | `/v1/snapshots/purge` | | `{}` when done |
//! | POST | `/v1/revert` | `{"name"}` | `{}` |
//! | POST | `/v1/expand` | `{"size"}` | `{}` |
//!
//! Errors: the status from [`ErrorKind::http_status`] and `{"kind": "notFound", "op": …, "message": …}`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{EngineError, ErrorKind, Result};
use crate::operations::EngineInfo;
use crate::rebuild::RebuildReport;
use crate::replica_set::ReplicaStatus;
use corral_wire::SnapshotInfo;

/// Body of replica add/remove.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddressBody {
    /// Replica address.
    pub address: String,
}

/// Body of snapshot create.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SnapshotBody {
    /// Name; a UUID when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Body of revert.
#[derive(Debug, Serialize, Deserialize)]
pub struct NameBody {
    /// Snapshot name.
    pub name: String,
}

/// Body of expand.
#[derive(Debug, Serialize, Deserialize)]
pub struct SizeBody {
    /// New size in bytes.
    pub size: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ErrorBody {
    kind: ErrorKind,
    op: String,
    message: String,
}

struct ApiError(EngineError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody { kind: self.0.kind, op: self.0.op.to_string(), message: self.0.message };
        (status, Json(body)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError(e)
    }
}

type ApiResult<T> = std::result::Result<Json<T>, ApiError>;

/// The router of the control API.
pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/v1/info", get(|State(e): State<Engine>| async move { Json(e.info()) }))
        .route("/v1/replicas", get(|State(e): State<Engine>| async move { Json(e.replicas()) }))
        .route(
            "/v1/replicas/add",
            post(|State(e): State<Engine>, Json(b): Json<AddressBody>| async move {
                e.add_replica(&b.address).await?;
                ApiResult::Ok(Json(serde_json::json!({})))
            }),
        )
        .route(
            "/v1/replicas/remove",
            post(|State(e): State<Engine>, Json(b): Json<AddressBody>| async move {
                e.remove_replica(&b.address).await?;
                ApiResult::Ok(Json(serde_json::json!({})))
            }),
        )
        .route("/v1/rebuild", get(|State(e): State<Engine>| async move { Json(e.last_rebuild()) }))
        .route(
            "/v1/snapshots",
            get(|State(e): State<Engine>| async move { ApiResult::Ok(Json(e.snapshots().await?)) }).post(
                |State(e): State<Engine>, Json(b): Json<SnapshotBody>| async move {
                    let name = e.snapshot_create(b.name, b.labels).await?;
                    ApiResult::Ok(Json(serde_json::json!({ "name": name })))
                },
            ),
        )
        .route(
            "/v1/snapshots/purge",
            post(|State(e): State<Engine>| async move {
                e.snapshot_purge().await?;
                ApiResult::Ok(Json(serde_json::json!({})))
            }),
        )
        .route(
            "/v1/snapshots/{name}",
            delete(|State(e): State<Engine>, Path(name): Path<String>| async move {
                e.snapshot_remove(&name).await?;
                ApiResult::Ok(Json(serde_json::json!({})))
            }),
        )
        .route(
            "/v1/revert",
            post(|State(e): State<Engine>, Json(b): Json<NameBody>| async move {
                e.revert(&b.name).await?;
                ApiResult::Ok(Json(serde_json::json!({})))
            }),
        )
        .route(
            "/v1/expand",
            post(|State(e): State<Engine>, Json(b): Json<SizeBody>| async move {
                e.expand(b.size).await?;
                ApiResult::Ok(Json(serde_json::json!({})))
            }),
        )
        .with_state(engine)
}

/// Serves the control API on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, engine: Engine) -> std::io::Result<()> {
    axum::serve(listener, router(engine)).await
}

/// A client of the control API.
#[derive(Clone)]
pub struct ControlClient {
    base: String,
    http: reqwest::Client,
}

impl ControlClient {
    /// A client for `HOST:PORT` or `http://HOST:PORT`.
    pub fn new(url: &str) -> Result<Self> {
        let base = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| EngineError::new(ErrorKind::Io, "control client", e.to_string()))?;
        Ok(ControlClient { base: base.trim_end_matches('/').to_string(), http })
    }

    async fn call<T: DeserializeOwned>(&self, op: &'static str, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = req.send().await.map_err(|e| {
            EngineError::new(ErrorKind::Io, op, format!("cannot reach the engine at {}: {e}", self.base))
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| EngineError::new(ErrorKind::Io, op, e.to_string()))?;
        if !status.is_success() {
            return Err(match serde_json::from_str::<ErrorBody>(&text) {
                Ok(b) => EngineError::new(b.kind, op, b.message),
                Err(_) => EngineError::new(ErrorKind::Io, op, format!("HTTP {status}: {text}")),
            });
        }
        serde_json::from_str(&text)
            .map_err(|e| EngineError::new(ErrorKind::Io, op, format!("bad answer {text:?}: {e}")))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `info`.
    pub async fn info(&self) -> Result<EngineInfo> {
        self.call("info", self.http.get(self.url("/v1/info"))).await
    }
    /// `replica ls`.
    pub async fn replicas(&self) -> Result<Vec<ReplicaStatus>> {
        self.call("replica ls", self.http.get(self.url("/v1/replicas"))).await
    }
    /// `replica add`.
    pub async fn add_replica(&self, address: &str) -> Result<()> {
        let body = AddressBody { address: address.into() };
        self.call::<serde_json::Value>(
            "replica add",
            self.http.post(self.url("/v1/replicas/add")).json(&body),
        )
        .await
        .map(drop)
    }
    /// `replica rm`.
    pub async fn remove_replica(&self, address: &str) -> Result<()> {
        let body = AddressBody { address: address.into() };
        self.call::<serde_json::Value>(
            "replica rm",
            self.http.post(self.url("/v1/replicas/remove")).json(&body),
        )
        .await
        .map(drop)
    }
    /// The last finished rebuild.
    pub async fn last_rebuild(&self) -> Result<Option<RebuildReport>> {
        self.call("rebuild status", self.http.get(self.url("/v1/rebuild"))).await
    }
    /// `snapshot create`; returns the name.
    pub async fn snapshot_create(
        &self,
        name: Option<String>,
        labels: BTreeMap<String, String>,
    ) -> Result<String> {
        let v: serde_json::Value = self
            .call(
                "snapshot create",
                self.http.post(self.url("/v1/snapshots")).json(&SnapshotBody { name, labels }),
            )
            .await?;
        Ok(v.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_string())
    }
    /// `snapshot ls`.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.call("snapshot ls", self.http.get(self.url("/v1/snapshots"))).await
    }
    /// `snapshot rm`.
    pub async fn snapshot_remove(&self, name: &str) -> Result<()> {
        crate::operations::validate_name("snapshot rm", name)?;
        self.call::<serde_json::Value>(
            "snapshot rm",
            self.http.delete(self.url(&format!("/v1/snapshots/{name}"))),
        )
        .await
        .map(drop)
    }
    /// `snapshot purge`.
    pub async fn snapshot_purge(&self) -> Result<()> {
        self.call::<serde_json::Value>("snapshot purge", self.http.post(self.url("/v1/snapshots/purge")))
            .await
            .map(drop)
    }
    /// `revert`.
    pub async fn revert(&self, name: &str) -> Result<()> {
        self.call::<serde_json::Value>(
            "revert",
            self.http.post(self.url("/v1/revert")).json(&NameBody { name: name.into() }),
        )
        .await
        .map(drop)
    }
    /// `expand`.
    pub async fn expand(&self, size: u64) -> Result<()> {
        self.call::<serde_json::Value>(
            "expand",
            self.http.post(self.url("/v1/expand")).json(&SizeBody { size }),
        )
        .await
        .map(drop)
    }
}
