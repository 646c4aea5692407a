//! Restoring a backup into a raw image file or a new replica directory, fully or incrementally (DR).
//!
//! Every block is decoded and checked against its checksum before it is written; a block that fails
//! aborts the restore naming the object, and nothing that fails the check reaches the destination.
//!
//! * **File, full**: written to `<file>.part` (holes where the backup has no block, and for all-zero
//!   blocks, which are recognised by their checksum and never downloaded), fsync'd, renamed to `<file>`.
//! * **Replica directory, full**: a replica of the volume's size is created in `<dir>.corral-restore-tmp`,
//!   the blocks are written into its head, the head becomes a snapshot (a UUID name, as Longhorn names
//!   restored snapshots) with a fresh head on top, the replica is closed cleanly and the directory renamed
//!   to `<dir>`.
//! * **Incremental** (the destination holds an earlier restore of the same volume, per its restore record,
//!   see `format::restore_record`): only blocks whose checksum differs are downloaded and written; blocks
//!   that disappeared are zeroed (hole punched in files; written as zeros in a replica head so they hide
//!   the older snapshot's data). A replica directory then snapshots its head and purges the older
//!   snapshot, keeping one snapshot with a head on top.
//!
//! The record is written after the data is durable; an incremental restore first marks itself pending
//! in the record, so a crash anywhere leaves a record that tells the next run which blocks to rewrite.
//!
//! **Unfinished restores never serve.** Before the first restored byte reaches a replica directory its
//! `Rebuilding` flag is set durably (`volume.meta`, written with fsync + rename + directory fsync), and it
//! is cleared only once the restored snapshot is synced (before older snapshots are purged, which does
//! not change what the volume reads). That is Longhorn's flag for "incomplete copy": an engine never starts such a replica
//! as RW (it is "an interrupted rebuild target"), so after a crash or power cut in the middle of an
//! incremental restore (the directory then holds a mix of two backups) the directory still opens and
//! checks clean but cannot serve a torn volume; `corral replica info` shows `rebuilding: true` and the
//! record's `pending`, and running the same restore again finishes it. A full restore builds in
//! `<dir>.corral-restore-tmp` and renames it into place only once complete, so `<dir>` is absent until then.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use corral_replica::{CreateOptions as ReplicaCreateOptions, Replica, SnapshotOptions};
use futures::StreamExt;
use serde::Serialize;

use crate::block::{self, Compression};
use crate::buffer_pool::BufferPool;
use crate::catalog::{load_backup, require_volume};
use crate::error::{BackupError, Result};
use crate::format::backup_config::BackupConfig;
use crate::format::restore_record::{
    record_path_for_dir, record_path_for_file, sync_parent, PendingRestore, RestoreRecord, RECORD_VERSION,
};
use crate::layout;
use crate::lock::{LockKind, LockTimings, VolumeLock};
use crate::names::validate_existing_name;
use crate::progress::Progress;
use crate::target::BackupTarget;

/// Where to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreDestination {
    /// A raw image file.
    File(PathBuf),
    /// A replica directory (new, or holding an earlier restore of the same volume).
    ReplicaDir(PathBuf),
}

impl RestoreDestination {
    fn path(&self) -> &Path {
        match self {
            RestoreDestination::File(p) | RestoreDestination::ReplicaDir(p) => p,
        }
    }

    fn record_path(&self) -> PathBuf {
        match self {
            RestoreDestination::File(p) => record_path_for_file(p),
            RestoreDestination::ReplicaDir(p) => record_path_for_dir(p),
        }
    }
}

