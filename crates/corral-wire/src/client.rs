//! The engine's side: [`ReplicaClient`], an async, pipelined client over several connections.
//!
//! Each connection has one reader task and one writer task, spawned at connect time; a request never
//! spawns anything. A call reserves a slot in the connection's pending table (its request id), queues
//! the encoded frame for the writer, and awaits the slot; the reader matches answers to slots by id, in
//! whatever order the replica sends them. Calls are spread over the connections round-robin.
//!
//! Timeouts cost no timer per request: a timed request records when it was sent, and one watchdog task
//! per client looks for the oldest unanswered one a few times per timeout period (so a request fails
//! between 1× and about 1.25× the timeout after it was sent, never earlier).
//!
//! Failure is all-or-nothing: when any connection fails (reset, EOF, protocol violation, or a data
//! request that times out), the whole client is closed and every pending and future call fails at once
//! with [`ErrorKind::Closed`](crate::ErrorKind::Closed) (or `Timeout` for the one that timed out). The
//! engine then sets the replica ERR; a half-working replica is never used.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::address::Address;
use crate::error::{ErrorKind, Result, WireError};
use crate::frame::{Header, Request, HEADER_LEN};
use crate::messages::{
    decode_extents, decode_json, Extent, Hello, RecoveryFacts, SnapshotInfo, SnapshotRequest,
};
use crate::outbound::Outbound;
use crate::pending::{Answer, Failure, Pending};

/// How a [`ReplicaClient`] connects and when it gives up.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Number of connections (default 2).
    pub connections: usize,
    /// If set, a data request (read, write, unmap, write-zeroes, flush) without an answer after this
    /// long fails with `Timeout` and closes the client (the engine uses 8 s). Control requests (purge,
    /// snapshot, rebuild steps) may legitimately take longer and are not timed.
    pub request_timeout: Option<Duration>,
    /// Time allowed to establish each connection (default 5 s).
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { connections: 2, request_timeout: None, connect_timeout: Duration::from_secs(5) }
    }
}

struct Connection {
    pending: Pending,
    out: Outbound,
}

struct Shared {
    address: Address,
    connections: Vec<Connection>,
    next: AtomicUsize,
    options: ClientOptions,
    session: u64,
    closed: CancellationToken,
    close_reason: parking_lot::Mutex<Option<String>>,
}

impl Shared {
    /// Closes the client: fails everything pending, stops every connection's tasks.
    fn fail(&self, reason: &str) {
        {
            let mut current = self.close_reason.lock();
            if current.is_none() {
                *current = Some(reason.to_string());
            }
        }
        // Closed first: a caller woken below with `Closed` must already see `is_closed()`.
        self.closed.cancel();
        for connection in &self.connections {
            connection.pending.fail_all(reason);
            connection.out.abort();
        }
    }

    fn closed_error(&self, reason: String) -> WireError {
        WireError::Closed { addr: self.address.to_string(), reason }
    }
}

/// Stops the connection tasks when the last clone of a client is dropped.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.fail("client dropped");
    }
}

/// A pipelined connection to one replica. Cheap to clone (clones share the connections).
///
/// ```no_run
/// # async fn example() -> corral_wire::Result<()> {
/// use corral_wire::ReplicaClient;
/// let client = ReplicaClient::connect("tcp://127.0.0.1:9502", 2).await?;
/// let facts = client.hello("engine-vol1", false).await?;
/// client.write(0, bytes::Bytes::from(vec![1u8; 4096])).await?;
/// client.flush().await?;
/// assert_eq!(client.read(0, 4096).await?.len(), 4096);
/// # let _ = facts; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReplicaClient {
    shared: Arc<Shared>,
    _close_on_drop: Arc<CloseOnDrop>,
}

impl std::fmt::Debug for ReplicaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaClient").field("address", &self.shared.address.to_string()).finish()
    }
}

fn new_session_id() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish()
}

