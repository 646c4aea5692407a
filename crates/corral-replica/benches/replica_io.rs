//! `cargo bench -p corral-replica`: replica store vs plain `pwrite`/`pread` on a file in the same
//! directory, plus open time and index memory for 1,000 snapshots and for a 1 TiB sparse volume.
//!
//! Both sides use buffered I/O (page cache) on the same filesystem, one thread issuing requests
//! back to back (queue depth 1) unless stated; the write phases end with one fdatasync, counted in the
//! time. Memory is measured with a counting global allocator (bytes held after `open` minus before).
// A benchmark stops at its first failure, naming the step.
#![allow(clippy::expect_used)]

use corral_replica::{CreateOptions, Replica, SnapshotOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SIZE: u64 = 1 << 30;
const RANDOM_OPS: u64 = 100_000;
const SEQ_BYTES: u64 = 512 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

trait Target: Sync {
    fn write(&self, buf: &[u8], off: u64);
    fn read(&self, buf: &mut [u8], off: u64);
    fn sync(&self);
}

struct Plain(std::fs::File);
impl Target for Plain {
    fn write(&self, buf: &[u8], off: u64) {
        self.0.write_all_at(buf, off).expect("pwrite");
    }
    fn read(&self, buf: &mut [u8], off: u64) {
        self.0.read_exact_at(buf, off).expect("pread");
    }
    fn sync(&self) {
        self.0.sync_data().expect("fdatasync");
    }
}

impl Target for Replica {
    fn write(&self, buf: &[u8], off: u64) {
        self.write_at(buf, off).expect("replica write");
    }
    fn read(&self, buf: &mut [u8], off: u64) {
        self.read_at(buf, off).expect("replica read");
    }
    fn sync(&self) {
        self.flush().expect("replica flush");
    }
}

/// One request issued by a benchmark thread.
type Request<'a> = dyn Fn(&dyn Target, &mut Rng, &mut [u8]) + Sync + 'a;

/// Runs `ops` operations split over `threads` threads; returns the elapsed time.
fn run(t: &dyn Target, threads: u64, ops: u64, f: &Request) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for i in 0..threads {
            s.spawn(move || {
                let mut rng = Rng(0x9E37_79B9 + i * 7919);
                let mut buf = vec![0xA5u8; 1 << 20];
                for _ in 0..ops / threads {
                    f(t, &mut rng, &mut buf);
                }
            });
        }
    });
    start.elapsed()
}

struct Row {
    name: String,
    plain: f64,
    replica: f64,
    unit: &'static str,
}

fn io_rows(dir: &Path) -> Vec<Row> {
    let plain_path = dir.join("plain.img");
    let pf = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&plain_path)
        .expect("plain file");
    pf.set_len(SIZE).expect("size plain file");
    let plain = Plain(pf);
    let replica =
        Replica::create(&dir.join("replica"), CreateOptions { size: SIZE }).expect("create replica");
    // One snapshot under the head, so reads go through a two-layer chain.
    replica.write_at(&vec![1u8; 1 << 20], 0).expect("write");
    replica.snapshot("base", SnapshotOptions::default()).expect("snapshot");
    plain.write(&vec![1u8; 1 << 20], 0);
    let mut rows = Vec::new();
    let blocks = SIZE / 4096;
    let rand_write =
        |t: &dyn Target, rng: &mut Rng, buf: &mut [u8]| t.write(&buf[..4096], (rng.next() % blocks) * 4096);
    let rand_read = |t: &dyn Target, rng: &mut Rng, buf: &mut [u8]| {
        t.read(&mut buf[..4096], (rng.next() % blocks) * 4096)
    };
    // Each workload runs in ROUNDS alternating rounds (plain, replica, plain, …) and reports the median
    // rate of each side, so that load from other processes on the machine hits both alike.
    const ROUNDS: u64 = 5;
    let per_round = RANDOM_OPS / ROUNDS;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for threads in [1u64, 2] {
        // Warm-up pass (allocates blocks in both files), then the measured rounds.
        for t in [&plain as &dyn Target, &replica] {
            run(t, threads, RANDOM_OPS, &rand_write);
            t.sync();
        }
        for (name, op, sync) in [("write", &rand_write as &Request, true), ("read", &rand_read, false)] {
            let mut rates = [Vec::new(), Vec::new()];
            for _ in 0..ROUNDS {
                for (i, t) in [&plain as &dyn Target, &replica].into_iter().enumerate() {
                    let start = Instant::now();
                    run(t, threads, per_round, op);
                    if sync {
                        t.sync();
                    }
                    rates[i].push(per_round as f64 / start.elapsed().as_secs_f64());
                }
            }
            let [p, r] = rates;
            rows.push(Row {
                name: format!("4 KiB random {name}, {threads} thread(s)"),
                plain: median(p),
                replica: median(r),
                unit: "IOPS",
            });
        }
    }
    let seq_ops = SEQ_BYTES >> 20;
    let mut mibs = [0.0; 2];
    for (i, t) in [&plain as &dyn Target, &replica].into_iter().enumerate() {
        let start = Instant::now();
        for n in 0..seq_ops {
            t.write(&vec![n as u8; 1 << 20], (n << 20) % SIZE);
        }
        t.sync();
        mibs[i] = seq_ops as f64 / start.elapsed().as_secs_f64();
    }
    rows.push(Row {
        name: "1 MiB sequential write (+fdatasync)".into(),
        plain: mibs[0],
        replica: mibs[1],
        unit: "MiB/s",
    });
    for (i, t) in [&plain as &dyn Target, &replica].into_iter().enumerate() {
        let mut buf = vec![0u8; 1 << 20];
        let start = Instant::now();
        for n in 0..seq_ops {
            t.read(&mut buf, (n << 20) % SIZE);
        }
        mibs[i] = seq_ops as f64 / start.elapsed().as_secs_f64();
    }
    rows.push(Row { name: "1 MiB sequential read".into(), plain: mibs[0], replica: mibs[1], unit: "MiB/s" });
    replica.close().expect("close");
    rows
}

