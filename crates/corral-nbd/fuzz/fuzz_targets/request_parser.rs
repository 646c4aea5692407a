//! Fuzz the transmission-phase parser: arbitrary bytes as a stream of request headers, each
//! validated against negotiated parameters also taken from the input. Checks the invariants
//! the server relies on: accepted requests are inside the export and within the payload
//! limit; rejected writes either name a skippable payload or close the connection.
#![no_main]

use corral_nbd::protocol::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let size = u64::from_le_bytes(data[0..8].try_into().unwrap_or([0; 8])) >> (data[8] % 64);
    let flags = u16::from_le_bytes([data[9], data[10]]) | TFLAG_HAS_FLAGS;
    let structured = data[11] & 1 != 0;
    let max_payload = (u32::from_le_bytes(data[12..16].try_into().unwrap_or([0; 4])) >> 6).max(4096);
    let params = TransmissionParams { size, flags, structured, max_payload, skip_limit: max_payload.saturating_mul(2) };
    for raw in data[16..].chunks(REQUEST_LEN) {
        let header = match RequestHeader::decode(raw) {
            Ok(h) => h,
            Err(_) => {
                // Also try it with the magic forced, to reach the validator with every layout.
                if raw.len() < REQUEST_LEN {
                    continue;
                }
                let mut fixed = [0u8; REQUEST_LEN];
                fixed.copy_from_slice(raw);
                fixed[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
                match RequestHeader::decode(&fixed) {
                    Ok(h) => h,
                    Err(e) => panic!("forced magic still rejected: {e}"),
                }
            }
        };
        assert_eq!(RequestHeader::decode(&header.encode()), Ok(header));
        match check_request(&header, &params) {
            Ok(Request::Read { offset, length }) | Ok(Request::Write { offset, length, .. }) => {
                assert!(length <= params.max_payload);
                assert!(offset.checked_add(u64::from(length)).is_some_and(|end| end <= size));
            }
            Ok(Request::Trim { offset, length, .. }) | Ok(Request::WriteZeroes { offset, length, .. }) => {
                assert!(offset.checked_add(u64::from(length)).is_some_and(|end| end <= size));
            }
            Ok(Request::Flush) | Ok(Request::Disconnect) => {}
            Err(rejection) => {
                assert_ne!(rejection.kind.errno(), 0);
                match rejection.payload {
                    PayloadDisposition::Discard(n) => {
                        assert_eq!(header.command, CMD_WRITE);
                        assert!(n <= params.skip_limit);
                    }
                    PayloadDisposition::Disconnect => assert_eq!(header.command, CMD_WRITE),
                    PayloadDisposition::None => assert_ne!(header.command, CMD_WRITE),
                }
            }
        }
    }
});
