//! `corral-bench power-cut --rounds N [--seed S] [--dir DIR] [--corral PATH] [--only SCENARIO]`: a
//! randomized campaign of power cuts (SIGKILL of a qemu VM holding the replicas; the guest's page cache
//! is lost). It mixes the
//! scenarios of the `power_cut*` tests, whose code it shares (`crates/corral/tests/power_cut_support`):
//! NBD workloads with flushes and FUA writes through an engine on the host or in the VM, writes plus
//! snapshot create / mark-removed + purge / revert / expand over the replica wire protocol, rebuilds of a
//! stale replica into the VM, and full and incremental backup restores into a replica directory in the VM
//! (`--only restore`). The disk's filesystem (ext4 or xfs) is drawn for each scenario except the
//! replica-operation ones, which name theirs. Each scenario runs up to three cuts on a fresh disk image,
//! with a reboot and full check after each. Needs what the tests need: qemu-system-x86, linux-image-amd64, busybox-static,
//! cpio, e2fsprogs, xfsprogs, python3-libnbd. A failure panics with the seed; success prints
//! `N power cuts (seed S): …`.

#[path = "../../corral/tests/power_cut_support/mod.rs"]
mod power_cut_support;

use std::path::PathBuf;
use std::time::Instant;

use corral_testkit::vm::Filesystem;
use power_cut_support::nbd::EnginePlace;
use rand::Rng;

/// Options of `power-cut`.
pub struct PowerCutOptions {
    pub rounds: usize,
    pub seed: Option<u64>,
    pub dir: PathBuf,
    pub corral: PathBuf,
    /// Runs only this scenario (0 NBD with the engine on the host, 1 NBD with the engine in the VM,
    /// 2 and 3 replica operations on ext4 and xfs, 4 rebuild, 5 backup restore), to chase one failure.
    pub only: Option<u32>,
}

/// Parses the arguments after `power-cut`.
pub fn parse(args: &[String], corral: PathBuf) -> Option<PowerCutOptions> {
    let mut o = PowerCutOptions { rounds: 10, seed: None, dir: std::env::temp_dir(), corral, only: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => o.rounds = it.next()?.parse().ok().filter(|&n| n >= 1)?,
            "--seed" => o.seed = Some(it.next()?.parse().ok()?),
            "--dir" => o.dir = PathBuf::from(it.next()?),
            "--corral" => o.corral = PathBuf::from(it.next()?),
            "--only" => {
                o.only = Some(match it.next()?.as_str() {
                    "nbd-host" => 0,
                    "nbd-vm" => 1,
                    "ops-ext4" => 2,
                    "ops-xfs" => 3,
                    "rebuild" => 4,
                    "restore" => 5,
                    _ => return None,
                })
            }
            _ => return None,
        }
    }
    Some(o)
}

/// Runs the campaign; panics (with the seed) at the first lost acknowledged write or broken directory.
pub fn run(o: &PowerCutOptions) -> Result<(), std::io::Error> {
    let (seed, mut rng) = power_cut_support::seeded(o.seed);
    eprintln!("power-cut campaign: {} rounds, seed {seed}", o.rounds);
    std::fs::create_dir_all(&o.dir)?;
    let started = Instant::now();
    let (mut nbd_cuts, mut durable_checked, mut ops_cuts, mut rebuild_cuts) = (0, 0, 0, 0);
    let (mut restore_cuts, mut restores_acknowledged, mut restores_unfinished) = (0, 0, 0);
    let mut cut_during: Vec<&'static str> = Vec::new();
    let mut done = 0;
    while done < o.rounds {
        let cuts = (o.rounds - done).min(3);
        let scenario_seed: u64 = rng.random();
        // Kept if the scenario panics, so that the failing disk image can be inspected (the message
        // names the directory); removed once it passed.
        let dir = tempfile::tempdir_in(&o.dir)?.keep();
        eprintln!("scenario directory {}", dir.display());
        let scenario = rng.random_range(0..6);
        // Drawn for every scenario (the replica-operation ones name theirs) so that the sequence of
        // draws, and with it a seed's campaign, does not depend on the scenario.
        let filesystem = if rng.random_bool(0.5) { Filesystem::Ext4 } else { Filesystem::Xfs };
        eprintln!("scenario {} on {filesystem:?}", o.only.unwrap_or(scenario));
        match o.only.unwrap_or(scenario) {
            0 => {
                let s = power_cut_support::nbd::run(
                    &o.corral,
                    &dir,
                    filesystem,
                    EnginePlace::Host,
                    cuts,
                    Some(scenario_seed),
                );
                nbd_cuts += s.cuts;
                durable_checked += s.durable_checked;
            }
            1 => {
                let s = power_cut_support::nbd::run(
                    &o.corral,
                    &dir,
                    filesystem,
                    EnginePlace::Vm,
                    cuts,
                    Some(scenario_seed),
                );
                nbd_cuts += s.cuts;
                durable_checked += s.durable_checked;
            }
            4 => {
                let s =
                    power_cut_support::rebuild::run(&o.corral, &dir, filesystem, cuts, Some(scenario_seed));
                rebuild_cuts += s.cuts;
            }
            5 => {
                let s =
                    power_cut_support::restore::run(&o.corral, &dir, filesystem, cuts, Some(scenario_seed));
                restore_cuts += s.cuts;
                restores_acknowledged += s.acknowledged;
                restores_unfinished += s.unfinished_after;
            }
            k => {
                let filesystem = if k == 2 { Filesystem::Ext4 } else { Filesystem::Xfs };
                let s = power_cut_support::ops::run(&o.corral, &dir, filesystem, cuts, Some(scenario_seed));
                ops_cuts += s.cuts;
                cut_during.extend(s.cut_during);
            }
        }
        std::fs::remove_dir_all(&dir)?;
        done += cuts;
    }
    let mut during: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for kind in cut_during {
        *during.entry(kind).or_default() += 1;
    }
    let mut during: Vec<String> = during.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    if during.is_empty() {
        during.push("none".to_string());
    }
    println!(
        "{done} power cuts (seed {seed}): {nbd_cuts} during NBD workloads ({durable_checked} writes acknowledged \
         as durable, all read back), {ops_cuts} during replica operations (cut during: {}), {rebuild_cuts} during \
         rebuilds (no stale target served), {restore_cuts} during backup restores ({restores_acknowledged} acknowledged \
         and complete, {restores_unfinished} left marked unfinished and refused by an engine, all finished by a \
         second run); every replica directory passed `corral replica check` after every cut; {:.0?}",
        during.join(", "),
        started.elapsed()
    );
    Ok(())
}
