//! `volume.cfg`: one per backup volume (Longhorn's `Volume` struct in backupstore).
//!
//! Layout (one line, no trailing newline, keys in this order; see the `format` module for the Go rules):
//! ```text
//! {"Name":"vol1",                              string
//!  "Size":"67108864",                          int64 as string      (volume size in bytes)
//!  "Labels":null,                              object|null          (labels of the last backup)
//!  "CreatedTime":"2026-11-26T15:52:39Z",       RFC3339
//!  "LastBackupName":"bk-snap3",                string ("" = none)
//!  "LastBackupAt":"2026-11-26T15:52:59Z",      string (SnapshotCreatedAt of that backup)
//!  "BlockCount":"4",                           int64 as string      (distinct live blocks)
//!  "BackingImageName":"\"\"",                  double-quoted string
//!  "BackingImageChecksum":"\"\"",              double-quoted string
//!  "CompressionMethod":"\"lz4\"",              double-quoted string (missing = gzip, legacy)
//!  "StorageClassName":"\"0\"",                 double-quoted string
//!  "DataEngine":"\"v1\""}                      double-quoted string (missing = v1)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{int_as_string, nullable_string, quoted_string};
use crate::error::Result;

/// The parsed `volume.cfg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    /// Volume name.
    #[serde(rename = "Name", default, deserialize_with = "nullable_string::deserialize")]
    pub name: String,
    /// Volume size in bytes.
    #[serde(rename = "Size", default, with = "int_as_string")]
    pub size: u64,
    /// Labels of the most recent backup.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// When the backup volume was created (RFC3339).
    #[serde(rename = "CreatedTime", default, deserialize_with = "nullable_string::deserialize")]
    pub created_time: String,
    /// Name of the most recent backup ("" if none).
    #[serde(rename = "LastBackupName", default, deserialize_with = "nullable_string::deserialize")]
    pub last_backup_name: String,
    /// `SnapshotCreatedAt` of the most recent backup.
    #[serde(rename = "LastBackupAt", default, deserialize_with = "nullable_string::deserialize")]
    pub last_backup_at: String,
    /// Number of distinct blocks referenced by the volume's backups.
    #[serde(rename = "BlockCount", default, with = "int_as_string")]
    pub block_count: u64,
    /// Backing image of the volume ("" if none).
    #[serde(rename = "BackingImageName", default, with = "quoted_string")]
    pub backing_image_name: String,
    /// Checksum of the backing image.
    #[serde(rename = "BackingImageChecksum", default, with = "quoted_string")]
    pub backing_image_checksum: String,
    /// Compression of the volume's blocks (`none`, `lz4`, `gzip`).
    #[serde(rename = "CompressionMethod", default = "legacy_compression", with = "quoted_string")]
    pub compression_method: String,
    /// Kubernetes storage class of the volume.
    #[serde(rename = "StorageClassName", default, with = "quoted_string")]
    pub storage_class_name: String,
    /// Data engine (`v1`).
    #[serde(rename = "DataEngine", default = "default_data_engine", with = "quoted_string")]
    pub data_engine: String,
}

fn legacy_compression() -> String {
    "gzip".to_string()
}

fn default_data_engine() -> String {
    "v1".to_string()
}

impl VolumeConfig {
    /// A new backup volume record, created now.
    pub fn new(name: &str, size: u64, compression: &str) -> Self {
        VolumeConfig {
            name: name.to_string(),
            size,
            labels: None,
            created_time: super::now_rfc3339(),
            last_backup_name: String::new(),
            last_backup_at: String::new(),
            block_count: 0,
            backing_image_name: String::new(),
            backing_image_checksum: String::new(),
            compression_method: compression.to_string(),
            storage_class_name: String::new(),
            data_engine: default_data_engine(),
        }
    }

    /// Parses a `volume.cfg` read from `object`.
    pub fn parse(object: &str, bytes: &[u8]) -> Result<Self> {
        let cfg: VolumeConfig = super::from_json(object, bytes)?;
        // An empty compression value (written by some old versions) means the legacy default.
        let cfg = if cfg.compression_method.is_empty() {
            VolumeConfig { compression_method: legacy_compression(), ..cfg }
        } else {
            cfg
        };
        Ok(cfg)
    }

    /// Encodes as Longhorn writes it.
    pub fn encode(&self) -> Result<Vec<u8>> {
        super::to_go_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `volume.cfg` of the Longhorn-written fixture backupstore-vfs.tar.gz, byte for byte.
    pub(crate) const LONGHORN_VOLUME_CFG: &str = r#"{"Name":"vol1","Size":"67108864","Labels":null,"CreatedTime":"2026-11-26T15:52:39Z","LastBackupName":"bk-snap3","LastBackupAt":"2026-11-26T15:52:59Z","BlockCount":"4","BackingImageName":"\"\"","BackingImageChecksum":"\"\"","CompressionMethod":"\"lz4\"","StorageClassName":"\"0\"","DataEngine":"\"v1\""}"#;

    #[test]
    fn longhorn_file_round_trips_byte_for_byte() {
        let cfg = VolumeConfig::parse("volume.cfg", LONGHORN_VOLUME_CFG.as_bytes()).unwrap();
        assert_eq!(cfg.name, "vol1");
        assert_eq!(cfg.size, 67108864);
        assert_eq!(cfg.block_count, 4);
        assert_eq!(cfg.compression_method, "lz4");
        assert_eq!(cfg.storage_class_name, "0");
        assert_eq!(cfg.data_engine, "v1");
        assert_eq!(cfg.last_backup_name, "bk-snap3");
        assert_eq!(String::from_utf8(cfg.encode().unwrap()).unwrap(), LONGHORN_VOLUME_CFG);
    }

    #[test]
    fn legacy_and_unquoted_forms_are_read() {
        let cfg = VolumeConfig::parse(
            "v",
            br#"{"Name":"old","Size":1048576,"Labels":{"a":"b"},"CreatedTime":"t","BlockCount":"0","BackingImageName":"","Unknown":5}"#,
        )
        .unwrap();
        assert_eq!(cfg.size, 1048576);
        assert_eq!(cfg.compression_method, "gzip");
        assert_eq!(cfg.data_engine, "v1");
        assert_eq!(cfg.labels.as_ref().and_then(|l| l.get("a")).map(String::as_str), Some("b"));
    }

    #[test]
    fn truncated_and_mistyped_files_are_corrupt() {
        for bad in
            [&LONGHORN_VOLUME_CFG.as_bytes()[..40], b"", br#"{"Size":"x"}"#, br#"{"Size":"-5"}"#, b"[]"]
        {
            let err = VolumeConfig::parse("backupstore/volumes/01/9c/vol1/volume.cfg", bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Corrupt, "{err}");
            assert!(err.to_string().contains("vol1/volume.cfg"), "{err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn round_trip(name in "[a-z0-9][a-z0-9._-]{1,20}", size in 0u64..u64::MAX / 2, count in 0u64..1_000_000,
                      label in "[ -~]{0,10}", sc in "[ -~\u{80}-\u{2030}]{0,10}") {
            let mut cfg = VolumeConfig::new(&name, size, "lz4");
            cfg.block_count = count;
            cfg.storage_class_name = sc;
            cfg.labels = Some([("k".to_string(), label)].into_iter().collect());
            let bytes = cfg.encode().unwrap();
            proptest::prop_assert_eq!(VolumeConfig::parse("v", &bytes).unwrap(), cfg);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = VolumeConfig::parse("v", &bytes);
        }
    }
}