impl ReplicaClient {
    /// Connects `n_connections` sockets to `addr` (`tcp://host:port` or `unix:///path`). The caller must
    /// then send [`ReplicaClient::hello`] before any data request. Must run inside a tokio runtime.
    pub async fn connect(addr: &str, n_connections: usize) -> Result<ReplicaClient> {
        Self::connect_with(addr, ClientOptions { connections: n_connections, ..ClientOptions::default() })
            .await
    }

    /// Connects with explicit options.
    pub async fn connect_with(addr: &str, options: ClientOptions) -> Result<ReplicaClient> {
        let address = Address::parse(addr)?;
        let count = options.connections.max(1);
        let mut sockets = Vec::with_capacity(count);
        for _ in 0..count {
            let socket = tokio::time::timeout(options.connect_timeout, connect_socket(&address))
                .await
                .map_err(|_| WireError::Io {
                    op: "connect",
                    addr: address.to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                })??;
            sockets.push(socket);
        }
        let shared = Arc::new(Shared {
            address,
            connections: (0..count)
                .map(|_| Connection { pending: Pending::default(), out: Outbound::default() })
                .collect(),
            next: AtomicUsize::new(0),
            options,
            session: new_session_id(),
            closed: CancellationToken::new(),
            close_reason: parking_lot::Mutex::new(None),
        });
        for (index, socket) in sockets.into_iter().enumerate() {
            match socket {
                Socket::Tcp(stream) => {
                    let (reader, writer) = stream.into_split();
                    spawn_connection_tasks(&shared, index, reader, writer);
                }
                Socket::Unix(stream) => {
                    let (reader, writer) = stream.into_split();
                    spawn_connection_tasks(&shared, index, reader, writer);
                }
            }
        }
        if let Some(after) = shared.options.request_timeout {
            tokio::spawn(watch_deadlines(shared.clone(), after));
        }
        let close_on_drop = Arc::new(CloseOnDrop(shared.clone()));
        Ok(ReplicaClient { shared, _close_on_drop: close_on_drop })
    }

    /// The replica's address.
    pub fn address(&self) -> &Address {
        &self.shared.address
    }

    /// True once the client is closed (a connection failed, a request timed out, or [`Self::close`]).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Resolves when the client is closed; returns the reason.
    pub async fn closed(&self) -> String {
        self.shared.closed.cancelled().await;
        self.shared.close_reason.lock().clone().unwrap_or_default()
    }

    /// Closes every connection; pending calls fail with `Closed`.
    pub fn close(&self) {
        self.shared.fail("closed by the client");
    }

    /// True if data requests time out on their own ([`ClientOptions::request_timeout`]).
    pub(crate) fn times_out_data_requests(&self) -> bool {
        self.shared.options.request_timeout.is_some()
    }

    /// Number of requests in flight over all connections.
    pub fn in_flight(&self) -> usize {
        self.shared.connections.iter().map(|c| c.pending.in_flight()).sum()
    }

    async fn call_on(&self, index: usize, request: Request) -> Result<Answer> {
        let op = request.op();
        let shared = &*self.shared;
        let connection = &shared.connections[index];
        let (mut header, payload) = request.encode(0)?;
        drop(request);
        let timed = shared.options.request_timeout.filter(|_| op.is_data());
        let sent = timed.map(|_| Instant::now());
        let request_id =
            connection.pending.insert(op as u8, sent).map_err(|reason| shared.closed_error(reason))?;
        header.request_id = request_id;
        // The waiter exists before the frame is queued, so a dropped call always cleans up its slot.
        let waiter = connection.pending.wait(request_id);
        if !connection.out.push_frame(&header, payload) {
            drop(waiter);
            let reason = shared.close_reason.lock().clone().unwrap_or_else(|| "closed".into());
            return Err(shared.closed_error(reason));
        }
        let answer = match waiter.await {
            Ok(answer) => answer,
            Err(Failure::Closed(reason)) => return Err(shared.closed_error(reason)),
            Err(Failure::TimedOut) => {
                return Err(WireError::Timeout {
                    op: op.name(),
                    request_id,
                    addr: shared.address.to_string(),
                    after: timed.unwrap_or_default(),
                })
            }
        };
        if answer.header.status != 0 {
            return Err(WireError::Remote {
                op: op.name(),
                request_id,
                kind: ErrorKind::from_code(answer.header.status),
                message: String::from_utf8_lossy(&answer.payload).into_owned(),
            });
        }
        Ok(answer)
    }

