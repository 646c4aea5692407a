//! Creating a backup of one snapshot of a replica directory (reference §6.6).
//!
//! Order of writes, so that nothing a later run trusts is ever half-written:
//! 1. BACKUP lock; `volume.cfg` created if missing (the stored compression wins, as in Longhorn);
//! 2. an in-progress placeholder `backup_<name>.cfg` (empty `CreatedTime`: GC keeps every block meanwhile);
//! 3. blocks: each changed block is read, checksummed, skipped if its object exists (dedup; re-uploaded
//!    with `full`), else compressed and written under its checksum — objects appear atomically;
//! 4. sync (directory targets), then the final backup config listing *every* block of the snapshot (the
//!    previous backup's list merged with the changed blocks), then `volume.cfg`, then sync again.
//!
//! A failure removes the placeholder; uploaded blocks stay (they are valid and unreferenced; GC removes them).
//!
//! Concurrency: `concurrency` blocks are in flight at once (read + checksum, then compress, on the blocking
//! pool; upload on the runtime), so memory stays below about `2 x concurrency x block size`. The read and
//! stored buffers come from a pool and go back to it (the stored one once the target has written it), so
//! no block faults in fresh memory; the stored block is handed to the target without a copy.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::backup_url::BackupUrl;
use crate::block::{self, BlockSize, Compression};
use crate::buffer_pool::BufferPool;
use crate::catalog::{load_backup, load_volume, save_backup, save_volume};
use crate::error::{BackupError, Result};
use crate::format::backup_config::{BackupConfig, BlockMapping, EmptyObject, PARAM_BLOCK_SIZE, PARAM_MODE};
use crate::format::now_rfc3339;
use crate::format::volume_config::VolumeConfig;
use crate::layout;
use crate::lock::{LockKind, LockTimings, VolumeLock};
use crate::names::{generate_name, validate_new_name};
use crate::progress::Progress;
use crate::source::SnapshotReader;
use crate::target::BackupTarget;

/// Default number of blocks in flight.
pub const DEFAULT_CONCURRENCY: usize = 5;

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Replica directory holding the snapshot.
    pub replica_dir: PathBuf,
    /// Snapshot name (as `corral replica info` lists it, without `volume-snap-`/`.img`).
    pub snapshot: String,
    /// Backup volume name; default: the replica directory's name.
    pub volume: Option<String>,
    /// Backup name; default: `backup-<16 hex>`.
    pub name: Option<String>,
    /// Compression for a new backup volume (an existing volume keeps its own); default lz4.
    pub compression: Option<Compression>,
    /// Block size; default: the previous backup's, else 2 MiB. A change forces a full backup.
    pub block_size: Option<BlockSize>,
    /// Read every block and re-upload blocks that exist already (Longhorn's `backup-mode=full`).
    pub full: bool,
    /// Labels stored with the backup.
    pub labels: BTreeMap<String, String>,
    /// Blocks in flight at once.
    pub concurrency: usize,
    /// Lock protocol timings.
    pub lock_timings: LockTimings,
}

impl CreateOptions {
    /// Defaults for backing up `snapshot` of `replica_dir`.
    pub fn new(replica_dir: impl Into<PathBuf>, snapshot: impl Into<String>) -> Self {
        CreateOptions {
            replica_dir: replica_dir.into(),
            snapshot: snapshot.into(),
            volume: None,
            name: None,
            compression: None,
            block_size: None,
            full: false,
            labels: BTreeMap::new(),
            concurrency: DEFAULT_CONCURRENCY,
            lock_timings: LockTimings::default(),
        }
    }
}

