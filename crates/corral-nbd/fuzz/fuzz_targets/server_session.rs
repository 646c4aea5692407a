//! Fuzz the whole server: arbitrary client bytes (after a valid or fuzzed prefix) go into a
//! real connection against a memory backend. The server must never panic and must finish
//! (answer or close) once the input ends.
#![no_main]

use std::sync::Arc;

use corral_nbd::protocol::*;
use corral_nbd::{MemoryBackend, NbdServer};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut input = Vec::with_capacity(rest.len() + 64);
    if mode & 1 == 1 {
        // A valid handshake prefix so the fuzzer spends its time in transmission.
        input.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
        if mode & 2 == 2 {
            input.extend_from_slice(&OptionHeader { option: OPT_STRUCTURED_REPLY, length: 0 }.encode());
        }
        let go = GoRequest::encode(b"", &[]);
        input.extend_from_slice(&OptionHeader { option: OPT_GO, length: go.len() as u32 }.encode());
        input.extend_from_slice(&go);
    }
    input.extend_from_slice(rest);

    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_time().build() else { return };
    rt.block_on(async {
        let server = NbdServer::builder("fuzz", Arc::new(MemoryBackend::new(1 << 20)))
            .max_block_size(64 << 10)
            .max_in_flight(4)
            .build();
        let (client, server_end) = tokio::io::duplex(1 << 20);
        let (server_read, server_write) = tokio::io::split(server_end);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let serve = server.serve_connection(server_read, server_write);
        let feed = async move {
            let _ = client_write.write_all(&input).await;
            let _ = client_write.shutdown().await;
        };
        let drain = async move {
            let mut sink = vec![0u8; 64 << 10];
            while let Ok(n) = client_read.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let session = async { tokio::join!(serve, feed, drain) };
        // Payload skipping can wait for bytes that never come only until the input ends;
        // a hang past that is a bug.
        if tokio::time::timeout(std::time::Duration::from_secs(5), session).await.is_err() {
            panic!("server did not finish after the input ended");
        }
    });
});
