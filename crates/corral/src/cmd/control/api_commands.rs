//! The CLI's API client commands: `volume`, `snapshot`, `node`, `disk`, `job`, `setting`. Each takes
//! `--url` (default `$CORRAL_URL`, else `http://127.0.0.1:9500`) and `--json` (print the API's JSON
//! instead of a table).
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use corral_api::{
    AddDisk, ApiClient, CreateVolume, RecurringJobView, ReplicaMode, ReplicaView, VolumeState, VolumeView,
};
use serde::Serialize;
use serde_json::json;

use crate::cmd::size::{format_size, parse_size};
use crate::cmd::wait_progress::WaitProgress;

/// Options every API command takes.
#[derive(clap::Args, Clone)]
pub struct ApiArgs {
    /// The manager's API.
    #[arg(long, env = "CORRAL_URL", default_value = "http://127.0.0.1:9500", global = true)]
    url: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume.
    Create {
        name: String,
        /// Size (bytes or with a unit: 256MiB, 10GiB); a multiple of 2 MiB. With --from-backup
        /// the default is the backup's volume size.
        #[arg(long, required_unless_present = "from_backup")]
        size: Option<String>,
        /// Number of replicas (default: the setting default-replica-count).
        #[arg(long)]
        replicas: Option<u32>,
        /// Restore from this backup URL.
        #[arg(long)]
        from_backup: Option<String>,
        /// Minutes a failed replica may be reused.
        #[arg(long)]
        stale_replica_timeout: Option<u64>,
        /// disabled or best-effort.
        #[arg(long)]
        data_locality: Option<String>,
        /// Label k=v (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Wait until the volume's replicas are up (healthy).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List volumes.
    Ls {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one volume.
    Get {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Attach a volume to a node (default: the manager's node) and print its NBD endpoint.
    Attach {
        name: String,
        #[arg(long)]
        node: Option<String>,
        /// Maintenance mode: revert allowed, no client expected.
        #[arg(long)]
        maintenance: bool,
        /// Wait until attached and print the endpoint.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Detach a volume.
    Detach {
        name: String,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Grow a volume.
    Expand {
        name: String,
        #[arg(long)]
        size: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a (detached) volume and its replicas.
    Rm {
        name: String,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot of an attached volume.
    Create {
        volume: String,
        name: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List a volume's snapshots.
    Ls {
        volume: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a snapshot (its data is merged away).
    Rm {
        volume: String,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revert a volume attached in maintenance mode to a snapshot.
    Revert {
        volume: String,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum NodeCommand {
    /// List nodes and their disks.
    Ls {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum DiskCommand {
    /// Add a disk (an existing directory) to a node.
    Add {
        node: String,
        path: String,
        /// Tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove an empty disk from a node (by path or name).
    Rm {
        node: String,
        disk: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum JobCommand {
    /// Create a recurring snapshot or backup job.
    Create {
        name: String,
        /// snapshot or backup.
        #[arg(long)]
        task: String,
        /// Cron expression, e.g. "*/5 * * * *".
        #[arg(long)]
        cron: String,
        /// Snapshots/backups of this job kept per volume.
        #[arg(long)]
        retain: u32,
        /// Volume (repeatable).
        #[arg(long = "volume")]
        volumes: Vec<String>,
        /// Volume group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long, default_value_t = 1)]
        concurrency: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List recurring jobs.
    Ls {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a recurring job.
    Rm {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum SettingCommand {
    /// Show one setting, or all.
    Get {
        name: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Change a setting.
    Set {
        name: String,
        value: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A plain text table: a header and rows, columns padded to their widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn lower<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn volume_row(v: &VolumeView) -> Vec<String> {
    vec![
        v.name.clone(),
        format_size(v.size),
        v.number_of_replicas.to_string(),
        lower(&v.state),
        lower(&v.robustness),
        v.node_id.clone().unwrap_or_default(),
        v.endpoint.clone().unwrap_or_default(),
    ]
}

const VOLUME_HEADER: [&str; 7] = ["NAME", "SIZE", "REPLICAS", "STATE", "ROBUSTNESS", "NODE", "ENDPOINT"];

fn print_volume(v: &VolumeView, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(v);
    }
    print_table(&VOLUME_HEADER, &[volume_row(v)]);
    if !v.replicas.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = v
            .replicas
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.node.clone(),
                    r.disk.clone(),
                    r.mode.map(|m| m.as_str().to_string()).unwrap_or_else(|| "-".into()),
                    r.state.clone(),
                    format!("{}%", r.rebuild_progress),
                ]
            })
            .collect();
        print_table(&["REPLICA", "NODE", "DISK", "MODE", "PROCESS", "REBUILD"], &rows);
    }
    for c in v.conditions.iter().filter(|c| !c.status) {
        println!("condition {:?}: {}", c.kind, c.message);
    }
    Ok(())
}

/// Progress while waiting on a volume: its state and health, and the rebuild of any WO replica.
fn volume_progress(bar: &WaitProgress, v: &VolumeView) {
    let rebuilding: Vec<&ReplicaView> =
        v.replicas.iter().filter(|r| r.mode == Some(ReplicaMode::WriteOnly)).collect();
    let percent = if rebuilding.is_empty() {
        if corral_api::is_settled(v) {
            100
        } else {
            0
        }
    } else {
        rebuilding.iter().map(|r| r.rebuild_progress).sum::<u32>() / rebuilding.len() as u32
    };
    let detail = rebuilding.iter().map(|r| format!("{} {}%", r.name, r.rebuild_progress)).collect::<Vec<_>>();
    bar.update(
        percent,
        format!(
            "{}: {} / {}{}",
            v.name,
            lower(&v.state),
            lower(&v.robustness),
            if detail.is_empty() { String::new() } else { format!(" (rebuilding {})", detail.join(", ")) }
        ),
    );
}

const WAIT: Duration = Duration::from_secs(600);

pub async fn volume(cmd: VolumeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            replicas,
            from_backup,
            stale_replica_timeout,
            data_locality,
            labels,
            wait,
            api,
        } => {
            let c = ApiClient::new(&api.url);
            let size = size.as_deref().map(parse_size).transpose()?.unwrap_or(0);
            let mut label_map = std::collections::BTreeMap::new();
            for l in &labels {
                let (k, v) = l.split_once('=').with_context(|| format!("label {l:?} is not k=v"))?;
                label_map.insert(k.to_string(), v.to_string());
            }
            let body = CreateVolume {
                name: name.clone(),
                size,
                number_of_replicas: replicas,
                stale_replica_timeout,
                data_locality,
                from_backup,
                labels: label_map,
                node_selector: Vec::new(),
                disk_selector: Vec::new(),
            };
            let mut v = c.create_volume(&body).await?;
            if wait {
                let bar = WaitProgress::new();
                let r =
                    c.wait_volume(&name, WAIT, corral_api::is_settled, |v| volume_progress(&bar, v)).await;
                bar.finish();
                v = r?;
            }
            print_volume(&v, api.json)?;
        }
        VolumeCommand::Ls { api } => {
            let vs = ApiClient::new(&api.url).volumes().await?;
            if api.json {
                print_json(&vs)?;
            } else {
                print_table(&VOLUME_HEADER, &vs.iter().map(volume_row).collect::<Vec<_>>());
            }
        }
        VolumeCommand::Get { name, api } => {
            print_volume(&ApiClient::new(&api.url).volume(&name).await?, api.json)?
        }
        VolumeCommand::Attach { name, node, maintenance, wait, api } => {
            let c = ApiClient::new(&api.url);
            let mut v = c.attach(&name, node.as_deref(), maintenance).await?;
            if wait {
                let bar = WaitProgress::new();
                let r = c
                    .wait_volume(
                        &name,
                        WAIT,
                        |v| v.state == VolumeState::Attached && v.endpoint.is_some(),
                        |v| volume_progress(&bar, v),
                    )
                    .await;
                bar.finish();
                v = r?;
            }
            if api.json {
                print_json(&v)?;
            } else if let Some(e) = &v.endpoint {
                println!("{e}");
            } else {
                println!("attaching {name} (use --wait to wait for the endpoint)");
            }
        }
        VolumeCommand::Detach { name, wait, api } => {
            let c = ApiClient::new(&api.url);
            let mut v = c.detach(&name).await?;
            if wait {
                let bar = WaitProgress::new();
                let r = c
                    .wait_volume(
                        &name,
                        WAIT,
                        |v| v.state == VolumeState::Detached,
                        |v| volume_progress(&bar, v),
                    )
                    .await;
                bar.finish();
                v = r?;
            }
            print_volume(&v, api.json)?;
        }
        VolumeCommand::Expand { name, size, api } => {
            let v = ApiClient::new(&api.url).expand(&name, parse_size(&size)?).await?;
            print_volume(&v, api.json)?;
        }
        VolumeCommand::Rm { name, wait, api } => {
            let c = ApiClient::new(&api.url);
            let v = c.delete_volume(&name).await?;
            if wait {
                let deadline = tokio::time::Instant::now() + WAIT;
                loop {
                    match c.volume(&name).await {
                        Err(e) if e.code == corral_api::Code::NotFound => break,
                        Err(e) => return Err(e.into()),
                        Ok(_) if tokio::time::Instant::now() > deadline => {
                            anyhow::bail!("volume {name} is still being deleted")
                        }
                        Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                    }
                }
            }
            if api.json {
                print_json(&v)?;
            } else {
                println!("{}", if wait { format!("deleted {name}") } else { format!("deleting {name}") });
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn snapshot(cmd: SnapshotCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCommand::Create { volume, name, api } => {
            let created = ApiClient::new(&api.url).snapshot_create(&volume, name.as_deref()).await?;
            if api.json {
                print_json(&json!({"name": created}))?;
            } else {
                println!("{created}");
            }
        }
        SnapshotCommand::Ls { volume, api } => {
            let list = ApiClient::new(&api.url).snapshots(&volume).await?;
            if api.json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.parent.clone().unwrap_or_default(),
                            s.created.clone(),
                            format_size(s.size),
                            if s.removed { "removed".into() } else { String::new() },
                        ]
                    })
                    .collect();
                print_table(&["NAME", "PARENT", "CREATED", "SIZE", ""], &rows);
            }
        }
        SnapshotCommand::Rm { volume, name, api } => {
            ApiClient::new(&api.url).snapshot_delete(&volume, &name).await?;
            if api.json {
                print_json(&json!({}))?;
            }
        }
        SnapshotCommand::Revert { volume, name, api } => {
            ApiClient::new(&api.url).snapshot_revert(&volume, &name).await?;
            if api.json {
                print_json(&json!({}))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn node(cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    let NodeCommand::Ls { api } = cmd;
    let nodes = ApiClient::new(&api.url).nodes().await?;
    if api.json {
        print_json(&nodes)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    for n in &nodes {
        for d in &n.disks {
            rows.push(vec![
                n.name.clone(),
                n.address.clone(),
                n.state.clone(),
                if n.allow_scheduling && d.allow_scheduling { "yes".into() } else { "no".into() },
                d.name.clone(),
                d.path.clone(),
                format_size(d.storage_maximum),
                format_size(d.storage_available),
                format_size(d.storage_scheduled),
                d.tags.join(","),
            ]);
        }
        if n.disks.is_empty() {
            rows.push(vec![n.name.clone(), n.address.clone(), n.state.clone(), String::new(), "-".into()]);
        }
    }
    print_table(
        &["NODE", "ADDRESS", "STATE", "SCHEDULABLE", "DISK", "PATH", "SIZE", "FREE", "SCHEDULED", "TAGS"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn disk(cmd: DiskCommand) -> anyhow::Result<ExitCode> {
    let (n, json) = match cmd {
        DiskCommand::Add { node, path, tags, api } => {
            let body = AddDisk { path, name: None, tags, storage_reserved: 0, allow_scheduling: true };
            (ApiClient::new(&api.url).disk_add(&node, &body).await?, api.json)
        }
        DiskCommand::Rm { node, disk, api } => {
            let c = ApiClient::new(&api.url);
            let current = c.node(&node).await?;
            let name = current
                .disks
                .iter()
                .find(|d| d.name == disk || d.path == disk.trim_end_matches('/'))
                .map(|d| d.name.clone())
                .unwrap_or(disk);
            (c.disk_remove(&node, &name).await?, api.json)
        }
    };
    if json {
        print_json(&n)?;
    } else {
        let rows: Vec<Vec<String>> =
            n.disks.iter().map(|d| vec![d.name.clone(), d.path.clone(), d.tags.join(",")]).collect();
        print_table(&["DISK", "PATH", "TAGS"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn job(cmd: JobCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCommand::Create { name, task, cron, retain, volumes, groups, concurrency, api } => {
            let job = RecurringJobView {
                name,
                task,
                cron,
                retain,
                concurrency,
                groups,
                volumes,
                labels: Default::default(),
                last_run: None,
            };
            let j = ApiClient::new(&api.url).job_create(&job).await?;
            if api.json {
                print_json(&j)?;
            } else {
                println!("created job {}", j.name);
            }
        }
        JobCommand::Ls { api } => {
            let jobs = ApiClient::new(&api.url).jobs().await?;
            if api.json {
                print_json(&jobs)?;
            } else {
                let rows: Vec<Vec<String>> = jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.name.clone(),
                            j.task.clone(),
                            j.cron.clone(),
                            j.retain.to_string(),
                            j.volumes.join(","),
                            j.groups.join(","),
                            j.last_run.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "TASK", "CRON", "RETAIN", "VOLUMES", "GROUPS", "LAST RUN"], &rows);
            }
        }
        JobCommand::Rm { name, api } => {
            ApiClient::new(&api.url).job_delete(&name).await?;
            if api.json {
                print_json(&json!({}))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn setting(cmd: SettingCommand) -> anyhow::Result<ExitCode> {
    let (list, json) = match cmd {
        SettingCommand::Get { name: Some(n), api } => {
            (vec![ApiClient::new(&api.url).setting(&n).await?], api.json)
        }
        SettingCommand::Get { name: None, api } => (ApiClient::new(&api.url).settings().await?, api.json),
        SettingCommand::Set { name, value, api } => {
            (vec![ApiClient::new(&api.url).setting_set(&name, &value).await?], api.json)
        }
    };
    if json {
        if list.len() == 1 {
            print_json(&list[0])?;
        } else {
            print_json(&list)?;
        }
    } else {
        let rows: Vec<Vec<String>> =
            list.iter().map(|s| vec![s.name.clone(), s.value.clone(), s.default.clone()]).collect();
        print_table(&["NAME", "VALUE", "DEFAULT"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
