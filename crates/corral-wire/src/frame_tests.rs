use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn encode_frame(request: &Request, request_id: u64) -> Vec<u8> {
    let (header, payload) = request.encode(request_id).unwrap();
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

fn round_trip(request: Request) {
    let bytes = encode_frame(&request, 77);
    let (header, decoded, used) = decode_request_frame(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(header.request_id, 77);
    assert_eq!(decoded, request);
    // One byte short of the whole frame: not yet decodable, never an error.
    assert!(decode_request_frame(&bytes[..bytes.len() - 1]).unwrap().is_none());
}

fn sample_info(name: &str) -> SnapshotInfo {
    SnapshotInfo {
        name: name.into(),
        parent: Some("p".into()),
        children: vec!["volume-head".into()],
        removed: true,
        user_created: false,
        created: "2026-11-26T10:00:00Z".into(),
        size: 8192,
        labels: BTreeMap::from([("a".to_string(), "b".to_string())]),
    }
}

#[test]
fn header_layout_is_byte_exact() {
    let header = Header {
        msg_type: 0x02,
        flags: FLAG_FUA,
        request_id: 0x0102_0304_0506_0708,
        offset: 0x1000,
        length: 0x2000,
        payload_len: 0x2000,
        status: 0,
    };
    let bytes = header.to_bytes();
    assert_eq!(&bytes[0..4], b"CRWL");
    assert_eq!(bytes[4], 1);
    assert_eq!(bytes[5], 0x02);
    assert_eq!(&bytes[6..8], &[1, 0]);
    assert_eq!(&bytes[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&bytes[16..24], &[0, 0x10, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&bytes[24..32], &[0, 0x20, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&bytes[32..36], &[0, 0x20, 0, 0]);
    assert_eq!(&bytes[36..40], &[0, 0, 0, 0]);
    assert_eq!(Header::decode(&bytes).unwrap(), header);
}

#[test]
fn every_request_round_trips() {
    let data = Bytes::from(vec![0xabu8; 5000]);
    let requests = vec![
        Request::Read { offset: 4096, len: 8192 },
        Request::Write { offset: 12345, data: data.clone(), fua: false },
        Request::Write { offset: 0, data: Bytes::new(), fua: true },
        Request::Unmap { offset: 1 << 40, len: 4096, fua: true },
        Request::WriteZeroes { offset: 8192, len: 1 << 30, fua: false },
        Request::Flush,
        Request::Ping,
        Request::Hello(Hello { engine_id: "engine-1".into(), session: 42, take_over: true, epoch: 3 }),
        Request::Info,
        Request::SetGeneration(u64::MAX),
        Request::SetRevision(17),
        Request::SetRebuilding(true),
        Request::SetRebuilding(false),
        Request::Snapshot(SnapshotRequest {
            name: "s1".into(),
            user_created: true,
            labels: BTreeMap::from([("k".to_string(), "v".to_string())]),
            created: Some("2026-01-01T00:00:00Z".into()),
        }),
        Request::ListSnapshots,
        Request::MarkRemoved { name: "s1".into() },
        Request::Purge,
        Request::Revert { name: "s2".into() },
        Request::Expand { size: 1 << 34 },
        Request::LayerExtents { name: "s1".into(), offset: 0, len: 0 },
        Request::ReadLayer { name: "s1".into(), offset: 4096, len: 65536 },
        Request::LayerChecksum { name: "s1".into(), offset: 0, len: 1 << 20 },
        Request::BeginLayer(sample_info("s3")),
        Request::WriteLayer { name: "s3".into(), offset: 8192, data: data.clone() },
        Request::PunchLayer { name: "s3".into(), offset: 0, len: 4096 },
        Request::FinishRebuild(vec![sample_info("a"), sample_info("b")]),
    ];
    let mut seen = std::collections::HashSet::new();
    for request in requests {
        seen.insert(request.op());
        round_trip(request);
    }
    assert_eq!(seen.len(), Op::ALL.len(), "a request type is missing from this test");
}

#[test]
fn bad_magic_is_unanswerable() {
    let mut bytes = Request::Ping.encode(5).unwrap().0.to_bytes();
    bytes[0] = b'X';
    let err = Header::decode(&bytes).unwrap_err();
    assert!(matches!(err, HeaderError::BadMagic(_)));
    assert_eq!(err.request_id(), None);
}

#[test]
fn bad_version_flags_reserved_are_answerable_with_the_request_id() {
    let good = Request::Ping.encode(99).unwrap().0.to_bytes();
    for (at, value) in [(4usize, 2u8), (7, 0x80), (38, 1), (39, 1)] {
        let mut bytes = good;
        bytes[at] = value;
        let err = Header::decode(&bytes).unwrap_err();
        assert_eq!(err.request_id(), Some(99), "byte {at}: {err}");
    }
}

#[test]
fn payload_larger_than_max_is_rejected_from_the_header_alone() {
    let mut header = Request::Ping.encode(3).unwrap().0;
    header.payload_len = MAX_PAYLOAD + 1;
    let err = Header::decode(&header.to_bytes()).unwrap_err();
    assert_eq!(err, HeaderError::PayloadTooLarge { request_id: 3, len: MAX_PAYLOAD + 1 });
    header.payload_len = u32::MAX;
    assert!(Header::decode(&header.to_bytes()).is_err());
    header.payload_len = MAX_PAYLOAD;
    assert!(Header::decode(&header.to_bytes()).is_ok());
}

#[test]
fn unknown_type_and_bad_bodies_are_protocol_errors() {
    let header = Header { msg_type: 0x7f, request_id: 1, ..Header::default() };
    let err = Request::decode(&header, Bytes::new()).unwrap_err();
    assert!(err.to_string().contains("unknown message type 0x7f"), "{err}");

    let read_too_big = Header { msg_type: Op::Read as u8, length: MAX_DATA + 1, ..Header::default() };
    assert!(Request::decode(&read_too_big, Bytes::new()).is_err());

    let flush_with_payload = Header { msg_type: Op::Flush as u8, payload_len: 1, ..Header::default() };
    assert!(Request::decode(&flush_with_payload, Bytes::from_static(b"x")).is_err());

    let bad_name = Header { msg_type: Op::Revert as u8, payload_len: 2, ..Header::default() };
    assert!(Request::decode(&bad_name, Bytes::from_static(&[0xff, 0xfe])).is_err());
    let empty_name = Header { msg_type: Op::Revert as u8, ..Header::default() };
    assert!(Request::decode(&empty_name, Bytes::new()).is_err());

    let layer_name_too_long =
        Header { msg_type: Op::WriteLayer as u8, length: 10, payload_len: 3, ..Header::default() };
    assert!(Request::decode(&layer_name_too_long, Bytes::from_static(b"abc")).is_err());

    let rebuilding_2 = Header { msg_type: Op::SetRebuilding as u8, offset: 2, ..Header::default() };
    assert!(Request::decode(&rebuilding_2, Bytes::new()).is_err());

    let response = Header { msg_type: Op::Ping as u8 | RESPONSE_BIT, ..Header::default() };
    assert!(Request::decode(&response, Bytes::new()).is_err());
}

#[test]
fn response_header_marks_type_and_status() {
    let header = response_header(Op::Read as u8, 9, 0, 4096);
    assert!(header.is_response());
    assert_eq!(header.msg_type, 0x81);
    let decoded = Header::decode(&header.to_bytes()).unwrap();
    assert_eq!(decoded, header);
}

fn arb_request() -> impl Strategy<Value = Request> {
    let name = "[a-z0-9][a-z0-9._-]{0,20}";
    prop_oneof![
        (any::<u64>(), 0..MAX_DATA).prop_map(|(offset, len)| Request::Read { offset, len }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..600), any::<bool>())
            .prop_map(|(offset, data, fua)| Request::Write { offset, data: Bytes::from(data), fua }),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(offset, len, fua)| Request::Unmap {
            offset,
            len,
            fua
        }),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(offset, len, fua)| Request::WriteZeroes {
            offset,
            len,
            fua
        }),
        Just(Request::Flush),
        Just(Request::Ping),
        (name, any::<u64>(), any::<bool>(), any::<u64>()).prop_map(
            |(engine_id, session, take_over, epoch)| Request::Hello(Hello {
                engine_id,
                session,
                take_over,
                epoch
            })
        ),
        any::<u64>().prop_map(Request::SetGeneration),
        any::<bool>().prop_map(Request::SetRebuilding),
        (name, any::<bool>(), proptest::option::of("[0-9TZ:-]{1,25}")).prop_map(
            |(name, user_created, created)| {
                Request::Snapshot(SnapshotRequest { name, user_created, labels: BTreeMap::new(), created })
            }
        ),
        name.prop_map(|name| Request::Revert { name }),
        (name, any::<u64>(), any::<u64>()).prop_map(|(name, offset, len)| Request::PunchLayer {
            name,
            offset,
            len
        }),
        (name, any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(name, offset, data)| Request::WriteLayer { name, offset, data: Bytes::from(data) }),
        (name, any::<u64>(), 0..MAX_DATA).prop_map(|(name, offset, len)| Request::ReadLayer {
            name,
            offset,
            len
        }),
    ]
}

proptest! {
    #[test]
    fn any_request_round_trips(request in arb_request(), request_id in any::<u64>()) {
        let bytes = encode_frame(&request, request_id);
        let (header, decoded, used) = decode_request_frame(&bytes).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(header.request_id, request_id);
        prop_assert_eq!(decoded, request);
    }

    #[test]
    fn any_header_round_trips(
        op in proptest::sample::select(Op::ALL.to_vec()), flags in 0u16..2, request_id in any::<u64>(),
        offset in any::<u64>(), length in any::<u64>(), payload_len in 0..=MAX_PAYLOAD, status in any::<u16>(),
    ) {
        let header = Header { msg_type: op as u8, flags, request_id, offset, length, payload_len, status };
        prop_assert_eq!(Header::decode(&header.to_bytes()).unwrap(), header);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_request_frame(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(request in arb_request(), at in any::<prop::sample::Index>(), value in any::<u8>()) {
        let mut bytes = encode_frame(&request, 1);
        let at = at.index(bytes.len());
        bytes[at] = value;
        let _ = decode_request_frame(&bytes);
    }
}
