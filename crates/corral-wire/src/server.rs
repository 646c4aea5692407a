//! The replica's side: [`serve`] accepts connections and runs requests on a [`ReplicaService`].
//!
//! Threading: each connection is one tokio task that reads frames and writes answers (reader and writer
//! joined in the same task). Small reads and writes (up to [`ServeOptions::inline_max`] bytes, no FUA)
//! and pings are served **inline** on that task: a `pread`/`pwrite` in the page cache takes
//! microseconds, far less than handing the request to another thread and the answer back. A read is
//! served inline only if the service can do it without waiting for the disk
//! ([`ReplicaService::read_if_cached`]); a cache miss goes to the worker pool like large requests, so
//! cold reads run many at a time instead of one per connection. Every whole
//! frame already received is served this way, then all their answers leave in one vectored write, so
//! under load many answers share one system call and at queue depth 1 nothing waits for a batch.
//! Everything that may block for long (flush, unmap, write-zeroes, FUA writes, large data, every control
//! operation) goes to a fixed pool of worker threads ([`crate::worker_pool`]), never blocking the
//! reactor; those run concurrently and are answered out of order, each answer carrying its request id.
//! The protocol never promised an order between requests in flight (the engine only sends a flush after
//! the writes it covers were answered), so serving some requests inline changes no guarantee. A
//! connection has at most [`ServeOptions::max_in_flight`] requests queued or running on the pool; beyond
//! that its reader waits (back-pressure through TCP instead of unbounded memory).
//!
//! Session rules (see [`crate::Hello`]): the first request on a connection must be `Hello` (only `Ping` and
//! `Info` are allowed before it). A replica serves one engine: a `Hello` from another engine (or another
//! instance of the same engine id) is refused with `Busy` while the holder has connections, unless it
//! asks `take_over`, in which case the holder's connections are closed and their requests already
//! running finish before the new engine is answered (an inline request always completes before its
//! connection notices the close, since it never yields). The claim ends when the holder's last
//! connection closes.
//!
//! Engine epochs (fencing, see [`crate::Hello::epoch`]): the control plane gives every engine start a new,
//! higher epoch. The replica keeps the highest epoch it accepted ([`ReplicaService::engine_epoch`],
//! made durable by [`ReplicaService::accept_engine_epoch`] *before* the `Hello` is answered, so a
//! restarted replica still knows it) and:
//! - refuses a `Hello` with an older epoch (`Busy`: "engine epoch 4 is older than 5 accepted by this
//!   replica"); epoch 0, a hand-started engine, is therefore refused once any epoch was accepted;
//! - takes the replica over for a `Hello` with a newer epoch, `take_over` or not: the store decided that
//!   engine is the volume's current one, and the holder is an engine cut off from it;
//! - allows an equal epoch under the rules above (the same engine's other connections, its reconnects);
//! - refuses every later request of a connection whose session epoch is older than the current one,
//!   checked when the request starts (inline, before it is queued, and on the worker), so an old engine
//!   whose connections survived a partition gets errors, never a write, after a newer one was answered.
//!   Requests of the old engine already running when the newer `Hello` arrives finish before that
//!   `Hello` is answered (the take-over drain above).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::address::Listener;
use crate::error::{ErrorKind, Result, WireError};
use crate::frame::{response_header, Header, HeaderError, Op, Request, HEADER_LEN};
use crate::messages::{Extent, RecoveryFacts, SnapshotInfo, SnapshotRequest};
use crate::outbound::Outbound;
use crate::worker_pool::{Job, JobQueue, WorkerPool};

mod session;
use session::{stale_epoch, Claims};

