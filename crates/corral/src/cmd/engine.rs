//! `corral engine`: serve a volume over NBD, replicated to its replicas (`serve`), or control a running
//! engine through its HTTP/JSON control API (`info`, `replica …`, `snapshot …`, `revert`, `expand`).
//!
//! `serve` prints one line to stdout once the NBD frontend and the control API listen, with the real
//! ports when `:0` was asked: `ready nbd=nbd://127.0.0.1:PORT control=127.0.0.1:PORT` (or
//! `nbd=nbd+unix:///?socket=PATH`). SIGTERM / SIGINT stop it after a flush of every replica.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use corral_api::{EngineClient, ReplicaMode};
use corral_engine::{EngineConfig, NbdListen, ServeOptions};

use super::size::parse_size;

#[derive(clap::Args)]
pub struct EngineArgs {
    #[command(subcommand)]
    command: EngineCommand,
    /// Control API of the engine to talk to (HOST:PORT), for every command but `serve`.
    #[arg(long, global = true, env = "CORRAL_ENGINE_URL")]
    url: Option<String>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum EngineCommand {
    /// Serve a volume: NBD frontend, synchronous replication, control API.
    Serve(ServeArgs),
    /// Volume, size, frontend and state.
    Info,
    /// List, add (rebuild) or remove replicas.
    Replica {
        #[command(subcommand)]
        command: ReplicaCommand,
    },
    /// Create, list, remove or purge snapshots.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Revert the volume to a snapshot (no NBD client may be connected).
    Revert {
        /// Snapshot name.
        name: String,
    },
    /// Grow the volume; clients see the new size when they reconnect.
    Expand {
        /// New size (bytes or with a unit: 2GiB).
        #[arg(long, value_parser = parse_size_arg)]
        size: u64,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Volume name.
    #[arg(long)]
    volume: String,
    /// Volume size (bytes or with a unit: 64MiB, 10GiB).
    #[arg(long, value_parser = parse_size_arg)]
    size: u64,
    /// Replica address, tcp://HOST:PORT or unix:///PATH (repeat for each replica).
    #[arg(long = "replica", required = true)]
    replicas: Vec<String>,
    /// NBD frontend address: HOST:PORT or unix:PATH.
    #[arg(long)]
    nbd: String,
    /// Control API address: HOST:PORT.
    #[arg(long)]
    listen: String,
    /// A replica that does not answer within this time is set ERR (e.g. 8s, 500ms).
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    replica_timeout: Duration,
    /// Data connections per replica.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Do not rebuild stale replicas found at start automatically.
    #[arg(long)]
    no_auto_rebuild: bool,
    /// The engine's epoch, given by the control plane at each start (fencing): replicas that accepted
    /// a newer epoch refuse this engine; a newer one takes them over. 0 = started by hand.
    #[arg(long, default_value_t = 0)]
    epoch: u64,
}

#[derive(clap::Subcommand)]
enum ReplicaCommand {
    /// List replicas with mode and rebuild progress.
    Ls,
    /// Add a replica: it becomes WO, is rebuilt online, then RW.
    Add {
        /// Replica address.
        address: String,
        /// Wait until the rebuild ends; fail if it failed.
        #[arg(long)]
        wait: bool,
    },
    /// Remove a replica from the volume.
    Rm {
        /// Replica address.
        address: String,
    },
}

#[derive(clap::Subcommand)]
enum SnapshotCommand {
    /// Take a snapshot on every replica at one point (a UUID name when omitted).
    Create {
        /// Snapshot name.
        name: Option<String>,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List snapshots.
    Ls,
    /// Mark a snapshot removed (its data is folded away by purge).
    Rm {
        /// Snapshot name.
        name: String,
    },
    /// Fold removed snapshots away.
    Purge,
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|err| err.to_string())
}

/// `8s`, `500ms`, `2m`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. 8s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("invalid duration {text:?}: unit must be ms, s or m")),
    };
    if !(seconds > 0.0 && seconds < 86_400.0) {
        return Err(format!("invalid duration {text:?}: must be positive and below a day"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn run(args: EngineArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match args.command {
        EngineCommand::Serve(serve) => runtime.block_on(serve_engine(serve)),
        command => {
            let url = args.url.context("--url HOST:PORT of the engine's control API is required")?;
            runtime.block_on(control(command, &url, args.json))
        }
    }
}

async fn serve_engine(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = EngineConfig::new(args.volume.clone(), args.size);
    config.replica_timeout = args.replica_timeout;
    config.auto_rebuild = !args.no_auto_rebuild;
    let options = ServeOptions {
        config,
        replicas: args.replicas,
        nbd: NbdListen::parse(&args.nbd)?,
        listen: args.listen,
        connections_per_replica: args.connections.max(1),
        epoch: args.epoch,
    };
    let running = corral_engine::serve(options).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready nbd={} control={}", running.nbd_endpoint, running.control_address)?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    running.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn control(command: EngineCommand, url: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = EngineClient::new(url);
    match command {
        EngineCommand::Serve(_) => bail!("serve is not a control command"),
        EngineCommand::Info => {
            let info = client.info().await?;
            if json {
                print_json(&info)?;
            } else {
                println!("volume:    {}", info.volume);
                println!("size:      {}", super::size::format_size(info.size));
                println!("frontend:  {} ({} client(s))", info.frontend, info.clients);
                println!("state:     {:?}", info.state);
                println!("replicas:  {} ({} RW)", info.replicas, info.healthy_replicas);
                println!("generation: {}", info.generation);
            }
        }
        EngineCommand::Replica { command } => match command {
            ReplicaCommand::Ls => {
                let list = client.replicas().await?;
                if json {
                    print_json(&list)?;
                } else {
                    println!("{:<40} {:<4} {:>8}  ERROR", "ADDRESS", "MODE", "REBUILD");
                    for r in list {
                        let mode = r.mode.as_str();
                        println!(
                            "{:<40} {:<4} {:>7}%  {}",
                            r.address,
                            mode,
                            r.rebuild_progress,
                            r.error.unwrap_or_default()
                        );
                    }
                }
            }
            ReplicaCommand::Add { address, wait } => {
                client.add_replica(&address).await?;
                if wait {
                    loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let list = client.replicas().await?;
                        match list.iter().find(|r| r.address == address).map(|r| r.mode) {
                            Some(ReplicaMode::ReadWrite) => break,
                            Some(ReplicaMode::WriteOnly) => continue,
                            _ => {
                                let report = client.last_rebuild().await?;
                                bail!(
                                    "rebuild of {address} failed: {}",
                                    report
                                        .and_then(|r| r.error)
                                        .unwrap_or_else(|| "the replica left the volume".into())
                                );
                            }
                        }
                    }
                }
                if json {
                    print_json(&client.last_rebuild().await?)?;
                } else {
                    println!("replica {address} added");
                }
            }
            ReplicaCommand::Rm { address } => {
                client.remove_replica(&address).await?;
                println!("replica {address} removed");
            }
        },
        EngineCommand::Snapshot { command } => match command {
            SnapshotCommand::Create { name, labels } => {
                let mut map = BTreeMap::new();
                for label in labels {
                    let (k, v) = label
                        .split_once('=')
                        .with_context(|| format!("bad label {label:?}: expected KEY=VALUE"))?;
                    if k.is_empty() {
                        bail!("bad label {label:?}: empty key");
                    }
                    map.insert(k.to_string(), v.to_string());
                }
                let name = client.snapshot_create(name.as_deref(), &map).await?;
                if json {
                    print_json(&serde_json::json!({ "name": name }))?;
                } else {
                    println!("{name}");
                }
            }
            SnapshotCommand::Ls => {
                let list = client.snapshots().await?;
                if json {
                    print_json(&list)?;
                } else {
                    println!("{:<40} {:<40} {:<8} {:<7} CREATED", "NAME", "PARENT", "REMOVED", "USER");
                    for s in list {
                        println!(
                            "{:<40} {:<40} {:<8} {:<7} {}",
                            s.name,
                            s.parent.unwrap_or_default(),
                            s.removed,
                            s.user_created,
                            s.created
                        );
                    }
                }
            }
            SnapshotCommand::Rm { name } => {
                client.snapshot_remove(&name).await?;
                println!("snapshot {name} marked removed");
            }
            SnapshotCommand::Purge => {
                client.snapshot_purge().await?;
                println!("purged");
            }
        },
        EngineCommand::Revert { name } => {
            client.revert(&name).await?;
            println!("reverted to {name}");
        }
        EngineCommand::Expand { size } => {
            client.expand(size).await?;
            println!("expanded to {}", super::size::format_size(size));
        }
    }
    Ok(ExitCode::SUCCESS)
}