    pub(crate) async fn call(&self, request: Request) -> Result<Answer> {
        let count = self.shared.connections.len();
        let index = self.shared.next.fetch_add(1, Ordering::Relaxed) % count;
        self.call_on(index, request).await
    }

    pub(crate) async fn call_empty(&self, request: Request) -> Result<()> {
        self.call(request).await.map(|_| ())
    }

    /// Claims the replica for `engine_id` on every connection; returns its recovery facts. Refused with
    /// `Busy` while another engine holds it, unless `take_over` (the holder's connections are closed).
    pub async fn hello(&self, engine_id: &str, take_over: bool) -> Result<RecoveryFacts> {
        self.hello_at_epoch(engine_id, take_over, 0).await
    }

    /// [`Self::hello`] for an engine started under `epoch` (see [`Hello::epoch`]): refused with `Busy`
    /// when the replica has accepted a newer epoch; a newer epoch than the replica's takes it over.
    pub async fn hello_at_epoch(
        &self,
        engine_id: &str,
        take_over: bool,
        epoch: u64,
    ) -> Result<RecoveryFacts> {
        let hello =
            Hello { engine_id: engine_id.to_string(), session: self.shared.session, take_over, epoch };
        let mut facts = None;
        for index in 0..self.shared.connections.len() {
            let answer = self.call_on(index, Request::Hello(hello.clone())).await?;
            facts = Some(decode_json::<RecoveryFacts>("Hello response", &answer.payload)?);
        }
        facts.ok_or_else(|| WireError::Protocol("no connection to send Hello on".into()))
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        let answer = self.call(Request::Read { offset, len }).await?;
        if answer.payload.len() as u64 != len {
            return Err(WireError::Protocol(format!(
                "read at {offset}: asked {len} bytes, got {}",
                answer.payload.len()
            )));
        }
        Ok(answer.payload)
    }

    /// Writes `data` at `offset` (any alignment).
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<()> {
        self.call_empty(Request::Write { offset, data, fua: false }).await
    }

    /// Writes `data` at `offset` and makes the replica durable before answering (FUA).
    pub async fn write_fua(&self, offset: u64, data: Bytes) -> Result<()> {
        self.call_empty(Request::Write { offset, data, fua: true }).await
    }

    /// Discards a range (it reads back as zeros).
    pub async fn unmap(&self, offset: u64, len: u64) -> Result<()> {
        self.call_empty(Request::Unmap { offset, len, fua: false }).await
    }

