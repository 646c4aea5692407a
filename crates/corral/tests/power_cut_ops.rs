//! Power cuts (SIGKILL of a VM's qemu: the guest's page cache is lost, not only the replica process) during
//! writes, flushes, FUA writes, snapshot create, mark-removed + purge, revert and expand of a replica inside
//! the VM, driven over the replica wire protocol, and during an engine's rebuild of a stale replica in the
//! VM. After every reboot each directory passes `corral replica check`, nothing acknowledged is lost (see
//! `power_cut_support::ops` for the model) and a replica whose rebuild was cut off never serves reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod power_cut_support;

use std::path::Path;

use corral_testkit::vm::Filesystem;

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

#[test]
fn power_cuts_during_snapshot_remove_purge_revert_and_expand_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let summary = power_cut_support::ops::run(Path::new(CORRAL), dir.path(), Filesystem::Ext4, 3, None);
    assert_eq!(summary.cuts, 3);
    assert!(summary.acked[2] > 0, "no snapshot operation was acknowledged: {summary:?}");
}

#[test]
fn power_cuts_during_a_rebuild_into_the_vm_never_let_the_stale_target_serve() {
    let dir = tempfile::tempdir().unwrap();
    let summary = power_cut_support::rebuild::run(Path::new(CORRAL), dir.path(), Filesystem::Xfs, 2, None);
    eprintln!("{summary:?}");
    assert_eq!(summary.cuts, 2);
}
