//! The cluster forms of `corral backup`, through the manager's API: `target set|get`,
//! `create VOLUME [--snapshot S] [--wait]`, `ls [VOLUME]`.
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use corral_api::ApiClient;

use super::TargetCommand;
use crate::cmd::size::format_size;
use crate::cmd::wait_progress::WaitProgress;

/// Longest `--wait` for a backup.
const WAIT: Duration = Duration::from_secs(3600);

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Columns padded to their widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
}

pub(super) async fn target(url: &str, cmd: TargetCommand, json: bool) -> anyhow::Result<ExitCode> {
    let c = ApiClient::new(url);
    let t = match cmd {
        TargetCommand::Set { target_url } => c.backup_target_set(&target_url).await?,
        TargetCommand::Get => c.backup_target().await?,
    };
    if json {
        print_json(&t)?;
    } else if t.url.is_empty() {
        println!("no backup target set");
    } else {
        println!("{}", t.url);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn create(
    url: &str,
    volume: &str,
    snapshot: Option<&str>,
    labels: &BTreeMap<String, String>,
    wait: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let c = ApiClient::new(url);
    let mut b = c.backup_create(volume, snapshot, labels).await?;
    if wait {
        let bar = WaitProgress::new();
        let r = c
            .wait_backup(volume, &b.name, WAIT, |b| {
                bar.update(b.progress, format!("{}: {}", b.name, b.state))
            })
            .await;
        bar.finish();
        b = r?;
    }
    if json {
        print_json(&b)?;
    } else if b.url.is_empty() {
        println!("backup {} of volume {volume} (snapshot {}) requested", b.name, b.snapshot);
    } else {
        println!("{}", b.url);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn ls(url: &str, volume: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let c = ApiClient::new(url);
    match volume {
        None => {
            let list = c.backup_volumes().await?;
            if json {
                return print_json(&list).map(|()| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        format_size(v.size),
                        v.backup_count.to_string(),
                        v.last_backup_name.clone(),
                        v.last_backup_at.clone(),
                    ]
                })
                .collect();
            print_table(&["VOLUME", "SIZE", "BACKUPS", "LAST BACKUP", "AT"], &rows);
        }
        Some(volume) => {
            let list = c.backups(volume).await?;
            if json {
                return print_json(&list).map(|()| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|b| {
                    vec![
                        b.name.clone(),
                        b.snapshot.clone(),
                        if b.state == "in-progress" {
                            format!("{} {}%", b.state, b.progress)
                        } else {
                            b.state.clone()
                        },
                        format_size(b.size),
                        b.created.clone(),
                        if b.error.is_empty() { b.url.clone() } else { b.error.clone() },
                    ]
                })
                .collect();
            print_table(&["BACKUP", "SNAPSHOT", "STATE", "SIZE", "CREATED", "URL / ERROR"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}
