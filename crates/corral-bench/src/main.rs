//! `corral-bench`: benchmarks of Corral against baselines, run side by side on the same disk.
//!
//! ```text
//! cargo build --release -p corral -p corral-bench
//! target/release/corral-bench engine [--runtime SECS] [--size GIB] [--dir DIR] [--rebuild-gib GIB] [--repeat N] [--quick]
//! target/release/corral-bench app [--duration SECS] [--scale N] [--clients N] [--rounds N] [--dir DIR] [--quick]
//! ```
//! (`cargo run --release -p corral-bench -- engine` works too once `corral` is built in release.)
//!
//! `corral-bench power-cut --rounds N [--seed S]` is a randomized power-cut campaign (see power_cut.rs).
//!
//! `engine` runs fio (`--ioengine=nbd`, Debian's fio) against: Corral with 1 replica, Corral with 3
//! replicas, and `qemu-nbd` serving a raw file; and fio on a plain file with `direct=1` (io_uring) as
//! the disk's limit. Jobs: 1 MiB sequential write (QD8, also fills the target), 4 KiB random write QD1
//! and QD32, 4 KiB random read QD1 and QD32, 1 MiB sequential read (QD8). Then it measures the online
//! rebuild of a volume whose data lies in alternating 4 KiB blocks. It prints one table with the replica
//! count, sync mode and `direct=1` next to each figure, and the ratios against qemu-nbd.
//!
//! Then the durable workloads (durable.rs): 4 KiB random write with a flush after every write at QD1
//! (fio `fsync=1`: an NBD flush, fsync(2) on the plain file, which is buffered for these), batches of 32
//! writes in flight followed by a flush, and FUA writes at QD1 (libnbd's Python binding sends these two
//! and sets the FUA bit; see sync_loop.rs), each with IOPS, mean and p99 sync latency, in a second table
//! beside the 4 KiB random read QD1 latency, one row per workload and target.
//!
//! `app` (app.rs) runs PostgreSQL's pgbench on ext4 on a loop device over nbdfuse on Corral (1 and 3
//! replicas) and qemu-nbd, and on a loop device over a plain file.
//!
//! `--quick` (both) is the smoke test's mode: tiny sizes and sub-second jobs, no figure worth reading.
//!
//! `--repeat N` (default 1) runs each target's whole job list N times (the target is started once, and
//! every round begins with the filling 1 MiB write) and reports each figure as the median of the N runs
//! (mean of the two middle runs for even N), with the per-run min–max range of the QD32 ratios against
//! qemu-nbd under the table. The rebuild is measured once; `--rebuild-gib 0` skips it.
//!
//! Sync mode: none of the buffered table's jobs flushes (no `fsync=`), for every target alike; the
//! durable table names its sync on every row. Corral's replicas and qemu-nbd (`--cache=writeback`, its
//! default) write through the page cache; the plain-file baseline uses O_DIRECT for the buffered table
//! and a buffered file with fsync(2) / O_DSYNC for the durable one. Benchmarks are never timed tests;
//! nothing here asserts a speed.

mod app;
mod app_stack;
mod durable;
mod fio;
mod interrupt;
mod power_cut;
mod scale;
mod sync_loop;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;

struct Options {
    /// Measured time of each timed job.
    runtime_ms: u64,
    /// Warm-up before each timed job.
    ramp_ms: u64,
    /// Volume and file size in bytes.
    size: u64,
    rebuild_gib: u64,
    dir: PathBuf,
    corral: PathBuf,
    /// Runs of each target's job list; the table shows medians. At least 1.
    repeat: usize,
}

fn usage() -> ExitCode {
    eprintln!("usage: corral-bench engine [--runtime SECS] [--size GIB] [--rebuild-gib GIB] [--dir DIR] [--corral PATH] [--repeat N] [--quick]");
    ExitCode::from(2)
}

fn parse(args: &[String]) -> Option<Options> {
    let exe_dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
    let mut o = Options {
        runtime_ms: 10_000,
        ramp_ms: 1000,
        size: 1 << 30,
        rebuild_gib: 4,
        dir: PathBuf::from("target/bench-engine"),
        corral: std::env::var_os("CORRAL_BIN").map(PathBuf::from).unwrap_or_else(|| exe_dir.join("corral")),
        repeat: 1,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runtime" => o.runtime_ms = it.next()?.parse::<u64>().ok()?.checked_mul(1000)?,
            "--size" => o.size = it.next()?.parse::<u64>().ok().filter(|&g| g >= 1)?.checked_mul(1 << 30)?,
            "--quick" => {
                // The smoke test's mode: every job runs, each briefly, on a small volume.
                o.runtime_ms = 400;
                o.ramp_ms = 0;
                o.size = 64 << 20;
                o.rebuild_gib = 0;
            }
            "--rebuild-gib" => o.rebuild_gib = it.next()?.parse().ok()?,
            "--dir" => o.dir = PathBuf::from(it.next()?),
            "--corral" => o.corral = PathBuf::from(it.next()?),
            "--repeat" => o.repeat = it.next()?.parse().ok().filter(|&n| n >= 1)?,
            _ => return None,
        }
    }
    Some(o)
}

impl Options {
    fn timing(&self) -> fio::Timing {
        fio::Timing { runtime_ms: self.runtime_ms, ramp_ms: self.ramp_ms }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("scale") {
        // `corral-bench scale [--volumes N] ...`: see scale.rs.
        let corral = std::env::var_os("CORRAL_BIN").map(PathBuf::from).unwrap_or_else(|| {
            std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join("corral"))).unwrap_or_default()
        });
        let Some(o) = scale::parse(&args[1..], corral) else {
            eprintln!("usage: corral-bench scale [--volumes N] [--size-mib MIB] [--idle-secs S] [--dir DIR] [--corral PATH]");
            return ExitCode::from(2);
        };
        return match scale::run(&o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corral-bench scale: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some("power-cut") {
        // `corral-bench power-cut --rounds N [--seed S]`: see power_cut.rs.
        let corral = std::env::var_os("CORRAL_BIN").map(PathBuf::from).unwrap_or_else(|| {
            std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join("corral"))).unwrap_or_default()
        });
        let Some(o) = power_cut::parse(&args[1..], corral) else {
            eprintln!("usage: corral-bench power-cut [--rounds N] [--seed S] [--dir DIR] [--corral PATH] [--only nbd-host|nbd-vm|ops-ext4|ops-xfs|rebuild|restore]");
            return ExitCode::from(2);
        };
        return match power_cut::run(&o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corral-bench power-cut: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some("app") {
        // `corral-bench app [--duration SECS] ...`: see app.rs.
        let corral = std::env::var_os("CORRAL_BIN").map(PathBuf::from).unwrap_or_else(|| {
            std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join("corral"))).unwrap_or_default()
        });
        let Some(o) = app::parse(&args[1..], corral) else {
            eprintln!("usage: corral-bench app [--duration SECS] [--scale N] [--clients N] [--rounds N] [--size-gib GIB] [--dir DIR] [--corral PATH] [--quick]");
            return ExitCode::from(2);
        };
        return match app::run(&o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corral-bench app: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) != Some("engine") {
        return usage();
    }
    let Some(options) = parse(&args[1..]) else { return usage() };
    if let Err(e) = interrupt::install() {
        eprintln!("corral-bench: {e}");
        return ExitCode::FAILURE;
    }
    match targets::run_engine_bench(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
