//! Backup/restore benchmark against plain-tool baselines, in one run.
//!
//! ```text
//! cargo run --release -p corral-backup --example bench
//! BENCH_SIZE_MIB=4096 BENCH_DATA_MIB=2048 BENCH_DIR=/tmp/corral-backup-bench BENCH_S3=1 (defaults)
//! ```
//! Builds a replica of BENCH_SIZE_MIB with BENCH_DATA_MIB of random data (every other 2 MiB block), takes a
//! snapshot, then measures: `dd`/`cat` of the snapshot file; `cp` (+ fsync) to a directory; Corral backup
//! (lz4, 5 workers) to a directory target; restore to an image file; `cp` back; an incremental backup after
//! rewriting 1% of the data blocks. Corral timings leave out the lock protocol's fixed 2 s wait. With BENCH_S3=1 the same against moto_server on 127.0.0.1, with
//! `aws s3 cp` as the baseline. Everything is in the page cache (no cache dropping): the figures compare
//! CPU and I/O path costs, not disks. Rates are data bytes (BENCH_DATA_MIB) per second.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_backup::{
    BackupTarget, CreateOptions, LockTimings, NoProgress, RestoreDestination, RestoreOptions, S3Settings,
};
use corral_replica::{CreateOptions as ReplicaCreate, Replica, SnapshotOptions};
use rand::{Rng, SeedableRng};

type Res<T> = Result<T, Box<dyn Error>>;

const BLOCK: u64 = 2 << 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn timed(label: &str, f: impl FnOnce() -> Res<()>) -> Res<Duration> {
    let t = Instant::now();
    f()?;
    let d = t.elapsed();
    eprintln!("  {label}: {:.2}s", d.as_secs_f64());
    Ok(d)
}

fn sh(cmd: &mut Command) -> Res<()> {
    let status = cmd.stdout(Stdio::null()).status()?;
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}").into());
    }
    Ok(())
}

struct Row {
    name: String,
    secs: f64,
    mib: f64,
}

