//! The benchmark targets (processes started and killed here) and the engine benchmark itself.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fio::{self, tool_error, BenchError, Measured, Target, DURABLE_JOBS, JOBS};
use crate::sync_loop::{self, LoopTarget, SyncLoop};
use crate::Options;

/// A child process killed on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and returns it with its first stdout line.
fn start_with_line(mut cmd: Command, what: &str) -> Result<(Proc, String), BenchError> {
    // Its own process group: a terminal's Ctrl-C reaches only corral-bench, which then cleans up
    // (see interrupt.rs) while the servers still serve.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| tool_error(what, format!("cannot start: {e}")))?;
    let stdout = child.stdout.take().ok_or_else(|| tool_error(what, "no stdout"))?;
    let proc = Proc(child);
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| tool_error(what, e.to_string()))?;
    if line.is_empty() {
        return Err(tool_error(what, "exited before it was ready"));
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    Ok((proc, line.trim_end().to_string()))
}

/// A Corral volume served the way a node serves it: `corral replica serve` processes and one
/// `corral engine serve` over them; all killed on drop.
pub(crate) struct Corral {
    _replicas: Vec<Proc>,
    _engine: Proc,
    /// The engine's NBD address, `nbd://HOST:PORT`.
    pub(crate) nbd: String,
    control: String,
}

fn start_replica(corral: &Path, dir: &Path, size: u64) -> Result<(Proc, String), BenchError> {
    let mut cmd = Command::new(corral);
    cmd.args(["replica", "serve", "--dir"]).arg(dir).args([
        "--size",
        &size.to_string(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let (p, line) = start_with_line(cmd, "corral replica serve")?;
    let address = line
        .strip_prefix("listening on ")
        .ok_or_else(|| tool_error("corral replica serve", format!("unexpected line {line:?}")))?;
    Ok((p, address.to_string()))
}

/// Starts `replicas` replicas under `dir` and an engine over them, with the `corral` binary `corral`.
pub(crate) fn start_corral(
    corral: &Path,
    dir: &Path,
    replicas: usize,
    size: u64,
) -> Result<Corral, BenchError> {
    let mut procs = Vec::new();
    let mut addresses = Vec::new();
    for i in 0..replicas {
        let (p, a) = start_replica(corral, &dir.join(format!("r{i}")), size)?;
        procs.push(p);
        addresses.push(a);
    }
    let mut cmd = Command::new(corral);
    cmd.args([
        "engine",
        "serve",
        "--volume",
        "bench",
        "--size",
        &size.to_string(),
        "--nbd",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
    ]);
    for a in &addresses {
        cmd.args(["--replica", a]);
    }
    let (engine, line) = start_with_line(cmd, "corral engine serve")?;
    let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key)).map(String::from);
    let (Some(nbd), Some(control)) = (field("nbd="), field("control=")) else {
        return Err(tool_error("corral engine serve", format!("unexpected ready line {line:?}")));
    };
    Ok(Corral { _replicas: procs, _engine: engine, nbd, control })
}

pub(crate) fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| tool_error("bind", e.to_string()))?;
    l.local_addr().map(|a| a.port()).map_err(|e| tool_error("bind", e.to_string()))
}

