//! Backup-volume locks, compatible with Longhorn's file-lock protocol (reference §6.8).
//!
//! A lock is a file `locks/lock-<16 hex>.lck` in the volume directory (see `format::lock_file`). Backup
//! and restore share type 1 and may run together; deletion (type 2) excludes both. To acquire:
//! 1. write our lock file with `Acquired:false` (its server mtime orders us against concurrent requests);
//! 2. wait `check_wait` (2 s: server mtimes have second precision and clocks differ);
//! 3. list all locks; we may proceed unless a lock of the *other* type that has not expired (mtime older
//!    than `expiry`, 150 s) ranks before ours: acquired before waiting, then older mtime, then smaller name;
//! 4. if we may, rewrite our file with `Acquired:true` and refresh it every `refresh` (60 s) until released;
//!    otherwise re-check every `check_interval` (10 s) until `max_wait` (30 s), then delete ours and fail.
//!
//! Releasing deletes the file. A process that dies leaves a file that expires after 150 s.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{BackupError, Result};
use crate::format::lock_file::{LockFile, LOCK_TYPE_BACKUP, LOCK_TYPE_DELETION};
use crate::layout;
use crate::target::BackupTarget;

/// Which operations a lock admits alongside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Backup or restore (Longhorn's BACKUP_LOCK = RESTORE_LOCK = 1).
    BackupOrRestore,
    /// Deletion and garbage collection (DELETION_LOCK = 2).
    Deletion,
}

impl LockKind {
    fn code(self) -> i64 {
        match self {
            LockKind::BackupOrRestore => LOCK_TYPE_BACKUP,
            LockKind::Deletion => LOCK_TYPE_DELETION,
        }
    }
}

/// The protocol's timings. [`Default`] is Longhorn's; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTimings {
    /// Wait between writing our lock and reading the others (Longhorn: 2 s).
    pub check_wait: Duration,
    /// Give up after this long (Longhorn: 30 s).
    pub max_wait: Duration,
    /// Re-check interval while waiting (Longhorn: 10 s).
    pub check_interval: Duration,
    /// Rewrite a held lock this often (Longhorn: 60 s).
    pub refresh: Duration,
    /// A lock whose file is older than this is ignored (Longhorn: 150 s).
    pub expiry: Duration,
}

impl Default for LockTimings {
    fn default() -> Self {
        LockTimings {
            check_wait: Duration::from_secs(2),
            max_wait: Duration::from_secs(30),
            check_interval: Duration::from_secs(10),
            refresh: Duration::from_secs(60),
            expiry: Duration::from_secs(150),
        }
    }
}

