//! Real client: qemu-io pattern writes and reads, write-zeroes, discard, flush and aio writes
//! over `nbd://` (TCP) and `nbd+unix://`, checked both through qemu-io (`read -P` exits 1 on a
//! mismatch) and by reading the backend directly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{require_tool, run, run_ok, TestServer};
use corral_nbd::MemoryBackend;

fn qemu_io(uri: &str, commands: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.arg(uri);
    run(&mut cmd)
}

fn qemu_io_ok(uri: &str, commands: &[&str]) -> String {
    let out = qemu_io(uri, commands);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success()
            && !stdout.contains("Pattern verification failed")
            && !stdout.contains("failed:"),
        "qemu-io {commands:?} on {uri} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn exercise(server: &TestServer<MemoryBackend>, uri: &str) {
    qemu_io_ok(
        uri,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "write -P 0x5c 1048064 1024", // unaligned, straddles 1 MiB
            "read -P 0x5c 1048064 1024",
            "write -z 8192 16k",
            "read -P 0 8192 16k",
            "read -P 0xab 0 8192",
            "discard 2M 1M",
            "write -P 0x33 3M 64k",
            "flush",
            "aio_write -P 0x77 4M 64k",
            "aio_write -P 0x78 5M 64k",
            "aio_flush",
            "read -P 0x77 4M 64k",
            "read -P 0x78 5M 64k",
            "write -z -u 6M 1M", // write zeroes allowing unmap
            "read -P 0 6M 1M",
            "write -P 0x01 -f 7M 4k", // FUA write
            "read -P 0x01 7M 4k",
        ],
    );
    // The bytes really are in the backend.
    assert!(server.backend_bytes(0, 8192).iter().all(|&b| b == 0xab));
    assert!(server.backend_bytes(8192, 16 << 10).iter().all(|&b| b == 0));
    assert!(server.backend_bytes(24 << 10, (1 << 20) - (24 << 10) - 512).iter().all(|&b| b == 0xab));
    assert!(server.backend_bytes(1048064, 1024).iter().all(|&b| b == 0x5c));
    assert!(server.backend_bytes(3 << 20, 64 << 10).iter().all(|&b| b == 0x33));
    assert!(server.backend_bytes(4 << 20, 64 << 10).iter().all(|&b| b == 0x77));
    assert!(server.backend_bytes(5 << 20, 64 << 10).iter().all(|&b| b == 0x78));
    assert!(server.backend_bytes(7 << 20, 4096).iter().all(|&b| b == 0x01));
    // A wrong pattern is detected: the check above is able to fail.
    let out = qemu_io(uri, &["read -P 0xcd 0 4k"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() || stdout.contains("Pattern verification failed"), "{stdout}");
}

#[test]
fn qemu_io_patterns_over_tcp() {
    require_tool("qemu-io");
    let server = TestServer::start("vol", Arc::new(MemoryBackend::new(64 << 20)));
    exercise(&server, &server.tcp_uri());
    // The default (empty) export name reaches the same export.
    qemu_io_ok(&format!("nbd://{}", server.addr), &["read -P 0xab 0 4k"]);
    server.wait_for_clients(0);
}

#[test]
fn qemu_io_patterns_over_unix_socket() {
    require_tool("qemu-io");
    let server = TestServer::start("vol", Arc::new(MemoryBackend::new(64 << 20)));
    exercise(&server, &server.unix_uri());
    server.wait_for_clients(0);
}

#[test]
fn qemu_io_sees_out_of_range_errors() {
    require_tool("qemu-io");
    let server = TestServer::start("vol", Arc::new(MemoryBackend::new(1 << 20)));
    let out = qemu_io(&server.tcp_uri(), &["write -P 0x11 1020k 8k"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("failed") || !out.status.success(), "write beyond the end succeeded: {stdout}");
    // Nothing of the refused write was applied.
    assert!(server.backend_bytes((1 << 20) - 4096, 4096).iter().all(|&b| b == 0));
    run_ok(Command::new("qemu-io").args(["-f", "raw", "-c", "read -P 0 0 1M", &server.tcp_uri()]));
}