/// What a backup did.
#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    /// Backup URL.
    pub url: String,
    /// Backup name.
    pub backup: String,
    /// Volume name.
    pub volume: String,
    /// Snapshot backed up.
    pub snapshot: String,
    /// True if only blocks changed since `base_backup` were read.
    pub incremental: bool,
    /// The backup the increment is based on.
    pub base_backup: Option<String>,
    /// Block compression.
    pub compression: Compression,
    /// Block size in bytes.
    pub block_size: u64,
    /// Blocks listed in the backup (all blocks of the snapshot).
    pub blocks_total: usize,
    /// Blocks read from the replica.
    pub blocks_read: usize,
    /// Blocks written to the target that were not there.
    pub blocks_uploaded: usize,
    /// Blocks read whose object existed already (not uploaded).
    pub blocks_deduplicated: usize,
    /// Blocks written again although they existed (full mode).
    pub blocks_reuploaded: usize,
    /// Bytes read from the replica.
    pub bytes_read: u64,
    /// Stored (compressed) bytes written for new blocks.
    pub bytes_uploaded: u64,
    /// Stored bytes written again (full mode).
    pub bytes_reuploaded: u64,
    /// Wall time.
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockStatus {
    Uploaded,
    Reuploaded,
    Deduplicated,
}

struct BlockOutcome {
    offset: u64,
    checksum: String,
    status: BlockStatus,
    stored_bytes: u64,
}

/// Backs up one snapshot of a replica directory into `target`.
pub async fn create_backup(
    target: &BackupTarget,
    opts: CreateOptions,
    progress: &dyn Progress,
) -> Result<CreateReport> {
    let started = Instant::now();
    let volume = match &opts.volume {
        Some(v) => v.clone(),
        None => default_volume_name(&opts.replica_dir)?,
    };
    validate_new_name("volume", &volume)?;
    let name = opts.name.clone().unwrap_or_else(|| generate_name("backup"));
    validate_new_name("backup", &name)?;
    let dir = opts.replica_dir.clone();
    let reader = tokio::task::spawn_blocking(move || SnapshotReader::open(&dir))
        .await
        .map_err(|e| BackupError::Worker(e.to_string()))??;
    if reader.snapshot(&opts.snapshot).is_none() {
        return Err(BackupError::NotFound {
            what: format!("snapshot {} in replica directory {}", opts.snapshot, opts.replica_dir.display()),
        });
    }
    let lock = VolumeLock::acquire(target, &volume, LockKind::BackupOrRestore, opts.lock_timings).await?;
    let result = create_locked(target, &opts, &reader, &volume, &name, progress).await;
    progress.finish();
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "cannot release backup lock; it expires by itself");
    }
    let mut report = result?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn default_volume_name(dir: &Path) -> Result<String> {
    dir.file_name().and_then(|n| n.to_str()).map(str::to_string).ok_or_else(|| {
        BackupError::InvalidArgument(format!(
            "cannot derive a volume name from {}; pass a volume name",
            dir.display()
        ))
    })
}

