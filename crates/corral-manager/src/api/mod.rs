//! The REST API (axum), documented by an OpenAPI document built with utoipa and served at
//! `/v1/openapi.json`. Every route is registered through [`Routes`], which records its method and
//! path, so a test can check that each one is documented.
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::routing::MethodRouter;
use axum::Router;
use corral_store::Datastore;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::error::{ManagerError, Result};
use crate::events::EventLog;
use crate::ops::stats::ManagerStats;

mod backups;
mod convert;
mod metrics;
mod misc;
mod nodes;
mod volumes;
mod watch;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub ds: Datastore,
    pub events: Arc<EventLog>,
    /// This manager's node (default attach target).
    pub node: String,
    /// Wakes the reconcilers after a change made through the API.
    pub wake: Arc<tokio::sync::Notify>,
    /// Counters of the reconcile loop, for `/metrics`.
    pub stats: Arc<ManagerStats>,
    /// This manager's claims (the API shows which node leads).
    pub(crate) claims: Arc<crate::cluster::Claims>,
}

/// A JSON body whose rejection (bad JSON, unknown field, wrong type) is an `invalid_argument`
/// error in the API's error format rather than axum's plain-text 422.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ManagerError;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => from_object(v).map(ApiJson),
            Err(JsonRejection::JsonDataError(e)) => {
                Err(ManagerError::invalid(format!("invalid request body: {}", e.body_text())))
            }
            Err(e) => Err(ManagerError::invalid(format!("invalid request body: {}", e.body_text()))),
        }
    }
}

/// Like [`ApiJson`], but an empty body means `T::default()` (actions whose body is optional).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ManagerError;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ManagerError::invalid(format!("cannot read request body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ManagerError::invalid(format!("invalid request body: {e}")))?;
        from_object(value).map(OptionalJson)
    }
}

/// Every request body of this API is a JSON object. Checked before decoding because serde also
/// decodes a struct from an array of its fields in order (`[null, null]` would pass as a body of
/// two optional fields).
fn from_object<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    if !value.is_object() {
        return Err(ManagerError::invalid("invalid request body: expected a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ManagerError::invalid(format!("invalid request body: {e}")))
}

/// A router that remembers the (method, path) of every route it serves.
pub struct Routes {
    router: Router<AppState>,
    registered: Vec<(String, String)>,
}

impl Routes {
    fn new() -> Self {
        Routes { router: Router::new(), registered: Vec::new() }
    }

    fn add(mut self, methods: &[&str], path: &str, route: MethodRouter<AppState>) -> Self {
        for m in methods {
            self.registered.push((m.to_string(), path.to_string()));
        }
        self.router = self.router.route(path, route);
        self
    }
}

fn routes() -> Routes {
    use axum::routing::{delete, get, patch, post};
    Routes::new()
        .add(&["get"], "/healthz", get(misc::healthz))
        .add(&["get"], "/metrics", get(metrics::metrics))
        .add(&["get"], "/v1/openapi.json", get(|| async { axum::Json(openapi()) }))
        .add(&["get", "post"], "/v1/volumes", get(volumes::list).post(volumes::create))
        .add(&["get", "delete"], "/v1/volumes/{name}", get(volumes::get).delete(volumes::delete))
        .add(&["post"], "/v1/volumes/{name}/attach", post(volumes::attach))
        .add(&["post"], "/v1/volumes/{name}/detach", post(volumes::detach))
        .add(&["post"], "/v1/volumes/{name}/expand", post(volumes::expand))
        .add(&["post"], "/v1/volumes/{name}/maintenance", post(volumes::maintenance))
        .add(
            &["get", "post"],
            "/v1/volumes/{name}/snapshots",
            get(volumes::snapshot_list).post(volumes::snapshot_create),
        )
        .add(&["delete"], "/v1/volumes/{name}/snapshots/{snapshot}", delete(volumes::snapshot_delete))
        .add(&["post"], "/v1/volumes/{name}/snapshots/{snapshot}/revert", post(volumes::snapshot_revert))
        .add(&["post"], "/v1/volumes/{name}/backups", post(backups::create))
        .add(&["get"], "/v1/backupvolumes", get(backups::volume_list))
        .add(
            &["get", "delete"],
            "/v1/backupvolumes/{name}",
            get(backups::volume_get).delete(backups::volume_delete),
        )
        .add(&["get"], "/v1/backupvolumes/{name}/backups", get(backups::backup_list))
        .add(
            &["get", "delete"],
            "/v1/backupvolumes/{name}/backups/{backup}",
            get(backups::backup_get).delete(backups::backup_delete),
        )
        .add(&["get"], "/v1/nodes", get(nodes::list))
        .add(&["get", "patch"], "/v1/nodes/{name}", get(nodes::get).patch(nodes::update))
        .add(&["post"], "/v1/nodes/{name}/disks", post(nodes::disk_add))
        .add(
            &["patch", "delete"],
            "/v1/nodes/{name}/disks/{disk}",
            patch(nodes::disk_update).delete(nodes::disk_remove),
        )
        .add(&["get"], "/v1/settings", get(misc::settings_list))
        .add(&["get", "put"], "/v1/settings/{name}", get(misc::setting_get).put(misc::setting_set))
        .add(&["get"], "/v1/events", get(misc::events))
        .add(&["get"], "/v1/watch", get(watch::watch))
        .add(&["get", "put"], "/v1/backuptarget", get(misc::backup_target_get).put(misc::backup_target_set))
        .add(&["get", "post"], "/v1/recurringjobs", get(misc::jobs_list).post(misc::job_create))
        .add(&["get", "delete"], "/v1/recurringjobs/{name}", get(misc::job_get).delete(misc::job_delete))
}

/// The API's router, with unknown paths answered in the API's error format.
pub fn router(state: AppState) -> Router {
    routes()
        .router
        .fallback(|| async { ManagerError::new(crate::error::Code::NotFound, "no such API path") })
        .with_state(state)
}

/// Every (method, path) the router serves.
pub fn registered_routes() -> Vec<(String, String)> {
    routes().registered
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Corral manager API",
        description = "Volumes, nodes and disks, settings, backups and recurring jobs of a Corral cluster. Errors are `{\"code\", \"message\"}` with a stable code."
    ),
    paths(
        misc::healthz,
        misc::openapi_doc,
        metrics::metrics,
        volumes::list,
        volumes::create,
        volumes::get,
        volumes::delete,
        volumes::attach,
        volumes::detach,
        volumes::expand,
        volumes::maintenance,
        volumes::snapshot_list,
        volumes::snapshot_create,
        volumes::snapshot_delete,
        volumes::snapshot_revert,
        nodes::list,
        nodes::get,
        nodes::update,
        nodes::disk_add,
        nodes::disk_update,
        nodes::disk_remove,
        misc::settings_list,
        misc::setting_get,
        misc::setting_set,
        misc::events,
        watch::watch,
        misc::backup_target_get,
        misc::backup_target_set,
        backups::create,
        backups::volume_list,
        backups::volume_get,
        backups::volume_delete,
        backups::backup_list,
        backups::backup_get,
        backups::backup_delete,
        misc::jobs_list,
        misc::job_create,
        misc::job_get,
        misc::job_delete,
    ),
    components(schemas(
        crate::error::ErrorBody,
        crate::error::Code,
        crate::events::Event,
        crate::events::EventType,
        corral_api::WatchMessage,
        corral_api::WatchKind
    ))
)]
struct ApiDoc;

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    document_common_errors(&mut doc);
    add_request_examples(&mut doc);
    doc
}