/// How to restore.
#[derive(Debug, Clone, Copy)]
pub struct RestoreOptions {
    /// Blocks downloaded at once.
    pub concurrency: usize,
    /// Lock protocol timings.
    pub lock_timings: LockTimings,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            concurrency: crate::create::DEFAULT_CONCURRENCY,
            lock_timings: LockTimings::default(),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Backup restored.
    pub backup: String,
    /// Its volume.
    pub volume: String,
    /// Destination path.
    pub destination: PathBuf,
    /// Volume size.
    pub size: u64,
    /// True if only differences to `previous_backup` were applied.
    pub incremental: bool,
    /// The backup the destination held before.
    pub previous_backup: Option<String>,
    /// Blocks in the backup.
    pub blocks_total: usize,
    /// Blocks downloaded and written.
    pub blocks_written: usize,
    /// Blocks zeroed (removed since the previous backup, or all-zero blocks in an incremental restore).
    pub blocks_zeroed: usize,
    /// Blocks left as they were (unchanged, or all-zero in a full restore).
    pub blocks_unchanged: usize,
    /// Stored bytes downloaded.
    pub bytes_downloaded: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Which blocks to write and which to zero.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RestorePlan {
    pub writes: Vec<(u64, String)>,
    pub zeroes: Vec<u64>,
    pub unchanged: usize,
}

/// Compares the backup's blocks with what the destination may hold.
pub(crate) fn plan(new: &BackupConfig, record: Option<&RestoreRecord>) -> RestorePlan {
    let mut out = RestorePlan::default();
    let Some(record) = record else {
        out.writes = new.blocks.iter().map(|b| (b.offset, b.checksum.clone())).collect();
        return out;
    };
    let pending = record.pending.as_ref().map(|p| &p.blocks);
    let mut new_offsets = std::collections::BTreeSet::new();
    for b in &new.blocks {
        new_offsets.insert(b.offset);
        let same_as_old = record.blocks.get(&b.offset) == Some(&b.checksum);
        let same_as_pending = pending.is_none_or(|p| p.get(&b.offset) == Some(&b.checksum));
        if same_as_old && same_as_pending {
            out.unchanged += 1;
        } else {
            out.writes.push((b.offset, b.checksum.clone()));
        }
    }
    let mut gone: std::collections::BTreeSet<u64> = record.blocks.keys().copied().collect();
    if let Some(p) = pending {
        gone.extend(p.keys().copied());
    }
    out.zeroes = gone.into_iter().filter(|o| !new_offsets.contains(o)).collect();
    out
}

/// Checksum of an all-zero block of `size` bytes (computed once per size).
fn zero_block_checksum(size: u64) -> &'static str {
    static TWO: OnceLock<String> = OnceLock::new();
    static SIXTEEN: OnceLock<String> = OnceLock::new();
    let cell = if size == 16 << 20 { &SIXTEEN } else { &TWO };
    cell.get_or_init(|| block::checksum(&vec![0u8; usize::try_from(size).unwrap_or(0)]))
}

/// The open destination blocks are written into.
#[derive(Clone)]
enum Sink {
    File { file: Arc<std::fs::File>, path: PathBuf, size: u64 },
    Replica { replica: Arc<Replica>, dir: PathBuf, size: u64 },
}

impl Sink {
    fn size(&self) -> u64 {
        match self {
            Sink::File { size, .. } | Sink::Replica { size, .. } => *size,
        }
    }

    /// Writes a verified block; the part beyond the volume end is dropped.
    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let len = usize::try_from(self.size().saturating_sub(offset)).unwrap_or(usize::MAX).min(data.len());
        let data = &data[..len];
        match self {
            Sink::File { file, path, .. } => {
                file.write_all_at(data, offset).map_err(|e| BackupError::io("write restored block", path, e))
            }
            Sink::Replica { replica, dir, .. } => replica
                .write_at(data, offset)
                .map_err(|e| BackupError::replica("write restored block", dir, e)),
        }
    }

    /// Makes `[offset, offset+len)` read as zeros.
    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        let len = len.min(self.size().saturating_sub(offset));
        if len == 0 {
            return Ok(());
        }
        match self {
            Sink::File { file, path, .. } => punch_hole(file, path, offset, len),
            // Zeros are written (not unmapped) so the head hides the older snapshot's data.
            Sink::Replica { .. } => self.write(offset, &vec![0u8; usize::try_from(len).unwrap_or(0)]),
        }
    }

    fn sync(&self) -> Result<()> {
        match self {
            Sink::File { file, path, .. } => {
                file.sync_all().map_err(|e| BackupError::io("fsync restored file", path, e))
            }
            Sink::Replica { replica, dir, .. } => {
                replica.flush().map_err(|e| BackupError::replica("flush", dir, e))
            }
        }
    }
}

