//! Backup/restore benchmark against plain-tool baselines, in one run, with one command:
//!
//! ```text
//! cargo run --release -p corral-backup --example bench
//! env: BENCH_SIZE_MIB=4096 BENCH_DATA_MIB=2048 BENCH_DIR=/tmp/corral-backup-bench BENCH_S3=1 (defaults)
//! ```
//! It builds a replica of BENCH_SIZE_MIB (the volume) holding BENCH_DATA_MIB of random data (every other
//! 2 MiB block), snapshots it, and measures on the same machine in the same run:
//! * reading the snapshot file with `dd` and `cat` (the read baseline);
//! * `cp --sparse=always` + fsync to the target directory and back (the copy baseline);
//! * Corral: full backup (lz4, 5 workers) to a directory target, restore to an image file (checked with
//!   `cmp` afterwards, untimed), an incremental backup after rewriting 1% of the data blocks;
//! * with BENCH_S3=1 the same against `s3s-fs` (a real S3 server storing plain files and checking SigV4
//!   signatures) on 127.0.0.1, with `aws s3 cp` up and down as the baseline. If `s3s-fs` cannot be started,
//!   it falls back to `moto_server` with a smaller replica and says so.
//!
//! **MiB/s** is given twice: *data MiB/s* = bytes of snapshot data (BENCH_DATA_MIB) per second, which is
//! what a backup has to read, hash, compress and store, and the basis of the targets; *volume MiB/s* =
//! volume size (BENCH_SIZE_MIB) per second, the figure tools that copy whole images are usually quoted in.
//! **CPU s** is user + system CPU time of the work (this process's threads for Corral, the child for the
//! baselines; an S3 server's CPU is not included), so `CPU s / seconds` shows how many of the cores were
//! used. Corral timings leave out the lock protocol's fixed 2 s wait (Longhorn's). Everything is in the
//! page cache (no cache dropping): the figures compare CPU and I/O path costs, not disks. A busy machine
//! (see the load average printed) makes every wall time longer; compare the ratios.
//!
//! Targets (2 cores): backup lz4 to a directory >= 200 data MiB/s, restore >= 250 data MiB/s, incremental
//! backup of 1% changed blocks <= 5% of the full backup's time.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_backup::{
    BackupTarget, CreateOptions, LockTimings, NoProgress, RestoreDestination, RestoreOptions, S3Settings,
};
use corral_replica::{CreateOptions as ReplicaCreate, Replica, SnapshotOptions};
use rand::{Rng, SeedableRng};

type Res<T> = Result<T, Box<dyn Error>>;

const BLOCK: u64 = 2 << 20;
const TARGET_BACKUP_MIBS: f64 = 200.0;
const TARGET_RESTORE_MIBS: f64 = 250.0;
const TARGET_INCREMENTAL_RATIO: f64 = 0.05;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// User + system CPU seconds of this process (all threads) and of its waited-for children.
fn cpu_seconds() -> (f64, f64) {
    let get = |who| {
        // SAFETY: getrusage only writes into the zeroed struct we pass, which lives across the call.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage.
        let rc = unsafe { libc::getrusage(who, &mut usage) };
        if rc != 0 {
            return 0.0;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    };
    (get(libc::RUSAGE_SELF), get(libc::RUSAGE_CHILDREN))
}

#[derive(Clone, Copy)]
struct Measured {
    wall: Duration,
    cpu: f64,
}

/// Runs `f`, returning its wall time and the CPU time it used (this process plus finished children).
fn measure<T>(label: &str, f: impl FnOnce() -> Res<T>) -> Res<(Measured, T)> {
    let (self0, child0) = cpu_seconds();
    let t = Instant::now();
    let value = f()?;
    let wall = t.elapsed();
    let (self1, child1) = cpu_seconds();
    let m = Measured { wall, cpu: (self1 - self0) + (child1 - child0) };
    eprintln!("  {label}: {:.2}s, {:.2} CPU s", wall.as_secs_f64(), m.cpu);
    Ok((m, value))
}

fn sh(cmd: &mut Command) -> Res<()> {
    let status = cmd.stdout(Stdio::null()).status().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}").into());
    }
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

