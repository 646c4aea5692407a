//! `backups/backup_<name>.cfg`: one per backup (Longhorn's `Backup` struct in backupstore).
//!
//! Layout (one line, no trailing newline, keys in this order; see the `format` module for the Go rules):
//! ```text
//! {"Name":"bk-snap2",                               string
//!  "VolumeName":"vol1",                             string
//!  "SnapshotName":"snap2",                          string (without volume-snap-/.img)
//!  "SnapshotCreatedAt":"2026-11-26T15:52:39Z",      RFC3339 (the backup's start time, as Longhorn does)
//!  "CreatedTime":"2026-11-26T15:52:41Z",            RFC3339; "" = backup in progress
//!  "Size":"4194304",                                int64 as string (= blocks x block size)
//!  "Labels":{"purpose":"sample"},                   object|null
//!  "Parameters":{"backup-block-size":"2097152"},    object|null (backup-block-size: quantity, missing = 2 MiB;
//!                                                                backup-mode: full|incremental)
//!  "IsIncremental":false,                           bool
//!  "CompressionMethod":"lz4",                       plain string: none|lz4|gzip
//!  "NewlyUploadedDataSize":"16546",                 int64 as string (stored bytes uploaded)
//!  "ReUploadedDataSize":"0",                        int64 as string
//!  "ProcessingBlocks":{},                           {} for a full backup, null for an incremental one
//!  "Blocks":[{"Offset":0,"BlockChecksum":"8616…"}], sorted by offset; every block of the snapshot;
//!                                                   key omitted when there are none
//!  "SingleFile":{"FilePath":""}}                    always present
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{int_as_string, nullable_string};
use crate::block::{is_valid_checksum, BlockSize};
use crate::error::{BackupError, Result};

/// Parameter key of the block size.
pub const PARAM_BLOCK_SIZE: &str = "backup-block-size";
/// Parameter key of the requested mode.
pub const PARAM_MODE: &str = "backup-mode";

/// One entry of `Blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMapping {
    /// Byte offset of the block in the volume (a multiple of the block size).
    #[serde(rename = "Offset")]
    pub offset: u64,
    /// Checksum (and name) of the block.
    #[serde(rename = "BlockChecksum", deserialize_with = "nullable_string::deserialize")]
    pub checksum: String,
}

/// `ProcessingBlocks`: Go serialises an internal struct with no exported fields, i.e. always `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyObject {}

/// `SingleFile`: the legacy single-file backup's path, always empty for block backups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SingleFile {
    /// Always "" for delta-block backups.
    #[serde(rename = "FilePath", default, deserialize_with = "nullable_string::deserialize")]
    pub file_path: String,
}

/// The parsed backup config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupConfig {
    /// Backup name.
    #[serde(rename = "Name", default, deserialize_with = "nullable_string::deserialize")]
    pub name: String,
    /// Volume name.
    #[serde(rename = "VolumeName", default, deserialize_with = "nullable_string::deserialize")]
    pub volume_name: String,
    /// Snapshot the backup was taken from.
    #[serde(rename = "SnapshotName", default, deserialize_with = "nullable_string::deserialize")]
    pub snapshot_name: String,
    /// Time the backup started (Longhorn's meaning).
    #[serde(rename = "SnapshotCreatedAt", default, deserialize_with = "nullable_string::deserialize")]
    pub snapshot_created_at: String,
    /// Time the backup completed; "" while in progress.
    #[serde(rename = "CreatedTime", default, deserialize_with = "nullable_string::deserialize")]
    pub created_time: String,
    /// Bytes covered by the listed blocks.
    #[serde(rename = "Size", default, with = "int_as_string")]
    pub size: u64,
    /// User labels.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Backup parameters (block size, mode).
    #[serde(rename = "Parameters", default)]
    pub parameters: Option<BTreeMap<String, String>>,
    /// Whether only changed blocks were read.
    #[serde(rename = "IsIncremental", default)]
    pub is_incremental: bool,
    /// Compression of the blocks this backup uploaded.
    #[serde(rename = "CompressionMethod", default, deserialize_with = "nullable_string::deserialize")]
    pub compression_method: String,
    /// Stored bytes uploaded by this backup.
    #[serde(rename = "NewlyUploadedDataSize", default, with = "int_as_string")]
    pub newly_uploaded_data_size: u64,
    /// Stored bytes uploaded again although the block existed (full mode).
    #[serde(rename = "ReUploadedDataSize", default, with = "int_as_string")]
    pub re_uploaded_data_size: u64,
    /// Always `{}` (full) or `null` (incremental).
    #[serde(rename = "ProcessingBlocks", default)]
    pub processing_blocks: Option<EmptyObject>,
    /// Every block of the snapshot, sorted by offset.
    #[serde(rename = "Blocks", default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<BlockMapping>,
    /// Legacy single-file backup path.
    #[serde(rename = "SingleFile", default)]
    pub single_file: SingleFile,
}