fn punch_hole(file: &std::fs::File, path: &Path, offset: u64, len: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(BackupError::InvalidArgument(format!("range {offset}+{len} is too large")));
    };
    // SAFETY: the descriptor is open for the duration of the call; fallocate does not touch memory.
    let rc = unsafe {
        libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, l)
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(BackupError::io("punch hole", path, err));
    }
    let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
    file.write_all_at(&zeros, offset).map_err(|e| BackupError::io("write zeros", path, e))
}

/// Restores `backup` of `volume` from `target` into `dest`.
pub async fn restore_backup(
    target: &BackupTarget,
    volume: &str,
    backup: &str,
    dest: RestoreDestination,
    opts: RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
    validate_existing_name("volume", volume)?;
    validate_existing_name("backup", backup)?;
    let lock = VolumeLock::acquire(target, volume, LockKind::BackupOrRestore, opts.lock_timings).await?;
    let result = restore_locked(target, volume, backup, &dest, opts, progress).await;
    progress.finish();
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "cannot release restore lock; it expires by itself");
    }
    let mut report = result?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn restore_locked(
    target: &BackupTarget,
    volume: &str,
    backup: &str,
    dest: &RestoreDestination,
    opts: RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let volume_cfg = require_volume(target, volume).await?;
    let cfg = load_backup(target, volume, backup).await?;
    let cfg_name = target.describe(&layout::backup_config(volume, backup));
    if cfg.is_in_progress() {
        return Err(BackupError::InvalidArgument(format!(
            "backup {backup} of volume {volume} is still in progress"
        )));
    }
    let block_size = cfg.block_size().map_err(|e| BackupError::corrupt(&cfg_name, e.to_string()))?.bytes();
    let compression = Compression::parse(cfg.compression_or(&volume_cfg.compression_method))
        .map_err(|e| BackupError::corrupt(&cfg_name, e.to_string()))?;
    let size = volume_cfg.size;
    if let Some(last) = cfg.blocks.last() {
        if last.offset >= size {
            return Err(BackupError::corrupt(
                &cfg_name,
                format!("block at offset {} lies beyond the volume size {size}", last.offset),
            ));
        }
    }

    let record_path = dest.record_path();
    let record = {
        let record_path = record_path.clone();
        blocking(move || RestoreRecord::load(&record_path)).await?
    };
    let previous = usable_record(dest, record, target, volume, block_size, size)?;
    let new_record = RestoreRecord {
        version: RECORD_VERSION,
        target: target.url().to_string(),
        volume: volume.to_string(),
        backup: backup.to_string(),
        size,
        block_size,
        snapshot: String::new(),
        blocks: cfg.blocks.iter().map(|b| (b.offset, b.checksum.clone())).collect(),
        pending: None,
    };
    let plan = plan(&cfg, previous.as_ref());
    let mut report = RestoreReport {
        backup: backup.to_string(),
        volume: volume.to_string(),
        destination: dest.path().to_path_buf(),
        size,
        incremental: previous.is_some(),
        previous_backup: previous.as_ref().map(|r| r.backup.clone()),
        blocks_total: cfg.blocks.len(),
        blocks_written: 0,
        blocks_zeroed: 0,
        blocks_unchanged: plan.unchanged,
        bytes_downloaded: 0,
        seconds: 0.0,
    };

    let nothing_to_do = plan.writes.is_empty() && plan.zeroes.is_empty();
    let Some(prepared) =
        prepare_destination(dest, previous, backup, &new_record, size, nothing_to_do).await?
    else {
        return Ok(report);
    };
    let job = ApplyJob {
        target,
        volume,
        block_size,
        compression,
        incremental: report.incremental,
        concurrency: opts.concurrency,
    };
    apply(&job, &prepared.sink, &plan, progress, &mut report).await?;
    finish_destination(prepared, new_record, record_path).await?;
    Ok(report)
}

/// An opened destination, and what makes it final once every block is written.
struct PreparedDestination {
    sink: Sink,
    finish: Finish,
}