/// What a replica offers over the wire: the verbs of [`crate::ReplicaProtocol`] (plus `Hello`'s facts)
/// as the blocking calls a storage library makes, which is why this is not the async trait itself (see
/// [`crate::protocol`]). Methods are synchronous and may block (file I/O, fsync); the server calls
/// them from worker threads, several at a time. Errors should be
/// [`WireError::Service`] with the right [`ErrorKind`]; any other error is sent with its own kind.
pub trait ReplicaService: Send + Sync + 'static {
    /// Fills `buf` with the volume bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Fills `buf` like [`Self::read`] if that needs no wait for the disk; otherwise returns `Ok(false)`
    /// at once (`buf` then holds anything) and the server runs the read on a worker thread instead. The
    /// server calls this on the connection's task, so it must not block. The default reads through
    /// [`Self::read`], which is right only for a service whose reads never wait (memory).
    fn read_if_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        self.read(offset, buf).map(|()| true)
    }
    /// Writes `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// Discards a range.
    fn unmap(&self, offset: u64, len: u64) -> Result<()>;
    /// Zeroes a range.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<()>;
    /// Current recovery facts (also the answer to `Hello`).
    fn info(&self) -> Result<RecoveryFacts>;
    /// Persists the engine-assigned generation.
    fn set_generation(&self, generation: u64) -> Result<()>;
    /// Sets the revision counter.
    fn set_revision(&self, revision: u64) -> Result<()>;
    /// Sets the rebuilding flag.
    fn set_rebuilding(&self, rebuilding: bool) -> Result<()>;
    /// Takes a snapshot.
    fn snapshot(&self, request: &SnapshotRequest) -> Result<()>;
    /// Lists snapshots and the head.
    fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>>;
    /// Marks a snapshot removed.
    fn mark_removed(&self, name: &str) -> Result<()>;
    /// Purges removed snapshots, to completion.
    fn purge(&self) -> Result<()>;
    /// Reverts to a snapshot.
    fn revert(&self, name: &str) -> Result<()>;
    /// Grows the volume.
    fn expand(&self, size: u64) -> Result<()>;
    /// Allocated extents of a layer file.
    fn layer_extents(&self, name: &str) -> Result<Vec<Extent>>;
    /// Raw bytes of a layer file.
    fn read_layer(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// SHA-256 of a raw layer range.
    fn layer_checksum(&self, name: &str, offset: u64, len: u64) -> Result<[u8; 32]>;
    /// Rebuild: creates (or keeps) a layer outside the live chain.
    fn begin_layer(&self, info: &SnapshotInfo) -> Result<()>;
    /// Rebuild: raw write into a begun layer.
    fn write_layer(&self, name: &str, offset: u64, data: &[u8]) -> Result<()>;
    /// Rebuild: punches a hole in a begun layer.
    fn punch_layer(&self, name: &str, offset: u64, len: u64) -> Result<()>;
    /// Rebuild: installs the chain (root first) under the head.
    fn finish_rebuild(&self, chain: &[SnapshotInfo]) -> Result<()>;
    /// The highest engine epoch this replica accepted (0: none). Read once when serving starts. The
    /// default, for services without durable state, is 0.
    fn engine_epoch(&self) -> Result<u64> {
        Ok(0)
    }
    /// Makes `epoch` the accepted engine epoch, durably, before returning; the server calls it only with
    /// an epoch above the current one (and one at a time). The default keeps nothing: the server still
    /// fences in memory for as long as it runs.
    fn accept_engine_epoch(&self, epoch: u64) -> Result<()> {
        let _ = epoch;
        Ok(())
    }
}

/// Default of [`ServeOptions::inline_max`]: a 128 KiB `pwrite` into the page cache takes some tens of
/// microseconds, still less than two thread hand-offs under load; bigger requests go to the pool so
/// that one connection can keep several of them running at once.
pub const DEFAULT_INLINE_MAX: usize = 128 << 10;
/// Inline answers are sent once this many bytes of them are waiting, even if more frames are buffered.
const INLINE_BATCH: usize = 256 << 10;

/// Tuning of [`serve_with`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Worker threads running service calls (default: 2 × CPUs, at least 4).
    pub workers: usize,
    /// Requests one connection may have queued or running (default 256).
    pub max_in_flight: usize,
    /// How long a take-over waits for the old holder's running requests (default 30 s).
    pub take_over_drain: Duration,
    /// Reads and writes of at most this many bytes (and without FUA) are served inline on the
    /// connection's task instead of the worker pool (default 128 KiB; 0 sends everything to the pool).
    pub inline_max: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        ServeOptions {
            workers: (2 * cpus).max(4),
            max_in_flight: 256,
            take_over_drain: Duration::from_secs(30),
            inline_max: DEFAULT_INLINE_MAX,
        }
    }
}

/// Serves `service` on `listener` until the listener fails. See the module documentation.
pub async fn serve<S: ReplicaService>(listener: Listener, service: Arc<S>) -> Result<()> {
    serve_with(listener, service, ServeOptions::default(), std::future::pending()).await
}

