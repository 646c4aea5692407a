//! Verifying backups (beyond Longhorn): every block a backup references is downloaded, decoded and checked
//! against its checksum; missing and corrupt blocks are reported by object name.
//!
//! Runs under the backup/restore lock, so a concurrent deletion cannot make blocks vanish mid-scan.
//! Each distinct block is checked once even when several backups reference it.

use std::collections::BTreeMap;

use futures::StreamExt;
use serde::Serialize;

use crate::block::{self, Compression};
use crate::catalog::{backup_names, load_backup, require_volume};
use crate::error::{BackupError, Result};
use crate::layout;
use crate::lock::{LockKind, LockTimings, VolumeLock};
use crate::names::validate_existing_name;
use crate::progress::Progress;
use crate::target::BackupTarget;

/// One damaged or missing block.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BlockProblem {
    /// The block's checksum (its name).
    pub checksum: String,
    /// Full name of the object.
    pub object: String,
    /// `missing` or `corrupt`.
    pub problem: String,
    /// Details.
    pub detail: String,
    /// Backups that reference it, with the offsets.
    pub referenced_by: Vec<(String, u64)>,
}

/// Result of a verification.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VerifyReport {
    /// Volume verified.
    pub volume: String,
    /// Backups whose blocks were checked.
    pub backups: Vec<String>,
    /// Backups that could not be checked (unreadable config, or still in progress), with the reason.
    pub skipped_backups: Vec<(String, String)>,
    /// Distinct blocks checked.
    pub blocks_checked: usize,
    /// Problems found.
    pub problems: Vec<BlockProblem>,
    /// Unreadable backup configs (each an error naming the file).
    pub config_problems: Vec<String>,
}

impl VerifyReport {
    /// True if nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.config_problems.is_empty()
    }
}

/// One distinct block to check, and who references it.
struct BlockToCheck {
    compression: Compression,
    block_size: u64,
    refs: Vec<(String, u64)>,
}

/// Verifies one backup (`Some(name)`) or every backup of a volume (`None`).
pub async fn verify(
    target: &BackupTarget,
    volume: &str,
    backup: Option<&str>,
    concurrency: usize,
    timings: LockTimings,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    validate_existing_name("volume", volume)?;
    if let Some(b) = backup {
        validate_existing_name("backup", b)?;
    }
    let lock = VolumeLock::acquire(target, volume, LockKind::BackupOrRestore, timings).await?;
    let result = verify_locked(target, volume, backup, concurrency, progress).await;
    progress.finish();
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "cannot release verify lock; it expires by itself");
    }
    result
}

async fn verify_locked(
    target: &BackupTarget,
    volume: &str,
    backup: Option<&str>,
    concurrency: usize,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let volume_cfg = require_volume(target, volume).await?;
    let mut report = VerifyReport { volume: volume.to_string(), ..Default::default() };
    let names = match backup {
        Some(b) => vec![b.to_string()],
        None => backup_names(target, volume).await?,
    };
    let mut blocks: BTreeMap<String, BlockToCheck> = BTreeMap::new();
    for name in names {
        let cfg = match load_backup(target, volume, &name).await {
            Ok(cfg) => cfg,
            // A single named backup that is missing is an error; in a volume scan it is a finding.
            Err(e) if backup.is_some() => return Err(e),
            Err(e) => {
                report.config_problems.push(e.to_string());
                continue;
            }
        };
        if cfg.is_in_progress() {
            report.skipped_backups.push((name, "in progress".to_string()));
            continue;
        }
        let object = target.describe(&layout::backup_config(volume, &name));
        let block_size = cfg.block_size().map_err(|e| BackupError::corrupt(&object, e.to_string()))?.bytes();
        let compression = Compression::parse(cfg.compression_or(&volume_cfg.compression_method))
            .map_err(|e| BackupError::corrupt(&object, e.to_string()))?;
        for b in &cfg.blocks {
            blocks
                .entry(b.checksum.clone())
                .or_insert_with(|| BlockToCheck { compression, block_size, refs: Vec::new() })
                .refs
                .push((name.clone(), b.offset));
        }
        report.backups.push(name);
    }
    let total: u64 = blocks.values().map(|b| b.block_size).sum();
    progress.begin("verify", total);
    let checks = futures::stream::iter(blocks)
        .map(|(checksum, BlockToCheck { compression, block_size, refs })| async move {
            let key = layout::block(volume, &checksum);
            let object = target.describe(&key);
            let outcome = match target.get_opt(&key).await {
                Ok(None) => Some(("missing", "the object does not exist".to_string())),
                Err(e) => Some(("unreadable", e.to_string())),
                Ok(Some(stored)) => {
                    let (object, checksum) = (object.clone(), checksum.clone());
                    let checked = tokio::task::spawn_blocking(move || {
                        block::decode_and_verify(&object, compression, &stored, block_size, &checksum)
                            .map(|_| ())
                    })
                    .await;
                    match checked {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(("corrupt", e.to_string())),
                        Err(e) => Some(("unreadable", e.to_string())),
                    }
                }
            };
            progress.advance(block_size);
            outcome.map(|(problem, detail)| BlockProblem {
                checksum,
                object,
                problem: problem.to_string(),
                detail,
                referenced_by: refs,
            })
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    report.blocks_checked = checks.len();
    report.problems = checks.into_iter().flatten().collect();
    report.problems.sort_by(|a, b| a.checksum.cmp(&b.checksum));
    Ok(report)
}
