//! `corral-state.json`: Corral's own durable state, kept out of Longhorn's files so that those stay
//! byte-compatible (Longhorn ignores unknown files in a replica directory).
//!
//! Byte layout: one line of compact JSON + `\n`, written to `corral-state.json.tmp`, fsync'd, renamed
//! over `corral-state.json`, then the directory fsync'd:
//!
//! ```text
//! {"version":1,"generation":<u64>,"pending":null|<intent>[,"engine_epoch":<u64>]}\n
//!   version     format version (1)
//!   generation  engine-assigned epoch (set_generation)
//!   pending     a multi-file operation that passed its point of no return and must be rolled
//!               forward at the next read-write open:
//!               {"op":"coalesce","removed":["<snap>",..],"child":"<snap>"}
//!               {"op":"finish_rebuild","chain":[{"name":..,"removed":..,"user_created":..,
//!                                                "created":..,"labels":{..}}, ...]}
//!   engine_epoch  the highest control-plane engine epoch this replica accepted in a `Hello` (fencing: an
//!               engine with an older one is refused, see `corral_wire::server`); written, and
//!               fsync'd, before the `Hello` that raised it is answered. Absent means 0, and it is
//!               left out while 0, so a replica never served under epochs keeps the bytes it had.
//! ```
//! A missing file means generation 0, engine epoch 0 and nothing pending.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{ReplicaError, Result};

/// The file name.
pub const FILE_NAME: &str = "corral-state.json";
/// The current format version.
pub const VERSION: u32 = 1;

/// One layer of a chain being installed by `finish_rebuild`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEntry {
    /// Snapshot name.
    pub name: String,
    /// Removed flag.
    pub removed: bool,
    /// User-created flag.
    pub user_created: bool,
    /// RFC3339 creation time.
    pub created: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A multi-file operation to roll forward at open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PendingOp {
    /// Purge is merging the removed snapshots `removed` (a run of single-child ancestors of `child`)
    /// into `child`.
    Coalesce {
        /// The snapshots being deleted.
        removed: Vec<String>,
        /// Its child, which now holds its data.
        child: String,
    },
    /// `finish_rebuild` is installing this chain (root first) under the head.
    FinishRebuild {
        /// The chain.
        chain: Vec<ChainEntry>,
    },
}

/// Contents of `corral-state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorralState {
    /// Format version.
    pub version: u32,
    /// Engine-assigned epoch.
    pub generation: u64,
    /// Operation to roll forward.
    pub pending: Option<PendingOp>,
    /// Highest engine epoch accepted (fencing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub engine_epoch: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Default for CorralState {
    fn default() -> Self {
        CorralState { version: VERSION, generation: 0, pending: None, engine_epoch: 0 }
    }
}

impl CorralState {
    /// Parses the bytes of `path`.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let state: CorralState = serde_json::from_slice(bytes)
            .map_err(|e| ReplicaError::corrupt("read corral state", path, format!("invalid JSON: {e}")))?;
        if state.version != VERSION {
            return Err(ReplicaError::corrupt(
                "read corral state",
                path,
                format!("unsupported version {}", state.version),
            ));
        }
        Ok(state)
    }

    /// The bytes to write.
    pub fn to_bytes(&self) -> Vec<u8> {
        super::go_json_line(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_each_pending_op() {
        let mut s = CorralState { generation: 7, ..Default::default() };
        assert_eq!(
            String::from_utf8(s.to_bytes()).unwrap(),
            "{\"version\":1,\"generation\":7,\"pending\":null}\n"
        );
        for op in [
            PendingOp::Coalesce { removed: vec!["a".into(), "c".into()], child: "b".into() },
            PendingOp::FinishRebuild {
                chain: vec![ChainEntry {
                    name: "a".into(),
                    removed: false,
                    user_created: true,
                    created: "2026-01-01T00:00:00Z".into(),
                    labels: BTreeMap::from([("k".into(), "v".into())]),
                }],
            },
        ] {
            s.pending = Some(op);
            assert_eq!(CorralState::parse(&s.to_bytes(), Path::new("c")).unwrap(), s);
        }
    }

    #[test]
    fn engine_epoch_is_written_only_when_set_and_read_back() {
        let without =
            CorralState::parse(b"{\"version\":1,\"generation\":3,\"pending\":null}", Path::new("c")).unwrap();
        assert_eq!(without.engine_epoch, 0);
        let with = CorralState { engine_epoch: 5, ..without };
        let bytes = with.to_bytes();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            "{\"version\":1,\"generation\":3,\"pending\":null,\"engine_epoch\":5}\n"
        );
        assert_eq!(CorralState::parse(&bytes, Path::new("c")).unwrap(), with);
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [&b""[..], b"{}", b"{\"version\":2,\"generation\":0,\"pending\":null}", b"{\"version\":1"]
        {
            assert_eq!(
                CorralState::parse(bad, Path::new("c")).unwrap_err().kind(),
                crate::ErrorKind::Corrupt
            );
        }
    }
}
