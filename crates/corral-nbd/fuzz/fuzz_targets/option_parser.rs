//! Fuzz the negotiation-phase parsers: option headers, NBD_OPT_GO/INFO payloads, option
//! replies and their payloads. Decoders must never panic, and whatever decodes re-encodes to
//! the same bytes.
#![no_main]

use corral_nbd::protocol::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_greeting(data);
    if let Ok(header) = OptionHeader::decode(data) {
        assert_eq!(&header.encode()[..], &data[..OPTION_HEADER_LEN]);
        let payload = &data[OPTION_HEADER_LEN..];
        if let Ok(go) = GoRequest::parse(payload) {
            let infos: Vec<u16> = go.info_requests().collect();
            assert_eq!(GoRequest::encode(go.name, &infos), payload);
        }
    }
    if let Ok(go) = GoRequest::parse(data) {
        assert!(go.name.len() <= MAX_STRING_LEN);
        let infos: Vec<u16> = go.info_requests().collect();
        assert_eq!(GoRequest::encode(go.name, &infos), data);
    }
    if let Ok(reply) = OptionReplyHeader::decode(data) {
        assert_eq!(&reply.encode()[..], &data[..OPTION_REPLY_HEADER_LEN]);
    }
    if let Ok(info) = Info::decode(data) {
        let mut out = Vec::new();
        info.encode_into(&mut out);
        assert_eq!(out, data);
    }
    if let Ok((name, description)) = decode_server_entry(data) {
        assert_eq!(encode_server_entry(name, description), data);
    }
    if let Ok((errno, message)) = decode_error_chunk(data) {
        assert_ne!(errno, 0);
        assert!(message.len() <= data.len());
    }
});
