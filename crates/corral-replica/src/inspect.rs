//! Offline tools for operators (`corral replica info|export|check`): all read-only.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{ErrorKind, ReplicaError, Result};
pub use crate::scan::Problem;
use crate::{scan, Replica, SnapshotInfo, HEAD_NAME};

/// What `corral replica info` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaInfo {
    /// The directory.
    pub dir: PathBuf,
    /// Volume size in bytes.
    pub size: u64,
    /// Head file name.
    pub head: String,
    /// Live chain: snapshot names from the head's parent to the root.
    pub chain: Vec<String>,
    /// Revision counter.
    pub revision: u64,
    /// Corral generation.
    pub generation: u64,
    /// `Dirty` flag.
    pub dirty: bool,
    /// `Rebuilding` flag.
    pub rebuilding: bool,
    /// Every snapshot and the head, with removed flags, labels and allocated sizes.
    pub snapshots: Vec<SnapshotInfo>,
}

/// Reads a replica directory's facts without writing anything.
pub fn info(dir: &Path) -> Result<ReplicaInfo> {
    let replica = Replica::open_read_only(dir)?;
    let facts = replica.recovery_facts();
    Ok(ReplicaInfo {
        dir: dir.to_path_buf(),
        size: facts.size,
        head: facts.head,
        chain: facts.chain,
        revision: facts.revision,
        generation: facts.generation,
        dirty: facts.dirty,
        rebuilding: facts.rebuilding,
        snapshots: replica.snapshots()?,
    })
}

/// Writes the volume as of the head (`snapshot = None`) or of a snapshot to `out` as a raw image.
/// Only ranges holding data are written; the rest stays a hole (the file is sized with `set_len`).
pub fn export(dir: &Path, snapshot: Option<&str>, out: &Path) -> Result<()> {
    let replica = Replica::open_read_only(dir)?;
    let view = snapshot.unwrap_or(HEAD_NAME);
    let ranges = replica.view_data_ranges(view)?;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|e| ReplicaError::io("create export file", out, e))?;
    f.set_len(replica.size()).map_err(|e| ReplicaError::io("size export file", out, e))?;
    let mut buf = vec![0u8; 4 << 20];
    for r in ranges {
        let mut pos = r.offset;
        let end = r.offset + r.len;
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            replica.read_snapshot_at(view, &mut buf[..n], pos)?;
            if buf[..n].iter().any(|&b| b != 0) {
                f.write_all_at(&buf[..n], pos)
                    .map_err(|e| ReplicaError::io("write export file", out, e).with_offset(pos))?;
            }
            pos += n as u64;
        }
    }
    f.sync_all().map_err(|e| ReplicaError::io("fsync export file", out, e))
}

/// Result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    /// The directory.
    pub dir: PathBuf,
    /// Every problem found; empty = consistent.
    pub problems: Vec<Problem>,
    /// Leftover files an interrupted operation left (removed at the next read-write open; not errors).
    pub leftovers: Vec<String>,
}

impl CheckReport {
    /// True if no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies a replica directory's metadata without writing anything: every file parses, the head and
/// every recorded layer exist, parents exist, no loops, sizes agree. A file that does not parse is
/// reported as a problem naming it (`Err` only when the directory cannot be read at all).
pub fn check(dir: &Path) -> Result<CheckReport> {
    match scan::scan(dir) {
        Ok(s) => Ok(CheckReport {
            dir: dir.to_path_buf(),
            problems: scan::problems(&s),
            leftovers: s.leftovers.clone(),
        }),
        Err(e) if e.kind() == ErrorKind::Corrupt => Ok(CheckReport {
            dir: dir.to_path_buf(),
            problems: vec![Problem {
                file: e.path().map(Path::to_path_buf).unwrap_or_else(|| dir.to_path_buf()),
                message: e.message().to_string(),
            }],
            leftovers: Vec::new(),
        }),
        Err(e) => Err(e),
    }
}