enum Finish {
    /// Full restore to a file: sync `<file>.part`, rename it to `<file>`.
    NewFile { part: PathBuf, path: PathBuf },
    /// Incremental restore to a file: sync it in place.
    FileInPlace,
    /// Full restore to a replica directory: snapshot the head, rename the temporary directory into place.
    NewReplica { replica: Arc<Replica>, tmp: PathBuf, dir: PathBuf },
    /// Incremental restore to a replica directory: snapshot the head in place.
    ReplicaInPlace { replica: Arc<Replica>, dir: PathBuf },
}

/// Opens (or creates) the destination. An incremental restore first records itself as pending, so an
/// interrupted run is resumed correctly. None: the destination already holds this backup.
async fn prepare_destination(
    dest: &RestoreDestination,
    previous: Option<RestoreRecord>,
    backup: &str,
    new_record: &RestoreRecord,
    size: u64,
    nothing_to_do: bool,
) -> Result<Option<PreparedDestination>> {
    let record_path = dest.record_path();
    let pending = PendingRestore { backup: backup.to_string(), blocks: new_record.blocks.clone() };
    let prepared = match (dest, previous) {
        (RestoreDestination::File(path), None) => {
            let part = path.with_file_name(format!("{}.part", file_name(path)?));
            let file = {
                let part = part.clone();
                blocking(move || {
                    let file = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&part)
                        .map_err(|e| BackupError::io("create", &part, e))?;
                    file.set_len(size).map_err(|e| BackupError::io("set length of", &part, e))?;
                    Ok(file)
                })
                .await?
            };
            PreparedDestination {
                sink: Sink::File { file: Arc::new(file), path: part.clone(), size },
                finish: Finish::NewFile { part, path: path.clone() },
            }
        }
        (RestoreDestination::File(path), Some(mut old)) => {
            old.pending = Some(pending);
            let file = {
                let path = path.clone();
                blocking(move || {
                    old.save(&record_path)?;
                    let file = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&path)
                        .map_err(|e| BackupError::io("open", &path, e))?;
                    file.set_len(size).map_err(|e| BackupError::io("set length of", &path, e))?;
                    Ok(file)
                })
                .await?
            };
            PreparedDestination {
                sink: Sink::File { file: Arc::new(file), path: path.clone(), size },
                finish: Finish::FileInPlace,
            }
        }
        (RestoreDestination::ReplicaDir(dir), None) => {
            let tmp = dir.with_file_name(format!("{}.corral-restore-tmp", file_name(dir)?));
            let replica = {
                let tmp = tmp.clone();
                blocking(move || {
                    if tmp.exists() {
                        std::fs::remove_dir_all(&tmp)
                            .map_err(|e| BackupError::io("remove leftover", &tmp, e))?;
                    }
                    let replica = Replica::create(&tmp, ReplicaCreateOptions { size })
                        .map_err(|e| BackupError::replica("create", &tmp, e))?;
                    mark_unfinished(&replica, &tmp)?;
                    Ok(replica)
                })
                .await?
            };
            let replica = Arc::new(replica);
            PreparedDestination {
                sink: Sink::Replica { replica: replica.clone(), dir: tmp.clone(), size },
                finish: Finish::NewReplica { replica, tmp, dir: dir.clone() },
            }
        }
        (RestoreDestination::ReplicaDir(dir), Some(mut old)) => {
            if nothing_to_do && old.pending.is_none() {
                return Ok(None);
            }
            let resuming = old.pending.is_some();
            old.pending = Some(pending);
            let replica = {
                let dir = dir.clone();
                blocking(move || {
                    let replica =
                        Replica::open_read_only(&dir).map_err(|e| BackupError::replica("open", &dir, e))?;
                    let head =
                        replica.snapshots().map_err(|e| BackupError::replica("list snapshots", &dir, e))?;
                    let head_bytes =
                        head.iter().find(|s| s.name == corral_replica::HEAD_NAME).map_or(0, |h| h.size);
                    drop(replica);
                    // Our own interrupted restore may have written into the head; anything else is foreign.
                    if head_bytes > 0 && !resuming {
                        return Err(BackupError::InvalidArgument(format!(
                            "{}: the head holds writes made after the last restore, so it is no longer a \
                             disaster-recovery copy; restore into a new directory",
                            dir.display()
                        )));
                    }
                    old.save(&record_path)?;
                    let replica = Replica::open(&dir).map_err(|e| BackupError::replica("open", &dir, e))?;
                    mark_unfinished(&replica, &dir)?;
                    if replica.size() < size {
                        replica.expand(size).map_err(|e| BackupError::replica("expand", &dir, e))?;
                    }
                    Ok(replica)
                })
                .await?
            };
            let replica = Arc::new(replica);
            PreparedDestination {
                sink: Sink::Replica { replica: replica.clone(), dir: dir.clone(), size },
                finish: Finish::ReplicaInPlace { replica, dir: dir.clone() },
            }
        }
    };
    Ok(Some(prepared))
}

