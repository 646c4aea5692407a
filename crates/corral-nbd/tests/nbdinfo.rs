//! Real client: `nbdinfo` shows the right size, flags and block-size constraints; `nbdinfo
//! --list` lists the export; an expand is visible to clients that connect afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{require_tool, run, run_ok, TestServer};
use corral_nbd::{MemoryBackend, NbdServer};

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("nbdinfo output has no `{name}`:\n{text}"))
}

#[test]
fn nbdinfo_reports_size_flags_and_block_sizes() {
    require_tool("nbdinfo");
    let server = TestServer::start("vol1", Arc::new(MemoryBackend::new(3 << 30)));
    for uri in [server.tcp_uri(), server.unix_uri()] {
        let out = run_ok(Command::new("nbdinfo").arg(&uri));
        assert!(out.contains("export=\"vol1\""), "{out}");
        assert_eq!(field(&out, "export-size"), "3221225472 (3G)");
        for flag in
            ["can_multi_conn", "can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_df"]
        {
            assert_eq!(field(&out, flag), "true", "{flag} in\n{out}");
        }
        assert_eq!(field(&out, "is_read_only"), "false");
        assert_eq!(field(&out, "block_size_minimum"), "1");
        assert_eq!(field(&out, "block_size_preferred"), "4096");
        assert_eq!(field(&out, "block_size_maximum"), "33554432");
        assert_eq!(field(&out, "description"), "corral test export");
        assert!(out.contains("newstyle-fixed"), "{out}");
    }
}

#[test]
fn nbdinfo_list_shows_the_export() {
    require_tool("nbdinfo");
    let server = TestServer::start("listed-volume", Arc::new(MemoryBackend::new(1 << 20)));
    let out = run_ok(Command::new("nbdinfo").args(["--list", &format!("nbd://{}", server.addr)]));
    assert!(out.contains("export=\"listed-volume\""), "{out}");
    assert!(out.contains("corral test export"), "{out}");
    let out = run_ok(
        Command::new("nbdinfo").args(["--list", &format!("nbd+unix://?socket={}", server.socket.display())]),
    );
    assert!(out.contains("export=\"listed-volume\""), "{out}");
}

#[test]
fn unknown_export_is_refused() {
    require_tool("nbdinfo");
    let server = TestServer::start("vol1", Arc::new(MemoryBackend::new(1 << 20)));
    let out = run(Command::new("nbdinfo").arg(format!("nbd://{}/no-such-export", server.addr)));
    assert!(!out.status.success(), "nbdinfo of an unknown export succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown export") || stderr.contains("no-such-export"), "{stderr}");
}

#[test]
fn read_only_export_is_advertised_and_enforced() {
    require_tool("nbdinfo");
    require_tool("qemu-io");
    let server = TestServer::start_with(
        NbdServer::builder("ro", Arc::new(MemoryBackend::new(1 << 20))).read_only(true).build(),
    );
    let out = run_ok(Command::new("nbdinfo").arg(server.tcp_uri()));
    assert_eq!(field(&out, "is_read_only"), "true");
    let out = run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 1 0 4k", &server.tcp_uri()]));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        !out.status.success()
            || text.contains("failed")
            || text.contains("read-only")
            || text.contains("Operation not permitted"),
        "{text}"
    );
    assert!(server.backend_bytes(0, 4096).iter().all(|&b| b == 0), "a read-only export was written");
}

#[test]
fn expand_is_visible_to_new_connections() {
    require_tool("nbdinfo");
    let server = TestServer::start("vol", Arc::new(MemoryBackend::new(1 << 30)));
    let out = run_ok(Command::new("nbdinfo").arg(server.tcp_uri()));
    assert_eq!(field(&out, "export-size"), "1073741824 (1G)");
    server.backend().set_size(2 << 30);
    let out = run_ok(Command::new("nbdinfo").arg(server.tcp_uri()));
    assert_eq!(field(&out, "export-size"), "2147483648 (2G)");
}
