//! Bad input over raw sockets. For every case: the server answers with the NBD error the
//! specification asks for or closes that one connection, never panics, applies nothing
//! partial, and both a client connected before the case and a new client keep working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use common::raw_client::RawClient;
use common::TestServer;
use corral_nbd::protocol::*;
use corral_nbd::{MemoryBackend, NbdServer};

const SIZE: u64 = 1 << 20;
const MAX_BLOCK: u32 = 64 << 10;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Count panics on the server's runtime threads (test threads have other names).
fn watch_for_server_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name().is_some_and(|n| n.starts_with("tokio-runtime-worker")) {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn start() -> TestServer<MemoryBackend> {
    watch_for_server_panics();
    TestServer::start_with(
        NbdServer::builder("vol", Arc::new(MemoryBackend::new(SIZE))).max_block_size(MAX_BLOCK).build(),
    )
}

/// A new, well-behaved client can write and read back.
fn healthy_client_works(server: &TestServer<MemoryBackend>, seed: u8) {
    for structured in [false, true] {
        let (mut c, size, _) = RawClient::handshake(server.addr, "vol", structured);
        assert_eq!(size, SIZE);
        let data = vec![seed; 8192];
        assert_eq!(c.write(1, 65536, &data), 0);
        assert_eq!(c.read(2, 65536, 8192).unwrap(), data);
        c.disconnect();
    }
    assert_eq!(SERVER_PANICS.load(Ordering::SeqCst), 0, "the server panicked");
}

/// Runs `case` while another client stays connected, then checks both the old and a new client.
fn survive(case: impl FnOnce(&TestServer<MemoryBackend>)) {
    let server = start();
    let (mut bystander, _, _) = RawClient::handshake(server.addr, "vol", true);
    assert_eq!(bystander.write(100, 0, &[7u8; 4096]), 0);
    case(&server);
    assert_eq!(bystander.read(101, 0, 4096).unwrap(), vec![7u8; 4096], "the bystander client was disturbed");
    healthy_client_works(&server, 0x42);
    bystander.disconnect();
    server.wait_for_clients(0);
}

#[test]
fn unknown_client_flags_close_the_connection() {
    survive(|server| {
        let (mut c, _) = RawClient::connect(server.addr);
        c.send(&0x8000_0001u32.to_be_bytes());
        assert!(c.is_closed());
    });
}

#[test]
fn bad_option_magic_closes_the_connection() {
    survive(|server| {
        let (mut c, _) = RawClient::connect(server.addr);
        c.send(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
        c.send(b"NOTMAGIC\0\0\0\x07\0\0\0\0");
        assert!(c.is_closed());
    });
}

#[test]
fn oversized_option_is_refused_and_closed() {
    survive(|server| {
        let (mut c, _) = RawClient::connect(server.addr);
        c.send(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
        c.send(&OptionHeader { option: OPT_GO, length: 1 << 30 }.encode());
        let (reply, _) = c.read_option_reply();
        assert_eq!(reply.reply_type, REP_ERR_TOO_BIG);
        assert!(c.is_closed());
    });
}

#[test]
fn bad_options_get_error_replies_and_negotiation_continues() {
    survive(|server| {
        let (mut c, _) = RawClient::connect(server.addr);
        c.send(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
        // unknown option: ERR_UNSUP, data skipped
        c.send_option(0x7777, b"some data the server does not understand");
        let (reply, _) = c.read_option_reply();
        assert_eq!((reply.option, reply.reply_type), (0x7777, REP_ERR_UNSUP));
        // STARTTLS: unsupported
        c.send_option(OPT_STARTTLS, &[]);
        assert_eq!(c.read_option_reply().0.reply_type, REP_ERR_UNSUP);
        // GO whose info count does not match its length
        let mut go = GoRequest::encode(b"vol", &[INFO_NAME]);
        go.truncate(go.len() - 1);
        c.send_option(OPT_GO, &go);
        assert_eq!(c.read_option_reply().0.reply_type, REP_ERR_INVALID);
        // GO whose name length points past the end
        c.send_option(OPT_GO, &[0, 0, 0x10, 0, b'v']);
        assert_eq!(c.read_option_reply().0.reply_type, REP_ERR_INVALID);
        // unknown export
        c.send_option(OPT_INFO, &GoRequest::encode(b"nope", &[]));
        assert_eq!(c.read_option_reply().0.reply_type, REP_ERR_UNKNOWN);
        // LIST with data, STRUCTURED_REPLY with data
        c.send_option(OPT_LIST, b"x");
        assert_eq!(c.read_option_reply().0.reply_type, REP_ERR_INVALID);
        c.send_option(OPT_STRUCTURED_REPLY, b"x");
        assert_eq!(c.read_option_reply().0.reply_type, REP_ERR_INVALID);
        // INFO with NAME and DESCRIPTION requested
        c.send_option(OPT_INFO, &GoRequest::encode(b"vol", &[INFO_NAME, INFO_DESCRIPTION]));
        let mut infos = Vec::new();
        loop {
            let (reply, data) = c.read_option_reply();
            if reply.reply_type == REP_ACK {
                break;
            }
            assert_eq!(reply.reply_type, REP_INFO);
            infos.push(Info::decode(&data).unwrap().to_owned_debug());
        }
        assert!(infos.iter().any(|i| i.contains("Name([118, 111, 108])")), "{infos:?}");
        assert!(infos.iter().any(|i| i.starts_with("Description")), "{infos:?}");
        assert!(
            infos.iter().any(|i| i.starts_with("BlockSize { minimum: 1, preferred: 4096, maximum: 65536 }")),
            "{infos:?}"
        );
        // ...and the connection is still usable: go to transmission
        c.send_option(OPT_GO, &GoRequest::encode(b"vol", &[]));
        loop {
            let (reply, _) = c.read_option_reply();
            if reply.reply_type == REP_ACK {
                break;
            }
            assert_eq!(reply.reply_type, REP_INFO);
        }
        assert_eq!(c.read(5, 0, 4096).unwrap(), vec![7u8; 4096]);
        c.disconnect();
    });
}

trait DebugString {
    fn to_owned_debug(&self) -> String;
}
impl DebugString for Info<'_> {
    fn to_owned_debug(&self) -> String {
        format!("{self:?}")
    }
}

#[test]
fn abort_and_unknown_export_name() {
    survive(|server| {
        let (mut c, _) = RawClient::connect(server.addr);
        c.send(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
        c.send_option(OPT_ABORT, &[]);
        assert_eq!(c.read_option_reply().0.reply_type, REP_ACK);
        assert!(c.is_closed());

        let (mut c, _) = RawClient::connect(server.addr);
        c.send(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
        c.send_option(OPT_EXPORT_NAME, b"nope");
        assert!(c.is_closed(), "EXPORT_NAME of an unknown export must close the connection");

        // EXPORT_NAME of the right export, with and without NO_ZEROES
        for (flags, reply_len) in
            [(FLAG_C_FIXED_NEWSTYLE, 134), (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES, 10)]
        {
            let (mut c, _) = RawClient::connect(server.addr);
            c.send(&flags.to_be_bytes());
            c.send_option(OPT_EXPORT_NAME, b"vol");
            let mut reply = vec![0u8; reply_len];
            std::io::Read::read_exact(&mut c.stream, &mut reply).unwrap();
            assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), SIZE);
            assert_eq!(c.read(1, 0, 4096).unwrap(), vec![7u8; 4096]);
            c.disconnect();
        }
    });
}

#[test]
fn truncated_handshakes_do_not_hurt() {
    survive(|server| {
        let (mut c, _) = RawClient::connect(server.addr);
        c.send(&[0, 0]); // half of the client flags
        drop(c);
        let (mut c, _) = RawClient::connect(server.addr);
        c.send(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
        c.send(&OptionHeader { option: OPT_GO, length: 100 }.encode());
        c.send(&[0, 0, 0]); // 3 of 100 bytes
        drop(c);
        let (c, _) = RawClient::connect(server.addr);
        drop(c); // nothing at all
    });
}

#[test]
fn bad_request_magic_closes_only_that_connection() {
    survive(|server| {
        let (mut c, _, _) = RawClient::handshake(server.addr, "vol", false);
        let mut bad =
            RequestHeader { flags: 0, command: CMD_READ, cookie: 1, offset: 0, length: 4096 }.encode();
        bad[0] ^= 0xff;
        c.send(&bad);
        assert!(c.is_closed());
    });
}

#[test]
fn unknown_commands_and_flags_get_einval() {
    survive(|server| {
        for structured in [false, true] {
            let (mut c, _, _) = RawClient::handshake(server.addr, "vol", structured);
            for (command, flags) in
                [(99u16, 0u16), (CMD_TRIM + 1, 0), (7, 0), (CMD_READ, 1 << 12), (CMD_WRITE_ZEROES, 1 << 9)]
            {
                c.send_request(command, flags, 42, 0, 4096, &[]);
                let (cookie, errno, _) = c.read_reply(|_| 0);
                assert_eq!((cookie, errno), (42, EINVAL), "command {command} flags {flags:#x}");
            }
            if !structured {
                // DF without structured replies
                c.send_request(CMD_READ, CMD_FLAG_DF, 43, 0, 4096, &[]);
                assert_eq!(c.read_reply(|_| 0).1, EINVAL);
            }
            // still in sync
            assert_eq!(c.read(44, 0, 4096).unwrap(), vec![7u8; 4096]);
            c.disconnect();
        }
    });
}

#[test]
fn out_of_range_requests_get_the_spec_errors_and_apply_nothing() {
    survive(|server| {
        for structured in [false, true] {
            let (mut c, _, _) = RawClient::handshake(server.addr, "vol", structured);
            assert_eq!(c.read(1, SIZE - 4096, 8192), Err(EINVAL));
            assert_eq!(c.read(2, u64::MAX - 10, 4096), Err(EINVAL));
            assert_eq!(c.write(3, SIZE - 4096, &[0xee; 8192]), ENOSPC);
            assert_eq!(c.write(4, u64::MAX - 10, &[0xee; 4096]), ENOSPC);
            c.send_request(CMD_WRITE_ZEROES, 0, 5, SIZE, 1, &[]);
            assert_eq!(c.read_reply(|_| 0).1, ENOSPC);
            c.send_request(CMD_TRIM, 0, 6, SIZE - 1, 2, &[]);
            assert_eq!(c.read_reply(|_| 0).1, EINVAL);
            // nothing of the refused write landed
            assert_eq!(c.read(7, SIZE - 4096, 4096).unwrap(), vec![0u8; 4096]);
            // zero-length requests are harmless successes
            assert_eq!(c.read(8, SIZE, 0).unwrap(), Vec::<u8>::new());
            assert_eq!(c.write(9, 0, &[]), 0);
            c.disconnect();
        }
        assert_eq!(server.backend_bytes(SIZE - 4096, 4096), vec![0u8; 4096]);
    });
}

#[test]
fn oversized_payloads_are_refused() {
    survive(|server| {
        // Larger than the maximum block size but small enough to skip: EINVAL, stream stays in sync.
        let (mut c, _, _) = RawClient::handshake(server.addr, "vol", false);
        let big = vec![0xdd; (MAX_BLOCK as usize) * 2];
        assert_eq!(c.write(1, 0, &big), EINVAL);
        assert_eq!(c.read(2, 0, MAX_BLOCK + 1), Err(EINVAL));
        assert_eq!(c.read(3, 0, 4096).unwrap(), vec![7u8; 4096], "refused write was applied");
        c.disconnect();

        // Too large to skip: EINVAL, then the connection is closed.
        let (mut c, _, _) = RawClient::handshake(server.addr, "vol", true);
        // The unread payload holds what looks like a valid write: it must not be executed.
        let mut smuggled = RequestHeader { flags: 0, command: CMD_WRITE, cookie: 5, offset: 0, length: 4096 }
            .encode()
            .to_vec();
        smuggled.extend_from_slice(&[0xee; 4096]);
        c.send_request(CMD_WRITE, 0, 4, 0, u32::MAX, &smuggled);
        let (cookie, errno, _) = c.read_reply(|_| 0);
        assert_eq!((cookie, errno), (4, EINVAL));
        assert!(c.is_closed());
        assert_eq!(server.backend_bytes(0, 4096), vec![7u8; 4096], "payload bytes were run as a request");
    });
}

#[test]
fn truncated_requests_close_the_connection_without_partial_writes() {
    survive(|server| {
        let (mut c, _, _) = RawClient::handshake(server.addr, "vol", false);
        c.send(
            &RequestHeader { flags: 0, command: CMD_WRITE, cookie: 1, offset: 8192, length: 4096 }.encode()
                [..10],
        );
        drop(c);
        let (mut c, _, _) = RawClient::handshake(server.addr, "vol", false);
        c.send_request(CMD_WRITE, 0, 1, 8192, 4096, &[0xab; 100]);
        drop(c);
        // the half-sent write never reached the backend
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(server.backend_bytes(8192, 4096), vec![0u8; 4096]);
    });
}

#[test]
fn pipelined_requests_are_all_answered() {
    survive(|server| {
        let (mut c, _, _) = RawClient::handshake(server.addr, "vol", true);
        let mut burst = Vec::new();
        for i in 0..100u64 {
            let data = vec![i as u8; 4096];
            burst.extend_from_slice(
                &RequestHeader {
                    flags: 0,
                    command: CMD_WRITE,
                    cookie: i,
                    offset: 131072 + i * 4096,
                    length: 4096,
                }
                .encode(),
            );
            burst.extend_from_slice(&data);
        }
        c.send(&burst);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let (cookie, errno, _) = c.read_reply(|_| 0);
            assert_eq!(errno, 0);
            assert!(seen.insert(cookie), "cookie {cookie} answered twice");
        }
        assert_eq!(seen.len(), 100);
        let mut burst = Vec::new();
        for i in 0..100u64 {
            burst.extend_from_slice(
                &RequestHeader {
                    flags: 0,
                    command: CMD_READ,
                    cookie: 1000 + i,
                    offset: 131072 + i * 4096,
                    length: 4096,
                }
                .encode(),
            );
        }
        burst.extend_from_slice(
            &RequestHeader { flags: 0, command: CMD_FLUSH, cookie: 5000, offset: 0, length: 0 }.encode(),
        );
        c.send(&burst);
        for _ in 0..101 {
            let (cookie, errno, data) = c.read_reply(|cookie| if cookie == 5000 { 0 } else { 4096 });
            assert_eq!(errno, 0);
            if cookie != 5000 {
                assert_eq!(data, vec![(cookie - 1000) as u8; 4096], "cookie {cookie}");
            }
        }
        c.disconnect();
    });
}