/// Makes the written data durable and final, then writes the restore record (always last).
async fn finish_destination(
    prepared: PreparedDestination,
    mut record: RestoreRecord,
    record_path: PathBuf,
) -> Result<()> {
    let PreparedDestination { sink, finish } = prepared;
    match finish {
        Finish::NewFile { part, path } => {
            blocking(move || {
                sink.sync()?;
                std::fs::rename(&part, &path)
                    .map_err(|e| BackupError::io("rename restored image to", &path, e))?;
                sync_parent(&path).map_err(|e| BackupError::io("fsync directory of", &path, e))?;
                record.save(&record_path)
            })
            .await
        }
        Finish::FileInPlace => {
            blocking(move || {
                sink.sync()?;
                record.save(&record_path)
            })
            .await
        }
        Finish::NewReplica { replica, tmp, dir } => {
            // The sink's reference must go before the replica can be closed.
            drop(sink);
            record.snapshot = uuid::Uuid::new_v4().to_string();
            blocking(move || {
                snapshot_and_close(replica, &tmp, &record)?;
                record.save(&record_path_for_dir(&tmp))?;
                std::fs::rename(&tmp, &dir)
                    .map_err(|e| BackupError::io("rename restored replica to", &dir, e))?;
                sync_parent(&dir).map_err(|e| BackupError::io("fsync directory of", &dir, e))
            })
            .await
        }
        Finish::ReplicaInPlace { replica, dir } => {
            drop(sink);
            record.snapshot = uuid::Uuid::new_v4().to_string();
            blocking(move || {
                snapshot_and_close(replica, &dir, &record)?;
                record.save(&record_path)
            })
            .await
        }
    }
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| BackupError::InvalidArgument(format!("{} has no usable file name", path.display())))
}

/// Decides whether the destination's record allows an incremental restore, and refuses to overwrite
/// data that is not a restore of this volume.
fn usable_record(
    dest: &RestoreDestination,
    record: Option<RestoreRecord>,
    target: &BackupTarget,
    volume: &str,
    block_size: u64,
    size: u64,
) -> Result<Option<RestoreRecord>> {
    let path = dest.path();
    let holds_data = match dest {
        RestoreDestination::File(p) => p.exists(),
        RestoreDestination::ReplicaDir(p) => p.join("volume.meta").exists(),
    };
    if let RestoreDestination::ReplicaDir(p) = dest {
        let non_empty = std::fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false);
        if non_empty && !holds_data {
            return Err(BackupError::AlreadyExists {
                what: format!("{} is not empty and holds no replica; it", p.display()),
            });
        }
    }
    match (holds_data, record) {
        (false, _) => Ok(None),
        (true, None) => Err(BackupError::AlreadyExists {
            what: format!("{} holds data that is not a Corral restore; it", path.display()),
        }),
        (true, Some(r)) => {
            if r.volume != volume {
                return Err(BackupError::InvalidArgument(format!(
                    "{} holds a restore of volume {}, not {volume}",
                    path.display(),
                    r.volume
                )));
            }
            if r.block_size != block_size || r.size > size {
                // Longhorn's rule: an incremental restore needs the same block size; a volume never shrinks.
                return Err(BackupError::InvalidArgument(format!(
                    "{} holds a restore with block size {} and size {}; backup has block size {block_size} and \
                     size {size}: restore into a new destination",
                    path.display(),
                    r.block_size,
                    r.size
                )));
            }
            if r.target != target.url() {
                tracing::info!(old = %r.target, new = %target.url(), "restoring from a different target URL");
            }
            Ok(Some(r))
        }
    }
}

