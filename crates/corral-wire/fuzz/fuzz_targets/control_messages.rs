//! Feeds arbitrary bytes to every control-body decoder (JSON bodies and the packed extent list) and to
//! the request decoder for every control type: errors are fine, panics are not.
#![no_main]

use bytes::Bytes;
use corral_wire::frame::{Header, Op, Request};
use corral_wire::messages::{decode_extents, decode_json, encode_extents};
use corral_wire::{Hello, RecoveryFacts, SnapshotInfo, SnapshotRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_json::<Hello>("Hello", data);
    let _ = decode_json::<SnapshotRequest>("Snapshot", data);
    let _ = decode_json::<SnapshotInfo>("BeginLayer", data);
    let _ = decode_json::<Vec<SnapshotInfo>>("FinishRebuild", data);
    let _ = decode_json::<RecoveryFacts>("Info", data);
    if let Ok(extents) = decode_extents(data) {
        assert_eq!(encode_extents(&extents), data);
    }
    let (selector, body) = data.split_first().map(|(s, b)| (*s, b)).unwrap_or((0, &[]));
    let op = Op::ALL[usize::from(selector) % Op::ALL.len()];
    let length = body.len().min(8) as u64;
    let header = Header { msg_type: op as u8, length, payload_len: body.len() as u32, ..Header::default() };
    let _ = Request::decode(&header, Bytes::copy_from_slice(body));
});
