//! `corral-bench app`: PostgreSQL's pgbench (TPC-B-like, `-s 50`, 4 clients) on ext4 on a loop device
//! over nbdfuse, on a Corral volume with 1 and with 3 replicas and on qemu-nbd (`--cache=writeback`) over
//! a raw file, beside ext4 on a loop device over a plain file (the disk's limit, no NBD hop). All four
//! stacks are built and loaded first, then the rounds run interleaved (round 1 on every stack, then
//! round 2, …), so load on the machine falls on all of them alike. Prints TPS and mean latency per
//! round and their ratios to qemu-nbd. Corral starts the way `engine` starts it: replica processes and
//! one engine process. Everything (postgres, mounts, loop devices, nbdfuse, servers) is torn down on
//! exit, on error and on Ctrl-C / SIGTERM.

use std::path::PathBuf;

use crate::app_stack::{Backing, Stack};
use crate::fio::{median, tool_error, BenchError};
use crate::interrupt;
use crate::targets::{fresh_dir, make_file, start_corral, start_qemu_nbd, Corral, Proc};

/// `corral-bench app` options.
pub struct AppOptions {
    /// pgbench `-T` of each round, in seconds.
    pub duration_s: u64,
    /// pgbench `-i -s`.
    pub scale: u32,
    /// pgbench `-c`.
    pub clients: u32,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Size of every volume and file.
    pub size: u64,
    pub dir: PathBuf,
    pub corral: PathBuf,
}

/// Parses `app`'s flags; `None` on a bad flag.
pub fn parse(args: &[String], corral: PathBuf) -> Option<AppOptions> {
    let mut o = AppOptions {
        duration_s: 60,
        scale: 50,
        clients: 4,
        rounds: 2,
        size: 4 << 30,
        dir: std::env::temp_dir().join("corral-bench-app"),
        corral,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--duration" => o.duration_s = it.next()?.parse().ok().filter(|&d| d >= 1)?,
            "--scale" => o.scale = it.next()?.parse().ok().filter(|&s| s >= 1)?,
            "--clients" => o.clients = it.next()?.parse().ok().filter(|&c| c >= 1)?,
            "--rounds" => o.rounds = it.next()?.parse().ok().filter(|&r| r >= 1)?,
            "--size-gib" => {
                o.size = it.next()?.parse::<u64>().ok().filter(|&g| g >= 1)?.checked_mul(1 << 30)?
            }
            "--dir" => o.dir = PathBuf::from(it.next()?),
            "--corral" => o.corral = PathBuf::from(it.next()?),
            "--quick" => {
                // The smoke test's mode: a tiny database, one short round.
                o.duration_s = 1;
                o.scale = 1;
                o.rounds = 1;
                o.size = 256 << 20;
            }
            _ => return None,
        }
    }
    Some(o)
}

/// What serves a stack's device; dropped after its stack (see [`Bench`]).
enum Server {
    /// Kept only to be dropped (which kills it).
    Corral {
        _processes: Corral,
    },
    Qemu {
        _process: Proc,
    },
    File,
}

/// One target: its stack first, so the filesystem goes before the server under it.
struct Bench {
    label: &'static str,
    replicas: &'static str,
    sync: &'static str,
    stack: Stack,
    _server: Server,
    /// (TPS, mean latency ms) per round.
    rounds: Vec<(f64, f64)>,
}

fn build(o: &AppOptions, root: &std::path::Path, which: usize) -> Result<Bench, BenchError> {
    let dir = root.join(format!("t{which}"));
    let image = root.join(format!("t{which}.raw"));
    let (label, replicas, sync, server, backing) = match which {
        0 => {
            make_file(&image, o.size)?;
            ("file + loop", "1 copy", "fsync(2) of the file", Server::File, Backing::File(image))
        }
        1 => {
            make_file(&image, o.size)?;
            let (proc, uri) = start_qemu_nbd(&image)?;
            (
                "qemu-nbd",
                "1 copy",
                "NBD flush; --cache=writeback",
                Server::Qemu { _process: proc },
                Backing::Nbd(uri),
            )
        }
        n => {
            let replicas = if n == 2 { 1 } else { 3 };
            let c = start_corral(
                &o.corral,
                &fresh_dir(&root.join(format!("corral{replicas}")))?,
                replicas,
                o.size,
            )?;
            let uri = c.nbd.clone();
            let (r, s) = if replicas == 1 {
                ("1", "NBD flush; fdatasync on the replica")
            } else {
                ("3", "NBD flush; fdatasync on every replica")
            };
            ("corral", r, s, Server::Corral { _processes: c }, Backing::Nbd(uri))
        }
    };
    eprintln!("  {label} ({replicas}): ext4, initdb, pgbench -i -s {}", o.scale);
    let stack = Stack::start(&fresh_dir(&dir)?, &backing, o.scale)?;
    Ok(Bench { label, replicas, sync, stack, _server: server, rounds: Vec::new() })
}