/// Turns the head into the restored snapshot, removes older snapshots, closes the replica cleanly.
fn snapshot_and_close(replica: Arc<Replica>, dir: &Path, record: &RestoreRecord) -> Result<()> {
    let mut labels = BTreeMap::new();
    labels.insert("corral.io/backup".to_string(), record.backup.clone());
    labels.insert("corral.io/backup-volume".to_string(), record.volume.clone());
    replica
        .snapshot(&record.snapshot, SnapshotOptions { user_created: true, labels, created: None })
        .map_err(|e| BackupError::replica("snapshot restored data", dir, e))?;
    // Everything restored is synced (a snapshot syncs the head first): only now may the directory serve.
    // Before the purge, which refuses to run on a replica marked rebuilding; a purge cut off by a crash
    // leaves the volume's content as it is (the replica's purge is crash-safe).
    replica
        .set_rebuilding(false)
        .map_err(|e| BackupError::replica("clear the unfinished-restore mark (Rebuilding) of", dir, e))?;
    let older: Vec<String> = replica
        .snapshots()
        .map_err(|e| BackupError::replica("list snapshots", dir, e))?
        .into_iter()
        .filter(|s| s.name != record.snapshot && s.name != corral_replica::HEAD_NAME && !s.removed)
        .map(|s| s.name)
        .collect();
    if !older.is_empty() {
        for name in &older {
            replica
                .mark_removed(name)
                .map_err(|e| BackupError::replica("mark older restore removed", dir, e))?;
        }
        let cancel = std::sync::atomic::AtomicBool::new(false);
        replica
            .purge(&cancel, &|_, _| {})
            .map_err(|e| BackupError::replica("purge older restore", dir, e))?;
    }
    let replica = Arc::try_unwrap(replica)
        .map_err(|_| BackupError::Worker("restored replica is still in use by a worker".to_string()))?;
    replica.close().map_err(|e| BackupError::replica("close", dir, e))
}

/// Marks a replica directory as holding an unfinished restore (its `Rebuilding` flag, durably) before any
/// restored byte is written: until [`snapshot_and_close`] clears it, no engine serves the directory.
fn mark_unfinished(replica: &Replica, dir: &Path) -> Result<()> {
    replica
        .set_rebuilding(true)
        .map_err(|e| BackupError::replica("mark the restore unfinished (Rebuilding) in", dir, e))
}

/// What [`apply`] needs to know about the backup being restored.
struct ApplyJob<'a> {
    target: &'a BackupTarget,
    volume: &'a str,
    block_size: u64,
    compression: Compression,
    /// The destination holds an earlier restore: all-zero blocks must be written, not skipped.
    incremental: bool,
    concurrency: usize,
}

