//! `corral backup`: create, list, inspect, restore, delete and verify backups in a backup target.
//!
//! Targets are `s3://bucket@region/path` (credentials and endpoint from `AWS_*` variables, as Longhorn),
//! `file:///dir` or `vfs:///dir`. A backup is addressed by its URL `<target>?backup=<name>&volume=<volume>`.
//! Progress bars appear on stderr when stdout is a terminal; `--json` prints one JSON document on stdout.
//!
//! Two forms share the command. The offline forms work on a replica directory and a target directly
//! (`create --replica-dir … --target …`, `ls --target …`, `inspect`, `restore`, `rm`, `rm-volume`,
//! `verify`). The cluster forms go through the manager's API (`--url`, default `$CORRAL_URL` or
//! `http://127.0.0.1:9500`): `target set URL`, `create VOLUME [--snapshot S] [--wait]`,
//! `ls [VOLUME]`. `--replica-dir` (create) and `--target` (ls) select the offline form.
//! `--progress-lines` (hidden) prints `progress: N` lines on stderr: the manager runs backup and
//! restore jobs with it and follows their progress through the instance manager's log.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use corral_backup::{
    BackupTarget, BackupUrl, BlockSize, Compression, CreateOptions, LockTimings, NoProgress, Progress,
    RestoreDestination, RestoreOptions, TerminalProgress,
};

mod cluster;

#[derive(Args)]
pub struct BackupArgs {
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Wait between writing a lock file and checking the others, in milliseconds (Longhorn: 2000).
    #[arg(
        long,
        global = true,
        hide = true,
        env = "CORRAL_BACKUP_LOCK_CHECK_WAIT_MS",
        default_value_t = 2000
    )]
    lock_check_wait_ms: u64,
    /// The manager's API (for the cluster forms: target set, create VOLUME, ls [VOLUME]).
    #[arg(long, global = true, env = "CORRAL_URL", default_value = "http://127.0.0.1:9500")]
    url: String,
    /// Print `progress: N` (percent) lines on stderr.
    #[arg(long, global = true, hide = true)]
    progress_lines: bool,
    #[command(subcommand)]
    command: BackupCommand,
}

#[derive(Subcommand)]
enum TargetCommand {
    /// Set the cluster's backup target (through the API).
    Set {
        /// s3://bucket@region/path, file:///path or vfs:///path.
        #[arg(value_name = "URL")]
        target_url: String,
    },
    /// Show the cluster's backup target (through the API).
    Get,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// The cluster's backup target (through the API).
    #[command(subcommand)]
    Target(TargetCommand),
    /// Back up a volume of the cluster (`create VOLUME`, through the API), or one snapshot of a
    /// replica directory (`create --replica-dir DIR --snapshot S --target URL`); prints the backup URL.
    Create(CreateArgs),
    /// List backup volumes or one volume's backups: of the cluster's target (through the API), or of
    /// the target given with --target.
    Ls {
        /// List this volume's backups.
        #[arg(value_name = "VOLUME")]
        volume_name: Option<String>,
        /// Backup target URL (offline form).
        #[arg(long)]
        target: Option<String>,
        /// List this volume's backups (same as VOLUME).
        #[arg(long)]
        volume: Option<String>,
    },
    /// Show one backup.
    Inspect {
        /// Backup URL.
        backup_url: String,
    },
    /// Restore a backup into an image file or a replica directory (incrementally if it holds an earlier
    /// restore of the same volume).
    Restore(RestoreArgs),
    /// Delete a backup and the blocks no other backup uses.
    Rm {
        /// Backup URL.
        backup_url: String,
    },
    /// Delete a whole backup volume.
    RmVolume {
        /// Backup target URL.
        #[arg(long)]
        target: String,
        /// Volume name.
        #[arg(long)]
        volume: String,
    },
    /// Re-read and check every block of a backup, or of all backups of a volume.
    Verify(VerifyArgs),
}

