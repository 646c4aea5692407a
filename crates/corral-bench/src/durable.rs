//! The durable part of `corral-bench engine`: writes a database waits for (a flush after every write at
//! QD1, a flush after every 32 writes at QD32, FUA writes) and the 4 KiB random read at QD1, printed
//! one row per workload and target with the replica count and the sync mode on every row.

use crate::fio::{Measured, DURABLE_JOBS, JOBS, READ_QD1};

/// The name of the batch row (its loop is in sync_loop.rs).
pub const BATCH32: &str = "4K rand write QD32, fsync every 32 writes";
/// The name of the FUA row (its loop is in sync_loop.rs).
pub const FUA: &str = "4K rand write QD1, FUA every write";

/// Index of the batch result in a target's results (after [`JOBS`] and [`DURABLE_JOBS`]), then FUA's.
const BATCH32_INDEX: usize = JOBS.len() + DURABLE_JOBS.len();
const FUA_INDEX: usize = BATCH32_INDEX + 1;

/// What kind of target a column is, for the sync-mode text.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    File,
    Qemu,
    Corral,
}

/// One row's workload: its index in a target's results and the sync mode per kind of target.
struct Row {
    name: &'static str,
    index: usize,
    is_read: bool,
    sync: fn(Kind) -> &'static str,
}

fn rows() -> [Row; 4] {
    [
        Row {
            name: DURABLE_JOBS[0].name,
            index: JOBS.len(),
            is_read: false,
            sync: |k| match k {
                Kind::File => "fsync(2) after every write (buffered file, psync)",
                Kind::Qemu => "NBD flush after every write (fio nbd); --cache=writeback",
                Kind::Corral => "NBD flush after every write (fio nbd); fdatasync on every replica",
            },
        },
        Row {
            name: BATCH32,
            index: BATCH32_INDEX,
            is_read: false,
            sync: |k| match k {
                Kind::File => "32 buffered pwrites, then fsync(2) (python loop)",
                Kind::Qemu => "32 writes in flight, then NBD flush (libnbd python loop); --cache=writeback",
                Kind::Corral => {
                    "32 writes in flight, then NBD flush (libnbd python loop); fdatasync on every replica"
                }
            },
        },
        Row {
            name: FUA,
            index: FUA_INDEX,
            is_read: false,
            sync: |k| match k {
                Kind::File => "pwrite on an O_DSYNC descriptor (python loop)",
                Kind::Qemu => "NBD_CMD_FLAG_FUA on every write (libnbd python loop); --cache=writeback",
                Kind::Corral => "NBD_CMD_FLAG_FUA on every write (libnbd python loop)",
            },
        },
        Row {
            name: JOBS[READ_QD1].name,
            index: READ_QD1,
            is_read: true,
            sync: |k| match k {
                Kind::File => "none; direct=1 io_uring",
                Kind::Qemu | Kind::Corral => "none (fio nbd; served from the page cache or disk)",
            },
        },
    ]
}

fn times(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "-".into()
    }
}

/// Prints the durable table: `plain`, `qemu` and `corral` (1 replica, 3 replicas) hold each target's
/// results in run order (see `targets::run_jobs`).
pub fn print_table(plain: &[Measured], qemu: &[Measured], corral: &[Vec<Measured>; 2]) {
    println!();
    println!(
        "Durable workloads and QD1 read latency (same run, same disk; one row per workload and target)."
    );
    println!("Latency: of the sync (fsync / NBD flush, or the FUA write itself) for writes; of the read for the read.");
    println!();
    println!("| workload | target | replicas | sync mode | IOPS | mean latency | p99 latency | IOPS / qemu-nbd | IOPS / file | mean latency / qemu-nbd |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let columns: [(&str, &str, Kind, &[Measured]); 4] = [
        ("file", "1 copy", Kind::File, plain),
        ("qemu-nbd", "1 copy", Kind::Qemu, qemu),
        ("corral", "1", Kind::Corral, &corral[0]),
        ("corral", "3", Kind::Corral, &corral[1]),
    ];
    for row in rows() {
        let Some(q) = qemu.get(row.index) else { continue };
        let Some(f) = plain.get(row.index) else { continue };
        for (target, replicas, kind, results) in columns {
            let Some(m) = results.get(row.index) else { continue };
            let (mean, p99) = if row.is_read { (m.lat_us, m.lat_p99_us) } else { (m.sync_us, m.sync_p99_us) };
            let q_mean = if row.is_read { q.lat_us } else { q.sync_us };
            println!(
                "| {} | {target} | {replicas} | {} | {:.0} | {mean:.0} µs | {p99:.0} µs | {} | {} | {} |",
                row.name,
                (row.sync)(kind),
                m.iops,
                times(m.iops, q.iops),
                times(m.iops, f.iops),
                times(mean, q_mean),
            );
        }
    }
    // Issue 12's targets, stated beside the figures (a benchmark, never an assertion).
    let ratio = |r: usize, i: usize| {
        times(corral[r].get(i).map_or(f64::NAN, |m| m.iops), qemu.get(i).map_or(0.0, |m| m.iops))
    };
    let read_lat = |r: usize| corral[r].get(READ_QD1).map_or(f64::NAN, |m| m.lat_us);
    println!();
    println!(
        "Targets: fsync every write QD1 ≥ 1.0× qemu-nbd with 1 replica (now {}), ≥ 0.8× with 3 (now {}); QD1 read latency ≤ qemu-nbd's {:.0} µs with 1 replica (now {:.0} µs).",
        ratio(0, JOBS.len()),
        ratio(1, JOBS.len()),
        qemu.get(READ_QD1).map_or(f64::NAN, |m| m.lat_us),
        read_lat(0),
    );
}
