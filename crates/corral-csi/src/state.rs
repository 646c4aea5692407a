//! What the node service has staged, on disk: one JSON file per volume under
//! `STATE_DIR/volumes/`, written (to a temp file, then renamed) after each step that changes the
//! node, so a plugin restarted at any point finds its FUSE mounts, loop devices and mounts again.
//! The mount table stays the truth for mounts: a record says where to look, `/proc/self/mountinfo`
//! says what is there.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CsiError, Result};

/// A staged volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedVolume {
    pub volume_id: String,
    pub staging_path: PathBuf,
    /// Mount point of the volume's `nbdfuse` (the export is the file `disk` in it).
    pub fuse_dir: PathBuf,
    /// Process id of that `nbdfuse`.
    pub fuse_pid: Option<u32>,
    /// The loop device over the export's file.
    pub loop_device: Option<PathBuf>,
    /// Block access (no filesystem) or the filesystem staged.
    pub block: bool,
    pub fs_type: String,
    /// Target paths this volume is published at.
    #[serde(default)]
    pub publishes: Vec<PathBuf>,
}

/// The per-volume records of one plugin.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path) -> StateDir {
        StateDir { dir: root.join("volumes") }
    }

    fn file(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.json"))
    }

    /// Where a volume's `nbdfuse` mounts.
    pub fn fuse_dir(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.fuse"))
    }

    pub fn load(&self, volume_id: &str) -> Result<Option<StagedVolume>> {
        let path = self.file(volume_id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                CsiError::internal(format!("state file {} is not valid: {e}", path.display())).with_source(e)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CsiError::io(format!("cannot read {}", path.display()), e)),
        }
    }

    pub fn save(&self, v: &StagedVolume) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| CsiError::io(format!("cannot create {}", self.dir.display()), e))?;
        let path = self.file(&v.volume_id);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(v)
            .map_err(|e| CsiError::internal(format!("cannot encode state: {e}")))?;
        std::fs::write(&tmp, bytes)
            .map_err(|e| CsiError::io(format!("cannot write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| CsiError::io(format!("cannot rename {}", tmp.display()), e))
    }

    pub fn remove(&self, volume_id: &str) -> Result<()> {
        match std::fs::remove_file(self.file(volume_id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CsiError::io(format!("cannot remove the state of {volume_id}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_go() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| CsiError::io("tempdir", e))?;
        let state = StateDir::new(dir.path());
        assert_eq!(state.load("v1")?, None);
        let v = StagedVolume {
            volume_id: "v1".into(),
            staging_path: "/stage".into(),
            fuse_dir: state.fuse_dir("v1"),
            fuse_pid: Some(7),
            loop_device: Some("/dev/loop3".into()),
            block: false,
            fs_type: "xfs".into(),
            publishes: vec!["/pod/a".into()],
        };
        state.save(&v)?;
        assert_eq!(state.load("v1")?, Some(v));
        state.remove("v1")?;
        assert_eq!(state.load("v1")?, None);
        Ok(())
    }
}
