//! `GET /v1/watch`: the live change stream (server-sent events) the web UI patches its pages from.
//!
//! One store watch per connection; each store change becomes the API view of what it changed (a
//! replica's change is its volume's and its node's), and a view is sent only when it differs from
//! the one this connection sent last for that object, ignoring `resourceVersion` — so a reconciler
//! rewriting an unchanged status sends nothing, and 200 idle volumes cost only keep-alives (a
//! disk's free space counts in whole percent, so other programs' writes do not resend its node). The
//! message format and the `ready` handshake are described in [`corral_api::watch`]. When the store
//! can no longer promise every change (its watch ends), the stream ends and the client reconnects
//! and lists again.
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use corral_api::{WatchKind, WatchMessage, KEEP_ALIVE_SECS};
use corral_store::resources::{
    Backup, BackupTarget, Event as StoredEvent, Node, RecurringJob, Replica, Snapshot, Volume,
};
use corral_store::{Kind, Record, Resource, WatchEvent, WatchStream};
use futures::{Stream, StreamExt};

use super::{backups, misc, nodes, volumes, AppState};
use crate::error::Result;
use crate::events::Event;
use crate::ops::snapshots::as_engine_snapshot;

/// The live change stream.
#[utoipa::path(get, path = "/v1/watch", tag = "watch",
    responses((status = 200, description = "Server-sent events: first `ready`, then one `change` event per changed object, its data a WatchMessage; SSE comments keep an idle stream alive. List after `ready`.",
        content_type = "text/event-stream", body = WatchMessage)))]
pub async fn watch(
    State(st): State<AppState>,
) -> Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>>> {
    // Subscribe before answering: a client that lists after `ready` misses no change.
    let changes = st.ds.watch_raw(None).await?;
    let sent = seed(&st).await?;
    let conn = Connection { st, changes, sent, queue: VecDeque::new(), ready_sent: false };
    let stream = futures::stream::unfold(conn, |mut conn| async move {
        let event = conn.next_event().await?;
        Some((Ok(event), conn))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(KEEP_ALIVE_SECS))))
}

/// The views of volumes and nodes as they are now, which the client lists after `ready`: a later
/// rewrite that changes none of them is then not sent even once.
async fn seed(st: &AppState) -> Result<SentViews> {
    let volumes: Vec<Volume> = st.ds.list().await?;
    let nodes: Vec<Node> = st.ds.list().await?;
    let replicas: Vec<Replica> = st.ds.list().await?;
    let mut sent = SentViews::default();
    for v in &volumes {
        sent.is_news(&message(WatchKind::Volume, v.name(), json(&volumes::view(v, &replicas))));
    }
    for n in &nodes {
        sent.is_news(&message(WatchKind::Node, n.name(), json(&nodes::view(n, &replicas))));
    }
    Ok(sent)
}

struct Connection {
    st: AppState,
    changes: WatchStream,
    sent: SentViews,
    queue: VecDeque<WatchMessage>,
    ready_sent: bool,
}

