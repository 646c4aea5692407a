//! Watches over etcd: the resuming change stream behind [`crate::Store::watch`], and the one-shot
//! look into a key's history that decides whether a write with a lost reply was applied.
//!
//! A watch remembers the revision after the last event it delivered. etcd never splits the events
//! of one revision across responses (this client does not ask for fragments), so reopening the
//! watch from that revision on another member — after the stream broke because a member died,
//! was cut off or lost its leader — delivers every later event exactly once.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::connection::ATTEMPT_TIMEOUT;
use super::proto::etcdserverpb::watch_client::WatchClient;
use super::proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use super::proto::mvccpb::{event::EventType, KeyValue};
use super::records::{decode, prefix_end};
use super::Inner;
use crate::error::{ErrorKind, Result, StoreError};
use crate::store::{Kind, WatchEvent, WatchStream};

/// How long a broken watch keeps trying to reopen before it ends (the watcher then lists again).
const RECONNECT_DEADLINE: Duration = Duration::from_secs(60);
/// A stream that lived this long before it broke was healthy: its break starts a new count.
const STABLE_STREAM: Duration = Duration::from_secs(10);
/// How many quick breaks in a row end the watch (etcd cancelling it again and again).
const MAX_QUICK_BREAKS: u32 = 20;

/// A change of one key, as far as the write-outcome check needs it.
pub(super) enum Change {
    Put(KeyValue),
    Deleted,
}

/// A watch request for `[key, range_end)` (or `key` alone when `range_end` is empty).
fn create_request(key: Vec<u8>, range_end: Vec<u8>, start_revision: i64, prev_kv: bool) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            range_end,
            start_revision,
            prev_kv,
            ..WatchCreateRequest::default()
        })),
    }
}

/// Opens a watch on endpoint `index` and returns its stream with the first response (which says
/// whether the watcher was created, or why not).
async fn open_on(
    mut client: WatchClient<Channel>,
    request: WatchRequest,
) -> Result<(Streaming<WatchResponse>, WatchResponse), Status> {
    // The request stream stays open (pending) for as long as the watch lives: closing it would
    // make etcd end the watch.
    let requests = futures::stream::iter([request]).chain(futures::stream::pending());
    let mut request = tonic::Request::new(requests);
    // etcd then cancels the watch when its member loses the leader (a partitioned member would
    // otherwise keep the stream open and deliver nothing).
    request.metadata_mut().insert("hasleader", MetadataValue::from_static("true"));
    let mut stream = client.watch(request).await?.into_inner();
    match stream.message().await? {
        Some(first) => Ok((stream, first)),
        None => Err(Status::unavailable("etcd closed the watch before creating it")),
    }
}

fn compacted(kind: Option<Kind>, name: &str, revision: i64, compact: i64) -> StoreError {
    StoreError::new(
        ErrorKind::Unavailable,
        "watch",
        kind,
        name,
        format!(
            "etcd compacted its history up to revision {compact}, past revision {revision} this watch \
             needs: list again and watch anew"
        ),
    )
}

enum Lookup {
    Found(Option<Change>),
    Compacted(i64),
}

/// The first change of `key` after `revision`. `changed` says the caller knows there is one (the
/// key's current revision is later); otherwise a short wait without an event means there is none.
pub(super) async fn first_change_after(
    inner: &Inner,
    op: &'static str,
    kind: Kind,
    name: &str,
    key: Vec<u8>,
    revision: i64,
    changed: bool,
) -> Result<Option<Change>> {
    let wait = if changed { ATTEMPT_TIMEOUT - Duration::from_secs(1) } else { Duration::from_secs(1) };
    let (lookup, _) = inner
        .conn
        .call(op, Some(kind), name, super::OPERATION_DEADLINE, |index| {
            let request = create_request(key.clone(), Vec::new(), revision + 1, false);
            let opened = open_on(inner.conn.watch(index), request);
            async move {
                let (mut stream, mut response) = opened.await?;
                loop {
                    if response.compact_revision != 0 {
                        return Ok(Lookup::Compacted(response.compact_revision));
                    }
                    if let Some(event) = response.events.first() {
                        let change = match EventType::try_from(event.r#type) {
                            Ok(EventType::Delete) => Change::Deleted,
                            _ => Change::Put(event.kv.clone().unwrap_or_default()),
                        };
                        return Ok(Lookup::Found(Some(change)));
                    }
                    if response.canceled {
                        return Err(Status::unavailable(format!(
                            "watch canceled: {}",
                            response.cancel_reason
                        )));
                    }
                    response = match tokio::time::timeout(wait, stream.message()).await {
                        Ok(Ok(Some(next))) => next,
                        Ok(Ok(None)) => return Err(Status::unavailable("etcd closed the watch")),
                        Ok(Err(status)) => return Err(status),
                        Err(_) if changed => {
                            return Err(Status::deadline_exceeded("no event in the history"))
                        }
                        Err(_) => return Ok(Lookup::Found(None)),
                    };
                }
            }
            .boxed()
        })
        .await?;
    match lookup {
        Lookup::Found(change) => Ok(change),
        Lookup::Compacted(compact) => {
            let mut err = compacted(Some(kind), name, revision + 1, compact);
            err.op = op;
            err.message = format!("the outcome of the write is unknown: {}", err.message);
            Err(err)
        }
    }
}