struct Row {
    name: String,
    m: Measured,
}

/// A volume and its data, as built by [`prepare_replica`].
#[derive(Clone, Copy)]
struct Volume {
    size: u64,
    data: u64,
    stride: u64,
}

impl Volume {
    fn data_blocks(&self) -> u64 {
        self.data / BLOCK
    }
}

/// Creates a replica with random data in every `stride`-th 2 MiB block, snapshot `s1`.
fn prepare_replica(dir: &Path, size: u64, data: u64) -> Res<Volume> {
    let data_blocks = data / BLOCK;
    let stride = (size / BLOCK / data_blocks.max(1)).max(1);
    let replica = Replica::create(dir, ReplicaCreate { size })?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut buf = vec![0u8; BLOCK as usize];
    for i in 0..data_blocks {
        rng.fill(&mut buf[..]);
        replica.write_at(&buf, i * stride * BLOCK)?;
    }
    replica.snapshot("s1", SnapshotOptions { user_created: true, ..Default::default() })?;
    replica.close()?;
    Ok(Volume { size, data: data_blocks * BLOCK, stride })
}

/// Rewrites 1% of the data blocks and takes snapshot `s2` on top of `s1` (every round backs up s1 in full,
/// then s2 incrementally); returns how many blocks changed.
fn change_one_percent(dir: &Path, vol: Volume) -> Res<u64> {
    let replica = Replica::open(dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut buf = vec![0u8; BLOCK as usize];
    let blocks = vol.data_blocks();
    let changed = (blocks / 100).max(1);
    for i in 0..changed {
        rng.fill(&mut buf[..]);
        replica.write_at(&buf, (i * 100 % blocks) * vol.stride * BLOCK)?;
    }
    replica.snapshot("s2", SnapshotOptions { user_created: true, ..Default::default() })?;
    replica.close()?;
    Ok(changed)
}

/// A server process killed when dropped.
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            return Err(format!("{what} exited: {status}").into());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not listen on port {port}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

struct S3Server {
    _guard: ServerGuard,
    name: &'static str,
    endpoint: String,
    key: &'static str,
    secret: &'static str,
}

fn start_s3s_fs(root: &Path) -> Res<S3Server> {
    std::fs::create_dir_all(root)?;
    let port = free_port()?;
    let (key, secret) = ("benchkey", "benchsecret");
    let mut child = Command::new("s3s-fs")
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            key,
            "--secret-key",
            secret,
        ])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start s3s-fs ({e}); install: cargo install s3s-fs@0.14.1 --features binary --locked"
            )
        })?;
    let started = wait_for_port(port, "s3s-fs", &mut child);
    let guard = ServerGuard(child);
    started?;
    Ok(S3Server { _guard: guard, name: "s3s-fs", endpoint: format!("http://127.0.0.1:{port}"), key, secret })
}

fn start_moto() -> Res<S3Server> {
    let port = free_port()?;
    let mut child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start moto_server: {e}"))?;
    let started = wait_for_port(port, "moto_server", &mut child);
    let guard = ServerGuard(child);
    started?;
    Ok(S3Server {
        _guard: guard,
        name: "moto_server",
        endpoint: format!("http://127.0.0.1:{port}"),
        key: "bench",
        secret: "bench",
    })
}

/// Results of one Corral round (full backup, restore, incremental backup).
struct Round {
    full: Measured,
    restore: Measured,
    incremental: Measured,
}