async fn create_locked(
    target: &BackupTarget,
    opts: &CreateOptions,
    reader: &SnapshotReader,
    volume: &str,
    name: &str,
    progress: &dyn Progress,
) -> Result<CreateReport> {
    let start_time = now_rfc3339();
    let size = reader.size();
    let mut volume_cfg = match load_volume(target, volume).await? {
        Some(cfg) => cfg,
        None => {
            let cfg = VolumeConfig::new(volume, size, opts.compression.unwrap_or_default().as_str());
            save_volume(target, &cfg).await?;
            cfg
        }
    };
    let compression = Compression::parse(&volume_cfg.compression_method)
        .map_err(|e| BackupError::corrupt(target.describe(&layout::volume_config(volume)), e.to_string()))?;
    if target.head(&layout::backup_config(volume, name)).await?.is_some() {
        return Err(BackupError::AlreadyExists { what: format!("backup {name} of volume {volume}") });
    }

    let last = if volume_cfg.last_backup_name.is_empty() {
        None
    } else {
        match load_backup(target, volume, &volume_cfg.last_backup_name).await {
            Ok(cfg) if !cfg.is_in_progress() => Some(cfg),
            Ok(_) => None,
            Err(e) => {
                tracing::info!(error = %e, "last backup unreadable; taking a full backup");
                None
            }
        }
    };
    let last_block_size = last.as_ref().and_then(|l| l.block_size().ok());
    let block_size = opts.block_size.or(last_block_size).unwrap_or_default();
    let base = last.filter(|l| {
        !opts.full
            && last_block_size == Some(block_size)
            && l.snapshot_name != opts.snapshot
            && reader.snapshot(&l.snapshot_name).is_some()
            && reader.in_chain_of(&opts.snapshot, &l.snapshot_name)
    });

    save_backup(target, &BackupConfig::in_progress(name, volume, compression.as_str())).await?;
    let uploaded =
        upload_changed_blocks(target, opts, reader, volume, compression, block_size, base.as_ref(), progress)
            .await;
    let (outcomes, bytes_read) = match uploaded {
        Ok(v) => v,
        Err(e) => {
            let _ = target.delete(&layout::backup_config(volume, name)).await;
            return Err(e);
        }
    };

    let mut blocks: BTreeMap<u64, String> = base
        .as_ref()
        .map(|b| b.blocks.iter().map(|m| (m.offset, m.checksum.clone())).collect())
        .unwrap_or_default();
    let (mut uploaded_n, mut reuploaded_n, mut dedup_n, mut uploaded_bytes, mut reuploaded_bytes) =
        (0, 0, 0, 0, 0);
    for outcome in &outcomes {
        blocks.insert(outcome.offset, outcome.checksum.clone());
        match outcome.status {
            BlockStatus::Uploaded => {
                uploaded_n += 1;
                uploaded_bytes += outcome.stored_bytes;
            }
            BlockStatus::Reuploaded => {
                reuploaded_n += 1;
                reuploaded_bytes += outcome.stored_bytes;
            }
            BlockStatus::Deduplicated => dedup_n += 1,
        }
    }
    let block_list: Vec<BlockMapping> =
        blocks.into_iter().map(|(offset, checksum)| BlockMapping { offset, checksum }).collect();
    let mut parameters = BTreeMap::new();
    parameters.insert(PARAM_BLOCK_SIZE.to_string(), block_size.bytes().to_string());
    if opts.full {
        parameters.insert(PARAM_MODE.to_string(), "full".to_string());
    }
    let cfg = BackupConfig {
        name: name.to_string(),
        volume_name: volume.to_string(),
        snapshot_name: opts.snapshot.clone(),
        snapshot_created_at: start_time.clone(),
        created_time: now_rfc3339(),
        size: block_list.len() as u64 * block_size.bytes(),
        labels: (!opts.labels.is_empty()).then(|| opts.labels.clone()),
        parameters: Some(parameters),
        is_incremental: base.is_some(),
        compression_method: compression.as_str().to_string(),
        newly_uploaded_data_size: uploaded_bytes,
        re_uploaded_data_size: reuploaded_bytes,
        processing_blocks: base.is_none().then_some(EmptyObject {}),
        blocks: block_list,
        single_file: Default::default(),
    };
    // Blocks durable before the config that references them; the config before volume.cfg points at it.
    target.sync().await?;
    save_backup(target, &cfg).await?;
    volume_cfg.size = size;
    volume_cfg.last_backup_name = name.to_string();
    volume_cfg.last_backup_at = start_time;
    volume_cfg.block_count += uploaded_n as u64;
    volume_cfg.labels = cfg.labels.clone();
    save_volume(target, &volume_cfg).await?;
    target.sync().await?;

    Ok(CreateReport {
        url: BackupUrl {
            target: target.url().to_string(),
            volume: volume.to_string(),
            backup: name.to_string(),
        }
        .encode(),
        backup: name.to_string(),
        volume: volume.to_string(),
        snapshot: opts.snapshot.clone(),
        incremental: base.is_some(),
        base_backup: base.map(|b| b.name),
        compression,
        block_size: block_size.bytes(),
        blocks_total: cfg.blocks.len(),
        blocks_read: outcomes.len(),
        blocks_uploaded: uploaded_n,
        blocks_deduplicated: dedup_n,
        blocks_reuploaded: reuploaded_n,
        bytes_read,
        bytes_uploaded: uploaded_bytes,
        bytes_reuploaded: reuploaded_bytes,
        seconds: 0.0,
    })
}

