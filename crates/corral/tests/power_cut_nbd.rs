//! Power cuts (SIGKILL of a VM's qemu: the guest's page cache is lost, not only the processes) in the middle
//! of a pipelined NBD workload with flushes and FUA writes, three replicas inside the VM, the engine on the
//! host or inside the VM. After every reboot each replica directory passes `corral replica check` and every
//! write an acknowledged flush or FUA covered reads back (see `power_cut_support`).
//!
//! Each test covers both filesystems: one cut on an ext4 disk and one on an xfs disk, in an order drawn at
//! random (printed), so that every pairing of engine place and filesystem is cut in every run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod power_cut_support;

use std::path::Path;

use corral_testkit::vm::Filesystem;
use power_cut_support::nbd::{run, EnginePlace, Summary};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// One power cut on each filesystem (each costs two VM boots, about 5 s each under TCG, and a workload).
fn cut_on_both_filesystems(engine: EnginePlace) -> Summary {
    let dir = tempfile::tempdir().unwrap();
    let mut order = [Filesystem::Ext4, Filesystem::Xfs];
    if rand::random::<bool>() {
        order.reverse();
    }
    eprintln!("engine on {engine:?}: filesystems in the order {order:?}");
    let mut total = Summary::default();
    for filesystem in order {
        let summary = run(Path::new(CORRAL), dir.path(), filesystem, engine, 1, None);
        assert_eq!(summary.cuts, 1, "{filesystem:?}: {summary:?}");
        assert!(summary.durable_checked > 0, "{filesystem:?}: no durable write was checked: {summary:?}");
        total.cuts += summary.cuts;
        total.durable_checked += summary.durable_checked;
        total.acknowledged += summary.acknowledged;
    }
    total
}

#[test]
fn power_cuts_with_the_engine_on_the_host_never_lose_flushed_or_fua_writes() {
    let summary = cut_on_both_filesystems(EnginePlace::Host);
    assert_eq!(summary.cuts, 2);
}

#[test]
fn power_cuts_with_the_engine_in_the_vm_never_lose_flushed_or_fua_writes() {
    let summary = cut_on_both_filesystems(EnginePlace::Vm);
    assert_eq!(summary.cuts, 2);
}