/// The whole `app` benchmark.
pub fn run(o: &AppOptions) -> Result<(), BenchError> {
    interrupt::install()?;
    if !o.corral.is_file() {
        return Err(tool_error(
            "corral",
            format!(
                "{} not found: run `cargo build --release -p corral` first (or pass --corral PATH)",
                o.corral.display()
            ),
        ));
    }
    let root = fresh_dir(&o.dir)?;
    eprintln!(
        "pgbench: scale {}, {} clients, {} s a round, {} round(s), {} MiB volumes/files, under {}",
        o.scale,
        o.clients,
        o.duration_s,
        o.rounds,
        o.size >> 20,
        root.display()
    );
    let result = crate::app_stack::check_postgres_can_reach(&root).and_then(|()| run_in(o, &root));
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(o: &AppOptions, root: &std::path::Path) -> Result<(), BenchError> {
    let mut benches = Vec::new();
    for which in 0..4 {
        benches.push(build(o, root, which)?);
    }
    for round in 1..=o.rounds {
        for b in &mut benches {
            eprintln!("  round {round}/{}: {} ({})", o.rounds, b.label, b.replicas);
            b.rounds.push(b.stack.pgbench(o.clients, o.duration_s)?);
        }
    }
    print_table(o, &benches);
    Ok(())
}

fn print_table(o: &AppOptions, benches: &[Bench]) {
    let median_of = |b: &Bench, f: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = b.rounds.iter().map(f).collect();
        median(&mut v)
    };
    let qemu = benches.iter().find(|b| b.label == "qemu-nbd");
    let qemu_tps = qemu.map_or(f64::NAN, |q| median_of(q, |r| r.0));
    let qemu_lat = qemu.map_or(f64::NAN, |q| median_of(q, |r| r.1));
    println!();
    println!(
        "pgbench (TPC-B-like) on ext4 on a loop device; NBD targets through nbdfuse: scale {}, {} clients, {} s a round, {} interleaved round(s), {} MiB devices, same disk.",
        o.scale, o.clients, o.duration_s, o.rounds, o.size >> 20
    );
    println!("TPS and mean latency are medians over the rounds; ratios are to qemu-nbd's medians; the per-round columns list each round in run order.");
    println!();
    println!("| target | replicas | sync mode | TPS | TPS per round | mean latency | TPS / qemu-nbd | per-round TPS / qemu-nbd | latency / qemu-nbd |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for b in benches {
        let tps = median_of(b, |r| r.0);
        let lat = median_of(b, |r| r.1);
        let per_round: Vec<String> = b.rounds.iter().map(|r| format!("{:.0}", r.0)).collect();
        let per_round_ratio: Vec<String> = match qemu {
            Some(q) => b.rounds.iter().zip(&q.rounds).map(|(r, q)| format!("{:.2}", r.0 / q.0)).collect(),
            None => Vec::new(),
        };
        println!(
            "| {} | {} | {} | {tps:.0} | {} | {lat:.2} ms | {:.2}× | {} | {:.2}× |",
            b.label,
            b.replicas,
            b.sync,
            per_round.join(", "),
            tps / qemu_tps,
            per_round_ratio.join(", "),
            lat / qemu_lat,
        );
    }
    println!();
    println!(
        "Targets: pgbench TPS ≥ 1.0× qemu-nbd with 1 replica, ≥ 0.8× with 3 (a benchmark, not an assertion)."
    );
}
