//! The NBD power-cut scenario: three replicas in the VM, the engine on the host or in the VM, a pipelined
//! libnbd workload (4 KiB writes over four connections, a pipelined flush every 64 requests, every 101st
//! write FUA) cut at a random moment. After the reboot each block holds the last write an acknowledged
//! flush or FUA covered, or a write issued after it; never anything older.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use corral_testkit::data::{block_data, sha256};
use corral_testkit::nbd::{Op, Report, Workload};
use corral_testkit::vm::Filesystem;
use rand::Rng;

use super::{seeded, CorralVm, HostEngine};

const SIZE: &str = "16MiB";
/// Blocks the workload writes (4 MiB).
const REGION: u64 = 1024;

/// Where the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePlace {
    Host,
    Vm,
}

/// What a campaign did.
#[derive(Debug, Default)]
pub struct Summary {
    pub cuts: usize,
    /// Writes acknowledged as durable (flush or FUA) and checked after a cut.
    pub durable_checked: usize,
    pub acknowledged: usize,
}

/// What the round before the cut left to check.
struct Pending {
    plan: Workload,
    report: Report,
    /// The SHA-256 of each block before the round.
    base: Vec<String>,
}

/// Runs `rounds` cuts (and a final reboot and check) on a fresh disk image under `dir`.
pub fn run(
    corral: &Path,
    dir: &Path,
    filesystem: Filesystem,
    engine: EnginePlace,
    rounds: usize,
    seed: Option<u64>,
) -> Summary {
    let (seed, mut rng) = seeded(seed);
    eprintln!("power cut (NBD, engine on {engine:?}, {filesystem:?}) seed {seed}");
    let context = |round: usize| format!("round {round} (seed {seed}, engine on {engine:?}, {filesystem:?})");
    let mut vm = CorralVm::new(corral, &dir.join(format!("disk-{}.img", filesystem.name())), filesystem);
    let mut summary = Summary::default();
    let mut pending: Option<Pending> = None;
    for round in 0..=rounds {
        let started = Instant::now();
        vm.boot_and_check(&context(round));
        let replicas = vm.start_replicas(3, Some(SIZE));
        let mut host_engine = None;
        let uri = match engine {
            EnginePlace::Vm => vm.start_engine("vol-power", SIZE, 3),
            EnginePlace::Host => {
                let engine = HostEngine::start(corral, "vol-power", SIZE, &replicas, &[]);
                let uri = engine.nbd.clone();
                host_engine = Some(engine);
                uri
            }
        };
        let base = match pending.take() {
            Some(p) => {
                let control = match &host_engine {
                    Some(engine) => engine.control.clone(),
                    None => vm.vm.host_address(super::ENGINE_CONTROL_PORT),
                };
                let modes = super::replica_modes(corral, &control);
                summary.durable_checked +=
                    verify(&uri, &p, &format!("{} (replicas {modes:?})", context(round)));
                read_blocks(&uri).0
            }
            None => vec![sha256(&[0u8; 4096]); REGION as usize],
        };
        if round == rounds {
            break;
        }
        let plan = plan(round as u64);
        let running = plan.start(&uri);
        let progress = rng.random_range(100..1500);
        running.wait_progress(progress, Duration::from_secs(300));
        vm.vm.cut_power();
        if let Some(mut engine) = host_engine.take() {
            engine.process.kill9();
        }
        let report = running.finish();
        summary.cuts += 1;
        summary.acknowledged += report.acks.iter().filter(|a| a.ok).count();
        eprintln!(
            "{}: cut after {} reports, {} acknowledged, {} durable writes ({:?} for the round)",
            context(round),
            progress,
            report.acks.iter().filter(|a| a.ok).count(),
            report.durable_writes(&plan).len(),
            started.elapsed()
        );
        pending = Some(Pending { plan, report, base });
    }
    vm.vm.cut_power();
    summary
}

/// The plan of a round: writes whose bytes no other round (or pass) writes.
fn plan(round: u64) -> Workload {
    let mut plan = Workload::new();
    for i in 0..REGION * 2 {
        let block = (i * 7919) % REGION;
        plan.write(block * 4096, &block_data(block, (round << 32) | i, 4096), i % 101 == 0);
        if i % 64 == 63 {
            plan.pipelined_flush();
        }
    }
    plan.pass_shift = 4096 * 3 + 512;
    plan
}

/// Reads every block of the region; returns their SHA-256s and the read report.
fn read_blocks(uri: &str) -> (Vec<String>, Report) {
    let mut check = Workload::new();
    for b in 0..REGION {
        check.read(b * 4096, 4096);
    }
    let read = check.run(uri);
    read.assert_all_ok();
    ((0..REGION).map(|b| read.read_sha256(b).to_string()).collect(), read)
}

/// Checks every block against what the cut-off round acknowledged; returns the durable writes checked.
fn verify(uri: &str, pending: &Pending, context: &str) -> usize {
    let Pending { plan, report, base } = pending;
    let durable = report.durable_writes(plan);
    // Requests in flight at the cut may have landed whether or not an answer came: every position up to
    // the last one answered, plus a full pipeline, may hold.
    let last = report.acks.iter().map(|a| a.seq).max().unwrap_or(0) + plan.depth as u64 + 1;
    let block_of = |seq: u64| match *plan.op_at(seq) {
        Op::Write { offset, .. } => Some(offset / 4096),
        _ => None,
    };
    let mut last_durable = vec![None; REGION as usize];
    for &seq in &durable {
        let b = block_of(seq).unwrap_or_else(|| panic!("durable request {seq} is not a write")) as usize;
        last_durable[b] = last_durable[b].max(Some(seq));
    }
    let (got, _) = read_blocks(uri);
    for b in 0..REGION {
        let floor = last_durable[b as usize];
        let mut allowed: HashSet<String> = (0..=last)
            .filter(|&seq| block_of(seq) == Some(b) && floor.is_none_or(|f| seq >= f))
            .map(|seq| sha256(plan.payload(seq)))
            .collect();
        if floor.is_none() {
            allowed.insert(base[b as usize].clone());
        }
        if !allowed.contains(&got[b as usize]) {
            eprintln!("{context}: block {b} holds {}", identify(plan, &got[b as usize], b, base));
        }
        assert!(
            allowed.contains(&got[b as usize]),
            "{context}: block {b} lost a write acknowledged as durable: it holds none of the {} writes at or \
             after the last durable one ({floor:?})",
            allowed.len()
        );
    }
    durable.len()
}

/// Names what a block holds, for a failure message: the write of which round and stream position.
fn identify(plan: &Workload, sha: &str, block: u64, base: &[String]) -> String {
    if sha == base[block as usize] {
        return "what it held before the round".to_string();
    }
    if sha == sha256(&[0u8; 4096]) {
        return "zeroes".to_string();
    }
    let ops = plan.ops.len() as u64;
    for round in 0..16u64 {
        let old = self::plan(round);
        for seq in 0..ops * 8 {
            if matches!(*old.op_at(seq), Op::Write { offset, .. } if offset / 4096 == block)
                && sha256(old.payload(seq)) == sha
            {
                return format!("the write at stream position {seq} of round {round}");
            }
        }
    }
    "nothing any round wrote".to_string()
}