/// A working request body for the operations that create things, so readers (and a fuzzer's
/// example phase) see one the API accepts; bodies that may be left out are marked so.
fn add_request_examples(doc: &mut utoipa::openapi::OpenApi) {
    let examples = [
        ("/v1/volumes", serde_json::json!({"name": "vol1", "size": 16 << 20, "numberOfReplicas": 1})),
        (
            "/v1/recurringjobs",
            serde_json::json!({"name": "hourly", "task": "snapshot", "cron": "0 * * * *", "retain": 3, "concurrency": 1, "volumes": ["vol1"]}),
        ),
    ];
    // Bodies read with `OptionalJson`: an empty body means the defaults.
    let optional = [
        "/v1/volumes/{name}/attach",
        "/v1/volumes/{name}/detach",
        "/v1/volumes/{name}/snapshots",
        "/v1/volumes/{name}/backups",
    ];
    for path in optional {
        let body = doc
            .paths
            .paths
            .get_mut(path)
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.request_body.as_mut());
        if let Some(body) = body {
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
    for (path, example) in examples {
        let body = doc
            .paths
            .paths
            .get_mut(path)
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.request_body.as_mut());
        if let Some(content) = body.and_then(|b| b.content.get_mut("application/json")) {
            content.example = Some(example);
        }
    }
}

/// Answers any `/v1/` operation may give, documented on each one that does not say them already:
/// 400 (a body, query or path value the API refuses, names included), 404 (an operation on a
/// named object that does not exist), 500 and 503 (the datastore failed or is unreachable).
fn document_common_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") || path == "/v1/openapi.json" || path == "/v1/watch" {
            continue;
        }
        let named = path.contains('{');
        let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            let mut add =
                vec![("400", "Invalid argument"), ("500", "Internal error"), ("503", "Unavailable")];
            if named {
                add.push(("404", "Not found"));
            }
            for (status, description) in add {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::T(error(description)));
            }
        }
    }
}
