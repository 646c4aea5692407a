//! Corral's restore record: which backup a restored file or replica directory holds (not a Longhorn file).
//!
//! Longhorn keeps the last-restored backup of a DR volume in memory only, so a restart forces a full
//! restore. Corral writes this record beside the data (`<file>.corral-restore.json`, or
//! `<replica dir>/corral-restore.json`) with write-temp + fsync + rename + fsync(dir), after the data is
//! durable. It lists the restored blocks, so an incremental restore needs neither the old backup (it may
//! have been deleted since) nor a re-read of the data.
//!
//! Layout (pretty-printed JSON):
//! ```text
//! {"version": 1,
//!  "target": "s3://bucket@region/path",        where the backups came from
//!  "volume": "vol1", "backup": "bk-snap3",      the backup the data equals
//!  "size": 67108864, "block_size": 2097152,
//!  "snapshot": "2c1f…",                          replica directories: the snapshot holding the data
//!  "blocks": [[0, "79c9…"], [8388608, "aa80…"]], offset and checksum of every restored block
//!  "pending": null | {"backup": "bk-x", "blocks": [[…]]}}
//! ```
//! `pending` is set (durably) before an incremental restore starts writing: after a crash the data is a
//! mix of `blocks` and `pending.blocks`, and the next restore rewrites every block where either differs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{BackupError, Result};

/// Current record version.
pub const RECORD_VERSION: u32 = 1;

/// A restore that was started and may be partly applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRestore {
    /// Backup being restored.
    pub backup: String,
    /// Its blocks.
    pub blocks: BTreeMap<u64, String>,
}

/// The restore record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// Format version.
    pub version: u32,
    /// Target URL.
    pub target: String,
    /// Backup volume.
    pub volume: String,
    /// Backup the data equals.
    pub backup: String,
    /// Volume size.
    pub size: u64,
    /// Block size.
    pub block_size: u64,
    /// Replica snapshot holding the data ("" for files).
    #[serde(default)]
    pub snapshot: String,
    /// Restored blocks: offset -> checksum.
    #[serde(with = "block_list")]
    pub blocks: BTreeMap<u64, String>,
    /// An incremental restore in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingRestore>,
}

mod block_list {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(blocks: &BTreeMap<u64, String>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(blocks.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, String>, D::Error> {
        Ok(Vec::<(u64, String)>::deserialize(d)?.into_iter().collect())
    }
}

/// Record path for a restored file.
pub fn record_path_for_file(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".corral-restore.json");
    PathBuf::from(name)
}

/// Record path inside a restored replica directory.
pub fn record_path_for_dir(dir: &Path) -> PathBuf {
    dir.join("corral-restore.json")
}

impl RestoreRecord {
    /// Reads a record; None if there is none.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BackupError::io("read restore record", path, e)),
        };
        let record: RestoreRecord = serde_json::from_slice(&bytes).map_err(|e| {
            BackupError::corrupt(path.display().to_string(), format!("malformed restore record: {e}"))
        })?;
        if record.version != RECORD_VERSION {
            return Err(BackupError::corrupt(
                path.display().to_string(),
                format!("restore record version {} is not supported", record.version),
            ));
        }
        Ok(Some(record))
    }

    /// Writes the record durably: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| BackupError::InvalidArgument(format!("cannot encode restore record: {e}")))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            sync_parent(path)
        };
        write().map_err(|e| BackupError::io("write restore record", path, e))
    }
}

/// fsync of the directory holding `path`, so a rename into it is durable.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.corral-restore.json");
        assert_eq!(RestoreRecord::load(&path).unwrap(), None);
        let record = RestoreRecord {
            version: RECORD_VERSION,
            target: "vfs:///x".into(),
            volume: "vol1".into(),
            backup: "b1".into(),
            size: 64 << 20,
            block_size: 2 << 20,
            snapshot: String::new(),
            blocks: [(0, "a".repeat(64)), (2 << 20, "b".repeat(64))].into_iter().collect(),
            pending: Some(PendingRestore { backup: "b2".into(), blocks: BTreeMap::new() }),
        };
        record.save(&path).unwrap();
        assert_eq!(RestoreRecord::load(&path).unwrap(), Some(record));
        std::fs::write(&path, b"{\"version\":1,").unwrap();
        assert_eq!(RestoreRecord::load(&path).unwrap_err().kind(), crate::ErrorKind::Corrupt);
    }
}
