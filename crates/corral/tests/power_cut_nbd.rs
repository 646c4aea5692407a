//! Power cuts (SIGKILL of a VM's qemu: the guest's page cache is lost, not only the processes) in the middle
//! of a pipelined NBD workload with flushes and FUA writes, three replicas inside the VM, the engine on the
//! host or inside the VM. After every reboot each replica directory passes `corral replica check` and every
//! write an acknowledged flush or FUA covered reads back (see `power_cut_support`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod power_cut_support;

use std::path::Path;

use corral_testkit::vm::Filesystem;
use power_cut_support::nbd::{run, EnginePlace};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");
/// Power cuts per test: each costs a VM boot (about 5 s under TCG) and a workload.
const CUTS: usize = 2;

#[test]
fn power_cuts_with_the_engine_on_the_host_never_lose_flushed_or_fua_writes() {
    let dir = tempfile::tempdir().unwrap();
    let summary = run(Path::new(CORRAL), dir.path(), Filesystem::Ext4, EnginePlace::Host, CUTS, None);
    assert_eq!(summary.cuts, CUTS);
    assert!(summary.durable_checked > 0, "no durable write was checked: {summary:?}");
}

#[test]
fn power_cuts_with_the_engine_in_the_vm_never_lose_flushed_or_fua_writes() {
    let dir = tempfile::tempdir().unwrap();
    let summary = run(Path::new(CORRAL), dir.path(), Filesystem::Xfs, EnginePlace::Vm, CUTS, None);
    assert_eq!(summary.cuts, CUTS);
    assert!(summary.durable_checked > 0, "no durable write was checked: {summary:?}");
}