#[derive(Args)]
struct CreateArgs {
    /// Volume of the cluster to back up (through the API; not with --replica-dir).
    #[arg(value_name = "VOLUME", conflicts_with = "replica_dir")]
    volume_name: Option<String>,
    /// Replica directory holding the snapshot (offline form; needs --snapshot and --target).
    #[arg(long, requires_all = ["snapshot", "target"])]
    replica_dir: Option<PathBuf>,
    /// Snapshot name (through the API: default a new snapshot of the attached volume).
    #[arg(long)]
    snapshot: Option<String>,
    /// Backup target URL (offline form).
    #[arg(long, requires = "replica_dir")]
    target: Option<String>,
    /// Wait until the backup completed (through the API) and print its URL.
    #[arg(long)]
    wait: bool,
    /// Backup volume name (default: the replica directory's name).
    #[arg(long)]
    volume: Option<String>,
    /// Backup name (default: backup-<16 hex>).
    #[arg(long)]
    name: Option<String>,
    /// Block compression for a new backup volume.
    #[arg(long, value_parser = ["lz4", "gzip", "none"])]
    compression: Option<String>,
    /// Block size: 2MiB or 16MiB (default: the volume's previous, else 2MiB).
    #[arg(long)]
    block_size: Option<String>,
    /// Read every block and re-upload existing ones.
    #[arg(long)]
    full: bool,
    /// Label k=v (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Blocks processed at once.
    #[arg(long, default_value_t = corral_backup::DEFAULT_CONCURRENCY)]
    concurrency: usize,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["to_file", "to_replica_dir"])))]
struct RestoreArgs {
    /// Backup URL.
    backup_url: String,
    /// Restore into this raw image file.
    #[arg(long)]
    to_file: Option<PathBuf>,
    /// Restore into this replica directory.
    #[arg(long)]
    to_replica_dir: Option<PathBuf>,
    /// Blocks downloaded at once.
    #[arg(long, default_value_t = corral_backup::DEFAULT_CONCURRENCY)]
    concurrency: usize,
}

#[derive(Args)]
struct VerifyArgs {
    /// Backup URL (or use --target and --volume for all backups of a volume).
    #[arg(required_unless_present_all = ["target", "volume"], conflicts_with_all = ["target", "volume"])]
    backup_url: Option<String>,
    /// Backup target URL.
    #[arg(long, requires = "volume")]
    target: Option<String>,
    /// Volume name.
    #[arg(long, requires = "target")]
    volume: Option<String>,
    /// Blocks checked at once.
    #[arg(long, default_value_t = corral_backup::DEFAULT_CONCURRENCY)]
    concurrency: usize,
}

pub fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start runtime")?;
    runtime.block_on(run_async(args))
}

/// `progress: N` lines on stderr whenever the whole percentage grows (for the manager's jobs).
#[derive(Default)]
struct LineProgress {
    total: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
    printed: std::sync::atomic::AtomicU64,
}

impl Progress for LineProgress {
    fn begin(&self, _operation: &str, total_bytes: u64) {
        self.total.store(total_bytes, std::sync::atomic::Ordering::Relaxed);
        eprintln!("{}0", corral_manager::clients::instance_manager::PROGRESS_PREFIX);
    }

    fn advance(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let done = self.done.fetch_add(bytes, Relaxed) + bytes;
        let total = self.total.load(Relaxed).max(1);
        let pct = (done.saturating_mul(100) / total).min(100);
        if self.printed.fetch_max(pct, Relaxed) < pct {
            eprintln!("{}{pct}", corral_manager::clients::instance_manager::PROGRESS_PREFIX);
        }
    }

    fn finish(&self) {
        eprintln!("{}100", corral_manager::clients::instance_manager::PROGRESS_PREFIX);
    }
}