    /// Makes a range read as zeros.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.call_empty(Request::WriteZeroes { offset, len, fua: false }).await
    }

    /// Makes every acknowledged write durable on the replica.
    pub async fn flush(&self) -> Result<()> {
        self.call_empty(Request::Flush).await
    }

    /// Round trip without touching the store.
    pub async fn ping(&self) -> Result<()> {
        self.call_empty(Request::Ping).await
    }

    /// The replica's current recovery facts.
    pub async fn info(&self) -> Result<RecoveryFacts> {
        decode_json("Info response", &self.call(Request::Info).await?.payload)
    }

    /// Sets and durably persists the engine-assigned generation.
    pub async fn set_generation(&self, generation: u64) -> Result<()> {
        self.call_empty(Request::SetGeneration(generation)).await
    }

    /// Sets the revision counter.
    pub async fn set_revision(&self, revision: u64) -> Result<()> {
        self.call_empty(Request::SetRevision(revision)).await
    }

    /// Sets or clears the rebuilding flag.
    pub async fn set_rebuilding(&self, rebuilding: bool) -> Result<()> {
        self.call_empty(Request::SetRebuilding(rebuilding)).await
    }

    /// Takes a snapshot.
    pub async fn snapshot(&self, request: SnapshotRequest) -> Result<()> {
        self.call_empty(Request::Snapshot(request)).await
    }

    /// Lists snapshots (and the head as `volume-head`).
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        decode_json("ListSnapshots response", &self.call(Request::ListSnapshots).await?.payload)
    }

    /// Marks a snapshot removed.
    pub async fn mark_removed(&self, name: &str) -> Result<()> {
        self.call_empty(Request::MarkRemoved { name: name.to_string() }).await
    }

    /// Purges removed snapshots; answers when done.
    pub async fn purge(&self) -> Result<()> {
        self.call_empty(Request::Purge).await
    }

    /// Reverts the head to a snapshot.
    pub async fn revert(&self, name: &str) -> Result<()> {
        self.call_empty(Request::Revert { name: name.to_string() }).await
    }

    /// Grows the volume.
    pub async fn expand(&self, size: u64) -> Result<()> {
        self.call_empty(Request::Expand { size }).await
    }

    /// All allocated extents of a layer.
    pub async fn layer_extents(&self, name: &str) -> Result<Vec<Extent>> {
        self.layer_extents_in(name, 0, 0).await
    }

    /// Allocated extents of a layer within `[offset, offset + len)` (`len == 0`: to the end), clipped.
    pub async fn layer_extents_in(&self, name: &str, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let answer = self.call(Request::LayerExtents { name: name.to_string(), offset, len }).await?;
        decode_extents(&answer.payload)
    }

    /// Raw bytes of a layer file (holes read as zeros).
    pub async fn read_layer(&self, name: &str, offset: u64, len: u64) -> Result<Bytes> {
        let answer = self.call(Request::ReadLayer { name: name.to_string(), offset, len }).await?;
        if answer.payload.len() as u64 != len {
            return Err(WireError::Protocol(format!(
                "read-layer {name} at {offset}: got {} bytes",
                answer.payload.len()
            )));
        }
        Ok(answer.payload)
    }

    /// SHA-256 of a raw layer range.
    pub async fn layer_checksum(&self, name: &str, offset: u64, len: u64) -> Result<[u8; 32]> {
        let answer = self.call(Request::LayerChecksum { name: name.to_string(), offset, len }).await?;
        <[u8; 32]>::try_from(&answer.payload[..])
            .map_err(|_| WireError::Protocol(format!("layer checksum of {} bytes", answer.payload.len())))
    }

    /// Rebuild target: creates (or keeps) the layer file of a snapshot, outside the live chain.
    pub async fn begin_layer(&self, info: &SnapshotInfo) -> Result<()> {
        self.call_empty(Request::BeginLayer(info.clone())).await
    }

    /// Rebuild target: writes raw bytes into a begun layer.
    pub async fn write_layer(&self, name: &str, offset: u64, data: Bytes) -> Result<()> {
        self.call_empty(Request::WriteLayer { name: name.to_string(), offset, data }).await
    }

    /// Rebuild target: punches a hole in a begun layer.
    pub async fn punch_layer(&self, name: &str, offset: u64, len: u64) -> Result<()> {
        self.call_empty(Request::PunchLayer { name: name.to_string(), offset, len }).await
    }

    /// Rebuild target: installs `chain` (root first) under the head.
    pub async fn finish_rebuild(&self, chain: &[SnapshotInfo]) -> Result<()> {
        self.call_empty(Request::FinishRebuild(chain.to_vec())).await
    }
}

