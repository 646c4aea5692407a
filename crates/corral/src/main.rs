//! `corral`: the one binary of Corral, replicated block storage for Kubernetes.
//!
//! Every component runs as a subcommand of this binary (as Longhorn's engine and replica processes are
//! children of one `longhorn` binary): `corral replica …`, `corral engine …`, `corral backup …`, and the
//! control plane. Each subcommand's arguments and logic live in `cmd/<name>.rs`; this file only dispatches.
//! `anyhow` is used here and nowhere in the libraries, whose typed errors carry their own context.

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(name = "corral", version, about = "Replicated block storage for Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one replica, or inspect/export/check a replica directory offline.
    Replica(cmd::replica::ReplicaArgs),
    /// Serve a volume over NBD, replicated to its replicas, or control a running engine.
    Engine(cmd::engine::EngineArgs),
    /// Create, list, inspect, restore, verify and delete backups.
    Backup(cmd::backup::BackupArgs),
    /// The CSI driver: Identity, Controller and Node on one unix socket.
    Csi(cmd::csi::CsiArgs),
    /// The control plane: manager, instance manager, quickstart, and the API client commands.
    #[command(flatten)]
    Control(cmd::control::ControlCommand),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replica(args) => cmd::replica::run(args),
        Command::Engine(args) => cmd::engine::run(args),
        Command::Backup(args) => cmd::backup::run(args),
        Command::Csi(args) => cmd::csi::run(args),
        Command::Control(command) => cmd::control::run(command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
