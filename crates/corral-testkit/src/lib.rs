//! Test support for Corral's integration tests (a dev-only crate, never shipped).
//!
//! [`cluster::TestCluster`] starts a real single-node cluster (`corral quickstart` on free ports
//! and a temp data dir) and lets a test talk to it (REST, CLI), kill it with SIGKILL, restart and
//! stop it; no engine or replica process outlives it.
//!
//! ```no_run
//! use corral_testkit::cluster::TestCluster;
//! let cluster = TestCluster::builder().binary("target/debug/corral").build();
//! cluster.cli(&["volume", "create", "v1", "--size", "64MiB", "--wait"]);
//! ```
pub mod cluster;
