//! Reading one snapshot of a replica directory for a backup, through `corral-replica`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral_replica::{Replica, SnapshotInfo};

use crate::error::{BackupError, Result};

/// A read-only replica opened for backing up its snapshots. Clones share the replica.
#[derive(Clone)]
pub(crate) struct SnapshotReader {
    replica: Arc<Replica>,
    dir: PathBuf,
    snapshots: Arc<Vec<SnapshotInfo>>,
}

impl SnapshotReader {
    /// Opens `dir` read-only (never writes anything there).
    pub fn open(dir: &Path) -> Result<Self> {
        let replica =
            Replica::open_read_only(dir).map_err(|e| BackupError::replica("open read-only", dir, e))?;
        let snapshots = replica.snapshots().map_err(|e| BackupError::replica("list snapshots", dir, e))?;
        Ok(SnapshotReader {
            replica: Arc::new(replica),
            dir: dir.to_path_buf(),
            snapshots: Arc::new(snapshots),
        })
    }

    pub fn size(&self) -> u64 {
        self.replica.size()
    }

    /// The snapshot's info, if it is a snapshot (not the head) of this replica.
    pub fn snapshot(&self, name: &str) -> Option<&SnapshotInfo> {
        self.snapshots.iter().find(|s| s.name == name && s.name != corral_replica::HEAD_NAME)
    }

    /// True if `ancestor` is `snapshot` itself or one of its ancestors (still in its chain).
    pub fn in_chain_of(&self, snapshot: &str, ancestor: &str) -> bool {
        let mut current = Some(snapshot.to_string());
        let mut steps = 0;
        while let Some(name) = current {
            if name == ancestor {
                return true;
            }
            steps += 1;
            if steps > self.snapshots.len() {
                return false;
            }
            current = self.snapshot(&name).and_then(|s| s.parent.clone());
        }
        false
    }

    /// 4 KiB-granular ranges of `to` whose data is newer than `from` (None = all data of `to`).
    pub fn changed_ranges(&self, from: Option<&str>, to: &str) -> Result<Vec<(u64, u64)>> {
        let extents = self
            .replica
            .changed_ranges(from, to)
            .map_err(|e| BackupError::replica("compute changed ranges", &self.dir, e))?;
        Ok(extents.into_iter().map(|e| (e.offset, e.len)).collect())
    }

    /// Reads `buf.len()` bytes of the snapshot at `offset` (the part beyond the volume end reads as zeros).
    pub fn read(&self, snapshot: &str, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.size();
        let available = usize::try_from(size.saturating_sub(offset)).unwrap_or(usize::MAX).min(buf.len());
        let (head, tail) = buf.split_at_mut(available);
        tail.fill(0);
        if head.is_empty() {
            return Ok(());
        }
        self.replica
            .read_snapshot_at(snapshot, head, offset)
            .map_err(|e| BackupError::replica("read snapshot", &self.dir, e))
    }
}
