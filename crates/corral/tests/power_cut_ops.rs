//! Power cuts (SIGKILL of a VM's qemu: the guest's page cache is lost, not only the replica process) during
//! writes, flushes, FUA writes, snapshot create, mark-removed + purge, revert and expand of a replica inside
//! the VM, driven over the replica wire protocol, during an engine's rebuild of a stale replica in the VM,
//! and during a backup restore into a replica directory in the VM. After every reboot each directory
//! passes `corral replica check`, nothing acknowledged is lost (see `power_cut_support::ops` for the
//! model), a replica whose rebuild was cut off never serves reads, and a restore is complete once
//! acknowledged; before that its directory is absent, complete, or marked unfinished (refused by an
//! engine) until the restore is run again (see `power_cut_support::restore`).
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

#[test]
fn power_cuts_during_a_backup_restore_leave_a_complete_restore_or_one_that_never_serves() {
    let dir = tempfile::tempdir().unwrap();
    let filesystem = if rand::random::<bool>() { Filesystem::Ext4 } else { Filesystem::Xfs };
    let summary = power_cut_support::restore::run(Path::new(CORRAL), dir.path(), filesystem, 2, None);
    eprintln!("{summary:?}");
    assert_eq!(summary.cuts, 2);
    assert_eq!(summary.incremental, 1, "one full and one incremental restore are cut: {summary:?}");
}