fn main() -> Res<()> {
    let size = env_u64("BENCH_SIZE_MIB", 4096) << 20;
    let data = env_u64("BENCH_DATA_MIB", 2048) << 20;
    let dir = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp/corral-backup-bench".into()));
    let with_s3 = env_u64("BENCH_S3", 1) == 1;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, size, data, with_s3);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &Path, size: u64, data: u64, with_s3: bool) -> Res<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let load_before = load_average();
    eprintln!("preparing a {} MiB replica with {} MiB of random data", size >> 20, data >> 20);
    let replica_dir = dir.join("replica");
    let vol = prepare_replica(&replica_dir, size, data)?;
    let snap_file = replica_dir.join("volume-snap-s1.img");
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |name: &str, m: Measured| rows.push(Row { name: name.into(), m });

    eprintln!("baselines (directory)");
    let (dd, ()) = measure("dd", || {
        sh(Command::new("dd").arg(format!("if={}", snap_file.display())).args([
            "of=/dev/null",
            "bs=1M",
            "status=none",
        ]))
    })?;
    row("dd if=snapshot of=/dev/null bs=1M", dd);
    let (cat, ()) = measure("cat", || {
        sh(Command::new("sh").arg("-c").arg(format!("cat '{}' > /dev/null", snap_file.display())))
    })?;
    row("cat snapshot > /dev/null", cat);
    let copy = dir.join("copy.img");
    let (cp_to, ()) = measure("cp", || {
        sh(Command::new("cp").arg("--sparse=always").arg(&snap_file).arg(&copy))?;
        sh(Command::new("sync").arg(&copy))
    })?;
    row("cp --sparse=always + fsync (to dir)", cp_to);
    let copy_back = dir.join("copy-back.img");
    let (cp_back, ()) = measure("cp back", || {
        sh(Command::new("cp").arg("--sparse=always").arg(&copy).arg(&copy_back))?;
        sh(Command::new("sync").arg(&copy_back))
    })?;
    row("cp --sparse=always + fsync (back)", cp_back);
    std::fs::remove_file(&copy)?;
    std::fs::remove_file(&copy_back)?;

    let target_dir = dir.join("target");
    std::fs::create_dir_all(&target_dir)?;
    let file_target = BackupTarget::open(&format!("vfs://{}", target_dir.display()))?;
    let changed = change_one_percent(&replica_dir, vol)?;
    let file_round = corral_round(&runtime, &file_target, &replica_dir, dir, &snap_file, "dir", changed)?;
    row("corral backup lz4 (dir target)", file_round.full);
    row("corral restore (dir target -> file)", file_round.restore);
    row("corral incremental, 1% of blocks (dir)", file_round.incremental);
    std::fs::remove_dir_all(&target_dir)?;

    let mut s3 = None;
    if with_s3 {
        s3 = Some(s3_section(&runtime, dir, &replica_dir, &snap_file, vol, changed)?);
    }

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "\nvolume {} MiB holding {} MiB of random data (every other 2 MiB block); 2 MiB blocks, lz4, 5 workers; \
         {cores} cores; page cache warm",
        size >> 20,
        data >> 20
    );
    println!("load average before: {load_before}, after: {}", load_average());
    println!(
        "data MiB/s = snapshot data bytes / s; volume MiB/s = volume size / s; CPU s = user+sys of the work"
    );
    print_table(&rows, vol);
    println!("\nratios (directory target; < 1 means Corral is faster):");
    let ratio = |a: Measured, b: Measured| a.wall.as_secs_f64() / b.wall.as_secs_f64();
    println!("  corral backup / cp to dir            = {:.2}", ratio(file_round.full, cp_to));
    println!("  corral backup / cat of the snapshot  = {:.2}", ratio(file_round.full, cat));
    println!("  corral backup / dd of the snapshot   = {:.2}", ratio(file_round.full, dd));
    println!("  corral restore / cp back             = {:.2}", ratio(file_round.restore, cp_back));
    println!(
        "  incremental (1%) / full backup       = {:.3}",
        ratio(file_round.incremental, file_round.full)
    );
    let data_mib = (vol.data >> 20) as f64;
    let backup_rate = data_mib / file_round.full.wall.as_secs_f64();
    let restore_rate = data_mib / file_round.restore.wall.as_secs_f64();
    let incr = ratio(file_round.incremental, file_round.full);
    println!("targets (directory target, data MiB/s):");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "  backup  {backup_rate:>6.0} MiB/s (>= {TARGET_BACKUP_MIBS}): {}",
        verdict(backup_rate >= TARGET_BACKUP_MIBS)
    );
    println!(
        "  restore {restore_rate:>6.0} MiB/s (>= {TARGET_RESTORE_MIBS}): {}",
        verdict(restore_rate >= TARGET_RESTORE_MIBS)
    );
    println!(
        "  incremental {:.1}% of the full backup's time (<= {:.0}%): {}",
        incr * 100.0,
        TARGET_INCREMENTAL_RATIO * 100.0,
        verdict(incr <= TARGET_INCREMENTAL_RATIO)
    );
    let cpu_bound = |m: Measured| data_mib / (m.cpu / cores.max(1) as f64);
    println!(
        "  CPU-bound ceiling on {cores} idle cores (data MiB / (CPU s / cores)): backup {:.0} MiB/s, restore {:.0} MiB/s",
        cpu_bound(file_round.full),
        cpu_bound(file_round.restore)
    );
    if let Some(s3) = s3 {
        s3.print();
    }
    Ok(())
}