/// Downloads, verifies and writes the planned blocks, and zeroes the planned ranges.
async fn apply(
    job: &ApplyJob<'_>,
    sink: &Sink,
    plan: &RestorePlan,
    progress: &dyn Progress,
    report: &mut RestoreReport,
) -> Result<()> {
    let ApplyJob { target, volume, block_size, compression, incremental, concurrency } = *job;
    let workers = concurrency.max(1);
    // Each block in flight holds at most two buffers (stored, decoded); idle ones are kept for reuse.
    let pool = BufferPool::new(2 * workers + 2);
    let pool = &pool;
    let block_len =
        usize::try_from(block_size).map_err(|_| BackupError::InvalidArgument("block size".into()))?;
    let zero_checksum = zero_block_checksum(block_size);
    progress.begin("restore", (plan.writes.len() + plan.zeroes.len()) as u64 * block_size);
    enum Done {
        Written(u64),
        Zeroed,
        Skipped,
        /// Not started because another block had already failed.
        Abandoned,
    }
    let zero_ops = plan.zeroes.iter().map(|&o| (o, None));
    let write_ops = plan.writes.iter().map(|(o, c)| (*o, Some(c.clone())));
    // After the first failure no new block is started, but every block already in flight is awaited
    // before the error is returned: a write running on a blocking thread cannot be cancelled, and one
    // landing after we return would race with the caller's next restore into the same destination.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let failed = &failed;
    let outcomes: Vec<Result<Done>> = futures::stream::iter(write_ops.chain(zero_ops))
        .map(|(offset, checksum)| {
            let sink = sink.clone();
            async move {
                if failed.load(std::sync::atomic::Ordering::Acquire) {
                    return Ok(Done::Abandoned);
                }
                let outcome = async {
                    let checksum = match checksum {
                        Some(c) if c != zero_checksum => c,
                        // An all-zero block: nothing to download. A fresh destination already reads zeros.
                        Some(_) if !incremental => {
                            progress.advance(block_size);
                            return Ok(Done::Skipped);
                        }
                        _ => {
                            blocking(move || sink.zero(offset, block_size)).await?;
                            progress.advance(block_size);
                            return Ok(Done::Zeroed);
                        }
                    };
                    let key = layout::block(volume, &checksum);
                    let stored = target.get_pooled(&key, pool).await?;
                    let downloaded = stored.len() as u64;
                    let object = target.describe(&key);
                    let pool = pool.clone();
                    blocking(move || {
                        // Decode into a reused buffer; it is written only once its checksum matched.
                        let mut data = pool.take(block_len);
                        block::decode_and_verify_into(
                            &object,
                            compression,
                            &stored,
                            block_size,
                            &checksum,
                            &mut data,
                        )?;
                        drop(stored);
                        sink.write(offset, &data)
                    })
                    .await?;
                    progress.advance(block_size);
                    Ok::<_, BackupError>(Done::Written(downloaded))
                }
                .await;
                if outcome.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::Release);
                }
                outcome
            }
        })
        .buffer_unordered(workers)
        .collect()
        .await;
    let mut results = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        results.push(outcome?);
    }
    for done in results {
        match done {
            Done::Written(bytes) => {
                report.blocks_written += 1;
                report.bytes_downloaded += bytes;
            }
            Done::Zeroed => report.blocks_zeroed += 1,
            Done::Skipped => report.blocks_unchanged += 1,
            Done::Abandoned => {}
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BackupError::Worker(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::backup_config::BlockMapping;

    fn cfg(blocks: &[(u64, char)]) -> BackupConfig {
        let mut c = BackupConfig::in_progress("b", "v", "lz4");
        c.blocks = blocks
            .iter()
            .map(|&(o, ch)| BlockMapping { offset: o, checksum: ch.to_string().repeat(64) })
            .collect();
        c
    }

    fn record(blocks: &[(u64, char)], pending: Option<&[(u64, char)]>) -> RestoreRecord {
        let map = |b: &[(u64, char)]| b.iter().map(|&(o, ch)| (o, ch.to_string().repeat(64))).collect();
        RestoreRecord {
            version: RECORD_VERSION,
            target: String::new(),
            volume: "v".into(),
            backup: "a".into(),
            size: 100,
            block_size: 1,
            snapshot: String::new(),
            blocks: map(blocks),
            pending: pending.map(|p| PendingRestore { backup: "p".into(), blocks: map(p) }),
        }
    }

    #[test]
    fn full_plan_writes_everything() {
        let p = plan(&cfg(&[(0, 'a'), (2, 'b')]), None);
        assert_eq!(p.writes.len(), 2);
        assert!(p.zeroes.is_empty());
    }

    #[test]
    fn incremental_plan_writes_changes_and_zeroes_removed() {
        let p =
            plan(&cfg(&[(0, 'a'), (2, 'c'), (4, 'd')]), Some(&record(&[(0, 'a'), (2, 'b'), (6, 'e')], None)));
        assert_eq!(p.writes, vec![(2, "c".repeat(64)), (4, "d".repeat(64))]);
        assert_eq!(p.zeroes, vec![6]);
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn interrupted_restore_rewrites_where_either_side_differs() {
        // Data may be a mix of the old backup and the pending one.
        let r = record(&[(0, 'a'), (2, 'b')], Some(&[(0, 'x'), (2, 'b'), (8, 'y')]));
        let p = plan(&cfg(&[(0, 'a'), (2, 'b')]), Some(&r));
        assert_eq!(p.writes, vec![(0, "a".repeat(64))]);
        assert_eq!(p.zeroes, vec![8]);
        assert_eq!(p.unchanged, 1);
    }
}
