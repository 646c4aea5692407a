//! corral-engine: the volume engine. One engine serves one volume to its clients over NBD and replicates
//! it synchronously to its replicas; it detects and drops failed replicas, decides at start which
//! replicas are up to date, rebuilds new or stale replicas online, and coordinates snapshots, revert and
//! expand. It is Longhorn's v1 "controller" (reference §3, §5), with a flush that means durable.
//!
//! ```text
//!  NBD clients ──► frontend (corral-nbd) ──► Engine ──► dyn ReplicaProtocol ×N (corral-wire client, pipelined)
//!                                              │
//!  control API (HTTP/JSON, control_api) ───────┘   rebuild (background task), start decision
//! ```
//!
//! # Promises
//! - A write, trim or write-zeroes goes to every RW and WO replica in parallel and is acknowledged when
//!   all have acknowledged it. FLUSH and FUA are acknowledged when every such replica has made the data
//!   durable. A FUA write is one round trip per replica (the replica writes, then syncs); concurrent
//!   flushes share fan-outs ([`group_commit`]). Reads go to one RW replica, round robin, and fail over on error.
//! - A replica that errors, drops its connection or does not answer within `replica_timeout` (8 s) is set
//!   ERR and dropped; I/O continues while one RW replica remains, and fails with EIO when none does.
//! - Before any write is acknowledged that a dropped replica missed, the volume's **generation** is bumped
//!   durably on every remaining RW replica. At the next start, a replica that missed acknowledged writes
//!   has a lower generation; see [`start`] for the full rule (generation, then revision, then dirty).
//! - While a WO replica exists, writes (and the edges of zero/trim requests) that do not cover whole
//!   4 KiB blocks are widened by the engine: read from RW, patch, write whole blocks to all (reference §3.6).
//! - Online rebuild ([`rebuild`]): system snapshot on all at one point, target WO, copy of only allocated
//!   extents, batched, concurrent, resumable by checksum, verified, then RW.
//!
//! # Threading model
//! Everything runs on the tokio runtime of the caller. The data path spawns no task per request: a
//! request fans out to the replica links with `join_all` inside the frontend's own task. Each data call
//! is bounded by the replica timeout: links over `corral-wire` enforce it themselves with one deadline
//! scan per replica client (no timer per request); other links get a timer from the engine. Writes hold a shared async gate; snapshot points (snapshot, rebuild start and end,
//! revert, expand) take it exclusively, which drains in-flight writes briefly. Replica membership is an
//! `Arc<Vec<…>>` swapped under a short lock; modes are atomics. A rebuild runs in one background task.
//!
//! # Replicas
//! The engine holds each replica as an `Arc<dyn corral_wire::ReplicaProtocol>`: the data protocol's
//! verbs, defined once in `corral-wire`. [`ClientConnector`] opens real replicas (`ReplicaClient`);
//! [`memory::MemoryCluster`] opens in-memory ones for unit tests. Errors from a replica keep their
//! `source()` chain inside [`EngineError`].
//!
//! # Failpoints
//! With the `failpoints` feature (and in this crate's tests) the engine can be told to die at a named
//! step ([`failpoint::ALL`]); `tests/failpoint_crash.rs` crashes at each one over real replicas.
//!
//! # Control API
//! HTTP/JSON; see [`control_api`] for the routes. `corral engine <command> --url HOST:PORT` is its client.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use corral_engine::{memory::MemoryCluster, Engine, EngineConfig};
//! let cluster = MemoryCluster::new();
//! cluster.add("tcp://r1:1", 1 << 20);
//! cluster.add("tcp://r2:1", 1 << 20);
//! let addresses = vec!["tcp://r1:1".to_string(), "tcp://r2:1".to_string()];
//! let engine = Engine::start(EngineConfig::new("vol", 1 << 20), cluster.clone(), &addresses).await.unwrap();
//! engine.write(4096, bytes::Bytes::from_static(b"hello"), false).await.unwrap();
//! engine.flush().await.unwrap();
//! assert_eq!(&engine.read(4096, 5).await.unwrap()[..], b"hello");
//! assert_eq!(cluster.get("tcp://r2:1").unwrap().read_volume(4096, 5), b"hello");
//! # });
//! ```

pub mod connector;
pub mod control_api;
mod engine;
pub mod error;
pub mod failpoint;
pub mod frontend;
mod group_commit;
pub mod memory;
mod operations;
pub mod rebuild;
mod replica_set;
pub mod service;
pub mod start;

pub use connector::{ClientConnector, Connector};
/// The replica verbs and types are the data protocol's own.
pub use corral_wire::{RecoveryFacts, ReplicaProtocol, SnapshotInfo};
pub use engine::{Engine, EngineConfig, Frontend, BLOCK};
pub use error::{EngineError, ErrorKind, Result};
pub use operations::{validate_name, EngineInfo, VolumeState};
pub use rebuild::RebuildReport;
pub use replica_set::{Mode, ReplicaStatus};
pub use service::{serve, NbdListen, RunningEngine, ServeOptions};

#[cfg(test)]
mod tests;
