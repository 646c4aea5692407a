//! The Corral test kit: what integration tests across the workspace need to run real components.
//!
//! - [`cluster`]: [`cluster::TestCluster`], a real single-node cluster (`corral quickstart` on free ports
//!   and a temp data dir) that a test talks to (REST, CLI), kills with SIGKILL, restarts and stops; no
//!   engine or replica process outlives it.
//! - [`process`]: a child process that announces itself on its first stdout line, killed on drop;
//!   [`corral`]: the `corral replica serve` process on top of it (the binary path comes from the test,
//!   `env!("CARGO_BIN_EXE_corral")`, so this crate never guesses where a build put it).
//! - [`etcd`]: [`etcd::EtcdCluster`], real etcd with one or three members on loopback that a test can
//!   SIGKILL and restart member by member.
//! - [`ports`]: free loopback ports and waiting for a server to listen.
//! - [`s3`]: S3-compatible servers (moto over HTTP or HTTPS, s3s-fs), test certificates and
//!   [`s3::RecordingProxy`], a forward proxy that records what went through it.
//! - [`nbd`]: required tools, `qemu-io`, and [`nbd::Workload`], a pipelined multi-connection NBD workload
//!   run by libnbd (Debian `python3-libnbd`) through `scripts/nbd_workload.py`, whose acknowledgements
//!   the tests check in Rust.
//! - [`fixtures`]: the Longhorn-written fixtures under `tests/fixtures/longhorn` of the repository.
//! - [`data`]: SHA-256 helpers and deterministic block contents.
//! - [`netns`]: nodes as network namespaces ([`netns::Network`]: a bridge, one namespace per node,
//!   SIGKILL of a whole node, partition and heal), etcd on the bridge, and
//!   [`netns::cluster::MultiNodeCluster`], `corral server` on every node.
//! - [`vm`]: a qemu VM (TCG) with corral inside and a disk image, whose power a test cuts (SIGKILL of qemu).
//!
//! Threading model: everything is blocking and meant for `#[test]` functions; helpers that watch a child
//! (its stderr, its stdout after the ready line) run on their own threads. Failures panic with what went
//! wrong and the child's stderr: a test that cannot start a real component fails, it never skips.
//!
//! ```no_run
//! use corral_testkit::corral::ReplicaServer;
//! let dir = tempfile::tempdir().unwrap();
//! let replica = ReplicaServer::start("target/debug/corral".as_ref(), dir.path(), Some("16MiB"), "127.0.0.1:0");
//! println!("replica at {}", replica.address);
//! ```

pub mod cluster;
pub mod corral;
pub mod data;
pub mod etcd;
pub mod fixtures;
pub mod nbd;
pub mod netns;
pub mod ports;
pub mod process;
pub mod s3;
pub mod vm;
