//! [`NbdServer`]: accept loops over TCP and Unix sockets, one task per connection, client
//! accounting for the engine (revert is refused while a client is connected).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::backend::NbdBackend;
use crate::error::{ErrorKind, NbdError};
use crate::handshake::{negotiate, HandshakeEnd};
use crate::protocol::*;
use crate::transmission::{Transmission, TransmissionLimits};

/// Default maximum block size advertised (largest READ/WRITE payload): 32 MiB.
pub const DEFAULT_MAX_BLOCK_SIZE: u32 = 32 << 20;
/// Default preferred block size advertised: 4 KiB.
pub const DEFAULT_PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Default number of requests processed concurrently per connection.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Default bound on payload bytes buffered per connection.
pub const DEFAULT_PAYLOAD_BUDGET: usize = 128 << 20;
/// Default time a client has to finish the handshake before it is disconnected.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of read buffering per connection.
const READ_BUFFER: usize = 256 << 10;

/// What the server exports and how (fixed at build time).
#[derive(Debug, Clone)]
pub(crate) struct ExportConfig {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) read_only: bool,
    pub(crate) max_block_size: u32,
    pub(crate) preferred_block_size: u32,
    pub(crate) max_in_flight: usize,
    pub(crate) payload_budget: usize,
    pub(crate) handshake_timeout: Duration,
}

impl ExportConfig {
    /// The empty name is the protocol's "default export", served as this export.
    pub(crate) fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }

    /// Transmission flags. `NBD_FLAG_CAN_MULTI_CONN` is honest because the backend contract
    /// requires flush to cover writes completed on every connection. `SEND_FAST_ZERO` is
    /// always offered: a backend that cannot zero quickly answers such requests with
    /// `ENOTSUP`, which is what the protocol asks of it. `SEND_DF` only with structured
    /// replies (the server never fragments a read anyway).
    pub(crate) fn transmission_flags(&self, structured: bool, _fast_zero: bool) -> u16 {
        let mut flags = TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_TRIM
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_SEND_FAST_ZERO
            | TFLAG_CAN_MULTI_CONN;
        if structured {
            flags |= TFLAG_SEND_DF;
        }
        if self.read_only {
            flags |= TFLAG_READ_ONLY;
        }
        flags
    }

    /// Largest rejected write payload the server reads and discards instead of disconnecting.
    pub(crate) fn skip_limit(&self) -> u32 {
        self.max_block_size.saturating_mul(2).max(64 << 20)
    }
}

/// Builder of an [`NbdServer`].
pub struct NbdServerBuilder<B> {
    backend: Arc<B>,
    config: ExportConfig,
}

impl<B: NbdBackend> NbdServerBuilder<B> {
    /// Text shown by `nbdinfo --list` and sent as `NBD_INFO_DESCRIPTION`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.config.description = description.into();
        self
    }

    /// Export read-only: writes, trims and zeroes get `EPERM`.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.config.read_only = read_only;
        self
    }

    /// Maximum READ/WRITE payload advertised and enforced (at least 4 KiB; default 32 MiB).
    pub fn max_block_size(mut self, bytes: u32) -> Self {
        self.config.max_block_size = bytes.max(4096);
        self
    }

    /// Requests processed concurrently per connection (default 64).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.config.max_in_flight = n.max(1);
        self
    }

    /// Bound on payload bytes held per connection (default 128 MiB, at least one maximum block).
    pub fn payload_budget(mut self, bytes: usize) -> Self {
        self.config.payload_budget = bytes;
        self
    }

    /// Time a client has to complete the handshake (default 30 s). A client that connects and
    /// stays silent would otherwise count as connected forever (and block a revert).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    pub fn build(self) -> NbdServer<B> {
        let (shutdown, _) = watch::channel(false);
        NbdServer {
            inner: Arc::new(ServerInner {
                backend: self.backend,
                config: self.config,
                clients: Mutex::new(ClientState::default()),
                shutdown,
            }),
        }
    }
}

#[derive(Debug, Default)]
struct ClientState {
    connected: usize,
    blocked: usize,
}

struct ServerInner<B> {
    backend: Arc<B>,
    config: ExportConfig,
    clients: Mutex<ClientState>,
    shutdown: watch::Sender<bool>,
}

/// An NBD server exporting one backend under one name (the empty "default" name maps to it
/// too). Cheap to clone; clones share clients, counters and the shutdown switch.
pub struct NbdServer<B> {
    inner: Arc<ServerInner<B>>,
}

impl<B> Clone for NbdServer<B> {
    fn clone(&self) -> Self {
        NbdServer { inner: Arc::clone(&self.inner) }
    }
}

/// Counts one connected client while alive.
struct ClientSlot<B> {
    inner: Arc<ServerInner<B>>,
}

impl<B> Drop for ClientSlot<B> {
    fn drop(&mut self) {
        let mut state = self.inner.clients.lock();
        state.connected = state.connected.saturating_sub(1);
    }
}

/// While alive, new connections are refused (closed at once). Obtained from
/// [`NbdServer::block_new_clients`] only when no client was connected, so holding it means
/// "no client is connected and none can connect" — what a revert needs.
pub struct NewClientsBlocked {
    release: Box<dyn FnOnce() + Send + Sync>,
}

impl Drop for NewClientsBlocked {
    fn drop(&mut self) {
        let release = std::mem::replace(&mut self.release, Box::new(|| {}));
        release();
    }
}

impl<B: NbdBackend> NbdServer<B> {
    /// A server with default settings.
    pub fn new(export_name: impl Into<String>, backend: Arc<B>) -> NbdServer<B> {
        NbdServer::builder(export_name, backend).build()
    }