/// Opens `dir` and reports (open time, bytes held by the replica, index estimate).
fn measure_open(dir: &Path) -> (Duration, usize, usize) {
    let before = HELD.load(Ordering::Relaxed);
    let start = Instant::now();
    let r = Replica::open_read_only(dir).expect("open");
    let took = start.elapsed();
    let held = HELD.load(Ordering::Relaxed).saturating_sub(before);
    let index = r.index_heap_bytes();
    drop(r);
    (took, held, index)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("replica_io: bench");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    println!("corral-replica benchmark (buffered I/O on {}, queue depth 1 per thread)", tmp.path().display());
    let rows = io_rows(tmp.path());
    println!("\n| workload | plain file | replica | ratio |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} {} | {:.0} {} | {:.2}x |",
            r.name,
            r.plain,
            r.unit,
            r.replica,
            r.unit,
            r.replica / r.plain
        );
    }

    // 1,000 snapshots, 64 MiB volume, one scattered 4 KiB write per snapshot.
    let dir = tmp.path().join("thousand");
    let size = 64u64 << 20;
    let r = Replica::create(&dir, CreateOptions { size }).expect("create");
    for i in 0..1000u64 {
        r.write_at(&[i as u8; 4096], ((i * 37) % (size / 4096)) * 4096).expect("write");
        r.snapshot(&format!("s{i}"), SnapshotOptions::default()).expect("snapshot");
    }
    r.close().expect("close");
    let (t1, held1, idx1) = measure_open(&dir);

    // 1 TiB sparse volume, 20,000 scattered 16 KiB extents (~312 MiB of data), one snapshot halfway.
    let dir = tmp.path().join("tib");
    let size = 1u64 << 40;
    let r = Replica::create(&dir, CreateOptions { size }).expect("create");
    let mut rng = Rng(12345);
    let data = vec![7u8; 16384];
    for i in 0..20_000u64 {
        if i == 10_000 {
            r.snapshot("half", SnapshotOptions::default()).expect("snapshot");
        }
        r.write_at(&data, (rng.next() % (size / 16384)) * 16384).expect("write");
    }
    r.close().expect("close");
    let (t2, held2, idx2) = measure_open(&dir);
    let longhorn = |size: u64| size / 4096;
    println!("\n| volume | open time | memory held by the open replica | index estimate | Longhorn index (1 B / 4 KiB) | ours / Longhorn |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| 64 MiB, 1,000 snapshots | {:.1} ms | {} KiB | {} KiB | {} KiB (and Longhorn cannot open >250) | {:.3} |",
        t1.as_secs_f64() * 1e3,
        held1 / 1024,
        idx1 / 1024,
        longhorn(64 << 20) / 1024,
        held1 as f64 / longhorn(64 << 20) as f64
    );
    println!(
        "| 1 TiB sparse, 20,000 extents, 2 layers | {:.1} ms | {} KiB | {} KiB | {} KiB | {:.4} |",
        t2.as_secs_f64() * 1e3,
        held2 / 1024,
        idx2 / 1024,
        longhorn(size) / 1024,
        held2 as f64 / longhorn(size) as f64
    );
}
