//! The engine's NBD frontend with real clients: qemu-io over TCP and a unix socket, nbdcopy of a random
//! 256 MiB image in and out, and ext4 through nbdfuse + a loop device.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine_support::*;
use rand::RngCore;

/// Pattern writes and reads, write-zeroes, discard, flush: all verified with qemu-io's `-P` checks.
fn qemu_io_round(uri: &str) {
    qemu_io(
        uri,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "write -P 0x11 1000 3000",
            "read -P 0x11 1000 3000",
            "read -P 0xab 0 1000",
            "read -P 0xab 4000 1044576",
            "write -z 64k 128k",
            "read -P 0 64k 128k",
            "read -P 0xab 192k 64k",
            "write -P 0x22 2M 1M",
            "discard 2M 512k",
            "read -P 0 2M 512k",
            "read -P 0x22 2560k 512k",
            "aio_write -P 0x33 4M 64k",
            "aio_flush",
            "read -P 0x33 4M 64k",
            "flush",
        ],
    );
    // A second connection sees the same data.
    qemu_io(uri, &["read -P 0x11 1000 3000", "read -P 0 64k 128k", "read -P 0x33 4M 64k"]);
}

#[test]
fn qemu_io_patterns_zeroes_discard_flush_over_tcp_and_unix() {
    let dir = tempfile::tempdir().unwrap();
    let rs = replicas(dir.path(), 2, "64MiB");
    let engine = EngineProc::start("vol-tcp", "64MiB", &addresses(&rs), "127.0.0.1:0", &[]);
    assert!(engine.nbd.starts_with("nbd://127.0.0.1:"), "{}", engine.nbd);
    qemu_io_round(&engine.nbd);
    drop(engine);

    let rs2 = replicas(&dir.path().join("unix"), 2, "64MiB");
    let socket = dir.path().join("nbd.sock");
    let engine =
        EngineProc::start("vol-unix", "64MiB", &addresses(&rs2), &format!("unix:{}", socket.display()), &[]);
    assert!(engine.nbd.starts_with("nbd+unix://"), "{}", engine.nbd);
    qemu_io_round(&engine.nbd);
    // Every replica holds the data (writes go to all): read each one alone.
    drop(engine);
    for replica in &rs2 {
        let only = vec![replica.address.clone()];
        let e = EngineProc::start("vol-unix", "64MiB", &only, "127.0.0.1:0", &["--no-auto-rebuild"]);
        qemu_io(&e.nbd, &["read -P 0x11 1000 3000", "read -P 0 64k 128k", "read -P 0x22 2560k 512k"]);
    }
}

#[test]
fn nbdcopy_of_a_random_256mib_image_round_trips_byte_identical() {
    require_tool("nbdcopy");
    let dir = tempfile::tempdir().unwrap();
    let rs = replicas(dir.path(), 2, "256MiB");
    let engine = EngineProc::start("vol-copy", "256MiB", &addresses(&rs), "127.0.0.1:0", &[]);
    let input = dir.path().join("in.raw");
    let output = dir.path().join("out.raw");
    let mut data = vec![0u8; 256 << 20];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(&input, &data).unwrap();
    let st = Command::new("nbdcopy").arg(&input).arg(&engine.nbd).status().unwrap();
    assert!(st.success(), "nbdcopy in failed");
    let st = Command::new("nbdcopy").arg(&engine.nbd).arg(&output).status().unwrap();
    assert!(st.success(), "nbdcopy out failed");
    let back = std::fs::read(&output).unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the image read back differs from the one written");
}

/// Unmounts / detaches / kills whatever the ext4 test set up, in reverse order, even on failure.
struct Cleanup {
    mount: Option<std::path::PathBuf>,
    loop_dev: Option<String>,
    fuse_dir: Option<std::path::PathBuf>,
    nbdfuse: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = Command::new("umount").arg(&m).status();
        }
        if let Some(l) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
        if let Some(f) = self.fuse_dir.take() {
            let _ = Command::new("fusermount3").arg("-u").arg(&f).stderr(Stdio::null()).status();
            let _ = Command::new("umount").arg(&f).stderr(Stdio::null()).status();
        }
        if let Some(mut c) = self.nbdfuse.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ext4_through_nbdfuse_and_a_loop_device_is_clean() {
    for tool in ["nbdfuse", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "fusermount3"] {
        require_tool(tool);
    }
    let dir = tempfile::tempdir().unwrap();
    let rs = replicas(dir.path(), 2, "128MiB");
    let engine = EngineProc::start("vol-ext4", "128MiB", &addresses(&rs), "127.0.0.1:0", &[]);
    let fuse_dir = dir.path().join("fuse");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let mut cleanup = Cleanup { mount: None, loop_dev: None, fuse_dir: None, nbdfuse: None };
    let child = Command::new("nbdfuse").arg(fuse_dir.join("disk")).arg(&engine.nbd).spawn().unwrap();
    cleanup.nbdfuse = Some(child);
    cleanup.fuse_dir = Some(fuse_dir.clone());
    let disk = fuse_dir.join("disk");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&disk).map(|m| m.len()).unwrap_or(0) != 128 << 20 {
        assert!(Instant::now() < deadline, "nbdfuse did not expose the disk");
        std::thread::sleep(Duration::from_millis(100));
    }
    let loop_dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&disk)).trim().to_string();
    cleanup.loop_dev = Some(loop_dev.clone());
    run(Command::new("mkfs.ext4").args(["-q", "-F", &loop_dev]));
    run(Command::new("mount").arg(&loop_dev).arg(&mnt));
    cleanup.mount = Some(mnt.clone());
    let mut expected = Vec::new();
    for i in 0..20u64 {
        let data = block_data(i, 7, 10_000 + i as usize * 37_000);
        std::fs::write(mnt.join(format!("file{i}")), &data).unwrap();
        expected.push(data);
    }
    run(&mut Command::new("sync"));
    run(Command::new("umount").arg(&mnt));
    cleanup.mount = None;
    let fsck = Command::new("e2fsck").args(["-fn", &loop_dev]).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn found problems: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    // Mount again and read the files back.
    run(Command::new("mount").arg(&loop_dev).arg(&mnt));
    cleanup.mount = Some(mnt.clone());
    for (i, data) in expected.iter().enumerate() {
        assert!(std::fs::read(mnt.join(format!("file{i}"))).unwrap() == *data, "file{i} differs");
    }
}
