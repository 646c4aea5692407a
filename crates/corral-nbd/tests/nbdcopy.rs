//! Real client: `nbdcopy` of a random 256 MiB image into the export and back out is
//! byte-identical. nbdcopy opens several connections (the export allows multi-conn) and keeps
//! many requests in flight, so this also exercises pipelining and concurrent clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::Arc;

use common::file_backend::FileBackend;
use common::{pseudo_random, require_tool, run_ok, TestServer};

const IMAGE: usize = 256 << 20;

#[test]
fn nbdcopy_random_image_in_and_out_is_identical() {
    require_tool("nbdcopy");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("in.raw");
    let out_image = dir.path().join("out.raw");
    {
        let mut f = std::fs::File::create(&image).unwrap();
        for i in 0..(IMAGE >> 20) {
            f.write_all(&pseudo_random(1 << 20, 0xc0ffee + i as u64)).unwrap();
        }
    }
    let backend = Arc::new(FileBackend::create(&dir.path().join("export.img"), IMAGE as u64).unwrap());
    let server = TestServer::start("copy", backend);

    run_ok(Command::new("nbdcopy").args([image.to_str().unwrap(), &server.tcp_uri()]));
    run_ok(Command::new("nbdcopy").args([&server.unix_uri(), out_image.to_str().unwrap()]));

    let original = std::fs::read(&image).unwrap();
    let copied = std::fs::read(&out_image).unwrap();
    assert_eq!(copied.len(), original.len());
    if let Some(at) = original.iter().zip(&copied).position(|(a, b)| a != b) {
        panic!("copied image differs from the original at byte {at}");
    }
    // and the export itself holds the image (not just a round trip through a cache)
    assert_eq!(server.backend_bytes(123 << 20, 1 << 20), original[123 << 20..124 << 20]);
    server.wait_for_clients(0);
}
