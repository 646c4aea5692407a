//! `locks/lock-<16 hex>.lck`: one per lock holder or waiter (Longhorn's `FileLock`, exported fields only).
//!
//! Layout (one line, no trailing newline):
//! ```text
//! {"Name":"lock-0123456789abcdef",   string: the file name without .lck
//!  "Type":1,                         int: 1 = backup or restore (compatible with each other), 2 = deletion
//!  "Acquired":false}                 bool: false while waiting, true once held
//! ```
//! The lock's age is the file's modification time on the server, not a field.

use serde::{Deserialize, Serialize};

use super::nullable_string;
use crate::error::Result;

/// Longhorn's `BACKUP_LOCK` (= `RESTORE_LOCK`).
pub const LOCK_TYPE_BACKUP: i64 = 1;
/// Longhorn's `DELETION_LOCK`.
pub const LOCK_TYPE_DELETION: i64 = 2;

/// The parsed lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    /// Lock name (`lock-<16 hex>`).
    #[serde(rename = "Name", default, deserialize_with = "nullable_string::deserialize")]
    pub name: String,
    /// Lock type.
    #[serde(rename = "Type", default)]
    pub lock_type: i64,
    /// Whether the holder acquired the lock.
    #[serde(rename = "Acquired", default)]
    pub acquired: bool,
}

impl LockFile {
    /// Parses a lock file read from `object`.
    pub fn parse(object: &str, bytes: &[u8]) -> Result<Self> {
        super::from_json(object, bytes)
    }

    /// Encodes as Longhorn writes it.
    pub fn encode(&self) -> Result<Vec<u8>> {
        super::to_go_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let lock =
            LockFile { name: "lock-0123456789abcdef".into(), lock_type: LOCK_TYPE_DELETION, acquired: true };
        let bytes = lock.encode().unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"Name":"lock-0123456789abcdef","Type":2,"Acquired":true}"#
        );
        assert_eq!(LockFile::parse("l", &bytes).unwrap(), lock);
        assert!(LockFile::parse("l", b"{\"Type\":\"x\"}").is_err());
    }
}