impl BackupConfig {
    /// The placeholder Longhorn writes before uploading: marks the backup as in progress.
    pub fn in_progress(name: &str, volume: &str, compression: &str) -> Self {
        BackupConfig {
            name: name.to_string(),
            volume_name: volume.to_string(),
            snapshot_name: String::new(),
            snapshot_created_at: String::new(),
            created_time: String::new(),
            size: 0,
            labels: None,
            parameters: None,
            is_incremental: false,
            compression_method: compression.to_string(),
            newly_uploaded_data_size: 0,
            re_uploaded_data_size: 0,
            processing_blocks: None,
            blocks: Vec::new(),
            single_file: SingleFile::default(),
        }
    }

    /// True while the backup is being written (Longhorn's rule: empty `CreatedTime`).
    pub fn is_in_progress(&self) -> bool {
        self.created_time.is_empty()
    }

    /// Parses a backup config read from `object`, and checks what restore and GC rely on: valid block
    /// checksums, block-aligned offsets in ascending order, and a supported block size.
    pub fn parse(object: &str, bytes: &[u8]) -> Result<Self> {
        let cfg: BackupConfig = super::from_json(object, bytes)?;
        let block_size = cfg.block_size().map_err(|e| BackupError::corrupt(object, e.to_string()))?;
        let mut previous: Option<u64> = None;
        for block in &cfg.blocks {
            if !is_valid_checksum(&block.checksum) {
                return Err(BackupError::corrupt(
                    object,
                    format!("block at offset {} has an invalid checksum {:?}", block.offset, block.checksum),
                ));
            }
            if block.offset % block_size.bytes() != 0 {
                return Err(BackupError::corrupt(
                    object,
                    format!(
                        "block offset {} is not a multiple of the block size {}",
                        block.offset, block_size
                    ),
                ));
            }
            if previous.is_some_and(|p| p >= block.offset) {
                return Err(BackupError::corrupt(
                    object,
                    format!("block offset {} is out of order or repeated", block.offset),
                ));
            }
            previous = Some(block.offset);
        }
        Ok(cfg)
    }

    /// Encodes as Longhorn writes it.
    pub fn encode(&self) -> Result<Vec<u8>> {
        super::to_go_json(self)
    }

    /// The backup's block size from `Parameters` (missing, empty or 0 = 2 MiB).
    pub fn block_size(&self) -> Result<BlockSize> {
        match self.parameters.as_ref().and_then(|p| p.get(PARAM_BLOCK_SIZE)) {
            None => Ok(BlockSize::default()),
            Some(q) => BlockSize::parse_quantity(q),
        }
    }

