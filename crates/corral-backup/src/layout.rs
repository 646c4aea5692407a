//! Where things live in a backup target (Longhorn's backupstore layout, byte-compatible).
//!
//! ```text
//! <target path>/backupstore/volumes/<h[0:2]>/<h[2:4]>/<volume>/volume.cfg
//!                                                            /backups/backup_<backup>.cfg
//!                                                            /blocks/<c[0:2]>/<c[2:4]>/<c>.blk
//!                                                            /locks/lock-<16 hex>.lck
//! h = lowercase hex SHA-512 of the volume name
//! c = block checksum: the first 64 hex digits of the SHA-512 of the uncompressed block
//! ```
//! All keys here are relative to the target's root (the path in the target URL).

use sha2::{Digest, Sha512};

/// Top directory of every backup store.
pub const BACKUPSTORE_DIR: &str = "backupstore";
/// Directory (under [`BACKUPSTORE_DIR`]) holding the volumes.
pub const VOLUMES_DIR: &str = "backupstore/volumes";
/// Name of a volume's config file.
pub const VOLUME_CONFIG_FILE: &str = "volume.cfg";
/// Directory of backup configs inside a volume directory.
pub const BACKUPS_DIR: &str = "backups";
/// Directory of blocks inside a volume directory.
pub const BLOCKS_DIR: &str = "blocks";
/// Directory of lock files inside a volume directory.
pub const LOCKS_DIR: &str = "locks";
/// Prefix of backup config file names.
pub const BACKUP_CONFIG_PREFIX: &str = "backup_";
/// Suffix of backup config file names.
pub const CONFIG_SUFFIX: &str = ".cfg";
/// Suffix of block file names.
pub const BLOCK_SUFFIX: &str = ".blk";
/// Suffix of lock file names.
pub const LOCK_SUFFIX: &str = ".lck";

/// Lowercase hex SHA-512 of a volume name.
pub fn volume_name_hash(volume: &str) -> String {
    hex::encode(Sha512::digest(volume.as_bytes()))
}

/// `backupstore/volumes/<h0:2>/<h2:4>/<volume>`.
pub fn volume_dir(volume: &str) -> String {
    let h = volume_name_hash(volume);
    format!("{VOLUMES_DIR}/{}/{}/{volume}", &h[0..2], &h[2..4])
}

/// The key of a volume's `volume.cfg`.
pub fn volume_config(volume: &str) -> String {
    format!("{}/{VOLUME_CONFIG_FILE}", volume_dir(volume))
}

/// The directory holding a volume's backup configs.
pub fn backups_dir(volume: &str) -> String {
    format!("{}/{BACKUPS_DIR}", volume_dir(volume))
}

/// The key of `backups/backup_<backup>.cfg`.
pub fn backup_config(volume: &str, backup: &str) -> String {
    format!("{}/{BACKUP_CONFIG_PREFIX}{backup}{CONFIG_SUFFIX}", backups_dir(volume))
}

/// The directory holding a volume's blocks.
pub fn blocks_dir(volume: &str) -> String {
    format!("{}/{BLOCKS_DIR}", volume_dir(volume))
}

/// The key of one block, `blocks/<c0:2>/<c2:4>/<c>.blk`. `checksum` must be validated (64 hex digits).
pub fn block(volume: &str, checksum: &str) -> String {
    format!("{}/{}/{}/{checksum}{BLOCK_SUFFIX}", blocks_dir(volume), &checksum[0..2], &checksum[2..4])
}

/// The directory holding a volume's lock files.
pub fn locks_dir(volume: &str) -> String {
    format!("{}/{LOCKS_DIR}", volume_dir(volume))
}

/// The key of one lock file.
pub fn lock(volume: &str, lock_name: &str) -> String {
    format!("{}/{lock_name}{LOCK_SUFFIX}", locks_dir(volume))
}

/// The backup name in a `backup_<name>.cfg` file name, if it is one.
pub fn backup_name_from_file(file_name: &str) -> Option<&str> {
    file_name.strip_prefix(BACKUP_CONFIG_PREFIX)?.strip_suffix(CONFIG_SUFFIX).filter(|n| !n.is_empty())
}

/// The checksum in a `<c>.blk` file name, if it is one.
pub fn checksum_from_block_file(file_name: &str) -> Option<&str> {
    file_name.strip_suffix(BLOCK_SUFFIX).filter(|c| crate::block::is_valid_checksum(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_hash_matches_longhorn_docs_and_fixture() {
        // Documented example: pvc-0123abcd-test -> a7/9b; the fixture's vol1 lives under 01/9c.
        assert!(volume_dir("pvc-0123abcd-test").starts_with("backupstore/volumes/a7/9b/"));
        assert_eq!(volume_dir("vol1"), "backupstore/volumes/01/9c/vol1");
    }

    #[test]
    fn keys() {
        let c = "8616bfe3f6f2e99a33f4a422199e037ff45952b2cfd2793124b36f54061523c5";
        assert_eq!(block("vol1", c), format!("backupstore/volumes/01/9c/vol1/blocks/86/16/{c}.blk"));
        assert_eq!(
            backup_config("vol1", "bk-snap2"),
            "backupstore/volumes/01/9c/vol1/backups/backup_bk-snap2.cfg"
        );
        assert_eq!(
            lock("vol1", "lock-0011223344556677"),
            "backupstore/volumes/01/9c/vol1/locks/lock-0011223344556677.lck"
        );
        assert_eq!(backup_name_from_file("backup_bk-snap2.cfg"), Some("bk-snap2"));
        assert_eq!(backup_name_from_file("backup_.cfg"), None);
        assert_eq!(checksum_from_block_file(&format!("{c}.blk")), Some(c));
        assert_eq!(checksum_from_block_file("xyz.blk"), None);
    }
}
