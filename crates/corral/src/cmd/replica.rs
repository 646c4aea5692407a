//! `corral replica`: serve one replica directory over the data protocol, or inspect it offline.
//!
//! - `serve --dir DIR [--size SIZE] --listen HOST:PORT|unix:PATH`: creates the replica when the directory
//!   holds none (then `--size` is required), opens it otherwise (`--size`, if given, must match). Prints
//!   one line to stdout once it accepts connections: `listening on tcp://127.0.0.1:PORT` (the real port
//!   when `:0` was asked) or `listening on unix:///PATH`. SIGTERM / SIGINT stop it cleanly: connections
//!   are closed, running requests finish, the replica is closed (`Dirty=false`, counters persisted).
//! - `info --dir DIR [--json]`, `export --dir DIR [--snapshot NAME] --output FILE`, `check --dir DIR`:
//!   read-only tools built on `corral_replica::inspect`. `check` exits 1 and names each bad file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use corral_replica::service::ServedReplica;
use corral_replica::{CreateOptions, Replica};

use super::size::{format_size, parse_size};

#[derive(clap::Args)]
pub struct ReplicaArgs {
    #[command(subcommand)]
    command: ReplicaCommand,
}

#[derive(clap::Subcommand)]
enum ReplicaCommand {
    /// Serve a replica directory to an engine (creating it if absent).
    Serve {
        /// Replica directory.
        #[arg(long)]
        dir: PathBuf,
        /// Volume size (bytes or with a unit: 64MiB, 10GiB, 1G). Required to create; must match if given.
        #[arg(long, value_parser = parse_size_arg)]
        size: Option<u64>,
        /// Address to listen on: HOST:PORT, tcp://HOST:PORT, unix:PATH or unix:///PATH (port 0 = any).
        #[arg(long)]
        listen: String,
        /// Worker threads running replica I/O (default: 2 × CPUs, at least 4).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Show a replica's size, head, chain, snapshots, labels and flags (read-only).
    Info {
        /// Replica directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the volume (as of the head, or a snapshot) to a sparse raw image (read-only).
    Export {
        /// Replica directory.
        #[arg(long)]
        dir: PathBuf,
        /// Snapshot to export instead of the head.
        #[arg(long)]
        snapshot: Option<String>,
        /// Output file (created or truncated).
        #[arg(long)]
        output: PathBuf,
    },
    /// Verify a replica directory's metadata; exit 1 naming each problem (read-only).
    Check {
        /// Replica directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|err| err.to_string())
}

pub fn run(args: ReplicaArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ReplicaCommand::Serve { dir, size, listen, workers } => serve(&dir, size, &listen, workers),
        ReplicaCommand::Info { dir, json } => info(&dir, json),
        ReplicaCommand::Export { dir, snapshot, output } => {
            corral_replica::inspect::export(&dir, snapshot.as_deref(), &output)
                .with_context(|| format!("exporting {} to {}", dir.display(), output.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        ReplicaCommand::Check { dir, json } => check(&dir, json),
    }
}

/// Opens the replica in `dir`, or creates it; checks `--size` against an existing one.
fn open_or_create(dir: &Path, size: Option<u64>) -> anyhow::Result<Replica> {
    if dir.join("volume.meta").exists() {
        let replica = Replica::open(dir).with_context(|| format!("opening replica {}", dir.display()))?;
        if let Some(size) = size {
            if size != replica.size() {
                let actual = replica.size();
                replica.close().with_context(|| format!("closing replica {}", dir.display()))?;
                bail!(
                    "replica {} has size {actual} ({}), but --size {size} ({}) was given",
                    dir.display(),
                    format_size(actual),
                    format_size(size)
                );
            }
        }
        return Ok(replica);
    }
    let Some(size) = size else {
        bail!("{} holds no replica (no volume.meta): give --size to create one", dir.display());
    };
    Replica::create(dir, CreateOptions { size })
        .with_context(|| format!("creating replica {}", dir.display()))
}

fn serve(dir: &Path, size: Option<u64>, listen: &str, workers: Option<usize>) -> anyhow::Result<ExitCode> {
    let address = corral_wire::Address::parse(listen)?;
    let replica = open_or_create(dir, size)?;
    let served = Arc::new(ServedReplica::new(replica));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("replica-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let signalled = shutdown_signal()?;
        let listener = corral_wire::Listener::bind(&address).await?;
        let bound = listener.local_address()?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {bound}").context("writing the ready line")?;
        stdout.flush().context("writing the ready line")?;
        drop(stdout);
        tracing::info!(dir = %dir.display(), %bound, "serving replica");
        let mut options = corral_wire::ServeOptions::default();
        if let Some(workers) = workers {
            options.workers = workers.max(1);
        }
        let on_signal = served.clone();
        let shutdown = async move {
            let signal = signalled.await;
            tracing::info!("{signal}: shutting down");
            on_signal.cancel_purge();
        };
        corral_wire::serve_with(listener, served.clone(), options, shutdown).await?;
        if let corral_wire::Address::Unix(path) = &bound {
            let _ = std::fs::remove_file(path);
        }
        anyhow::Ok(())
    });
    drop(runtime);
    let replica = match Arc::try_unwrap(served) {
        Ok(served) => served.into_replica(),
        Err(_) => bail!("replica still in use after the server stopped; not closing it cleanly"),
    };
    replica.close().with_context(|| format!("closing replica {}", dir.display()))?;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGTERM or SIGINT. The handlers are installed when this is called (before the ready line
/// is printed), so a signal sent right after the ready line is never lost to the default action.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

fn info(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let info =
        corral_replica::inspect::info(dir).with_context(|| format!("reading replica {}", dir.display()))?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &info)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "directory:  {}", info.dir.display())?;
    writeln!(out, "size:       {} ({})", info.size, format_size(info.size))?;
    writeln!(out, "head:       {}", info.head)?;
    writeln!(
        out,
        "chain:      {}",
        std::iter::once(info.head.as_str())
            .chain(info.chain.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" -> ")
    )?;
    writeln!(out, "revision:   {}", info.revision)?;
    writeln!(out, "generation: {}", info.generation)?;
    writeln!(out, "dirty:      {}", info.dirty)?;
    writeln!(out, "rebuilding: {}", info.rebuilding)?;
    writeln!(out, "snapshots:")?;
    writeln!(
        out,
        "  {:<38} {:<38} {:<7} {:<5} {:<26} {:>12}  LABELS",
        "NAME", "PARENT", "REMOVED", "USER", "CREATED", "SIZE"
    )?;
    for snapshot in &info.snapshots {
        let labels: Vec<String> = snapshot.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            out,
            "  {:<38} {:<38} {:<7} {:<5} {:<26} {:>12}  {}",
            snapshot.name,
            snapshot.parent.as_deref().unwrap_or("-"),
            snapshot.removed,
            snapshot.user_created,
            snapshot.created,
            snapshot.size,
            labels.join(",")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn check(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let report =
        corral_replica::inspect::check(dir).with_context(|| format!("checking replica {}", dir.display()))?;
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else if report.is_ok() {
        println!("ok: {} is consistent", dir.display());
        for leftover in &report.leftovers {
            println!("note: {leftover}: left by an interrupted operation; removed at the next open");
        }
    } else {
        for problem in &report.problems {
            eprintln!("error: {}: {}", problem.file.display(), problem.message);
        }
        eprintln!("{}: {} problem(s) found", dir.display(), report.problems.len());
    }
    Ok(if report.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
