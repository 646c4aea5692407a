//! The golden fixtures written by Longhorn, kept in the repository under `tests/fixtures/longhorn` (see its
//! README for how they were made, and `SHA256SUMS`). Paths are built from this crate's manifest directory,
//! so a fresh clone finds them wherever it lives.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The replica directory fixture (volume `vol1`, 64 MiB, chain UUID snapshot ← `snap2` ← head).
pub const REPLICA_TWO_SNAPSHOTS: &str = "replica-two-snapshots.tar.gz";
/// The backup-store fixture (`bk-snap2`, `bk-snap3` of `vol1`).
pub const BACKUPSTORE_VFS: &str = "backupstore-vfs.tar.gz";
/// The directory [`REPLICA_TWO_SNAPSHOTS`] extracts to.
pub const REPLICA_DIR_NAME: &str = "two-snapshots";
/// SHA-256 of the 64 MiB volume read through the fixture replica's head (= restored `bk-snap3`).
pub const HEAD_SHA256: &str = "742a32de6696dbac0a89e8e8a8eed3840612870d72b74b3950409750d8a3a1a3";
/// SHA-256 of the volume as of snapshot `snap2` (= restored `bk-snap2`).
pub const SNAP2_SHA256: &str = "f7c01b125079dcb2cdc9070d077363db89026ef00f66fbfad632aebaaee54647";
/// The fixture's first snapshot, named by a UUID because Longhorn created it unnamed.
pub const UUID_SNAPSHOT: &str = "68129740-95fa-41f1-9ff2-30a78ca4a61b";
/// Size of the fixture volume.
pub const VOLUME_SIZE: u64 = 64 << 20;

/// `tests/fixtures/longhorn` of the workspace.
pub fn longhorn_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/longhorn")
}

/// The path of a Longhorn fixture file; panics if the repository does not have it.
pub fn longhorn(name: &str) -> PathBuf {
    let path = longhorn_dir().join(name);
    assert!(path.is_file(), "fixture {name} is missing: expected {}", path.display());
    path
}

/// Extracts a Longhorn fixture tarball into `into`, keeping holes (`tar -xSzf`).
pub fn extract_longhorn(name: &str, into: &Path) {
    let tarball = longhorn(name);
    let status = Command::new("tar")
        .arg("-xSzf")
        .arg(&tarball)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap_or_else(|err| panic!("tar is needed to extract {}: {err}", tarball.display()));
    assert!(status.success(), "tar -xSzf {} failed: {status}", tarball.display());
}

/// Extracts the replica fixture into `into` and returns its replica directory.
pub fn extract_longhorn_replica(into: &Path) -> PathBuf {
    extract_longhorn(REPLICA_TWO_SNAPSHOTS, into);
    let dir = into.join(REPLICA_DIR_NAME);
    assert!(dir.join("volume.meta").is_file(), "no volume.meta in {}", dir.display());
    dir
}
