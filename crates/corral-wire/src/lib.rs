//! `corral-wire`: the data protocol between Corral's engine and its replicas.
//!
//! - [`frame`]: the binary frame, drawn byte by byte in its module doc; pipelined, with a request id per
//!   frame, so answers may come back in any order.
//! - [`ReplicaProtocol`]: the replica verbs as one async trait, the one definition of what an engine may
//!   ask of a replica; [`ReplicaClient`] implements it, the engine holds its replicas through it.
//! - [`ReplicaClient`]: the engine's async client. Several connections per replica (default 2), one
//!   reader and one writer task per connection, a slab of pending requests, no task spawned and no
//!   allocation beyond the payload per request; a data-request timeout that closes the client, enforced
//!   by one watchdog scan per client instead of a timer per request.
//! - [`serve`] / [`serve_with`]: the replica's server loop over a [`ReplicaService`], for TCP and unix
//!   sockets; session rules (`Hello`, one engine at a time, take-over, engine epochs that fence an old
//!   engine off once a newer one arrived) are enforced here.
//! - [`messages`]: the control bodies (JSON) and Corral's wire copies of the replica's types.
//!
//! Threading model: the client and the server's connection handling are tokio tasks. The server serves
//! small reads and writes inline on the connection's task (a `pread`/`pwrite` of at most
//! [`ServeOptions::inline_max`] bytes in the page cache, answers batched into one vectored write) and
//! runs everything that may block for long (flush, trim, FUA, large data, reads that miss the page
//! cache, control operations) on its own pool of worker threads. Every type here is `Send + Sync`.
//!
//! ```no_run
//! # async fn example<S: corral_wire::ReplicaService>(service: std::sync::Arc<S>) -> corral_wire::Result<()> {
//! use corral_wire::{Address, Listener, ReplicaClient};
//! let listener = Listener::bind(&Address::parse("tcp://127.0.0.1:0")?).await?;
//! let address = listener.local_address()?.to_string();
//! tokio::spawn(corral_wire::serve(listener, service));
//! let client = ReplicaClient::connect(&address, 2).await?;
//! client.hello("engine-1", false).await?;
//! client.write(4096, bytes::Bytes::from_static(&[1u8; 512])).await?;
//! client.flush().await?;
//! # Ok(()) }
//! ```

pub mod address;
pub mod client;
pub mod error;
pub mod frame;
pub mod messages;
mod outbound;
mod pending;
pub mod protocol;
pub mod server;
mod worker_pool;

pub use address::{Address, Listener};
/// Re-exported so users of the client need no direct `bytes` dependency.
pub use bytes::Bytes;
pub use client::{ClientOptions, ReplicaClient};
pub use error::{ErrorKind, Result, WireError};
pub use messages::{Extent, Hello, RecoveryFacts, SnapshotInfo, SnapshotRequest};
pub use protocol::{BoxFuture, ReplicaProtocol, HEAD_NAME};
pub use server::{serve, serve_with, ReplicaService, ServeOptions};
