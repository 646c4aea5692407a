//! corral-im: the instance manager — one per node, it runs the node's engine and replica processes.
//!
//! Each instance is a child process of the `corral` binary (`corral replica serve …`,
//! `corral engine serve …`), started with the arguments the manager gives, with ports allocated
//! from a configured range. The [`Supervisor`] reports each instance's state (starting → running
//! once its first port accepts connections → stopped after a stop request, or error when it exits
//! on its own, with its exit code or signal), keeps its recent stdout/stderr lines, and stops
//! children with SIGTERM then SIGKILL after a grace period. Children get `PR_SET_PDEATHSIG` and
//! their own process group, so an instance manager that dies, even by SIGKILL, leaves no orphans,
//! and on a clean shutdown it stops engines before replicas.
//!
//! Besides the long-running engines and replicas there are *jobs* (`INSTANCE_KIND_JOB`): processes
//! that run to completion, such as `corral backup create --replica-dir …` or `corral backup restore
//! … --to-replica-dir …`, which the manager runs on the node that holds the replica directory. A job
//! that exits with code 0 is `SUCCEEDED`; any other exit is `ERROR` with its code and last log line,
//! as for the other kinds.
//!
//! The gRPC API is `proto/instance_manager.proto` (module [`pb`]); [`serve`] exposes a supervisor
//! and [`ImClient`] is the manager's client.
//!
//! # Threading
//! Tokio. One task per instance owns its `Child`; children are spawned from one dedicated thread
//! (see `spawner.rs` for why); the instance table is behind a mutex never held across `.await`.
//!
//! # Example
//! ```no_run
//! use corral_im::{pb, Supervisor, SupervisorConfig};
//! # async fn example() -> corral_im::Result<()> {
//! let mut config = SupervisorConfig::new("node-1");
//! config.port_range = 20000..=20100;
//! let supervisor = Supervisor::new(config)?;
//! let replica = supervisor
//!     .start(pb::StartRequest {
//!         name: "vol-1-r-1".into(),
//!         kind: pb::InstanceKind::Replica as i32,
//!         args: vec!["replica".into(), "serve".into(), "--listen".into(), "127.0.0.1:{port0}".into()],
//!         port_count: 1,
//!         probe_host: String::new(),
//!         requested_ports: vec![],
//!     })
//!     .await?;
//! println!("replica on port {}", replica.ports[0]);
//! supervisor.shutdown().await;
//! # Ok(()) }
//! ```

mod client;
mod error;
mod ports;
mod service;
mod spawner;
mod supervisor;

/// Types and stubs generated from `proto/instance_manager.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("corral.im.v1");
}

pub use client::ImClient;
pub use error::{ErrorKind, ImError, Result};
pub use ports::PortAllocator;
pub use service::serve;
pub use supervisor::{Supervisor, SupervisorConfig};
