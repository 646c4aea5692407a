//! `corral-bench`: benchmarks of Corral against baselines, run side by side on the same disk.
//!
//! ```text
//! cargo build --release -p corral -p corral-bench
//! target/release/corral-bench engine [--runtime SECS] [--size GIB] [--dir DIR] [--rebuild-gib GIB] [--repeat N]
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
//! `--repeat N` (default 1) runs each target's whole job list N times (the target is started once, and
//! every round begins with the filling 1 MiB write) and reports each figure as the median of the N runs
//! (mean of the two middle runs for even N), with the per-run min–max range of the QD32 ratios against
//! qemu-nbd under the table. The rebuild is measured once; `--rebuild-gib 0` skips it.
//!
//! Sync mode: none of the fio jobs flushes (no `fsync=`), for every target alike. Corral's replicas and
//! qemu-nbd (`--cache=writeback`, its default) write through the page cache; the plain-file baseline
//! uses O_DIRECT. Benchmarks are never timed tests; nothing here asserts a speed.

mod fio;
mod power_cut;
mod scale;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;

struct Options {
    runtime: u64,
    size_gib: u64,
    rebuild_gib: u64,
    dir: PathBuf,
    corral: PathBuf,
    /// Runs of each target's job list; the table shows medians. At least 1.
    repeat: usize,
}

fn usage() -> ExitCode {
    eprintln!("usage: corral-bench engine [--runtime SECS] [--size GIB] [--rebuild-gib GIB] [--dir DIR] [--corral PATH] [--repeat N]");
    ExitCode::from(2)
}

fn parse(args: &[String]) -> Option<Options> {
    let exe_dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
    let mut o = Options {
        runtime: 10,
        size_gib: 1,
        rebuild_gib: 4,
        dir: PathBuf::from("target/bench-engine"),
        corral: std::env::var_os("CORRAL_BIN").map(PathBuf::from).unwrap_or_else(|| exe_dir.join("corral")),
        repeat: 1,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runtime" => o.runtime = it.next()?.parse().ok()?,
            "--size" => o.size_gib = it.next()?.parse().ok()?,
            "--rebuild-gib" => o.rebuild_gib = it.next()?.parse().ok()?,
            "--dir" => o.dir = PathBuf::from(it.next()?),
            "--corral" => o.corral = PathBuf::from(it.next()?),
            "--repeat" => o.repeat = it.next()?.parse().ok().filter(|&n| n >= 1)?,
            _ => return None,
        }
    }
    Some(o)
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
    if args.first().map(String::as_str) != Some("engine") {
        return usage();
    }
    let Some(options) = parse(&args[1..]) else { return usage() };
    match targets::run_engine_bench(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