/// `qemu-nbd --cache=writeback` serving the raw `file` on a free loopback port, and its `nbd://` URI.
pub(crate) fn start_qemu_nbd(file: &Path) -> Result<(Proc, String), BenchError> {
    let port = free_port()?;
    let child = Command::new("qemu-nbd")
        .args([
            "-f",
            "raw",
            "-t",
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--cache=writeback",
            "--aio=threads",
        ])
        .arg(file)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| tool_error("qemu-nbd", format!("cannot start (Debian package qemu-utils): {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(tool_error("qemu-nbd", "did not listen"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((Proc(child), format!("nbd://127.0.0.1:{port}")))
}

pub(crate) fn make_file(path: &Path, size: u64) -> Result<(), BenchError> {
    let f =
        std::fs::File::create(path).map_err(|e| tool_error("create", format!("{}: {e}", path.display())))?;
    f.set_len(size).map_err(|e| tool_error("truncate", e.to_string()))
}

/// Runs the whole job list `o.repeat` times against one started target: `runs[run][job]`, with the
/// jobs of [`JOBS`], then of [`DURABLE_JOBS`], then the 32-write batches and the FUA writes (sync_loop.rs). Every round
/// begins with the 1 MiB sequential write, which (re)fills the target.
fn run_jobs(label: &str, target: Target<'_>, o: &Options) -> Result<Vec<Vec<Measured>>, BenchError> {
    let mut runs = Vec::with_capacity(o.repeat);
    let progress = |round: usize, name: &str| {
        if o.repeat > 1 {
            eprintln!("  {label} (run {round}/{}): {name}", o.repeat);
        } else {
            eprintln!("  {label}: {name}");
        }
    };
    for round in 1..=o.repeat {
        let mut out = Vec::with_capacity(JOBS.len() + DURABLE_JOBS.len() + 2);
        for job in JOBS.iter().chain(&DURABLE_JOBS) {
            crate::interrupt::interrupted()?;
            progress(round, job.name);
            out.push(fio::run(job, &target, o.size, o.timing())?);
        }
        let loop_target = match target {
            Target::Nbd(uri) => LoopTarget::Nbd(uri),
            Target::File(path) => LoopTarget::File(path),
        };
        for (workload, name) in
            [(SyncLoop::Batch32, crate::durable::BATCH32), (SyncLoop::Fua, crate::durable::FUA)]
        {
            crate::interrupt::interrupted()?;
            progress(round, name);
            out.push(sync_loop::run(workload, &loop_target, o.size, o.timing())?);
        }
        runs.push(out);
    }
    Ok(runs)
}

pub(crate) fn fresh_dir(path: &Path) -> Result<PathBuf, BenchError> {
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir_all(path).map_err(|e| tool_error("mkdir", format!("{}: {e}", path.display())))?;
    Ok(path.to_path_buf())
}

fn cell(job: &fio::Job, m: &Measured) -> String {
    if job.bs >= 1 << 20 {
        format!("{:.0} MiB/s", m.mib_s)
    } else if job.qd == 1 {
        format!("{:.0} IOPS {:.0} µs", m.iops, m.lat_us)
    } else {
        format!("{:.1}k IOPS", m.iops / 1000.0)
    }
}

/// The min–max range over runs of `corral` IOPS / `qemu` IOPS for job `job`, run i against run i.
fn ratio_range(corral: &[Vec<Measured>], qemu: &[Vec<Measured>], job: usize) -> String {
    let ratios: Vec<f64> = corral
        .iter()
        .zip(qemu)
        .filter_map(|(c, q)| Some((c.get(job)?.iops, q.get(job)?.iops)))
        .filter(|&(_, q)| q > 0.0)
        .map(|(c, q)| c / q)
        .collect();
    let min = ratios.iter().copied().min_by(f64::total_cmp);
    let max = ratios.iter().copied().max_by(f64::total_cmp);
    match (min, max) {
        (Some(min), Some(max)) => format!("{min:.2}–{max:.2}×"),
        _ => "-".into(),
    }
}

fn ratio(a: &Measured, b: &Measured) -> String {
    if b.iops > 0.0 {
        format!("{:.2}×", a.iops / b.iops)
    } else {
        "-".into()
    }
}

/// The whole `engine` benchmark.
pub fn run_engine_bench(o: &Options) -> Result<(), BenchError> {
    if !o.corral.is_file() {
        return Err(tool_error(
            "corral",
            format!(
                "{} not found: run `cargo build --release -p corral` first (or pass --corral PATH)",
                o.corral.display()
            ),
        ));
    }
    let size = o.size;
    let root = fresh_dir(&o.dir)?;
    eprintln!(
        "fio jobs: {} ms each (+{} ms ramp), volume/file size {} MiB, data under {}",
        o.runtime_ms,
        o.ramp_ms,
        o.size >> 20,
        root.display()
    );

    let file = root.join("plain.raw");
    make_file(&file, size)?;
    let plain = fio::median_per_job(&run_jobs("file direct=1", Target::File(&file), o)?);
    let _ = std::fs::remove_file(&file);

    let qfile = root.join("qemu.raw");
    make_file(&qfile, size)?;
    let qemu_runs = {
        let (_q, uri) = start_qemu_nbd(&qfile)?;
        run_jobs("qemu-nbd", Target::Nbd(&uri), o)?
    };
    let _ = std::fs::remove_file(&qfile);

    // Runs (`[run][job]`) of Corral with 1 replica, then with 3.
    let mut corral_runs = Vec::new();
    for replicas in [1usize, 3] {
        let dir = fresh_dir(&root.join(format!("corral{replicas}")))?;
        let c = start_corral(&o.corral, &dir, replicas, size)?;
        corral_runs.push(run_jobs(&format!("corral {replicas} replica(s)"), Target::Nbd(&c.nbd), o)?);
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (Some(one_runs), Some(three_runs)) = (corral_runs.first(), corral_runs.get(1)) else {
        return Err(tool_error("corral", "missing Corral results"));
    };
    let qemu = fio::median_per_job(&qemu_runs);
    let corral = [fio::median_per_job(one_runs), fio::median_per_job(three_runs)];

    println!();
    let medians = if o.repeat > 1 {
        format!("; each figure is the median of {} runs", o.repeat)
    } else {
        String::new()
    };
    println!(
        "Engine benchmark: fio {} ms per job, {} MiB, same disk; buffered jobs: no job flushes (no fsync=){medians}.",
        o.runtime_ms,
        o.size >> 20
    );
    println!("file: fio io_uring direct=1 on a plain file (the disk's limit). qemu-nbd: raw file, --cache=writeback, fio nbd engine.");
    println!("corral: replicas on the same disk (buffered writes, flush = fdatasync on every replica), fio nbd engine.");
    println!();
    println!(
        "| workload | file (direct=1) | qemu-nbd (1 copy) | corral 1 replica | corral 3 replicas | 1 replica / qemu-nbd | 3 replicas / qemu-nbd |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, job) in JOBS.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            job.name,
            cell(job, &plain[i]),
            cell(job, &qemu[i]),
            cell(job, &corral[0][i]),
            cell(job, &corral[1][i]),
            ratio(&corral[0][i], &qemu[i]),
            ratio(&corral[1][i], &qemu[i]),
        );
    }
    if o.repeat > 1 {
        // Per-run spread of the QD32 ratios (run i of Corral against run i of qemu-nbd).
        let ranges: Vec<String> = JOBS
            .iter()
            .enumerate()
            .filter(|(_, job)| job.bs == 4096 && job.qd == 32)
            .map(|(i, job)| {
                format!(
                    "{}: 3 replicas / qemu-nbd {}, 1 replica / qemu-nbd {}",
                    job.name,
                    ratio_range(three_runs, &qemu_runs, i),
                    ratio_range(one_runs, &qemu_runs, i)
                )
            })
            .collect();
        println!();
        println!("Ratio range over the {} runs (min–max): {}.", o.repeat, ranges.join("; "));
    }
    let qd1 = 1;
    println!();
    println!(
        "QD1 4K write latency: corral 1 replica {:.0} µs vs qemu-nbd {:.0} µs (difference {:+.0} µs)",
        corral[0][qd1].lat_us,
        qemu[qd1].lat_us,
        corral[0][qd1].lat_us - qemu[qd1].lat_us
    );

    crate::durable::print_table(&plain, &qemu, &corral);

    if o.rebuild_gib > 0 {
        rebuild_bench(o, &root)?;
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// A volume with data in alternating 4 KiB blocks, then a fresh replica added and timed until RW.
fn rebuild_bench(o: &Options, root: &Path) -> Result<(), BenchError> {
    let size = o.rebuild_gib << 30;
    let dir = fresh_dir(&root.join("rebuild"))?;
    let c = start_corral(&o.corral, &dir, 1, size)?;
    eprintln!("  rebuild: writing alternating 4 KiB blocks over {} GiB", o.rebuild_gib);
    let fill = Command::new("fio")
        .args([
            "--name=fill",
            "--ioengine=nbd",
            &format!("--uri={}", c.nbd),
            "--rw=write:4k",
            "--bs=4k",
            "--iodepth=32",
        ])
        .arg(format!("--size={size}"))
        .stdout(Stdio::null())
        .status()
        .map_err(|e| tool_error("fio", e.to_string()))?;
    if !fill.success() {
        return Err(tool_error("fio", "filling the rebuild volume failed"));
    }
    let (_target, address) = start_replica(&o.corral, &dir.join("target"), size)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| tool_error("tokio", e.to_string()))?;
    let report = runtime.block_on(async {
        let client = corral_api::EngineClient::new(&c.control);
        let started = Instant::now();
        client.add_replica(&address).await.map_err(|e| tool_error("replica add", e.to_string()))?;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let list = client.replicas().await.map_err(|e| tool_error("replica ls", e.to_string()))?;
            match list.iter().find(|r| r.address == address).map(|r| r.mode) {
                Some(corral_api::ReplicaMode::WriteOnly) => continue,
                Some(corral_api::ReplicaMode::ReadWrite) => break,
                _ => return Err(tool_error("rebuild", format!("failed: {:?}", client.last_rebuild().await))),
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let report = client.last_rebuild().await.map_err(|e| tool_error("rebuild", e.to_string()))?;
        Ok::<_, BenchError>((wall, report))
    })?;
    let (wall, report) = report;
    let data = report.as_ref().map(|r| r.total_bytes).unwrap_or(0) as f64 / (1 << 20) as f64;
    let secs = report.as_ref().map(|r| r.seconds).unwrap_or(wall);
    println!();
    println!(
        "Rebuild of a {} GiB volume with data in alternating 4 KiB blocks ({:.0} MiB of data), 1 source replica, same disk:",
        o.rebuild_gib, data
    );
    println!(
        "  {:.1} s (copy + verify; {:.1} s wall including prepare and polling): {:.1} MiB/s of data, {:.1} MiB/s of volume (Longhorn v1 ≈ 4.6 MiB/s)",
        secs,
        wall,
        data / secs,
        (size as f64 / (1 << 20) as f64) / secs
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
