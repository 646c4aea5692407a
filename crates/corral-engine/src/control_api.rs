//! The engine's control API: HTTP/JSON on `--listen`. The routes, bodies, answers and the error
//! body are corral-api's ([`corral_api::engine`], which documents them); this module serves them
//! over an [`Engine`]. The one client is [`corral_api::EngineClient`], used by the manager, by
//! `corral engine <command>` and by the benchmarks.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use corral_api::engine::{
    AddressBody, EngineErrorBody, EngineErrorKind, EngineHealth, EngineInfo, EngineReplica, EngineSnapshot,
    NameBody, SizeBody, SnapshotBody,
};
use corral_api::SnapshotCreated;

use crate::engine::Engine;
use crate::error::{EngineError, ErrorKind};

struct ApiError(EngineError);

fn error_kind(kind: ErrorKind) -> EngineErrorKind {
    match kind {
        ErrorKind::NotFound => EngineErrorKind::NotFound,
        ErrorKind::AlreadyExists => EngineErrorKind::AlreadyExists,
        ErrorKind::OutOfRange => EngineErrorKind::OutOfRange,
        ErrorKind::InvalidArgument => EngineErrorKind::InvalidArgument,
        ErrorKind::Conflict => EngineErrorKind::Conflict,
        ErrorKind::Unavailable => EngineErrorKind::Unavailable,
        ErrorKind::Io => EngineErrorKind::Io,
        ErrorKind::NoSpace => EngineErrorKind::NoSpace,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = EngineErrorBody {
            kind: error_kind(self.0.kind),
            op: self.0.op.to_string(),
            message: self.0.message,
        };
        (status, Json(body)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError(e)
    }
}

type ApiResult<T> = std::result::Result<Json<T>, ApiError>;

/// Refuses a snapshot name that breaks Corral's one name rule before the engine sees it.
fn check_snapshot_name(op: &'static str, name: &str) -> Result<(), ApiError> {
    crate::validate_name(op, name).map_err(ApiError)
}

fn info_view(i: crate::EngineInfo) -> EngineInfo {
    EngineInfo {
        volume: i.volume,
        size: i.size,
        frontend: i.frontend,
        clients: i.clients,
        state: match i.state {
            crate::VolumeState::Healthy => EngineHealth::Healthy,
            crate::VolumeState::Degraded => EngineHealth::Degraded,
            crate::VolumeState::Rebuilding => EngineHealth::Rebuilding,
            crate::VolumeState::Faulted => EngineHealth::Faulted,
        },
        generation: i.generation,
        replicas: i.replicas,
        healthy_replicas: i.healthy_replicas,
        read_ops: Some(i.read_ops),
        write_ops: Some(i.write_ops),
        read_bytes: Some(i.read_bytes),
        write_bytes: Some(i.write_bytes),
    }
}

fn replica_view(r: crate::ReplicaStatus) -> EngineReplica {
    EngineReplica {
        address: r.address,
        mode: r.mode,
        rebuild_progress: u32::from(r.rebuild_progress),
        error: r.error,
    }
}

fn snapshot_view(s: corral_wire::SnapshotInfo) -> EngineSnapshot {
    EngineSnapshot {
        name: s.name,
        parent: s.parent,
        children: s.children,
        removed: s.removed,
        user_created: s.user_created,
        created: s.created,
        size: s.size,
        labels: s.labels,
    }
}

/// The router of the control API.
pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/v1/info", get(|State(e): State<Engine>| async move { Json(info_view(e.info())) }))
        .route(
            "/v1/replicas",
            get(|State(e): State<Engine>| async move {
                Json(e.replicas().into_iter().map(replica_view).collect::<Vec<_>>())
            }),
        )
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
            get(|State(e): State<Engine>| async move {
                let list = e.snapshots().await?;
                ApiResult::Ok(Json(list.into_iter().map(snapshot_view).collect::<Vec<_>>()))
            })
            .post(|State(e): State<Engine>, Json(b): Json<SnapshotBody>| async move {
                if let Some(name) = &b.name {
                    check_snapshot_name("snapshot create", name)?;
                }
                let name = e.snapshot_create(b.name, b.labels).await?;
                ApiResult::Ok(Json(SnapshotCreated { name }))
            }),
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
                check_snapshot_name("snapshot rm", &name)?;
                e.snapshot_remove(&name).await?;
                ApiResult::Ok(Json(serde_json::json!({})))
            }),
        )
        .route(
            "/v1/revert",
            post(|State(e): State<Engine>, Json(b): Json<NameBody>| async move {
                check_snapshot_name("revert", &b.name)?;
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
