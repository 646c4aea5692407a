//! Feeds arbitrary bytes to the frame decoder as a stream of frames, the way the server reads them:
//! decoding must never panic, never allocate beyond the announced (bounded) payload, and every request
//! it accepts must re-encode to a frame that decodes to the same request.
#![no_main]

use corral_wire::frame::{decode_request_frame, Header, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Some(head) = rest.first_chunk::<HEADER_LEN>() {
        // The header alone (as the client's reader also uses it for responses).
        let _ = Header::decode(head).map(|header| header.is_response());
        match decode_request_frame(rest) {
            Ok(Some((header, request, used))) => {
                assert!(used >= HEADER_LEN && used <= rest.len());
                if let Ok((again, payload)) = request.encode(header.request_id) {
                    let mut bytes = again.to_bytes().to_vec();
                    bytes.extend_from_slice(&payload);
                    match decode_request_frame(&bytes) {
                        Ok(Some((_, decoded, _))) => assert_eq!(decoded, request),
                        other => panic!("re-encoded request does not decode: {other:?}"),
                    }
                }
                rest = &rest[used..];
            }
            // Incomplete frame or a bad one: the server would wait for more bytes, answer, or close.
            Ok(None) | Err(_) => break,
        }
    }
});
