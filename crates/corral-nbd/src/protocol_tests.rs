use super::*;
use proptest::prelude::*;

fn params() -> TransmissionParams {
    TransmissionParams {
        size: 1 << 20,
        flags: TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_TRIM
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_SEND_FAST_ZERO
            | TFLAG_CAN_MULTI_CONN,
        structured: false,
        max_payload: 64 << 10,
        skip_limit: 128 << 10,
    }
}

fn req(command: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
    RequestHeader { flags, command, cookie: 9, offset, length }
}

#[test]
fn greeting_layout_is_the_documented_one() {
    let g = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    assert_eq!(&g[0..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(&g[16..18], &[0, 3]);
    assert_eq!(decode_greeting(&g), Ok(3));
    let mut bad = g;
    bad[0] = b'X';
    assert!(matches!(decode_greeting(&bad), Err(FormatError::BadMagic { .. })));
    assert!(matches!(decode_greeting(&g[..17]), Err(FormatError::Truncated { .. })));
}

#[test]
fn request_layout_is_the_documented_one() {
    let h =
        RequestHeader { flags: 1, command: CMD_WRITE, cookie: 0x0102030405060708, offset: 4096, length: 512 };
    let b = h.encode();
    assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
    assert_eq!(&b[4..6], &[0, 1]);
    assert_eq!(&b[6..8], &[0, 1]);
    assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&b[16..24], &[0, 0, 0, 0, 0, 0, 0x10, 0]);
    assert_eq!(&b[24..28], &[0, 0, 2, 0]);
    assert_eq!(RequestHeader::decode(&b), Ok(h));
}

#[test]
fn replies_have_the_documented_layout() {
    let s = SimpleReply { error: 22, cookie: 5 }.encode();
    assert_eq!(&s[0..4], &[0x67, 0x44, 0x66, 0x98]);
    assert_eq!(SimpleReply::decode(&s), Ok(SimpleReply { error: 22, cookie: 5 }));

    let d = encode_offset_data_header(7, 8192, 4096);
    let h = StructuredReply::decode(&d).expect("decodes");
    assert_eq!(
        h,
        StructuredReply {
            flags: REPLY_FLAG_DONE,
            reply_type: REPLY_TYPE_OFFSET_DATA,
            cookie: 7,
            length: 4104
        }
    );
    assert_eq!(&d[20..28], &8192u64.to_be_bytes());

    let mut e = Vec::new();
    push_error_chunk(&mut e, 3, 28, "no space");
    let h = StructuredReply::decode(&e).expect("decodes");
    assert_eq!(h.reply_type, REPLY_TYPE_ERROR);
    assert_eq!(h.flags, REPLY_FLAG_DONE);
    assert_eq!(h.length as usize, e.len() - STRUCTURED_REPLY_LEN);
    assert_eq!(decode_error_chunk(&e[20..]), Ok((28, &b"no space"[..])));

    let n = encode_none_chunk(4);
    assert_eq!(
        StructuredReply::decode(&n),
        Ok(StructuredReply { flags: REPLY_FLAG_DONE, reply_type: REPLY_TYPE_NONE, cookie: 4, length: 0 })
    );
}

#[test]
fn error_chunk_message_is_cut_on_a_char_boundary() {
    let long = "é".repeat(3000); // 6000 bytes
    let mut out = Vec::new();
    push_error_chunk(&mut out, 1, 5, &long);
    let (errno, msg) = decode_error_chunk(&out[20..]).expect("decodes");
    assert_eq!(errno, 5);
    assert!(msg.len() <= MAX_STRING_LEN);
    assert!(std::str::from_utf8(msg).is_ok());
}

#[test]
fn option_formats_round_trip() {
    let h = OptionHeader { option: OPT_GO, length: 12 };
    assert_eq!(OptionHeader::decode(&h.encode()), Ok(h));
    let r = OptionReplyHeader { option: OPT_GO, reply_type: REP_ERR_UNKNOWN, length: 3 };
    assert_eq!(OptionReplyHeader::decode(&r.encode()), Ok(r));

    let data = GoRequest::encode(b"vol", &[INFO_BLOCK_SIZE, INFO_NAME]);
    let go = GoRequest::parse(&data).expect("parses");
    assert_eq!(go.name, b"vol");
    assert_eq!(go.info_requests().collect::<Vec<_>>(), vec![INFO_BLOCK_SIZE, INFO_NAME]);
    // count says 2 but only one request present
    assert!(GoRequest::parse(&data[..data.len() - 2]).is_err());
    assert!(GoRequest::parse(&[0, 0, 0]).is_err());
    assert!(GoRequest::parse(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());

    for info in [
        Info::Export { size: 1 << 40, flags: 0x1ff },
        Info::Name(b"vol"),
        Info::Description(b"a volume"),
        Info::BlockSize { minimum: 1, preferred: 4096, maximum: 32 << 20 },
    ] {
        let mut out = Vec::new();
        info.encode_into(&mut out);
        assert_eq!(Info::decode(&out), Ok(info));
    }

    let entry = encode_server_entry(b"vol", b"desc");
    assert_eq!(decode_server_entry(&entry), Ok((&b"vol"[..], &b"desc"[..])));
    assert!(decode_server_entry(&[0, 0, 0, 9, b'a']).is_err());

    let (reply, n) = encode_export_name_reply(1 << 30, 0x0d, true);
    assert_eq!(n, 10);
    assert_eq!(&reply[..8], &(1u64 << 30).to_be_bytes());
    let (_, n) = encode_export_name_reply(1 << 30, 0x0d, false);
    assert_eq!(n, 134);
}

#[test]
fn check_request_accepts_valid_requests() {
    let p = params();
    assert_eq!(check_request(&req(CMD_READ, 0, 0, 4096), &p), Ok(Request::Read { offset: 0, length: 4096 }));
    assert_eq!(
        check_request(&req(CMD_WRITE, CMD_FLAG_FUA, (1 << 20) - 512, 512), &p),
        Ok(Request::Write { offset: (1 << 20) - 512, length: 512, fua: true })
    );
    assert_eq!(check_request(&req(CMD_FLUSH, 0, 0, 0), &p), Ok(Request::Flush));
    assert_eq!(check_request(&req(CMD_DISC, 0, 0, 0), &p), Ok(Request::Disconnect));
    assert_eq!(
        check_request(&req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO, 0, 1 << 20), &p),
        Ok(Request::WriteZeroes { offset: 0, length: 1 << 20, fua: false, no_hole: true, fast: true })
    );
    // trims are not bounded by the maximum payload
    assert_eq!(
        check_request(&req(CMD_TRIM, 0, 0, 1 << 20), &p),
        Ok(Request::Trim { offset: 0, length: 1 << 20, fua: false })
    );
}

#[test]
fn check_request_rejects_per_spec() {
    let p = params();
    let kind = |h: RequestHeader| check_request(&h, &p).map_err(|r| (r.kind, r.payload));
    // read beyond the end: EINVAL, no payload
    assert_eq!(
        kind(req(CMD_READ, 0, 1 << 20, 1)),
        Err((ErrorKind::InvalidArgument, PayloadDisposition::None))
    );
    // write beyond the end: ENOSPC, payload discarded
    assert_eq!(
        kind(req(CMD_WRITE, 0, (1 << 20) - 1, 2)),
        Err((ErrorKind::NoSpace, PayloadDisposition::Discard(2)))
    );
    // offset + length overflows u64
    assert_eq!(
        kind(req(CMD_WRITE, 0, u64::MAX, 16)),
        Err((ErrorKind::NoSpace, PayloadDisposition::Discard(16)))
    );
    assert_eq!(kind(req(CMD_READ, 0, u64::MAX - 1, 16)).map_err(|e| e.0), Err(ErrorKind::InvalidArgument));
    // oversized payloads
    assert_eq!(
        kind(req(CMD_WRITE, 0, 0, (64 << 10) + 1)),
        Err((ErrorKind::InvalidArgument, PayloadDisposition::Discard((64 << 10) + 1)))
    );
    assert_eq!(
        kind(req(CMD_WRITE, 0, 0, u32::MAX)),
        Err((ErrorKind::InvalidArgument, PayloadDisposition::Disconnect))
    );
    assert_eq!(kind(req(CMD_READ, 0, 0, (64 << 10) + 1)).map_err(|e| e.0), Err(ErrorKind::InvalidArgument));
    // unknown command and flags
    assert_eq!(kind(req(99, 0, 0, 4096)), Err((ErrorKind::InvalidArgument, PayloadDisposition::None)));
    assert_eq!(kind(req(5, 0, 0, 4096)).map_err(|e| e.0), Err(ErrorKind::InvalidArgument));
    assert_eq!(kind(req(CMD_READ, 1 << 9, 0, 4096)).map_err(|e| e.0), Err(ErrorKind::InvalidArgument));
    // DF needs structured replies
    assert_eq!(kind(req(CMD_READ, CMD_FLAG_DF, 0, 4096)).map_err(|e| e.0), Err(ErrorKind::InvalidArgument));
    // trim beyond the end: EINVAL; write-zeroes beyond the end: ENOSPC
    assert_eq!(kind(req(CMD_TRIM, 0, 1 << 20, 4096)).map_err(|e| e.0), Err(ErrorKind::InvalidArgument));
    assert_eq!(kind(req(CMD_WRITE_ZEROES, 0, 1 << 20, 4096)).map_err(|e| e.0), Err(ErrorKind::NoSpace));
    // read-only export
    let ro = TransmissionParams { flags: p.flags | TFLAG_READ_ONLY, ..p };
    assert_eq!(
        check_request(&req(CMD_WRITE, 0, 0, 4096), &ro).map_err(|r| r.kind),
        Err(ErrorKind::PermissionDenied)
    );
    assert_eq!(
        check_request(&req(CMD_TRIM, 0, 0, 4096), &ro).map_err(|r| r.kind),
        Err(ErrorKind::PermissionDenied)
    );
}

#[test]
fn structured_reads_accept_df() {
    let p = TransmissionParams { structured: true, flags: params().flags | TFLAG_SEND_DF, ..params() };
    assert_eq!(
        check_request(&req(CMD_READ, CMD_FLAG_DF, 0, 512), &p),
        Ok(Request::Read { offset: 0, length: 512 })
    );
}

proptest! {
    #[test]
    fn request_round_trips(flags in any::<u16>(), command in any::<u16>(), cookie in any::<u64>(),
                           offset in any::<u64>(), length in any::<u32>()) {
        let h = RequestHeader { flags, command, cookie, offset, length };
        prop_assert_eq!(RequestHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn replies_round_trip(error in any::<u32>(), cookie in any::<u64>(), flags in any::<u16>(),
                          reply_type in any::<u16>(), length in any::<u32>()) {
        let s = SimpleReply { error, cookie };
        prop_assert_eq!(SimpleReply::decode(&s.encode()), Ok(s));
        let c = StructuredReply { flags, reply_type, cookie, length };
        prop_assert_eq!(StructuredReply::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn go_request_round_trips(name in proptest::collection::vec(any::<u8>(), 0..300),
                              infos in proptest::collection::vec(any::<u16>(), 0..20)) {
        let data = GoRequest::encode(&name, &infos);
        let go = GoRequest::parse(&data).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(go.name, &name[..]);
        prop_assert_eq!(go.info_requests().collect::<Vec<_>>(), infos);
    }

    #[test]
    fn accepted_requests_are_in_range(h in (any::<u16>(), 0u16..10, any::<u64>(), any::<u64>(), any::<u32>())
        .prop_map(|(flags, command, cookie, offset, length)| RequestHeader { flags, command, cookie, offset: offset % (2 << 20), length: length % (256 << 10) })) {
        let p = params();
        match check_request(&h, &p) {
            Ok(Request::Read { offset, length }) | Ok(Request::Write { offset, length, .. }) => {
                prop_assert!(offset + u64::from(length) <= p.size);
                prop_assert!(length <= p.max_payload);
            }
            Ok(Request::Trim { offset, length, .. }) | Ok(Request::WriteZeroes { offset, length, .. }) => {
                prop_assert!(offset + u64::from(length) <= p.size);
            }
            Ok(_) => {}
            Err(r) => prop_assert!(r.kind.errno() != 0),
        }
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = RequestHeader::decode(&bytes);
        let _ = OptionHeader::decode(&bytes);
        let _ = GoRequest::parse(&bytes);
        let _ = Info::decode(&bytes);
        let _ = decode_server_entry(&bytes);
        let _ = decode_error_chunk(&bytes);
        let _ = StructuredReply::decode(&bytes);
        let _ = SimpleReply::decode(&bytes);
    }
}
