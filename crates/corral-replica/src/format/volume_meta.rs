//! `volume.meta`: the replica-level record (Longhorn's `replica.Info`).
//!
//! Byte layout: one line of compact JSON written by Go's `json.Encoder`, keys in this exact order,
//! then `\n`:
//!
//! ```text
//! {"Size":<int64>,"Head":"<file>","Dirty":<bool>,"Rebuilding":<bool>,"Error":"<text>",
//!  "Parent":"<file>","SectorSize":<int64>,"BackingFilePath":"<path>","Encrypted":<bool>}\n
//!   Size            volume size in bytes
//!   Head            file name of the writable layer, e.g. volume-head-002.img (authoritative)
//!   Dirty           true while a writer has the replica open; false after a clean close
//!   Rebuilding      true while this replica is a rebuild target
//!   Error           sticky error text ("" = none)
//!   Parent          file name of the head's parent snapshot ("" = none)
//!   SectorSize      512 (Longhorn's ReplicaSectorSize)
//!   BackingFilePath path of a backing image ("" = none; Corral does not support backing images)
//!   Encrypted       LUKS volume flag (kept as found)
//! ```
//! (The line above is wrapped here for reading; on disk it is a single line.)
//!
//! Reading follows Go's decoder: unknown keys are ignored, missing keys take the zero value, a key with
//! the wrong JSON type is an error. Empty or truncated files are errors (Corral never guesses the head).

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::error::{ReplicaError, Result};

/// The file name.
pub const FILE_NAME: &str = "volume.meta";

/// Longhorn's `ReplicaSectorSize`, stored as `SectorSize`.
pub const SECTOR_SIZE: i64 = 512;

/// Contents of `volume.meta`. Field order is the on-disk key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeMeta {
    /// Volume size in bytes.
    pub size: i64,
    /// File name of the head.
    pub head: String,
    /// Open-for-writing flag.
    pub dirty: bool,
    /// Rebuild-target flag.
    pub rebuilding: bool,
    /// Sticky error text.
    pub error: String,
    /// File name of the head's parent, or "".
    pub parent: String,
    /// Logical sector size (512).
    pub sector_size: i64,
    /// Backing image path, or "".
    pub backing_file_path: String,
    /// LUKS flag.
    pub encrypted: bool,
}

impl VolumeMeta {
    /// A fresh record for a new replica of `size` bytes whose head is `head`.
    pub fn new(size: u64, head: &str) -> Self {
        VolumeMeta {
            size: size as i64,
            head: head.to_string(),
            sector_size: SECTOR_SIZE,
            ..Default::default()
        }
    }

    /// Parses the bytes of `path` (named in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(ReplicaError::corrupt("read volume.meta", path, "file is empty"));
        }
        let meta: VolumeMeta = serde_json::from_slice(bytes)
            .map_err(|e| ReplicaError::corrupt("read volume.meta", path, format!("invalid JSON: {e}")))?;
        if meta.size < 0 || meta.size % 512 != 0 {
            return Err(ReplicaError::corrupt(
                "read volume.meta",
                path,
                format!("Size {} is negative or not a multiple of 512", meta.size),
            ));
        }
        if meta.head.is_empty() {
            return Err(ReplicaError::corrupt("read volume.meta", path, "Head is empty"));
        }
        if super::names::head_number(&meta.head).is_none() {
            return Err(ReplicaError::corrupt(
                "read volume.meta",
                path,
                format!("Head {:?} is not a volume-head-NNN.img file name", meta.head),
            ));
        }
        if !meta.parent.is_empty() && super::names::snapshot_name_of_file(&meta.parent).is_none() {
            return Err(ReplicaError::corrupt(
                "read volume.meta",
                path,
                format!("Parent {:?} is not a volume-snap-<name>.img file name", meta.parent),
            ));
        }
        Ok(meta)
    }

    /// The exact bytes Longhorn would write for this record.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings, bools and integers cannot fail.
        super::go_json_line(self).unwrap_or_default()
    }

    /// Volume size as unsigned (validated non-negative by `parse`).
    pub fn size_bytes(&self) -> u64 {
        self.size.max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONGHORN: &str = r#"{"Size":67108864,"Head":"volume-head-002.img","Dirty":false,"Rebuilding":false,"Error":"","Parent":"volume-snap-snap2.img","SectorSize":512,"BackingFilePath":"","Encrypted":false}
"#;

    #[test]
    fn longhorn_bytes_round_trip_exactly() {
        let m = VolumeMeta::parse(LONGHORN.as_bytes(), Path::new("volume.meta")).unwrap();
        assert_eq!(m.size, 67108864);
        assert_eq!(m.head, "volume-head-002.img");
        assert_eq!(m.parent, "volume-snap-snap2.img");
        assert_eq!(m.sector_size, 512);
        assert_eq!(String::from_utf8(m.to_bytes()).unwrap(), LONGHORN);
    }

    #[test]
    fn new_record_has_longhorn_key_order() {
        let m = VolumeMeta::new(1 << 20, "volume-head-000.img");
        assert_eq!(
            String::from_utf8(m.to_bytes()).unwrap(),
            "{\"Size\":1048576,\"Head\":\"volume-head-000.img\",\"Dirty\":false,\"Rebuilding\":false,\"Error\":\"\",\"Parent\":\"\",\"SectorSize\":512,\"BackingFilePath\":\"\",\"Encrypted\":false}\n"
        );
    }

    #[test]
    fn bad_input_is_a_corrupt_error_naming_the_file() {
        let p = Path::new("/r/volume.meta");
        for bad in [
            &b""[..],
            b"{",
            b"{\"Size\":\"12\",\"Head\":\"volume-head-000.img\"}",
            b"{\"Size\":-512,\"Head\":\"volume-head-000.img\"}",
            b"{\"Size\":4096}",
            b"{\"Size\":4096,\"Head\":\"../etc/passwd\"}",
            b"{\"Size\":4096,\"Head\":\"volume-head-000.img\",\"Parent\":\"x/y\"}",
            b"[]",
            b"null",
        ] {
            let e = VolumeMeta::parse(bad, p).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{:?}", String::from_utf8_lossy(bad));
            assert!(e.to_string().contains("/r/volume.meta"), "{e}");
        }
    }

    #[test]
    fn unknown_keys_are_ignored_like_go() {
        let m =
            VolumeMeta::parse(br#"{"Size":4096,"Head":"volume-head-001.img","Future":1}"#, Path::new("v"))
                .unwrap();
        assert_eq!(m.head, "volume-head-001.img");
    }
}