fn progress_for(json: bool, lines: bool) -> Box<dyn Progress> {
    if lines {
        Box::new(LineProgress::default())
    } else if !json && std::io::stdout().is_terminal() {
        Box::new(TerminalProgress::new())
    } else {
        Box::new(NoProgress)
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn open_backup_url(url: &str) -> anyhow::Result<(BackupTarget, BackupUrl)> {
    let parsed = BackupUrl::parse(url)?;
    let target = BackupTarget::open(&parsed.target)?;
    Ok((target, parsed))
}

fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').with_context(|| format!("label {l:?} is not k=v"))?;
            anyhow::ensure!(!k.is_empty(), "label {l:?} has an empty key");
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

async fn run_async(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let timings =
        LockTimings { check_wait: Duration::from_millis(args.lock_check_wait_ms), ..LockTimings::default() };
    match args.command {
        BackupCommand::Target(t) => return cluster::target(&args.url, t, json).await,
        BackupCommand::Create(c) if c.replica_dir.is_none() => {
            let volume = c.volume_name.or(c.volume).context(
                "give the VOLUME to back up through the API, or --replica-dir, --snapshot and --target",
            )?;
            let labels = parse_labels(&c.labels)?;
            return cluster::create(&args.url, &volume, c.snapshot.as_deref(), &labels, c.wait, json).await;
        }
        BackupCommand::Ls { volume_name, target: None, volume } => {
            return cluster::ls(&args.url, volume_name.or(volume).as_deref(), json).await;
        }
        BackupCommand::Create(c) => {
            let (Some(replica_dir), Some(snapshot), Some(target)) = (c.replica_dir, c.snapshot, c.target)
            else {
                anyhow::bail!("the offline form needs --replica-dir, --snapshot and --target");
            };
            let target = BackupTarget::open(&target)?;
            let mut opts = CreateOptions::new(replica_dir, snapshot);
            opts.volume = c.volume;
            opts.name = c.name;
            opts.compression = c.compression.as_deref().map(Compression::parse).transpose()?;
            opts.block_size = c.block_size.as_deref().map(BlockSize::parse_quantity).transpose()?;
            opts.full = c.full;
            opts.labels = parse_labels(&c.labels)?;
            opts.concurrency = c.concurrency;
            opts.lock_timings = timings;
            let progress = progress_for(json, args.progress_lines);
            let report = corral_backup::create_backup(&target, opts, progress.as_ref()).await?;
            if json {
                print_json(&report)?;
            } else {
                eprintln!(
                    "{} backup of snapshot {}: {} blocks, {} read, {} uploaded ({} bytes stored), {:.1}s",
                    if report.incremental { "incremental" } else { "full" },
                    report.snapshot,
                    report.blocks_total,
                    report.blocks_read,
                    report.blocks_uploaded,
                    report.bytes_uploaded,
                    report.seconds
                );
                println!("{}", report.url);
            }
        }
        BackupCommand::Ls { volume_name, target: Some(target), volume } => {
            let target = BackupTarget::open(&target)?;
            match volume_name.or(volume) {
                None => {
                    let volumes = corral_backup::list_volumes(&target).await?;
                    if json {
                        print_json(&volumes)?;
                    } else {
                        println!(
                            "{:<40} {:>14} {:>8} {:>8} {:<6} LAST BACKUP",
                            "VOLUME", "SIZE", "BACKUPS", "BLOCKS", "COMPR"
                        );
                        for v in volumes {
                            println!(
                                "{:<40} {:>14} {:>8} {:>8} {:<6} {} {}",
                                v.name,
                                v.size,
                                v.backup_count,
                                v.block_count,
                                v.compression,
                                v.last_backup_name,
                                v.last_backup_at
                            );
                        }
                    }
                }
                Some(volume) => {
                    let backups = corral_backup::list_backups(&target, &volume).await?;
                    if json {
                        print_json(&backups)?;
                    } else {
                        println!(
                            "{:<32} {:<24} {:<21} {:>8} {:<5} URL",
                            "BACKUP", "SNAPSHOT", "CREATED", "BLOCKS", "INCR"
                        );
                        for b in backups {
                            let created =
                                if b.in_progress { "in progress".to_string() } else { b.created.clone() };
                            println!(
                                "{:<32} {:<24} {:<21} {:>8} {:<5} {}",
                                b.name, b.snapshot, created, b.block_count, b.is_incremental, b.url
                            );
                        }
                    }
                }
            }
        }
        BackupCommand::Inspect { backup_url } => {
            let (target, url) = open_backup_url(&backup_url)?;
            let details = corral_backup::inspect_backup(&target, &url.volume, &url.backup).await?;
            // Inspect output is structured either way.
            print_json(&details)?;
        }
        BackupCommand::Restore(r) => {
            let (target, url) = open_backup_url(&r.backup_url)?;
            let dest = match (r.to_file, r.to_replica_dir) {
                (Some(f), None) => RestoreDestination::File(f),
                (None, Some(d)) => RestoreDestination::ReplicaDir(d),
                _ => anyhow::bail!("give exactly one of --to-file and --to-replica-dir"),
            };
            let opts = RestoreOptions { concurrency: r.concurrency, lock_timings: timings };
            let progress = progress_for(json, args.progress_lines);
            let report = corral_backup::restore_backup(
                &target,
                &url.volume,
                &url.backup,
                dest,
                opts,
                progress.as_ref(),
            )
            .await?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "restored {} ({}) into {}: {} blocks written, {} zeroed, {} unchanged, {} bytes downloaded, {:.1}s",
                    report.backup,
                    if report.incremental { "incremental" } else { "full" },
                    report.destination.display(),
                    report.blocks_written,
                    report.blocks_zeroed,
                    report.blocks_unchanged,
                    report.bytes_downloaded,
                    report.seconds
                );
            }
        }
        BackupCommand::Rm { backup_url } => {
            let (target, url) = open_backup_url(&backup_url)?;
            let report = corral_backup::delete_backup(&target, &url.volume, &url.backup, timings).await?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "deleted backup {} of volume {}; {} unreferenced blocks removed",
                    report.backup, report.volume, report.gc.blocks_deleted
                );
                if let Some(why) = &report.gc.skipped {
                    println!("garbage collection skipped: {why}");
                }
            }
        }
        BackupCommand::RmVolume { target, volume } => {
            let target = BackupTarget::open(&target)?;
            let report = corral_backup::delete_volume(&target, &volume, timings).await?;
            if json {
                print_json(&report)?;
            } else {
                println!("deleted backup volume {} ({} objects)", report.volume, report.objects_deleted);
            }
        }
        BackupCommand::Verify(v) => {
            let (target, volume, backup) = match (v.backup_url, v.target, v.volume) {
                (Some(u), _, _) => {
                    let (target, url) = open_backup_url(&u)?;
                    (target, url.volume, Some(url.backup))
                }
                (None, Some(t), Some(vol)) => (BackupTarget::open(&t)?, vol, None),
                _ => anyhow::bail!("give a backup URL, or --target and --volume"),
            };
            let progress = progress_for(json, args.progress_lines);
            let report = corral_backup::verify(
                &target,
                &volume,
                backup.as_deref(),
                v.concurrency,
                timings,
                progress.as_ref(),
            )
            .await?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "checked {} blocks of {} backup(s) of volume {}",
                    report.blocks_checked,
                    report.backups.len(),
                    report.volume
                );
                for p in &report.problems {
                    println!("{} block {}: {}", p.problem, p.object, p.detail);
                }
                for c in &report.config_problems {
                    println!("unreadable config: {c}");
                }
            }
            if !report.is_ok() {
                eprintln!(
                    "error: verification found {} damaged or missing block(s)",
                    report.problems.len() + report.config_problems.len()
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
