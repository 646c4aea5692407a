//! The replica's side: [`serve`] accepts connections and runs requests on a [`ReplicaService`].
//!
//! Threading: each connection is one tokio task that reads frames and one writer (joined in the same
//! task). Decoded requests go to a fixed pool of worker threads (the service is synchronous and does
//! blocking file I/O, which must never run on the reactor); data requests of one connection are therefore
//! processed concurrently and answered out of order, each answer carrying its request id. A connection
//! has at most [`ServeOptions::max_in_flight`] requests queued or running; beyond that its reader waits
//! (back-pressure through TCP instead of unbounded memory).
//!
//! Session rules (see [`crate::Hello`]): the first request on a connection must be `Hello` (only `Ping` and
//! `Info` are allowed before it). A replica serves one engine: a `Hello` from another engine (or another
//! instance of the same engine id) is refused with `Busy` while the holder has connections, unless it
//! asks `take_over`, in which case the holder's connections are closed and their requests already
//! running finish before the new engine is answered. The claim ends when the holder's last connection
//! closes.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::{Condvar, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::address::Listener;
use crate::error::{ErrorKind, Result, WireError};
use crate::frame::{response_header, Header, HeaderError, Op, Request, HEADER_LEN};
use crate::messages::{
    encode_extents, encode_json, Extent, Hello, RecoveryFacts, SnapshotInfo, SnapshotRequest,
};
use crate::outbound::Outbound;

/// What a replica offers over the wire. Methods are synchronous and may block (file I/O, fsync); the
/// server calls them from worker threads, several at a time. Errors should be
/// [`WireError::Service`] with the right [`ErrorKind`]; any other error is sent with its own kind.
pub trait ReplicaService: Send + Sync + 'static {
    /// Fills `buf` with the volume bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
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
}