enum Socket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn connect_socket(address: &Address) -> Result<Socket> {
    let io_err = |source| WireError::Io { op: "connect", addr: address.to_string(), source };
    match address {
        Address::Tcp(host_port) => {
            let stream = tokio::net::TcpStream::connect(host_port.as_str()).await.map_err(io_err)?;
            stream.set_nodelay(true).map_err(io_err)?;
            Ok(Socket::Tcp(stream))
        }
        Address::Unix(path) => Ok(Socket::Unix(tokio::net::UnixStream::connect(path).await.map_err(io_err)?)),
    }
}

/// The client's watchdog: fails the client when a timed request has waited `after` (see the module doc).
async fn watch_deadlines(shared: Arc<Shared>, after: Duration) {
    let period = (after / 8).clamp(Duration::from_millis(1), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shared.closed.cancelled() => return,
        }
        let now = Instant::now();
        let late = shared.connections.iter().find_map(|connection| connection.pending.overdue(now, after));
        if let Some((request_id, op_code, waker)) = late {
            let op = crate::frame::Op::from_code(op_code).map_or("request", crate::frame::Op::name);
            let err = WireError::Timeout { op, request_id, addr: shared.address.to_string(), after };
            shared.fail(&err.to_string());
            if let Some(waker) = waker {
                waker.wake();
            }
            return;
        }
    }
}

fn spawn_connection_tasks<R, W>(shared: &Arc<Shared>, index: usize, reader: R, writer: W)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let for_writer = shared.clone();
    tokio::spawn(async move {
        let connection = &for_writer.connections[index];
        let result = tokio::select! {
            result = connection.out.run_writer(writer) => result,
            () = for_writer.closed.cancelled() => Ok(()),
        };
        if let Err(err) = result {
            for_writer.fail(&format!("write failed: {err}"));
        }
    });
    let for_reader = shared.clone();
    tokio::spawn(async move {
        let reason = tokio::select! {
            reason = read_answers(&for_reader.connections[index], reader) => reason,
            () = for_reader.closed.cancelled() => return,
        };
        for_reader.fail(&reason);
    });
}

/// Reads answers until the connection fails; returns why it stopped.
async fn read_answers<R: AsyncRead + Unpin>(connection: &Connection, mut reader: R) -> String {
    const BUFFER: usize = 256 * 1024;
    let mut buffer = BytesMut::with_capacity(BUFFER);
    loop {
        while buffer.len() < HEADER_LEN {
            if let Err(reason) = fill(&mut reader, &mut buffer, HEADER_LEN).await {
                return reason;
            }
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&buffer[..HEADER_LEN]);
        let header = match Header::decode(&raw) {
            Ok(header) if header.is_response() => header,
            Ok(header) => {
                return format!(
                    "protocol error: replica sent a non-response frame (type {:#04x})",
                    header.msg_type
                )
            }
            Err(err) => return format!("protocol error: {err}"),
        };
        let total = HEADER_LEN + header.payload_len as usize;
        while buffer.len() < total {
            if let Err(reason) = fill(&mut reader, &mut buffer, total).await {
                return reason;
            }
        }
        let mut frame = buffer.split_to(total);
        frame.advance(HEADER_LEN);
        let answer = Answer { header, payload: frame.freeze() };
        if let Err(err) = connection.pending.complete(answer) {
            return format!("protocol error: unmatched response: {err:?}");
        }
    }
}

/// Reads more bytes into `buffer`, making room for a frame of `want` bytes.
async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    want: usize,
) -> Result<(), String> {
    const MIN_ROOM: usize = 64 * 1024;
    let room = buffer.capacity() - buffer.len();
    if room < MIN_ROOM || buffer.capacity() < want {
        buffer.reserve(want.saturating_sub(buffer.len()).max(MIN_ROOM * 4));
    }
    match reader.read_buf(buffer).await {
        Ok(0) => Err("connection closed by the replica".to_string()),
        Ok(_) => Ok(()),
        Err(err) => Err(format!("read failed: {err}")),
    }
}