fn print_table(rows: &[Row], vol: Volume) {
    let (data_mib, vol_mib) = ((vol.data >> 20) as f64, (vol.size >> 20) as f64);
    println!(
        "{:<46} {:>8} {:>7} {:>11} {:>12}",
        "operation", "seconds", "CPU s", "data MiB/s", "volume MiB/s"
    );
    for r in rows {
        let s = r.m.wall.as_secs_f64();
        println!("{:<46} {:>8.2} {:>7.2} {:>11.0} {:>12.0}", r.name, s, r.m.cpu, data_mib / s, vol_mib / s);
    }
}

struct S3Figures {
    server: &'static str,
    note: String,
    rows: Vec<Row>,
    vol: Volume,
    up: Measured,
    down: Measured,
    round: Round,
}

impl S3Figures {
    fn print(&self) {
        println!("\nS3 ({}, 127.0.0.1){}", self.server, self.note);
        print_table(&self.rows, self.vol);
        let ratio = |a: Measured, b: Measured| a.wall.as_secs_f64() / b.wall.as_secs_f64();
        println!("ratios (S3):");
        println!("  corral backup / aws s3 cp up     = {:.2}", ratio(self.round.full, self.up));
        println!("  corral restore / aws s3 cp down  = {:.2}", ratio(self.round.restore, self.down));
        println!(
            "  incremental (1%) / full backup   = {:.3}",
            ratio(self.round.incremental, self.round.full)
        );
    }
}