/// Serves until `shutdown` resolves; then closes every connection, lets requests already running finish,
/// stops the workers and returns, holding no reference to `service` any more.
pub async fn serve_with<S, F>(
    listener: Listener,
    service: Arc<S>,
    options: ServeOptions,
    shutdown: F,
) -> Result<()>
where
    S: ReplicaService,
    F: Future<Output = ()>,
{
    let accepted_epoch = service.engine_epoch()?;
    let pool = WorkerPool::start(service.clone(), options.workers.max(1))?;
    let server = Arc::new(Server {
        service,
        epoch: Arc::new(AtomicU64::new(accepted_epoch)),
        epoch_gate: tokio::sync::Mutex::new(()),
        jobs: pool.queue.clone(),
        options,
        claims: Mutex::new(Claims::default()),
        stop: CancellationToken::new(),
        next_connection: AtomicU64::new(1),
    });
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    let result = loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break Ok(()),
            accepted = accept(&listener) => accepted,
        };
        while tasks.try_join_next().is_some() {}
        match accepted {
            Ok(Accepted::Tcp(stream)) => {
                let _ = stream.set_nodelay(true);
                let (reader, writer) = stream.into_split();
                tasks.spawn(server.clone().run_connection(reader, writer));
            }
            Ok(Accepted::Unix(stream)) => {
                let (reader, writer) = stream.into_split();
                tasks.spawn(server.clone().run_connection(reader, writer));
            }
            Err(err) if is_transient_accept_error(&err) => {
                tracing::warn!("accept failed, retrying: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => break Err(WireError::Io { op: "accept", addr: "listener".into(), source: err }),
        }
    };
    server.stop.cancel();
    while tasks.join_next().await.is_some() {}
    // The last reference to the service outside the pool.
    drop(server);
    // Requests already queued run to completion before the workers stop.
    let _ = tokio::task::spawn_blocking(move || pool.stop()).await;
    result
}

fn is_transient_accept_error(err: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(err.kind(), K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::WouldBlock)
        // ENFILE / EMFILE: out of descriptors for a moment; keep serving the connections we have.
        || matches!(err.raw_os_error(), Some(23 | 24))
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(listener) => listener.accept().await.map(|(stream, _)| Accepted::Tcp(stream)),
        Listener::Unix(listener) => listener.accept().await.map(|(stream, _)| Accepted::Unix(stream)),
    }
}

/// Per-connection state shared with the workers.
pub(crate) struct ConnectionState {
    id: u64,
    pub(crate) out: Outbound,
    /// Free slots for pool requests; a worker returns one after answering.
    pub(crate) slots: Semaphore,
    max_in_flight: usize,
    /// Closed by a take-over or by the server stopping.
    stop: CancellationToken,
    greeted: AtomicBool,
    /// Set by a take-over before `stop`: no inline request may start once it is set.
    revoked: AtomicBool,
    /// True while the connection's task runs an inline request. With `revoked` this is a Dekker pair
    /// (both SeqCst): a take-over either sees the request running and waits for it, or the connection
    /// sees the revocation and does not start it; an old engine's write never lands after the new
    /// engine was answered.
    inline_busy: AtomicBool,
    /// The epoch of the engine session this connection belongs to (set by its `Hello`).
    epoch: AtomicU64,
    /// The replica's current engine epoch (the server's, shared by every connection).
    current_epoch: Arc<AtomicU64>,
}

impl ConnectionState {
    /// The refusal for a request of this connection if its engine was fenced off by a newer epoch.
    pub(crate) fn fenced(&self) -> Option<WireError> {
        let current = self.current_epoch.load(Ordering::SeqCst);
        let epoch = self.epoch.load(Ordering::Acquire);
        (epoch < current).then(|| stale_epoch(epoch, current))
    }

    /// No request of this connection is running (on the pool or inline).
    fn idle(&self) -> bool {
        self.slots.available_permits() >= self.max_in_flight && !self.inline_busy.load(Ordering::SeqCst)
    }

    fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
        self.stop.cancel();
    }

    pub(crate) fn push_error(&self, op_code: u8, request_id: u64, kind: ErrorKind, message: &str) {
        let header = response_header(op_code, request_id, kind.code(), message.len() as u32);
        self.out.push_frame(&header, Bytes::copy_from_slice(message.as_bytes()));
    }

    pub(crate) fn push_ok(&self, op_code: u8, request_id: u64, payload: Bytes) {
        let header = response_header(op_code, request_id, 0, payload.len() as u32);
        self.out.push_frame(&header, payload);
    }
}

/// Answers built on the connection's task, sent together when no whole frame is left to serve.
#[derive(Default)]
struct InlineAnswers {
    frames: BytesMut,
}

impl InlineAnswers {
    fn push(&mut self, header: &Header, payload: &[u8]) {
        self.frames.extend_from_slice(&header.to_bytes());
        self.frames.extend_from_slice(payload);
    }

    fn push_error(&mut self, op_code: u8, request_id: u64, err: &WireError) {
        let message = err.wire_message();
        let header = response_header(op_code, request_id, err.kind().code(), message.len() as u32);
        self.push(&header, message.as_bytes());
    }