/// Block offsets covering the given byte ranges.
pub(crate) fn block_offsets(ranges: &[(u64, u64)], block_size: u64) -> BTreeSet<u64> {
    let mut offsets = BTreeSet::new();
    for &(offset, len) in ranges {
        if len == 0 {
            continue;
        }
        let first = offset / block_size;
        let last = (offset.saturating_add(len) - 1) / block_size;
        offsets.extend((first..=last).map(|i| i * block_size));
    }
    offsets
}

#[allow(clippy::too_many_arguments)]
async fn upload_changed_blocks(
    target: &BackupTarget,
    opts: &CreateOptions,
    reader: &SnapshotReader,
    volume: &str,
    compression: Compression,
    block_size: BlockSize,
    base: Option<&BackupConfig>,
    progress: &dyn Progress,
) -> Result<(Vec<BlockOutcome>, u64)> {
    let bs = block_size.bytes();
    let ranges = {
        let reader = reader.clone();
        let from = base.map(|b| b.snapshot_name.clone());
        let to = opts.snapshot.clone();
        tokio::task::spawn_blocking(move || reader.changed_ranges(from.as_deref(), &to))
            .await
            .map_err(|e| BackupError::Worker(e.to_string()))??
    };
    let offsets = block_offsets(&ranges, bs);
    progress.begin("backup", offsets.len() as u64 * bs);
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let full = opts.full;
    let workers = opts.concurrency.max(1);
    // Each block in flight holds at most two buffers (read, stored); idle ones are kept for reuse.
    let pool = BufferPool::new(2 * workers + 2);
    let block_len = usize::try_from(bs).map_err(|_| BackupError::InvalidArgument("block size".into()))?;
    let outcomes: Vec<BlockOutcome> = futures::stream::iter(offsets)
        .map(|offset| {
            let reader = reader.clone();
            let snapshot = opts.snapshot.clone();
            let in_flight = in_flight.clone();
            let pool = pool.clone();
            async move {
                // Read and hash on one blocking thread: the block stays in that core's cache.
                let (checksum, data) = {
                    let pool = pool.clone();
                    blocking(move || {
                        let mut buf = pool.take(block_len);
                        reader.read(&snapshot, &mut buf, offset)?;
                        Ok((block::checksum(&buf), buf))
                    })
                    .await?
                };
                let first_in_this_backup =
                    in_flight.lock().map(|mut set| set.insert(checksum.clone())).unwrap_or(true);
                let key = layout::block(volume, &checksum);
                let exists = !first_in_this_backup || target.head(&key).await?.is_some();
                if exists && (!full || !first_in_this_backup) {
                    progress.advance(bs);
                    return Ok(BlockOutcome {
                        offset,
                        checksum,
                        status: BlockStatus::Deduplicated,
                        stored_bytes: 0,
                    });
                }
                let stored = blocking(move || {
                    let mut out = pool.take_any();
                    block::compress_into(compression, &data, &mut out)?;
                    Ok(out)
                })
                .await?;
                let stored_bytes = stored.len() as u64;
                // The buffer goes to the store without a copy and returns to the pool when written.
                target.put(&key, stored.into_bytes()).await?;
                progress.advance(bs);
                let status = if exists { BlockStatus::Reuploaded } else { BlockStatus::Uploaded };
                Ok::<_, BackupError>(BlockOutcome { offset, checksum, status, stored_bytes })
            }
        })
        .buffer_unordered(workers)
        .try_collect()
        .await?;
    let bytes_read = outcomes.len() as u64 * bs;
    Ok((outcomes, bytes_read))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BackupError::Worker(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_to_blocks() {
        let bs = 2 << 20;
        let offsets = block_offsets(
            &[(0, 4096), (4096, 4096), (8 << 20, 1 << 20), ((2 << 20) - 1, 2), (100 << 20, 0)],
            bs,
        );
        assert_eq!(offsets.into_iter().collect::<Vec<_>>(), vec![0, 2 << 20, 8 << 20]);
    }
}