/// Tuning of [`serve_with`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Worker threads running service calls (default: 2 × CPUs, at least 4).
    pub workers: usize,
    /// Requests one connection may have queued or running (default 256).
    pub max_in_flight: usize,
    /// How long a take-over waits for the old holder's running requests (default 30 s).
    pub take_over_drain: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        ServeOptions {
            workers: (2 * cpus).max(4),
            max_in_flight: 256,
            take_over_drain: Duration::from_secs(30),
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
    let pool = WorkerPool::start(service.clone(), options.workers.max(1))?;
    drop(service);
    let server = Arc::new(Server {
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

/// Which engine holds the replica, and through which connections.
#[derive(Default)]
struct Claims {
    holder: Option<Holder>,
}

struct Holder {
    engine_id: String,
    session: u64,
    connections: HashMap<u64, Arc<ConnectionState>>,
}

/// Per-connection state shared with the workers.
struct ConnectionState {
    id: u64,
    out: Outbound,
    /// Free slots for requests; a worker returns one after answering.
    slots: Semaphore,
    max_in_flight: usize,
    /// Closed by a take-over or by the server stopping.
    stop: CancellationToken,
    greeted: AtomicBool,
}

impl ConnectionState {
    fn idle(&self) -> bool {
        self.slots.available_permits() >= self.max_in_flight
    }

    fn push_error(&self, op_code: u8, request_id: u64, kind: ErrorKind, message: &str) {
        let header = response_header(op_code, request_id, kind.code(), message.len() as u32);
        self.out.push_frame(&header, Bytes::copy_from_slice(message.as_bytes()));
    }

    fn push_ok(&self, op_code: u8, request_id: u64, payload: Bytes) {
        let header = response_header(op_code, request_id, 0, payload.len() as u32);
        self.out.push_frame(&header, payload);
    }
}

struct Server {
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

impl Server {
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

    async fn read_requests<R: AsyncRead + Unpin>(&self, state: &Arc<ConnectionState>, mut reader: R) {
        let mut buffer = BytesMut::with_capacity(256 * 1024);
        loop {
            if !read_at_least(&mut reader, &mut buffer, HEADER_LEN).await {
                return;
            }
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(&buffer[..HEADER_LEN]);
            let header = match Header::decode(&raw) {
                Ok(header) => header,
                Err(HeaderError::BadMagic(magic)) => {
                    tracing::warn!(connection = state.id, "closing connection: bad magic {magic:02x?}");
                    return;
                }
                Err(err) => {
                    if let Some(request_id) = err.request_id() {
                        state.push_error(
                            raw[5] & !crate::frame::RESPONSE_BIT,
                            request_id,
                            ErrorKind::Protocol,
                            &err.to_string(),
                        );
                    }
                    tracing::warn!(connection = state.id, "closing connection: {err}");
                    return;
                }
            };
            let total = HEADER_LEN + header.payload_len as usize;
            if !read_at_least(&mut reader, &mut buffer, total).await {
                return;
            }
            let mut frame = buffer.split_to(total);
            frame.advance(HEADER_LEN);
            match self.handle_frame(state, header, frame.freeze()).await {
                Next::Continue => {}
                Next::Close => return,
            }
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
            _ => {}
        }
        // Back-pressure: wait for a free slot (returned by the worker after answering).
        match state.slots.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return Next::Close,
        }
        self.jobs.push(Job { state: state.clone(), request_id, request });
        Next::Continue
    }

    async fn claim(&self, state: &Arc<ConnectionState>, hello: &Hello) -> Result<()> {
        let replaced = {
            let mut claims = self.claims.lock();
            let same_session = claims
                .holder
                .as_ref()
                .map(|holder| holder.engine_id == hello.engine_id && holder.session == hello.session);
            match same_session {
                None | Some(true) => Vec::new(),
                Some(false) if !hello.take_over => {
                    let holder = claims.holder.as_ref().map(|h| h.engine_id.clone()).unwrap_or_default();
                    return Err(WireError::service(
                        ErrorKind::Busy,
                        format!(
                            "replica is held by engine {holder:?}; engine {:?} refused (use take-over if that engine is gone)",
                            hello.engine_id
                        ),
                    ));
                }
                Some(false) => {
                    let old = claims.holder.take().map(|h| h.connections).unwrap_or_default();
                    tracing::warn!("engine {:?} takes the replica over", hello.engine_id);
                    old.into_values().collect()
                }
            }
        };
        // Writes of the old holder that are already running must land before the new engine proceeds.
        for old in &replaced {
            old.stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + self.options.take_over_drain;
        while replaced.iter().any(|old| !old.idle()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut claims = self.claims.lock();
        if let Some(holder) = &claims.holder {
            // Another Hello won the race while this one was draining.
            if holder.engine_id != hello.engine_id || holder.session != hello.session {
                return Err(WireError::service(
                    ErrorKind::Busy,
                    "replica was claimed by another engine meanwhile",
                ));
            }
        }
        let holder = claims.holder.get_or_insert_with(|| Holder {
            engine_id: hello.engine_id.clone(),
            session: hello.session,
            connections: HashMap::new(),
        });
        holder.connections.insert(state.id, state.clone());
        state.greeted.store(true, Ordering::Release);
        Ok(())
    }
}

/// Reads until `buffer` holds at least `want` bytes; false on EOF or error.
async fn read_at_least<R: AsyncRead + Unpin>(reader: &mut R, buffer: &mut BytesMut, want: usize) -> bool {
    const MIN_ROOM: usize = 64 * 1024;
    while buffer.len() < want {
        if buffer.capacity() - buffer.len() < MIN_ROOM || buffer.capacity() < want {
            buffer.reserve(want.saturating_sub(buffer.len()).max(4 * MIN_ROOM));
        }
        match reader.read_buf(buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// One decoded request for a worker.
struct Job {
    state: Arc<ConnectionState>,
    request_id: u64,
    request: Request,
}

#[derive(Default)]
struct JobQueue {
    jobs: Mutex<(VecDeque<Job>, bool)>,
    available: Condvar,
}

impl JobQueue {
    fn push(&self, job: Job) {
        self.jobs.lock().0.push_back(job);
        self.available.notify_one();
    }

    /// Next job; `None` once stopped and empty.
    fn pop(&self) -> Option<Job> {
        let mut jobs = self.jobs.lock();
        loop {
            if let Some(job) = jobs.0.pop_front() {
                return Some(job);
            }
            if jobs.1 {
                return None;
            }
            self.available.wait(&mut jobs);
        }
    }
}

struct WorkerPool {
    queue: Arc<JobQueue>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WorkerPool {
    fn start<S: ReplicaService>(service: Arc<S>, workers: usize) -> Result<WorkerPool> {
        let queue = Arc::new(JobQueue::default());
        let mut threads = Vec::with_capacity(workers);
        for index in 0..workers {
            let queue = queue.clone();
            let service = service.clone();
            let thread = std::thread::Builder::new()
                .name(format!("replica-worker-{index}"))
                .spawn(move || {
                    while let Some(job) = queue.pop() {
                        run_job(&*service, job);
                    }
                })
                .map_err(|source| WireError::Io { op: "spawn worker", addr: String::new(), source })?;
            threads.push(thread);
        }
        Ok(WorkerPool { queue, threads })
    }

    fn stop(self) {
        self.queue.jobs.lock().1 = true;
        self.queue.available.notify_all();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The successful answer of a request.
enum Reply {
    Empty,
    Payload(Bytes),
    /// A whole frame already built (header included), for reads.
    Frame(Bytes),
}

fn run_job<S: ReplicaService>(service: &S, job: Job) {
    let Job { state, request_id, request } = job;
    let op = request.op();
    let result = execute(service, request_id, request);
    match result {
        Ok(Reply::Empty) => state.push_ok(op as u8, request_id, Bytes::new()),
        Ok(Reply::Payload(payload)) => state.push_ok(op as u8, request_id, payload),
        Ok(Reply::Frame(frame)) => {
            state.out.push_raw(frame);
        }
        Err(err) => {
            tracing::debug!(request_id, op = op.name(), "request failed: {err}");
            state.push_error(op as u8, request_id, err.kind(), &err.wire_message());
        }
    }
    state.slots.add_permits(1);
}

/// Reads `len` bytes with `fill` straight into a response frame (one allocation, no copy).
fn read_frame(
    op: Op,
    request_id: u64,
    len: u64,
    fill: impl FnOnce(&mut [u8]) -> Result<()>,
) -> Result<Reply> {
    let len32 =
        u32::try_from(len).map_err(|_| WireError::service(ErrorKind::InvalidArgument, "read too large"))?;
    let mut frame = BytesMut::zeroed(HEADER_LEN + len as usize);
    fill(&mut frame[HEADER_LEN..])?;
    let header = response_header(op as u8, request_id, 0, len32);
    header.encode(
        <&mut [u8; HEADER_LEN]>::try_from(&mut frame[..HEADER_LEN])
            .map_err(|_| WireError::Protocol("header slice".into()))?,
    );
    Ok(Reply::Frame(frame.freeze()))
}

fn json_reply<T: serde::Serialize>(value: &T) -> Result<Reply> {
    Ok(Reply::Payload(Bytes::from(encode_json(value)?)))
}

fn execute<S: ReplicaService>(service: &S, request_id: u64, request: Request) -> Result<Reply> {
    let op = request.op();
    match request {
        Request::Read { offset, len } => read_frame(op, request_id, len, |buf| service.read(offset, buf)),
        Request::Write { offset, data, fua } => {
            service.write(offset, &data)?;
            if fua {
                service.flush()?;
            }
            Ok(Reply::Empty)
        }
        Request::Unmap { offset, len, fua } => {
            service.unmap(offset, len)?;
            if fua {
                service.flush()?;
            }
            Ok(Reply::Empty)
        }
        Request::WriteZeroes { offset, len, fua } => {
            service.write_zeroes(offset, len)?;
            if fua {
                service.flush()?;
            }
            Ok(Reply::Empty)
        }
        Request::Flush => service.flush().map(|()| Reply::Empty),
        Request::Ping => Ok(Reply::Empty),
        Request::Hello(_) | Request::Info => json_reply(&service.info()?),
        Request::SetGeneration(generation) => service.set_generation(generation).map(|()| Reply::Empty),
        Request::SetRevision(revision) => service.set_revision(revision).map(|()| Reply::Empty),
        Request::SetRebuilding(rebuilding) => service.set_rebuilding(rebuilding).map(|()| Reply::Empty),
        Request::Snapshot(body) => service.snapshot(&body).map(|()| Reply::Empty),
        Request::ListSnapshots => json_reply(&service.list_snapshots()?),
        Request::MarkRemoved { name } => service.mark_removed(&name).map(|()| Reply::Empty),
        Request::Purge => service.purge().map(|()| Reply::Empty),
        Request::Revert { name } => service.revert(&name).map(|()| Reply::Empty),
        Request::Expand { size } => service.expand(size).map(|()| Reply::Empty),
        Request::LayerExtents { name, offset, len } => {
            let end = if len == 0 { u64::MAX } else { offset.saturating_add(len) };
            let clipped: Vec<Extent> = service
                .layer_extents(&name)?
                .into_iter()
                .filter_map(|extent| {
                    let start = extent.offset.max(offset);
                    let stop = extent.offset.saturating_add(extent.len).min(end);
                    (start < stop).then_some(Extent { offset: start, len: stop - start })
                })
                .collect();
            let packed = encode_extents(&clipped);
            if packed.len() > crate::frame::MAX_PAYLOAD as usize {
                return Err(WireError::service(
                    ErrorKind::InvalidArgument,
                    format!(
                        "layer {name} has {} extents in that range: ask for a smaller range",
                        clipped.len()
                    ),
                ));
            }
            Ok(Reply::Payload(Bytes::from(packed)))
        }
        Request::ReadLayer { name, offset, len } => {
            read_frame(op, request_id, len, |buf| service.read_layer(&name, offset, buf))
        }
        Request::LayerChecksum { name, offset, len } => {
            Ok(Reply::Payload(Bytes::copy_from_slice(&service.layer_checksum(&name, offset, len)?)))
        }
        Request::BeginLayer(info) => service.begin_layer(&info).map(|()| Reply::Empty),
        Request::WriteLayer { name, offset, data } => {
            service.write_layer(&name, offset, &data).map(|()| Reply::Empty)
        }
        Request::PunchLayer { name, offset, len } => {
            service.punch_layer(&name, offset, len).map(|()| Reply::Empty)
        }
        Request::FinishRebuild(chain) => service.finish_rebuild(&chain).map(|()| Reply::Empty),
    }
}