    /// Hands what is waiting to the writer (joined in the same task: it runs as soon as the reader waits).
    fn send(&mut self, state: &ConnectionState) {
        if !self.frames.is_empty() {
            state.out.push_raw(self.frames.split().freeze());
        }
    }
}

struct Server<S> {
    service: Arc<S>,
    /// The highest engine epoch accepted (durable through the service before it is raised here).
    epoch: Arc<AtomicU64>,
    /// Serialises raising the epoch, so two newer `Hello`s persist in order.
    epoch_gate: tokio::sync::Mutex<()>,
    jobs: Arc<JobQueue>,
    options: ServeOptions,
    claims: Mutex<Claims>,
    stop: CancellationToken,
    next_connection: AtomicU64,
}

/// What the reader does after a frame.
enum Next {
    Continue,
    Close,
}

impl<S: ReplicaService> Server<S> {
    async fn run_connection<R, W>(self: Arc<Self>, reader: R, writer: W)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let state = Arc::new(ConnectionState {
            id: self.next_connection.fetch_add(1, Ordering::Relaxed),
            out: Outbound::default(),
            slots: Semaphore::new(self.options.max_in_flight),
            max_in_flight: self.options.max_in_flight,
            stop: self.stop.child_token(),
            greeted: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            inline_busy: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            current_epoch: self.epoch.clone(),
        });
        let reading = async {
            let stopped_by_peer = tokio::select! {
                () = self.read_requests(&state, reader) => true,
                () = state.stop.cancelled() => false,
            };
            if stopped_by_peer {
                // The peer may have only half-closed: answer what is running, then close.
                while !state.idle() && !state.stop.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                state.out.close();
            } else {
                state.out.abort();
            }
        };
        let writing = async {
            if let Err(err) = state.out.run_writer(writer).await {
                tracing::debug!(connection = state.id, "write failed: {err}");
                state.out.abort();
                state.stop.cancel();
            }
        };
        tokio::join!(reading, writing);
        let mut claims = self.claims.lock();
        if let Some(holder) = claims.holder.as_mut() {
            holder.connections.remove(&state.id);
            if holder.connections.is_empty() {
                claims.holder = None;
            }
        }
    }

    /// Reads and serves frames until the peer closes, the stream breaks, or a frame ends the connection.
    async fn read_requests<R: AsyncRead + Unpin>(&self, state: &Arc<ConnectionState>, mut reader: R) {
        let mut buffer = BytesMut::with_capacity(256 * 1024);
        let mut inline = InlineAnswers::default();
        loop {
            let step = self.serve_buffered(state, &mut buffer, &mut inline).await;
            // Nothing whole is left to serve: send the inline answers before waiting for the socket.
            inline.send(state);
            let Some(want) = step else { return };
            if !read_more(&mut reader, &mut buffer, want).await {
                return;
            }
        }
    }

    /// Serves every whole frame in `buffer`. Returns how many bytes the next frame needs to be whole, or
    /// `None` when the connection must end.
    async fn serve_buffered(
        &self,
        state: &Arc<ConnectionState>,
        buffer: &mut BytesMut,
        inline: &mut InlineAnswers,
    ) -> Option<usize> {
        loop {
            let Some(raw) = buffer.first_chunk::<HEADER_LEN>().copied() else {
                return Some(HEADER_LEN);
            };
            let header = match Header::decode(&raw) {
                Ok(header) => header,
                Err(HeaderError::BadMagic(magic)) => {
                    tracing::warn!(connection = state.id, "closing connection: bad magic {magic:02x?}");
                    return None;
                }
                Err(err) => {
                    if let Some(request_id) = err.request_id() {
                        inline.send(state);
                        state.push_error(
                            raw[5] & !crate::frame::RESPONSE_BIT,
                            request_id,
                            ErrorKind::Protocol,
                            &err.to_string(),
                        );
                    }
                    tracing::warn!(connection = state.id, "closing connection: {err}");
                    return None;
                }
            };
            let total = HEADER_LEN + header.payload_len as usize;
            if buffer.len() < total {
                return Some(total);
            }
            state.inline_busy.store(true, Ordering::SeqCst);
            if state.revoked.load(Ordering::SeqCst) {
                state.inline_busy.store(false, Ordering::SeqCst);
                return None;
            }
            let served = self.serve_inline(state, &header, &buffer[HEADER_LEN..total], inline);
            state.inline_busy.store(false, Ordering::SeqCst);
            if served {
                buffer.advance(total);
                if inline.frames.len() >= INLINE_BATCH {
                    inline.send(state);
                }
                continue;
            }
            inline.send(state);
            let mut frame = buffer.split_to(total);
            frame.advance(HEADER_LEN);
            if let Next::Close = self.handle_frame(state, header, frame.freeze()).await {
                return None;
            }
        }
    }

    /// Serves a small read, a small non-FUA write or a ping on the spot; false if the frame is for the
    /// general path (anything else, or any frame that would be refused).
    fn serve_inline(
        &self,
        state: &ConnectionState,
        header: &Header,
        payload: &[u8],
        inline: &mut InlineAnswers,
    ) -> bool {
        let limit = self.options.inline_max as u64;
        let request_id = header.request_id;
        // A fenced connection's requests take the general path, which refuses them.
        let greeted = || state.greeted.load(Ordering::Acquire) && state.fenced().is_none();
        match header.msg_type {
            code if code == Op::Ping as u8 && payload.is_empty() => {
                inline.push(&response_header(code, request_id, 0, 0), &[]);
                true
            }
            code if code == Op::Read as u8
                && payload.is_empty()
                && header.length <= limit
                && limit > 0
                && greeted() =>
            {
                // `length <= inline_max`, so it fits in memory and in the u32 payload length.
                let len = header.length as usize;
                let start = inline.frames.len();
                inline.frames.resize(start + HEADER_LEN + len, 0);
                match self.service.read_if_cached(header.offset, &mut inline.frames[start + HEADER_LEN..]) {
                    Ok(true) => {
                        let answer = response_header(code, request_id, 0, len as u32);
                        inline.frames[start..start + HEADER_LEN].copy_from_slice(&answer.to_bytes());
                    }
                    Ok(false) => {
                        // Not in the page cache: a disk read must not hold up this connection's other
                        // requests, so it goes to the worker pool.
                        inline.frames.truncate(start);
                        return false;
                    }
                    Err(err) => {
                        inline.frames.truncate(start);
                        tracing::debug!(request_id, "read failed: {err}");
                        inline.push_error(code, request_id, &err);
                    }
                }
                true
            }
            code if code == Op::Write as u8
                && header.flags == 0
                && payload.len() as u64 <= limit
                && limit > 0
                && greeted() =>
            {
                match self.service.write(header.offset, payload) {
                    Ok(()) => inline.push(&response_header(code, request_id, 0, 0), &[]),
                    Err(err) => {
                        tracing::debug!(request_id, "write failed: {err}");
                        inline.push_error(code, request_id, &err);
                    }
                }
                true
            }
            _ => false,
        }
    }

    async fn handle_frame(&self, state: &Arc<ConnectionState>, header: Header, payload: Bytes) -> Next {
        let op_code = header.msg_type;
        let request_id = header.request_id;
        let request = match Request::decode(&header, payload) {
            Ok(request) => request,
            Err(err) => {
                state.push_error(
                    op_code & !crate::frame::RESPONSE_BIT,
                    request_id,
                    ErrorKind::Protocol,
                    &err.to_string(),
                );
                return Next::Continue;
            }
        };
        match &request {
            Request::Ping => {
                state.push_ok(op_code, request_id, Bytes::new());
                return Next::Continue;
            }
            Request::Hello(hello) => {
                if let Err(err) = self.claim(state, hello).await {
                    state.push_error(op_code, request_id, err.kind(), &err.wire_message());
                    return Next::Continue;
                }
            }
            Request::Info => {}
            _ if !state.greeted.load(Ordering::Acquire) => {
                let message = format!(
                    "{} refused: Hello must be the first request on a connection",
                    request.op().name()
                );
                state.push_error(op_code, request_id, ErrorKind::Protocol, &message);
                return Next::Continue;
            }
            _ => {
                if let Some(err) = state.fenced() {
                    state.push_error(op_code, request_id, err.kind(), &err.wire_message());
                    return Next::Continue;
                }
            }
        }
        // Back-pressure: wait for a free slot (returned by the worker after answering).
        match state.slots.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return Next::Close,
        }
        self.jobs.push(Job { state: state.clone(), request_id, request });
        Next::Continue
    }
}

/// Reads more bytes into `buffer`, making room for a frame of `want` bytes; false on EOF or error.
async fn read_more<R: AsyncRead + Unpin>(reader: &mut R, buffer: &mut BytesMut, want: usize) -> bool {
    const MIN_ROOM: usize = 64 * 1024;
    if buffer.capacity() - buffer.len() < MIN_ROOM || buffer.capacity() < want {
        buffer.reserve(want.saturating_sub(buffer.len()).max(4 * MIN_ROOM));
    }
    matches!(reader.read_buf(buffer).await, Ok(n) if n > 0)
}