    /// Start configuring a server.
    pub fn builder(export_name: impl Into<String>, backend: Arc<B>) -> NbdServerBuilder<B> {
        NbdServerBuilder {
            backend,
            config: ExportConfig {
                name: export_name.into(),
                description: String::new(),
                read_only: false,
                max_block_size: DEFAULT_MAX_BLOCK_SIZE,
                preferred_block_size: DEFAULT_PREFERRED_BLOCK_SIZE,
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
                payload_budget: DEFAULT_PAYLOAD_BUDGET,
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            },
        }
    }

    /// The backend being served.
    pub fn backend(&self) -> &Arc<B> {
        &self.inner.backend
    }

    /// The export name.
    pub fn export_name(&self) -> &str {
        &self.inner.config.name
    }

    /// Connections currently open (counted from accept to close, handshake included).
    pub fn connected_clients(&self) -> usize {
        self.inner.clients.lock().connected
    }

    /// Refuse new connections while the returned guard lives; `None` (and nothing changes)
    /// if a client is connected right now.
    pub fn block_new_clients(&self) -> Option<NewClientsBlocked> {
        let mut state = self.inner.clients.lock();
        if state.connected > 0 {
            return None;
        }
        state.blocked += 1;
        let inner = Arc::clone(&self.inner);
        Some(NewClientsBlocked {
            release: Box::new(move || {
                let mut state = inner.clients.lock();
                state.blocked = state.blocked.saturating_sub(1);
            }),
        })
    }

    /// Stop every accept loop and close every connection of this server.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    fn admit(&self) -> Option<ClientSlot<B>> {
        let mut state = self.inner.clients.lock();
        if state.blocked > 0 || *self.inner.shutdown.borrow() {
            return None;
        }
        state.connected += 1;
        Some(ClientSlot { inner: Arc::clone(&self.inner) })
    }

    /// Accept TCP clients until [`NbdServer::shutdown`]; each runs in its own task.
    pub async fn serve_tcp(&self, listener: TcpListener) -> Result<(), NbdError> {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = wait_for_shutdown(&mut shutdown) => return Ok(()),
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Replies are written whole; Nagle would only add latency.
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, %err, "cannot set TCP_NODELAY");
                    }
                    let (reader, writer) = stream.into_split();
                    self.spawn_connection(reader, writer, peer.to_string());
                }
                Err(err) => accept_failed(err).await,
            }
        }
    }

    /// Accept Unix-socket clients until [`NbdServer::shutdown`]; each runs in its own task.
    pub async fn serve_unix(&self, listener: UnixListener) -> Result<(), NbdError> {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = wait_for_shutdown(&mut shutdown) => return Ok(()),
            };
            match accepted {
                Ok((stream, _)) => {
                    let (reader, writer) = stream.into_split();
                    self.spawn_connection(reader, writer, "unix".to_owned());
                }
                Err(err) => accept_failed(err).await,
            }
        }
    }

    fn spawn_connection<R, W>(&self, reader: R, writer: W, peer: String)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let Some(slot) = self.admit() else {
            tracing::info!(%peer, "NBD connection refused: new clients are blocked");
            return;
        };
        let server = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match server.run_connection(reader, writer).await {
                Ok(()) => tracing::debug!(%peer, "NBD client disconnected"),
                Err(err) if err.kind() == ErrorKind::Disconnected => {
                    tracing::debug!(%peer, error = %err, "NBD client went away")
                }
                Err(err) => tracing::warn!(%peer, error = %err, "NBD connection closed"),
            }
        });
    }

    /// Serve one already-accepted connection (any byte stream split into halves) until it
    /// ends. Counted in [`NbdServer::connected_clients`] while it runs; refused (`Shutdown`)
    /// while new clients are blocked.
    pub async fn serve_connection<R, W>(&self, reader: R, writer: W) -> Result<(), NbdError>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let Some(_slot) = self.admit() else {
            return Err(NbdError::new(ErrorKind::Shutdown, "accept", "new clients are blocked"));
        };
        self.run_connection(reader, writer).await
    }

    async fn run_connection<R, W>(&self, reader: R, mut writer: W) -> Result<(), NbdError>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let mut shutdown = self.inner.shutdown.subscribe();
        let inner = &*self.inner;
        let session = async {
            let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
            let handshake = negotiate(&mut reader, &mut writer, &inner.config, &*inner.backend);
            let params = match tokio::time::timeout(inner.config.handshake_timeout, handshake).await {
                Ok(Ok(HandshakeEnd::Transmission(params))) => params,
                Ok(Ok(HandshakeEnd::Aborted)) => return Ok(()),
                Ok(Err(err)) => return Err(err),
                Err(_) => {
                    return Err(NbdError::new(
                        ErrorKind::Protocol,
                        "handshake",
                        format!("not completed within {:?}", inner.config.handshake_timeout),
                    ))
                }
            };
            tracing::debug!(
                size = params.size,
                structured = params.structured,
                "NBD client entered transmission"
            );
            let limits = TransmissionLimits {
                max_in_flight: inner.config.max_in_flight,
                payload_budget: inner.config.payload_budget,
            };
            let transmission = Transmission::new(&*inner.backend, params, reader, &mut writer, limits);
            let result = transmission.run(limits.max_in_flight).await;
            let writer = transmission.into_writer();
            // Best effort: tell the peer we are done writing.
            let _ = writer.shutdown().await;
            result
        };
        tokio::select! {
            result = session => result,
            _ = wait_for_shutdown(&mut shutdown) => Err(NbdError::new(ErrorKind::Shutdown, "connection", "server shut down")),
        }
    }
}

async fn wait_for_shutdown(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens when the server is dropped.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Accept errors (EMFILE, ECONNABORTED...) are transient: log, back off briefly, continue.
async fn accept_failed(err: std::io::Error) {
    tracing::warn!(%err, "NBD accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