fn main() -> Res<()> {
    let size = env_u64("BENCH_SIZE_MIB", 4096) << 20;
    let data = env_u64("BENCH_DATA_MIB", 2048) << 20;
    let dir = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp/corral-backup-bench".into()));
    let with_s3 = env_u64("BENCH_S3", 1) == 1;
    let data_mib = (data >> 20) as f64;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows: Vec<Row> = Vec::new();
    let mut row =
        |name: &str, d: Duration| rows.push(Row { name: name.into(), secs: d.as_secs_f64(), mib: data_mib });

    eprintln!("preparing a {} MiB replica with {} MiB of random data", size >> 20, data >> 20);
    let replica_dir = dir.join("replica");
    let data_blocks = data / BLOCK;
    let stride = (size / BLOCK / data_blocks.max(1)).max(1);
    {
        let replica = Replica::create(&replica_dir, ReplicaCreate { size })?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut buf = vec![0u8; BLOCK as usize];
        for i in 0..data_blocks {
            rng.fill(&mut buf[..]);
            replica.write_at(&buf, i * stride * BLOCK)?;
        }
        replica.snapshot("s1", SnapshotOptions { user_created: true, ..Default::default() })?;
        replica.close()?;
    }
    let snap_file = replica_dir.join("volume-snap-s1.img");

    eprintln!("baselines (file)");
    row(
        "dd if=snapshot of=/dev/null bs=1M",
        timed("dd", || {
            sh(Command::new("dd").arg(format!("if={}", snap_file.display())).args([
                "of=/dev/null",
                "bs=1M",
                "status=none",
            ]))
        })?,
    );
    row(
        "cat snapshot > /dev/null",
        timed("cat", || {
            sh(Command::new("sh").arg("-c").arg(format!("cat {} > /dev/null", snap_file.display())))
        })?,
    );
    let copy = dir.join("copy.img");
    let cp_to = timed("cp", || {
        sh(Command::new("cp").arg("--sparse=always").arg(&snap_file).arg(&copy))?;
        sh(Command::new("sync").arg(&copy))
    })?;
    row("cp --sparse=always + fsync (to dir)", cp_to);
    let copy_back = dir.join("copy-back.img");
    let cp_back = timed("cp back", || {
        sh(Command::new("cp").arg("--sparse=always").arg(&copy).arg(&copy_back))?;
        sh(Command::new("sync").arg(&copy_back))
    })?;
    row("cp --sparse=always + fsync (back)", cp_back);

    let target_dir = dir.join("target");
    std::fs::create_dir_all(&target_dir)?;
    let file_target = BackupTarget::open(&format!("vfs://{}", target_dir.display()))?;
    let (full, restore, incr) = runtime.block_on(corral_round(
        &file_target,
        &replica_dir,
        &dir,
        &snap_file,
        "file",
        data_blocks,
        stride,
    ))?;
    row("corral backup lz4 (dir target)", full);
    row("corral restore (dir target -> file)", restore);
    row("corral incremental, 1% of blocks (dir)", incr);
    let file_ratios = (full, restore, incr, cp_to, cp_back);

    let mut s3_figures = None;
    if with_s3 {
        eprintln!("baselines (S3, moto_server)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut moto = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let result = (|| -> Res<_> {
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() > deadline {
                    return Err("moto_server did not start".into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let aws = |args: &[&str]| -> Res<()> {
                sh(Command::new("aws")
                    .args(["--endpoint-url", &endpoint, "--region", "us-east-1"])
                    .args(args)
                    .env("AWS_ACCESS_KEY_ID", "bench")
                    .env("AWS_SECRET_ACCESS_KEY", "bench"))
            };
            aws(&["s3", "mb", "s3://bench"])?;
            let up = timed("aws s3 cp up", || {
                aws(&[
                    "s3",
                    "cp",
                    "--only-show-errors",
                    &snap_file.display().to_string(),
                    "s3://bench/raw.img",
                ])
            })?;
            let down_path = dir.join("aws-down.img");
            let down = timed("aws s3 cp down", || {
                aws(&[
                    "s3",
                    "cp",
                    "--only-show-errors",
                    "s3://bench/raw.img",
                    &down_path.display().to_string(),
                ])
            })?;
            aws(&["s3", "rm", "--only-show-errors", "s3://bench/raw.img"])?;
            let settings = S3Settings {
                access_key_id: Some("bench".into()),
                secret_access_key: Some("bench".into()),
                endpoint: Some(endpoint.clone()),
                ..Default::default()
            };
            let target = BackupTarget::open_with("s3://bench@us-east-1/corral", &settings)?;
            let (full, restore, incr) =
                runtime.block_on(corral_round(&target, &replica_dir, &dir, &snap_file, "s3", 0, stride))?;
            Ok((up, down, full, restore, incr))
        })();
        let _ = moto.kill();
        let _ = moto.wait();
        let (up, down, full, restore, incr) = result?;
        row("aws s3 cp (upload whole 4 GiB file)", up);
        row("aws s3 cp (download)", down);
        row("corral backup lz4 (S3)", full);
        row("corral restore (S3 -> file)", restore);
        s3_figures = Some((up, down, full, restore, incr));
    }

    println!(
        "\nsize {} MiB, data {} MiB random, 2 MiB blocks, lz4, 5 workers, {} cores, page cache warm",
        size >> 20,
        data >> 20,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("{:<44} {:>8} {:>10}", "operation", "seconds", "MiB/s");
    for r in &rows {
        println!("{:<44} {:>8.2} {:>10.0}", r.name, r.secs, r.mib / r.secs);
    }
    let (full, restore, incr, cp_to, cp_back) = file_ratios;
    println!("\nratios (directory target):");
    println!("  backup / cp time      = {:.2}", full.as_secs_f64() / cp_to.as_secs_f64());
    println!("  restore / cp-back time = {:.2}", restore.as_secs_f64() / cp_back.as_secs_f64());
    println!("  incremental (1%) / full backup time = {:.3}", incr.as_secs_f64() / full.as_secs_f64());
    if let Some((up, down, full, restore, incr)) = s3_figures {
        println!("ratios (S3):");
        println!("  backup / aws s3 cp up   = {:.2}", full.as_secs_f64() / up.as_secs_f64());
        println!("  restore / aws s3 cp down = {:.2}", restore.as_secs_f64() / down.as_secs_f64());
        println!("  incremental (1%) / full backup time = {:.3}", incr.as_secs_f64() / full.as_secs_f64());
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Full backup of s1, restore (checked against the snapshot file), then `rewrite` data blocks changed
/// (0 = reuse the existing s2 from an earlier round) and an incremental backup of s2.
async fn corral_round(
    target: &BackupTarget,
    replica_dir: &Path,
    dir: &Path,
    snap_file: &Path,
    tag: &str,
    data_blocks: u64,
    stride: u64,
) -> Res<(Duration, Duration, Duration)> {
    // The lock protocol's fixed 2 s wait (Longhorn's) is left out of the timings; add it per operation.
    let locks = LockTimings { check_wait: Duration::ZERO, ..LockTimings::default() };
    let mut opts = CreateOptions::new(replica_dir, "s1");
    opts.volume = Some("bench".into());
    opts.name = Some("full".into());
    opts.lock_timings = locks;
    let t = Instant::now();
    let report = corral_backup::create_backup(target, opts, &NoProgress).await?;
    let full = t.elapsed();
    eprintln!(
        "  corral backup ({tag}): {:.2}s, {} blocks uploaded",
        full.as_secs_f64(),
        report.blocks_uploaded
    );

    let img = dir.join(format!("restore-{tag}.img"));
    let t = Instant::now();
    corral_backup::restore_backup(
        target,
        "bench",
        "full",
        RestoreDestination::File(img.clone()),
        RestoreOptions { lock_timings: locks, ..RestoreOptions::default() },
        &NoProgress,
    )
    .await?;
    let restore = t.elapsed();
    eprintln!("  corral restore ({tag}): {:.2}s", restore.as_secs_f64());
    let same = Command::new("cmp").arg("-s").arg(&img).arg(snap_file).status()?.success();
    if !same {
        return Err(format!("restored image {} differs from the snapshot", img.display()).into());
    }
    std::fs::remove_file(&img)?;
    let _ = std::fs::remove_file(corral_backup::format::restore_record::record_path_for_file(&img));

    if data_blocks > 0 {
        let replica = Replica::open(replica_dir)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut buf = vec![0u8; BLOCK as usize];
        let changed = (data_blocks / 100).max(1);
        for i in 0..changed {
            rng.fill(&mut buf[..]);
            replica.write_at(&buf, (i * 100 % data_blocks) * stride * BLOCK)?;
        }
        replica.snapshot("s2", SnapshotOptions { user_created: true, ..Default::default() })?;
        replica.close()?;
    }
    let mut opts = CreateOptions::new(replica_dir, "s2");
    opts.volume = Some("bench".into());
    opts.name = Some("incr".into());
    opts.lock_timings = locks;
    let t = Instant::now();
    let report = corral_backup::create_backup(target, opts, &NoProgress).await?;
    let incr = t.elapsed();
    eprintln!(
        "  corral incremental ({tag}): {:.2}s, {} blocks read, {} uploaded",
        incr.as_secs_f64(),
        report.blocks_read,
        report.blocks_uploaded
    );
    Ok((full, restore, incr))
}
