//! The web UI, served at `/` next to the REST API (which stays under `/v1/`).
//!
//! Pages are rendered on the server with maud ([`pages`]): the layout, navigation, forms and empty
//! tables. A little JavaScript of our own (`js/*.js`, served as one file at `/ui/app.js`) fills them
//! from the REST API with `fetch` and patches them from the live change stream `GET /v1/watch`
//! (server-sent events), so a change shows in the open page without a reload. The UI holds no
//! state of its own and reads no store: everything it shows and does goes through the public API,
//! the same one the CLI uses. Nothing here imports `reconcile/` or `api/`.
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;

mod pages;

/// The UI's script: our own files, concatenated in dependency order.
const APP_JS: &str = concat!(
    include_str!("js/core.js"),
    include_str!("js/volumes.js"),
    include_str!("js/volume_detail.js"),
    include_str!("js/cluster.js"),
    include_str!("js/start.js"),
);
const STYLE_CSS: &str = include_str!("style.css");

/// Routes of the UI's pages and assets (no state: pages call the API from the browser).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| page(pages::dashboard())))
        .route("/volumes", get(|| page(pages::volumes())))
        .route(
            "/volumes/{name}",
            get(|axum::extract::Path(name): axum::extract::Path<String>| page(pages::volume(&name))),
        )
        .route("/nodes", get(|| page(pages::nodes())))
        .route("/backups", get(|| page(pages::backups())))
        .route("/recurringjobs", get(|| page(pages::recurring_jobs())))
        .route("/settings", get(|| page(pages::settings())))
        .route("/events", get(|| page(pages::events())))
        .route("/ui/app.js", get(|| asset("text/javascript; charset=utf-8", APP_JS)))
        .route("/ui/style.css", get(|| asset("text/css; charset=utf-8", STYLE_CSS)))
        .route("/favicon.ico", get(|| asset("image/svg+xml", pages::FAVICON)))
}

async fn page(markup: maud::Markup) -> Html<String> {
    Html(markup.into_string())
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
}
