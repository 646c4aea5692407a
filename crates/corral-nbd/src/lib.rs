//! # corral-nbd — the server side of the NBD protocol
//!
//! Corral's volume frontend: any standard NBD client (qemu, libnbd's `nbdcopy`/`nbdinfo`/
//! `nbdfuse`, the kernel's `nbd-client`) attaches to a volume through this crate. It speaks
//! fixed newstyle negotiation (`NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_LIST`,
//! `NBD_OPT_EXPORT_NAME`, `NBD_OPT_ABORT`, `NBD_OPT_STRUCTURED_REPLY`) and serves READ, WRITE,
//! FLUSH, TRIM, WRITE_ZEROES (with `NO_HOLE` and `FAST_ZERO`) and DISC, with FUA, over TCP and
//! Unix sockets, to many clients at once. `NBD_FLAG_CAN_MULTI_CONN` is advertised because the
//! [`NbdBackend`] contract makes a flush cover writes completed on every connection.
//!
//! The wire formats, with byte diagrams, are in [`protocol`]; the storage side is the
//! [`NbdBackend`] trait (the engine implements it with its replica fan-out; [`MemoryBackend`]
//! is a sparse in-memory one for tests and examples).
//!
//! ## Threading model
//! Runs on a tokio runtime. The accept loop spawns one task per connection. Inside a
//! connection, a fixed set of worker loops (default 64, [`NbdServerBuilder::max_in_flight`])
//! is polled by that one task: requests are read one at a time, executed concurrently, and
//! answered out of order, each reply written whole under a per-connection writer lock. No task
//! is spawned and no buffer allocated per request in the steady state (each worker reuses its
//! payload buffer; a per-connection byte budget bounds payload memory). Backend methods are
//! `async` and must not block the reactor.
//!
//! ## Example
//! ```no_run
//! use std::sync::Arc;
//! use corral_nbd::{MemoryBackend, NbdServer};
//!
//! # async fn run() -> Result<(), corral_nbd::NbdError> {
//! let backend = Arc::new(MemoryBackend::new(1 << 30));
//! let server = NbdServer::builder("vol1", backend).description("a 1 GiB memory disk").build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10809").await
//!     .map_err(|e| corral_nbd::NbdError::io("bind", e))?;
//! // qemu-io -f raw -c 'write -P 0xab 0 1M' nbd://127.0.0.1:10809/vol1
//! server.serve_tcp(listener).await?;
//! # Ok(()) }
//! ```
//!
//! Command-line addresses (`HOST:PORT`, `unix:PATH`) parse into a [`ListenAddress`] (Corral's one
//! address type, `corral_wire::Address`);
//! [`NbdListener::bind`] binds one and [`NbdServer::serve`] serves it.
//!
//! ## Decisions
//! - Size is read from [`NbdBackend::size`] at each connection's handshake, so an expand is
//!   visible to clients that (re)connect; connected clients keep the size they negotiated.
//! - Errors follow the specification: read/trim beyond the end `EINVAL`, write/write-zeroes
//!   beyond the end `ENOSPC` (checked before anything is applied, so nothing partial happens),
//!   unknown command or flag `EINVAL`, READ/WRITE over the maximum block size `EINVAL` (a write
//!   payload up to 2× that, at least 64 MiB, is read and discarded first; a larger one closes
//!   the connection after the error reply), bad request magic or a truncated frame closes the
//!   connection. None of this affects other connections.
//! - Structured replies: a successful READ is one `OFFSET_DATA` chunk with `DONE` (never
//!   fragmented, so `NBD_FLAG_SEND_DF` is offered); an error of any command is an `ERROR`
//!   chunk carrying the message; other successes use simple replies (allowed).
//! - `NBD_OPT_LIST_META_CONTEXT`/`SET_META_CONTEXT` (block status), `STARTTLS` and extended
//!   headers are not offered: they are answered with `NBD_REP_ERR_UNSUP`.
//! - A client has [`DEFAULT_HANDSHAKE_TIMEOUT`] to finish negotiating; a silent connection
//!   would otherwise count as a connected client forever.

mod backend;
mod error;
mod handshake;
mod listen;
mod memory_backend;
pub mod protocol;
mod server;
mod transmission;

pub use backend::{out_of_range, NbdBackend};
pub use error::{ErrorKind, NbdError, Result};
pub use listen::{ListenAddress, NbdListener};
pub use memory_backend::MemoryBackend;
pub use server::{
    NbdServer, NbdServerBuilder, NewClientsBlocked, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_BLOCK_SIZE,
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_PAYLOAD_BUDGET, DEFAULT_PREFERRED_BLOCK_SIZE,
};