    /// Compression of the blocks, with the volume's method as fallback for old configs.
    pub fn compression_or<'a>(&'a self, volume_default: &'a str) -> &'a str {
        if self.compression_method.is_empty() {
            volume_default
        } else {
            &self.compression_method
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The two backup configs of the Longhorn-written fixture backupstore-vfs.tar.gz, byte for byte.
    pub(crate) const LONGHORN_FULL: &str = r#"{"Name":"bk-snap2","VolumeName":"vol1","SnapshotName":"snap2","SnapshotCreatedAt":"2026-11-26T15:52:39Z","CreatedTime":"2026-11-26T15:52:41Z","Size":"4194304","Labels":{"purpose":"sample"},"Parameters":{"backup-block-size":"2097152"},"IsIncremental":false,"CompressionMethod":"lz4","NewlyUploadedDataSize":"16546","ReUploadedDataSize":"0","ProcessingBlocks":{},"Blocks":[{"Offset":0,"BlockChecksum":"8616bfe3f6f2e99a33f4a422199e037ff45952b2cfd2793124b36f54061523c5"},{"Offset":8388608,"BlockChecksum":"aa804b03338f2e50c730e28368c033bfd159075875776a4f1a93d125b5002707"}],"SingleFile":{"FilePath":""}}"#;
    pub(crate) const LONGHORN_INCREMENTAL: &str = r#"{"Name":"bk-snap3","VolumeName":"vol1","SnapshotName":"snap3","SnapshotCreatedAt":"2026-11-26T15:52:59Z","CreatedTime":"2026-11-26T15:53:01Z","Size":"6291456","Labels":null,"Parameters":{"backup-block-size":"2097152"},"IsIncremental":true,"CompressionMethod":"lz4","NewlyUploadedDataSize":"16552","ReUploadedDataSize":"0","ProcessingBlocks":null,"Blocks":[{"Offset":0,"BlockChecksum":"79c93a171914a45c13799f102b701003a51f3ac48adbc4dfff12ad0283db263f"},{"Offset":8388608,"BlockChecksum":"aa804b03338f2e50c730e28368c033bfd159075875776a4f1a93d125b5002707"},{"Offset":33554432,"BlockChecksum":"a15c5ac5a93d30bba1cc1134e3c337cfe5afa9f4dd2962dad9636e89b63b72c7"}],"SingleFile":{"FilePath":""}}"#;

    #[test]
    fn longhorn_files_round_trip_byte_for_byte() {
        for text in [LONGHORN_FULL, LONGHORN_INCREMENTAL] {
            let cfg = BackupConfig::parse("cfg", text.as_bytes()).unwrap();
            assert_eq!(cfg.block_size().unwrap().bytes(), 2 << 20);
            assert!(!cfg.is_in_progress());
            assert_eq!(String::from_utf8(cfg.encode().unwrap()).unwrap(), text);
        }
        let full = BackupConfig::parse("cfg", LONGHORN_FULL.as_bytes()).unwrap();
        assert_eq!(full.blocks.len(), 2);
        assert_eq!(full.blocks[1].offset, 8 << 20);
        assert_eq!(full.processing_blocks, Some(EmptyObject {}));
    }

    #[test]
    fn in_progress_placeholder_matches_longhorn_shape() {
        let cfg = BackupConfig::in_progress("b1", "vol1", "lz4");
        let text = String::from_utf8(cfg.encode().unwrap()).unwrap();
        assert_eq!(
            text,
            r#"{"Name":"b1","VolumeName":"vol1","SnapshotName":"","SnapshotCreatedAt":"","CreatedTime":"","Size":"0","Labels":null,"Parameters":null,"IsIncremental":false,"CompressionMethod":"lz4","NewlyUploadedDataSize":"0","ReUploadedDataSize":"0","ProcessingBlocks":null,"SingleFile":{"FilePath":""}}"#
        );
        assert!(BackupConfig::parse("cfg", text.as_bytes()).unwrap().is_in_progress());
    }

    #[test]
    fn bad_configs_are_corrupt_and_named() {
        let object = "backupstore/volumes/01/9c/vol1/backups/backup_bk-snap2.cfg";
        let cases = [
            LONGHORN_FULL[..LONGHORN_FULL.len() - 30].to_string(),
            LONGHORN_FULL.replace("8616bfe3", "zz16bfe3"),
            LONGHORN_FULL.replace("\"Offset\":8388608", "\"Offset\":8388609"),
            LONGHORN_FULL.replace("\"Offset\":8388608", "\"Offset\":0"),
            LONGHORN_FULL.replace("\"2097152\"", "\"3Mi\""),
            LONGHORN_FULL.replace("\"Size\":\"4194304\"", "\"Size\":true"),
        ];
        for case in cases {
            let err = BackupConfig::parse(object, case.as_bytes()).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Corrupt, "{err}");
            assert!(err.to_string().contains("backup_bk-snap2.cfg"), "{err}");
        }
    }

    #[test]
    fn sixteen_mib_quantity_is_read() {
        let text = LONGHORN_FULL
            .replace("\"2097152\"", "\"16Mi\"")
            .replace("\"Offset\":8388608", "\"Offset\":16777216");
        let cfg = BackupConfig::parse("cfg", text.as_bytes()).unwrap();
        assert_eq!(cfg.block_size().unwrap().bytes(), 16 << 20);
    }

    proptest::proptest! {
        #[test]
        fn round_trip(offsets in proptest::collection::btree_set(0u64..10_000, 0..20), full: bool,
                      labels in proptest::option::of(proptest::collection::btree_map("[a-z]{1,5}", "[ -~]{0,8}", 0..3)),
                      uploaded in 0u64..u64::MAX / 2) {
            let blocks = offsets.iter().map(|o| BlockMapping { offset: o * (2 << 20), checksum: format!("{:064x}", o) }).collect::<Vec<_>>();
            let mut cfg = BackupConfig::in_progress("b1", "v1", "gzip");
            cfg.created_time = "2026-01-01T00:00:00Z".into();
            cfg.size = blocks.len() as u64 * (2 << 20);
            cfg.blocks = blocks;
            cfg.labels = labels;
            cfg.is_incremental = !full;
            cfg.processing_blocks = full.then_some(EmptyObject {});
            cfg.newly_uploaded_data_size = uploaded;
            let bytes = cfg.encode().unwrap();
            proptest::prop_assert_eq!(BackupConfig::parse("cfg", &bytes).unwrap(), cfg);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = BackupConfig::parse("cfg", &bytes);
        }
    }
}
