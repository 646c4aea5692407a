//! The typed bodies of control messages: Corral's own wire copies of the replica's types.
//!
//! `corral-wire` does not depend on `corral-replica`, so the types the engine needs to see
//! ([`RecoveryFacts`], [`SnapshotInfo`], [`Extent`]) are defined here; the replica's service adapter converts.
//! Control bodies travel as JSON (`serde_json`, field names in camelCase as listed on each type): they are
//! rare, small, and JSON keeps them readable in a packet dump and easy to extend. Data travels as raw bytes
//! and extent lists as packed binary (see [`encode_extents`]), because those are large or frequent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, WireError};

/// What a replica knows about its own freshness, sent in answer to `Hello` and `Info`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryFacts {
    /// Volume size in bytes.
    pub size: u64,
    /// Number of write/unmap/write-zeroes requests applied (persisted at flush and clean close).
    pub revision: u64,
    /// Engine-assigned epoch, persisted immediately.
    pub generation: u64,
    /// The on-disk `Dirty` flag now (true while a writer has the replica open).
    pub dirty: bool,
    /// `Dirty` as found when the replica was opened: true means the previous writer did not close it
    /// cleanly, so its revision counter may lag behind the writes it applied.
    #[serde(default)]
    pub was_dirty_at_open: bool,
    /// Requests were applied since the last flush: the previous writer (an engine that crashed, for
    /// instance) stopped without flushing, so writes in flight then may have reached this replica and
    /// not others.
    #[serde(default)]
    pub unflushed_writes: bool,
    /// True while the replica is the target of an unfinished rebuild.
    pub rebuilding: bool,
    /// File name of the head layer.
    pub head: String,
    /// Snapshot names, head to root.
    pub chain: Vec<String>,
}

/// One snapshot (or the head, named `volume-head`) in a replica's tree.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// Snapshot name (not the file name).
    pub name: String,
    /// Parent snapshot name, `None` for the root.
    pub parent: Option<String>,
    /// Child snapshot names (and `volume-head`).
    pub children: Vec<String>,
    /// Marked removed (its data is still needed by a child until purged).
    pub removed: bool,
    /// Created by a user rather than by the system.
    pub user_created: bool,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Allocated bytes of its file.
    pub size: u64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A byte range `[offset, offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Extent {
    /// Start in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Extent {
    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// The body of `Hello`, the first request on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// Identity of the engine (stable across the engine's restarts, e.g. the volume's engine name).
    pub engine_id: String,
    /// Identity of this client instance: all connections of one [`crate::ReplicaClient`] share it, so the
    /// replica can tell a second connection of the same engine from a restarted engine with the same id.
    pub session: u64,
    /// Take the replica from whichever engine holds it (whose connections are then closed).
    pub take_over: bool,
    /// The engine's epoch, taken from the control plane's store at each engine start (fencing): a
    /// replica refuses an epoch older than the highest it has accepted, and a newer one takes the
    /// replica over even without `take_over`. 0 (the default, and what an older engine sends) is an
    /// engine started by hand without a control plane: accepted only by a replica that never saw a
    /// higher one. See the session rules in [`crate::server`].
    #[serde(default)]
    pub epoch: u64,
}

/// The body of `Snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRequest {
    /// Snapshot name.
    pub name: String,
    /// Created by a user rather than by the system.
    pub user_created: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, RFC 3339; `None` = the replica's current time.
    pub created: Option<String>,
}

/// Size in bytes of one extent in the packed extent list.
pub const EXTENT_RECORD_LEN: usize = 16;

/// Packs extents as consecutive `offset: u64 LE, len: u64 LE` records (16 bytes each).
pub fn encode_extents(extents: &[Extent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(extents.len() * EXTENT_RECORD_LEN);
    for extent in extents {
        out.extend_from_slice(&extent.offset.to_le_bytes());
        out.extend_from_slice(&extent.len.to_le_bytes());
    }
    out
}

/// Unpacks [`encode_extents`]' format; a length that is not a multiple of 16 is a protocol error.
pub fn decode_extents(bytes: &[u8]) -> Result<Vec<Extent>> {
    if bytes.len() % EXTENT_RECORD_LEN != 0 {
        return Err(WireError::Protocol(format!(
            "extent list of {} bytes is not a multiple of {EXTENT_RECORD_LEN}",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(EXTENT_RECORD_LEN)
        .map(|record| {
            let mut offset = [0u8; 8];
            let mut len = [0u8; 8];
            offset.copy_from_slice(&record[..8]);
            len.copy_from_slice(&record[8..]);
            Extent { offset: u64::from_le_bytes(offset), len: u64::from_le_bytes(len) }
        })
        .collect())
}

/// Encodes a control body as JSON.
pub fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|err| WireError::Protocol(format!("encoding a control body: {err}")))
}

/// Decodes a JSON control body; `what` names the message for the error.
pub fn decode_json<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|err| WireError::Protocol(format!("bad {what} body: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn snapshot_info_json_uses_camel_case_and_round_trips() {
        let info = SnapshotInfo {
            name: "snap1".into(),
            parent: None,
            children: vec!["volume-head".into()],
            removed: false,
            user_created: true,
            created: "2026-01-01T00:00:00Z".into(),
            size: 4096,
            labels: BTreeMap::from([("k".to_string(), "v".to_string())]),
        };
        let json = encode_json(&info).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"userCreated\":true"), "{text}");
        let back: SnapshotInfo = decode_json("SnapshotInfo", &json).unwrap();
        assert_eq!(back, info);
    }

    #[test]
    fn bad_json_is_a_protocol_error_naming_the_message() {
        let err = decode_json::<Hello>("Hello", b"{not json").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Protocol);
        assert!(err.to_string().contains("Hello"), "{err}");
    }

    #[test]
    fn hello_without_epoch_decodes_as_epoch_zero() {
        // What an engine from before epochs sends.
        let old = br#"{"engineId":"engine-v","session":7,"takeOver":true}"#;
        let hello: Hello = decode_json("Hello", old).unwrap();
        assert_eq!(hello, Hello { engine_id: "engine-v".into(), session: 7, take_over: true, epoch: 0 });
        let new = Hello { epoch: 12, ..hello };
        let text = String::from_utf8(encode_json(&new).unwrap()).unwrap();
        assert!(text.contains("\"epoch\":12"), "{text}");
        assert_eq!(decode_json::<Hello>("Hello", text.as_bytes()).unwrap(), new);
    }

    #[test]
    fn extent_list_with_a_partial_record_is_rejected() {
        assert!(decode_extents(&[0u8; 17]).is_err());
        assert_eq!(decode_extents(&[]).unwrap(), vec![]);
    }

    proptest! {
        #[test]
        fn extents_round_trip(raw in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..64)) {
            let extents: Vec<Extent> = raw.into_iter().map(|(offset, len)| Extent { offset, len }).collect();
            let packed = encode_extents(&extents);
            prop_assert_eq!(packed.len(), extents.len() * EXTENT_RECORD_LEN);
            prop_assert_eq!(decode_extents(&packed).unwrap(), extents);
        }
    }
}