fn s3_section(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    replica_dir: &Path,
    snap_file: &Path,
    vol: Volume,
    changed: u64,
) -> Res<S3Figures> {
    let (server, vol, replica_dir, snap_file, changed, note) = match start_s3s_fs(&dir.join("s3s-root")) {
        Ok(server) => {
            (server, vol, replica_dir.to_path_buf(), snap_file.to_path_buf(), changed, String::new())
        }
        Err(e) => {
            let small = env_u64("BENCH_S3_FALLBACK_MIB", 512) << 20;
            eprintln!("s3s-fs cannot be used ({e}); falling back to moto_server with a smaller replica");
            let server = start_moto()?;
            let small_dir = dir.join("replica-small");
            let small_vol = prepare_replica(&small_dir, small, small / 2)?;
            let small_changed = change_one_percent(&small_dir, small_vol)?;
            let note = format!(
                " -- FALLBACK: s3s-fs could not be used ({e}); moto_server with a {} MiB volume, {} MiB data",
                small >> 20,
                small_vol.data >> 20
            );
            let snap = small_dir.join("volume-snap-s1.img");
            (server, small_vol, small_dir, snap, small_changed, note)
        }
    };
    eprintln!("S3 ({})", server.name);
    let aws = |args: &[&str]| -> Res<()> {
        sh(Command::new("aws")
            .args(["--endpoint-url", &server.endpoint, "--region", "us-east-1"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", server.key)
            .env("AWS_SECRET_ACCESS_KEY", server.secret)
            .env("AWS_EC2_METADATA_DISABLED", "true"))
    };
    aws(&["s3", "mb", "s3://bench"])?;
    let snap = snap_file.display().to_string();
    let (up, ()) =
        measure("aws s3 cp up", || aws(&["s3", "cp", "--only-show-errors", &snap, "s3://bench/raw.img"]))?;
    let down_path = dir.join("aws-down.img");
    let down_str = down_path.display().to_string();
    let (down, ()) = measure("aws s3 cp down", || {
        aws(&["s3", "cp", "--only-show-errors", "s3://bench/raw.img", &down_str])?;
        sh(Command::new("sync").arg(&down_path))
    })?;
    aws(&["s3", "rm", "--only-show-errors", "s3://bench/raw.img"])?;
    std::fs::remove_file(&down_path)?;
    let settings = S3Settings {
        access_key_id: Some(server.key.into()),
        secret_access_key: Some(server.secret.into()),
        endpoint: Some(server.endpoint.clone()),
        ..Default::default()
    };
    let target = BackupTarget::open_with("s3://bench@us-east-1/corral", &settings)?;
    let round = corral_round(runtime, &target, &replica_dir, dir, &snap_file, "s3", changed)?;
    let rows = vec![
        Row { name: "aws s3 cp up (whole image, zeros included)".into(), m: up },
        Row { name: "aws s3 cp down + fsync".into(), m: down },
        Row { name: "corral backup lz4 (S3)".into(), m: round.full },
        Row { name: "corral restore (S3 -> file)".into(), m: round.restore },
        Row { name: "corral incremental, 1% of blocks (S3)".into(), m: round.incremental },
    ];
    Ok(S3Figures { server: server.name, note, rows, vol, up, down, round })
}

/// Full backup of s1, restore (checked against the snapshot file, untimed), incremental backup of s2.
fn corral_round(
    runtime: &tokio::runtime::Runtime,
    target: &BackupTarget,
    replica_dir: &Path,
    dir: &Path,
    snap_file: &Path,
    tag: &str,
    changed_blocks: u64,
) -> Res<Round> {
    // The lock protocol's fixed 2 s wait (Longhorn's) is left out of the timings; add it per operation.
    let locks = LockTimings { check_wait: Duration::ZERO, ..LockTimings::default() };
    let backup = |snapshot: &str, name: &str| -> Res<corral_backup::CreateReport> {
        let mut opts = CreateOptions::new(replica_dir, snapshot);
        opts.volume = Some("bench".into());
        opts.name = Some(name.into());
        opts.lock_timings = locks;
        Ok(runtime.block_on(corral_backup::create_backup(target, opts, &NoProgress))?)
    };
    let (full, report) = measure(&format!("corral backup ({tag})"), || backup("s1", "full"))?;
    eprintln!("    {} blocks read, {} uploaded", report.blocks_read, report.blocks_uploaded);

    let img = dir.join(format!("restore-{tag}.img"));
    let (restore, _) = measure(&format!("corral restore ({tag})"), || {
        Ok(runtime.block_on(corral_backup::restore_backup(
            target,
            "bench",
            "full",
            RestoreDestination::File(img.clone()),
            RestoreOptions { lock_timings: locks, ..RestoreOptions::default() },
            &NoProgress,
        ))?)
    })?;
    let same = Command::new("cmp").arg("-s").arg(&img).arg(snap_file).status()?.success();
    if !same {
        return Err(format!("restored image {} differs from the snapshot", img.display()).into());
    }
    std::fs::remove_file(&img)?;
    let _ = std::fs::remove_file(corral_backup::format::restore_record::record_path_for_file(&img));

    let (incremental, report) = measure(&format!("corral incremental ({tag})"), || backup("s2", "incr"))?;
    eprintln!(
        "    {} blocks read, {} uploaded ({changed_blocks} changed)",
        report.blocks_read, report.blocks_uploaded
    );
    if !report.incremental {
        return Err("the second backup was not incremental".into());
    }
    Ok(Round { full, restore, incremental })
}
