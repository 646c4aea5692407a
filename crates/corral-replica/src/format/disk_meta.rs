//! `<disk>.img.meta`: the record of one layer (Longhorn's `replica.disk`).
//!
//! Byte layout: one line of compact JSON written by Go's `json.Encoder`, keys in this exact order,
//! then `\n`:
//!
//! ```text
//! {"Name":"<file>","Parent":"<file>","Removed":<bool>,"UserCreated":<bool>,"Created":"<RFC3339>","Labels":{..}|null}\n
//!   Name        a file name; NOT trusted on read (a snapshot's record carries the old head's name)
//!   Parent      file name of the parent snapshot, e.g. volume-snap-a.img, or ""
//!   Removed     snapshot marked for deletion (space reclaimed by purge)
//!   UserCreated created by a user (false for system snapshots: rebuild, expand-<size>)
//!   Created     creation time, RFC3339 UTC seconds, e.g. 2026-11-26T15:47:05Z
//!   Labels      object string->string (keys sorted, as Go sorts map keys), or null when empty
//! ```
//!
//! Restored snapshots in Longhorn carry only `{"Parent":""}`; missing keys take Go's zero values.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{ReplicaError, Result};

/// Suffix of a layer's metadata file.
pub const SUFFIX: &str = ".meta";

/// Contents of a disk `.meta` file. Field order is the on-disk key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DiskMeta {
    /// A file name (ignored on read: names come from file names).
    pub name: String,
    /// File name of the parent snapshot, or "".
    pub parent: String,
    /// Marked for deletion.
    pub removed: bool,
    /// Created by a user.
    pub user_created: bool,
    /// RFC3339 creation time.
    pub created: String,
    /// Labels; `None` is written as `null`.
    #[serde(serialize_with = "labels_or_null", deserialize_with = "null_or_labels")]
    pub labels: BTreeMap<String, String>,
}

fn labels_or_null<S: serde::Serializer>(labels: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    if labels.is_empty() {
        s.serialize_none()
    } else {
        labels.serialize(s)
    }
}

fn null_or_labels<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

impl DiskMeta {
    /// Parses the bytes of `path` (named in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(ReplicaError::corrupt("read disk metadata", path, "file is empty"));
        }
        let meta: DiskMeta = serde_json::from_slice(bytes)
            .map_err(|e| ReplicaError::corrupt("read disk metadata", path, format!("invalid JSON: {e}")))?;
        if !meta.parent.is_empty() && super::names::snapshot_name_of_file(&meta.parent).is_none() {
            return Err(ReplicaError::corrupt(
                "read disk metadata",
                path,
                format!("Parent {:?} is not a volume-snap-<name>.img file name", meta.parent),
            ));
        }
        Ok(meta)
    }

    /// The exact bytes Longhorn would write for this record.
    pub fn to_bytes(&self) -> Vec<u8> {
        super::go_json_line(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAP: &str = r#"{"Name":"volume-head-001.img","Parent":"volume-snap-68129740-95fa-41f1-9ff2-30a78ca4a61b.img","Removed":false,"UserCreated":true,"Created":"2026-11-26T15:47:05Z","Labels":{"purpose":"second"}}
"#;
    const HEAD: &str = r#"{"Name":"volume-head-002.img","Parent":"volume-snap-snap2.img","Removed":false,"UserCreated":false,"Created":"2026-11-26T15:47:05Z","Labels":null}
"#;

    #[test]
    fn longhorn_bytes_round_trip_exactly() {
        for text in [SNAP, HEAD] {
            let m = DiskMeta::parse(text.as_bytes(), Path::new("x.meta")).unwrap();
            assert_eq!(String::from_utf8(m.to_bytes()).unwrap(), text);
        }
        let m = DiskMeta::parse(SNAP.as_bytes(), Path::new("x.meta")).unwrap();
        assert!(m.user_created && !m.removed);
        assert_eq!(m.labels.get("purpose").map(String::as_str), Some("second"));
    }

    #[test]
    fn minimal_restore_record_reads_with_zero_values() {
        let m = DiskMeta::parse(b"{\"Parent\":\"\"}\n", Path::new("x.meta")).unwrap();
        assert_eq!(m, DiskMeta::default());
    }

    #[test]
    fn bad_input_is_a_corrupt_error_naming_the_file() {
        let p = Path::new("/r/volume-snap-a.img.meta");
        for bad in [
            &b""[..],
            b"{\"Parent\":",
            b"{\"Removed\":\"yes\"}",
            b"{\"Labels\":{\"a\":1}}",
            b"{\"Parent\":\"../../x\"}",
            b"7",
        ] {
            let e = DiskMeta::parse(bad, p).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
            assert!(e.to_string().contains("volume-snap-a.img.meta"), "{e}");
        }
    }
}