/// A held lock. Call [`VolumeLock::release`]; dropping it only stops the refresh (the file then expires).
#[derive(Debug)]
pub struct VolumeLock {
    target: BackupTarget,
    volume: String,
    name: String,
    refresher: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct ServerLock {
    file: LockFile,
    server_time: DateTime<Utc>,
}

/// Longhorn's `compareLocks`: negative if `a` ranks before `b`.
fn ranks_before(a: &ServerLock, b: &ServerLock) -> bool {
    if a.file.acquired != b.file.acquired {
        return a.file.acquired;
    }
    if a.server_time != b.server_time {
        return a.server_time < b.server_time;
    }
    a.file.name < b.file.name
}

impl VolumeLock {
    /// Acquires a lock of `kind` on `volume`, waiting as the protocol says.
    pub async fn acquire(
        target: &BackupTarget,
        volume: &str,
        kind: LockKind,
        timings: LockTimings,
    ) -> Result<Self> {
        let name = crate::names::generate_name("lock");
        let key = layout::lock(volume, &name);
        let mut own = LockFile { name: name.clone(), lock_type: kind.code(), acquired: false };
        write_lock(target, &key, &own).await?;
        let own_time = match target.head(&key).await? {
            Some(meta) => meta.last_modified,
            None => {
                return Err(BackupError::corrupt(
                    target.describe(&key),
                    "lock file vanished right after it was written",
                ))
            }
        };
        let started = tokio::time::Instant::now();
        tokio::time::sleep(timings.check_wait).await;
        loop {
            let me = ServerLock { file: own.clone(), server_time: own_time };
            let blocker = match list_locks(target, volume).await {
                Ok(locks) => locks.into_iter().find(|other| {
                    other.file.lock_type != own.lock_type
                        && ranks_before(other, &me)
                        && Utc::now().signed_duration_since(other.server_time).to_std().unwrap_or_default()
                            <= timings.expiry
                }),
                Err(e) => {
                    let _ = target.delete(&key).await;
                    return Err(e);
                }
            };
            match blocker {
                None => {
                    own.acquired = true;
                    if let Err(e) = write_lock(target, &key, &own).await {
                        let _ = target.delete(&key).await;
                        return Err(e);
                    }
                    let refresher = tokio::spawn(refresh_loop(target.clone(), key, own, timings.refresh));
                    return Ok(VolumeLock {
                        target: target.clone(),
                        volume: volume.to_string(),
                        name,
                        refresher,
                    });
                }
                Some(other) if started.elapsed() >= timings.max_wait => {
                    let _ = target.delete(&key).await;
                    return Err(BackupError::Busy(format!(
                        "backup volume {volume} is locked by {} ({}, {}) in {}; gave up after {:?}",
                        other.file.name,
                        if other.file.lock_type == LOCK_TYPE_DELETION {
                            "deletion"
                        } else {
                            "backup/restore"
                        },
                        if other.file.acquired { "held" } else { "waiting" },
                        target.url(),
                        timings.max_wait
                    )));
                }
                Some(_) => tokio::time::sleep(timings.check_interval.min(timings.max_wait)).await,
            }
        }
    }

    /// The lock's name (`lock-<16 hex>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Releases the lock (deletes its file).
    pub async fn release(self) -> Result<()> {
        self.refresher.abort();
        self.target.delete(&layout::lock(&self.volume, &self.name)).await
    }
}

impl Drop for VolumeLock {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

async fn write_lock(target: &BackupTarget, key: &str, lock: &LockFile) -> Result<()> {
    target.put(key, lock.encode()?.into()).await
}

async fn refresh_loop(target: BackupTarget, key: String, lock: LockFile, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = write_lock(&target, &key, &lock).await {
            tracing::warn!(lock = %key, error = %e, "cannot refresh backup-store lock");
        }
    }
}

async fn list_locks(target: &BackupTarget, volume: &str) -> Result<Vec<ServerLock>> {
    let mut locks = Vec::new();
    for (file_name, meta) in target.list_files(&layout::locks_dir(volume)).await? {
        let Some(name) = file_name.strip_suffix(layout::LOCK_SUFFIX) else { continue };
        let key = layout::lock(volume, name);
        // A lock that vanished or cannot be parsed is skipped, as Longhorn does.
        let Ok(Some(bytes)) = target.get_opt(&key).await else { continue };
        match LockFile::parse(&target.describe(&key), &bytes) {
            Ok(file) => locks.push(ServerLock { file, server_time: meta.last_modified }),
            Err(e) => tracing::warn!(error = %e, "ignoring unreadable lock file"),
        }
    }
    Ok(locks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(name: &str, acquired: bool, secs: i64) -> ServerLock {
        ServerLock {
            file: LockFile { name: name.into(), lock_type: 1, acquired },
            server_time: DateTime::from_timestamp(secs, 0).unwrap_or_default(),
        }
    }

    #[test]
    fn ranking_follows_longhorn() {
        assert!(ranks_before(&lock("lock-b", true, 10), &lock("lock-a", false, 1)));
        assert!(ranks_before(&lock("lock-b", false, 1), &lock("lock-a", false, 2)));
        assert!(ranks_before(&lock("lock-a", false, 1), &lock("lock-b", false, 1)));
        assert!(!ranks_before(&lock("lock-b", false, 1), &lock("lock-a", false, 1)));
    }
}