impl Connection {
    /// The next SSE event, or `None` when the stream must end.
    async fn next_event(&mut self) -> Option<SseEvent> {
        if !self.ready_sent {
            self.ready_sent = true;
            return Some(SseEvent::default().event("ready").data("{}"));
        }
        loop {
            if let Some(msg) = self.queue.pop_front() {
                match serde_json::to_string(&msg) {
                    Ok(data) => return Some(SseEvent::default().event("change").data(data)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot encode a watch message");
                        continue;
                    }
                }
            }
            let change = match self.changes.next().await? {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(error = %e, "store watch ended; the client lists again");
                    return None;
                }
            };
            match messages(&self.st, &change).await {
                Ok(msgs) => {
                    for m in msgs {
                        if self.sent.is_news(&m) {
                            self.queue.push_back(m);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot build a watch message"),
            }
        }
    }
}

/// What one connection last sent per object: its view without `resourceVersion`.
#[derive(Default)]
struct SentViews(HashMap<(WatchKind, String), serde_json::Value>);

impl SentViews {
    /// Remember `m` and tell whether the client has not seen it yet.
    fn is_news(&mut self, m: &WatchMessage) -> bool {
        if m.kind == WatchKind::Event {
            return true; // each event is new, and remembering them would grow without bound
        }
        let key = (m.kind, m.name.clone());
        if m.deleted {
            // Always sent: the client may know the object from its list, not from this stream.
            self.0.remove(&key);
            return true;
        }
        let mut seen = m.object.clone().unwrap_or(serde_json::Value::Null);
        if let Some(obj) = seen.as_object_mut() {
            obj.remove("resourceVersion");
        }
        if m.kind == WatchKind::Node {
            coarse_free_space(&mut seen);
        }
        if self.0.get(&key) == Some(&seen) {
            return false;
        }
        self.0.insert(key, seen);
        true
    }
}

/// A disk's free space compared in whole percent of its size: it moves with every write anyone
/// makes to the filesystem, and resending the node (with every replica it holds) for each such
/// wobble would make an idle cluster's stream anything but idle.
fn coarse_free_space(node: &mut serde_json::Value) {
    let Some(disks) = node.get_mut("disks").and_then(|d| d.as_array_mut()) else { return };
    for disk in disks {
        let max = disk.get("storageMaximum").and_then(|v| v.as_u64()).unwrap_or(0);
        let Some(free) = disk.get("storageAvailable").and_then(|v| v.as_u64()) else { continue };
        let percent = if max == 0 { 0 } else { u128::from(free) * 100 / u128::from(max) };
        disk["storageAvailable"] = serde_json::Value::from(percent as u64);
    }
}

fn decode<R: Resource>(rec: &Record) -> Option<R> {
    let mut obj: R = serde_json::from_value(rec.value.clone()).ok()?;
    obj.metadata_mut().name = rec.name.clone();
    obj.metadata_mut().resource_version = Some(rec.version.clone());
    Some(obj)
}

fn message(kind: WatchKind, name: &str, object: Option<serde_json::Value>) -> WatchMessage {
    WatchMessage { kind, name: name.to_string(), volume: None, deleted: object.is_none(), object }
}

fn json<T: serde::Serialize>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

/// The views a store change changes.
async fn messages(st: &AppState, change: &WatchEvent) -> Result<Vec<WatchMessage>> {
    let deleted = matches!(change, WatchEvent::Deleted(_));
    let rec = change.record();
    let name = rec.name.as_str();
    let out = match rec.kind {
        Kind::Volume => match (deleted, decode::<Volume>(rec)) {
            (false, Some(v)) => {
                let replicas: Vec<Replica> = st.ds.list().await?;
                vec![message(WatchKind::Volume, name, json(&volumes::view(&v, &replicas)))]
            }
            _ => vec![message(WatchKind::Volume, name, None)],
        },
        Kind::Replica => {
            let Some(r) = decode::<Replica>(rec) else { return Ok(Vec::new()) };
            let replicas: Vec<Replica> = st.ds.list().await?;
            let mut out = Vec::new();
            if let Some(v) = st.ds.try_get::<Volume>(&r.spec.volume).await? {
                out.push(message(WatchKind::Volume, &r.spec.volume, json(&volumes::view(&v, &replicas))));
            }
            if let Some(n) = st.ds.try_get::<Node>(&r.spec.node).await? {
                out.push(message(WatchKind::Node, &r.spec.node, json(&nodes::view(&n, &replicas))));
            }
            out
        }
        Kind::Node => match (deleted, decode::<Node>(rec)) {
            (false, Some(n)) => {
                let replicas: Vec<Replica> = st.ds.list().await?;
                vec![message(WatchKind::Node, name, json(&nodes::view(&n, &replicas)))]
            }
            _ => vec![message(WatchKind::Node, name, None)],
        },
        Kind::Snapshot => {
            let Some(s) = decode::<Snapshot>(rec) else { return Ok(Vec::new()) };
            let view = if deleted { None } else { json(&as_engine_snapshot(&s)) };
            let mut m = message(WatchKind::Snapshot, &s.spec.snapshot, view);
            m.volume = Some(s.spec.volume.clone());
            vec![m]
        }
        Kind::Backup => {
            let Some(b) = decode::<Backup>(rec) else { return Ok(Vec::new()) };
            let view = if deleted { None } else { json(&backups::view_of_record(&b)) };
            let mut m = message(WatchKind::Backup, name, view);
            m.volume = Some(b.spec.volume.clone());
            vec![m]
        }
        Kind::BackupVolume => {
            vec![WatchMessage {
                kind: WatchKind::BackupVolume,
                name: name.into(),
                volume: None,
                deleted,
                object: None,
            }]
        }
        Kind::BackupTarget => {
            let t = if deleted { None } else { decode::<BackupTarget>(rec) };
            vec![message(WatchKind::BackupTarget, name, json(&misc::target_view(t)))]
        }
        Kind::RecurringJob => match (deleted, decode::<RecurringJob>(rec)) {
            (false, Some(j)) => vec![message(WatchKind::RecurringJob, name, json(&misc::job_view(&j)))],
            _ => vec![message(WatchKind::RecurringJob, name, None)],
        },
        // A deleted setting is back at its default: its view again.
        Kind::Setting => match misc::setting_view(st, name).await {
            Ok(view) => vec![message(WatchKind::Setting, name, json(&view))],
            Err(_) => Vec::new(),
        },
        Kind::Event if !deleted => match decode::<StoredEvent>(rec) {
            Some(e) => vec![message(WatchKind::Event, name, json(&Event::from_spec(&e.spec)))],
            None => Vec::new(),
        },
        Kind::Event | Kind::Engine => Vec::new(),
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn volume(name: &str, object: serde_json::Value) -> WatchMessage {
        message(WatchKind::Volume, name, Some(object))
    }

    #[test]
    fn only_views_that_changed_are_sent() {
        let mut sent = SentViews::default();
        assert!(sent.is_news(&volume("v", json!({"state": "attached", "resourceVersion": "1"}))));
        // A rewrite that changed nothing the client sees: not sent.
        assert!(!sent.is_news(&volume("v", json!({"state": "attached", "resourceVersion": "2"}))));
        assert!(sent.is_news(&volume("w", json!({"state": "attached", "resourceVersion": "3"}))));
        assert!(sent.is_news(&volume("v", json!({"state": "detached", "resourceVersion": "4"}))));
        // The same name of another kind is another object.
        assert!(sent.is_news(&message(WatchKind::Node, "v", Some(json!({"state": "detached"})))));
        // Deletions are always sent, and an object created again afresh is news again.
        assert!(sent.is_news(&message(WatchKind::Volume, "v", None)));
        assert!(sent.is_news(&message(WatchKind::Volume, "v", None)));
        assert!(sent.is_news(&volume("v", json!({"state": "detached", "resourceVersion": "5"}))));
        // A node whose disks' free space wobbled within a percent: not sent; by a percent: sent.
        let node = |free: u64| {
            message(
                WatchKind::Node,
                "n",
                Some(json!({"disks": [{"storageMaximum": 1000u64 << 20, "storageAvailable": free << 20}]})),
            )
        };
        assert!(sent.is_news(&node(500)));
        assert!(!sent.is_news(&node(505)));
        assert!(sent.is_news(&node(490)));
        // Events are each new.
        let event = message(WatchKind::Event, "0001", Some(json!({"reason": "Attached"})));
        assert!(sent.is_news(&event) && sent.is_news(&event));
    }
}
