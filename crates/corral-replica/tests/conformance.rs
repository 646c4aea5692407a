//! The `BlockDevice` conformance suite on a real replica directory (sparse files, snapshot chain).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_block::conformance::run_all;
use corral_replica::{CreateOptions, Replica, SnapshotOptions};

#[test]
fn a_fresh_replica_passes_the_block_device_suite() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::create(&dir.path().join("r"), CreateOptions { size: 4 << 20 }).unwrap();
    run_all(&replica).unwrap_or_else(|e| panic!("{e}"));
    replica.close().unwrap();
}

#[test]
fn a_replica_with_data_in_snapshot_layers_passes_the_suite_again() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::create(&dir.path().join("r"), CreateOptions { size: 4 << 20 }).unwrap();
    run_all(&replica).unwrap_or_else(|e| panic!("first run: {e}"));
    // The suite's data now sits in a snapshot layer; zeroing and rewriting must shadow it correctly.
    replica.snapshot("s1", SnapshotOptions::default()).unwrap();
    replica.write_zeroes(0, replica.size()).unwrap();
    run_all(&replica).unwrap_or_else(|e| panic!("over a snapshot: {e}"));
    replica.close().unwrap();
}
