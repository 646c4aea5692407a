//! The rebuild power-cut scenario: three replicas in the VM, the engine on the host. Each round the engine
//! runs on two of them, writes the whole volume with new data and flushes, so the third (the target) is
//! stale; then it adds the target (an online rebuild into the VM) and the power is cut at a random moment
//! of that rebuild. After the reboot an engine over all three (`--no-auto-rebuild`) must read the round's
//! data on every read: a target whose rebuild was cut off must never serve, and every directory passes
//! `corral replica check`.

use std::path::Path;
use std::time::{Duration, Instant};

use corral_testkit::data::{block_data, sha256};
use corral_testkit::nbd::Workload;
use corral_testkit::vm::Filesystem;
use rand::Rng;

use super::{seeded, CorralVm, HostEngine};

const SIZE: &str = "8MiB";
const SIZE_BYTES: u64 = 8 << 20;
const CHUNK: u64 = 1 << 20;

/// What a campaign did.
#[derive(Debug, Default)]
pub struct Summary {
    pub cuts: usize,
    /// Cuts after which the target came back RW (its rebuild had finished) / not RW.
    pub target_rw_after: usize,
    pub target_not_rw_after: usize,
}

/// The volume's content after round `round` (every 1 MiB chunk from `block_data`).
fn content(round: u64) -> Vec<u8> {
    (0..SIZE_BYTES / CHUNK).flat_map(|c| block_data(c, round + 1000, CHUNK as usize)).collect()
}

/// Runs `rounds` cuts (and a final reboot and check) on a fresh disk image under `dir`.
pub fn run(corral: &Path, dir: &Path, filesystem: Filesystem, rounds: usize, seed: Option<u64>) -> Summary {
    let (seed, mut rng) = seeded(seed);
    eprintln!("power cut (rebuild, {filesystem:?}) seed {seed}");
    let mut vm = CorralVm::new(corral, &dir.join(format!("rebuild-{}.img", filesystem.name())), filesystem);
    let mut summary = Summary::default();
    let mut want: Option<(usize, Vec<u8>)> = None;
    for round in 0..=rounds {
        let context = format!("round {round} (seed {seed}, rebuild, {filesystem:?})");
        let started = Instant::now();
        vm.boot_and_check(&context);
        let replicas = vm.start_replicas(3, Some(SIZE));
        if let Some((target, want)) = want.take() {
            let mut engine =
                HostEngine::start(corral, "vol-rebuild", SIZE, &replicas, &["--no-auto-rebuild"]);
            let modes = engine.modes();
            assert!(modes.iter().any(|(_, m)| m == "RW"), "{context}: no replica serves: {modes:?}");
            if modes.iter().any(|(a, m)| *a == replicas[target] && m == "RW") {
                summary.target_rw_after += 1;
            } else {
                summary.target_not_rw_after += 1;
            }
            assert_volume_holds(&engine.nbd, &want, 3, &format!("{context}: replicas {modes:?}"));
            engine.process.kill9();
        }
        if round == rounds {
            break;
        }
        let target = round % 3;
        let others: Vec<String> =
            replicas.iter().enumerate().filter(|(i, _)| *i != target).map(|(_, a)| a.clone()).collect();
        // Two replicas; one of them may be a target whose rebuild an earlier cut stopped: the engine
        // rebuilds it first (automatically), and the round's writes start once both serve.
        let mut engine = HostEngine::start(corral, "vol-rebuild", SIZE, &others, &[]);
        wait_all_rw(&engine, Duration::from_secs(240), &context);
        let data = content(round as u64);
        let mut plan = Workload::new();
        for c in 0..SIZE_BYTES / CHUNK {
            plan.write(c * CHUNK, &data[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize], false);
        }
        plan.flush();
        plan.run(&engine.nbd).assert_all_ok();
        engine.cli_ok(&["replica", "add", &replicas[target]]);
        // A rebuild of 8 MiB into the VM takes a few seconds: most cuts land in its middle.
        let delay = Duration::from_millis(rng.random_range(0..2000));
        std::thread::sleep(delay);
        let modes = engine.modes();
        vm.vm.cut_power();
        engine.process.kill9();
        summary.cuts += 1;
        eprintln!(
            "{context}: cut {delay:?} into the rebuild of replica {target} (modes just before: {modes:?}); round took {:?}",
            started.elapsed()
        );
        want = Some((target, data));
    }
    vm.vm.cut_power();
    summary
}

fn wait_all_rw(engine: &HostEngine, limit: Duration, context: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let modes = engine.modes();
        if modes.iter().all(|(_, m)| m == "RW") {
            return;
        }
        assert!(Instant::now() < deadline, "{context}: replicas did not all become RW: {modes:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Reads the volume in 1 MiB requests `passes` times (the engine spreads reads over its RW replicas) and
/// panics at the first MiB that differs from `want`.
fn assert_volume_holds(uri: &str, want: &[u8], passes: usize, context: &str) {
    let chunks = (want.len() as u64 / CHUNK) as usize;
    let mut plan = Workload::new();
    for _ in 0..passes {
        for c in 0..chunks {
            plan.read(c as u64 * CHUNK, CHUNK);
        }
    }
    let report = plan.run(uri);
    report.assert_all_ok();
    for seq in 0..(passes * chunks) as u64 {
        let c = seq as usize % chunks;
        let expected = sha256(&want[c * CHUNK as usize..(c + 1) * CHUNK as usize]);
        assert_eq!(report.read_sha256(seq), expected, "{context}: MiB {c} differs (read {seq})");
    }
}