/// A watch of `kind` (or every kind) from `start_revision` that reopens itself after a break.
pub(super) fn resuming(inner: Arc<Inner>, kind: Option<Kind>, start_revision: i64) -> WatchStream {
    let state = Resuming {
        inner,
        kind,
        next_revision: start_revision,
        stream: None,
        pending: VecDeque::new(),
        ended: false,
        breaks: 0,
        opened_at: Instant::now(),
    };
    futures::stream::unfold(state, |mut state| async move { state.next().await.map(|item| (item, state)) })
        .boxed()
}

struct Resuming {
    inner: Arc<Inner>,
    kind: Option<Kind>,
    /// The revision after the last event taken from etcd: where a reopened watch starts.
    next_revision: i64,
    stream: Option<(usize, Streaming<WatchResponse>)>,
    pending: VecDeque<WatchEvent>,
    ended: bool,
    /// Breaks (or cancels) of streams that lived less than [`STABLE_STREAM`], in a row: reopening
    /// backs off with them and gives up after [`MAX_QUICK_BREAKS`].
    breaks: u32,
    opened_at: Instant,
}

impl Resuming {
    async fn next(&mut self) -> Option<Result<WatchEvent>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.ended {
                return None;
            }
            let message = match self.stream.as_mut() {
                Some((index, stream)) => (*index, stream.message().await),
                None => {
                    if self.breaks > MAX_QUICK_BREAKS {
                        let message = format!("the watch broke {} times in a row: list again", self.breaks);
                        return Some(self.end(StoreError::new(
                            ErrorKind::Unavailable,
                            "watch",
                            self.kind,
                            "",
                            message,
                        )));
                    }
                    if self.breaks > 0 {
                        tokio::time::sleep(Duration::from_millis(50 << self.breaks.min(5))).await;
                    }
                    match open_resuming(self.inner.clone(), self.kind, self.range(), self.next_revision).await
                    {
                        Ok((index, stream, first)) => {
                            self.opened_at = Instant::now();
                            self.stream = Some((index, stream));
                            (index, Ok(Some(first)))
                        }
                        Err(err) => return Some(self.end(err)),
                    }
                }
            };
            match message {
                (index, Ok(Some(response))) => {
                    if let Err(err) = self.absorb(index, response) {
                        return Some(self.end(err));
                    }
                }
                (index, Ok(None) | Err(_)) => {
                    tracing::debug!(
                        endpoint = self.inner.conn.endpoint(index),
                        "etcd watch broke; reopening"
                    );
                    self.broke(index);
                }
            }
        }
    }

    /// The stream from endpoint `index` broke or was canceled: the next one opens elsewhere.
    fn broke(&mut self, index: usize) {
        self.inner.conn.failed(index);
        self.stream = None;
        self.breaks = if self.opened_at.elapsed() >= STABLE_STREAM { 1 } else { self.breaks + 1 };
    }

    fn end(&mut self, err: StoreError) -> Result<WatchEvent> {
        self.ended = true;
        self.stream = None;
        Err(err)
    }

    fn range(&self) -> (Vec<u8>, Vec<u8>) {
        let prefix = match self.kind {
            Some(kind) => self.inner.kind_prefix(kind),
            None => self.inner.prefix.clone().into_bytes(),
        };
        let end = prefix_end(&prefix);
        (prefix, end)
    }

    /// Takes the events of one response into `pending`.
    fn absorb(&mut self, index: usize, response: WatchResponse) -> Result<()> {
        if response.compact_revision != 0 {
            return Err(compacted(self.kind, "", self.next_revision, response.compact_revision));
        }
        if response.canceled {
            tracing::debug!(reason = %response.cancel_reason, "etcd canceled the watch; reopening elsewhere");
            self.broke(index);
            return Ok(());
        }
        for event in response.events {
            let Some(kv) = event.kv else { continue };
            self.next_revision = kv.mod_revision + 1;
            let Some((kind, name)) = self.inner.parse_key(&kv.key) else { continue };
            let delivered = match EventType::try_from(event.r#type) {
                Ok(EventType::Delete) => {
                    // The deleted record is the previous value; etcd drops it only when it was compacted.
                    let Some(prev) = event.prev_kv else {
                        return Err(compacted(self.kind, name, kv.mod_revision, kv.mod_revision));
                    };
                    WatchEvent::Deleted(decode(kind, name, &prev)?.0)
                }
                _ => WatchEvent::Put(decode(kind, name, &kv)?.0),
            };
            self.pending.push_back(delivered);
        }
        Ok(())
    }
}

/// Opens the watch of a [`Resuming`] on the first endpoint that takes it. A free function: the
/// stream state is not `Sync`, so no reference to it may live across an await.
async fn open_resuming(
    inner: Arc<Inner>,
    kind: Option<Kind>,
    (key, range_end): (Vec<u8>, Vec<u8>),
    start: i64,
) -> Result<(usize, Streaming<WatchResponse>, WatchResponse)> {
    let conn = &inner.conn;
    let (opened, _) = conn
        .call("watch", kind, "", RECONNECT_DEADLINE, |index| {
            let request = create_request(key.clone(), range_end.clone(), start, true);
            let opened = open_on(conn.watch(index), request);
            async move {
                let (stream, first) = opened.await?;
                Ok((index, stream, first))
            }
            .boxed()
        })
        .await?;
    Ok(opened)
}
