//! Real filesystem on the export (the kernel here has no nbd module): nbdfuse exposes the
//! export as a file, losetup attaches it, then mkfs.ext4, mount, write files, sync, umount,
//! remount and compare, umount, `e2fsck -fn` clean, detach. Needs root, /dev/fuse and loop
//! devices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pseudo_random, require_tool, run, run_ok, TestServer};
use corral_nbd::MemoryBackend;

const SIZE: u64 = 256 << 20;

/// Undoes whatever was set up, in reverse order, even when the test fails half way.
#[derive(Default)]
struct Teardown {
    mounted: Option<PathBuf>,
    loop_device: Option<String>,
    fuse_dir: Option<PathBuf>,
    nbdfuse: Option<Child>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(dir) = self.mounted.take() {
            let _ = Command::new("umount").arg(&dir).status();
        }
        if let Some(dev) = self.loop_device.take() {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
        if let Some(dir) = self.fuse_dir.take() {
            let _ = Command::new("fusermount3").arg("-u").arg(&dir).status();
        }
        if let Some(mut child) = self.nbdfuse.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for_file(path: &Path, size: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if std::fs::metadata(path).map(|m| m.len() == size).unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "nbdfuse did not expose {} with size {size}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ext4_on_nbdfuse_loop_device_is_clean() {
    for tool in ["nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "mount", "umount", "e2fsck"] {
        require_tool(tool);
    }
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing: FUSE is needed for nbdfuse");
    let server = TestServer::start("fsvol", Arc::new(MemoryBackend::new(SIZE)));
    let work = tempfile::tempdir().unwrap();
    let fuse_dir = work.path().join("fuse");
    let fs_dir = work.path().join("fs");
    std::fs::create_dir(&fuse_dir).unwrap();
    std::fs::create_dir(&fs_dir).unwrap();
    let disk = fuse_dir.join("disk");
    let mut teardown = Teardown::default();

    teardown.nbdfuse = Some(Command::new("nbdfuse").arg(&disk).arg(server.unix_uri()).spawn().unwrap());
    teardown.fuse_dir = Some(fuse_dir.clone());
    wait_for_file(&disk, SIZE);

    let dev = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&disk)).trim().to_owned();
    assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
    teardown.loop_device = Some(dev.clone());

    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &dev]));
    run_ok(Command::new("mount").arg(&dev).arg(&fs_dir));
    teardown.mounted = Some(fs_dir.clone());

    let files: Vec<(String, Vec<u8>)> = (0..24u64)
        .map(|i| {
            (
                format!("file-{i}.bin"),
                pseudo_random(((i % 6) as usize + 1) * 300_000 + i as usize, 0xf11e + i),
            )
        })
        .collect();
    std::fs::create_dir(fs_dir.join("sub")).unwrap();
    for (name, data) in &files {
        std::fs::write(fs_dir.join("sub").join(name), data).unwrap();
    }
    run_ok(&mut Command::new("sync"));
    run_ok(Command::new("umount").arg(&fs_dir));
    teardown.mounted = None;

    // Remount: the files come back from the export, not from the page cache of the old mount.
    run_ok(Command::new("mount").arg(&dev).arg(&fs_dir));
    teardown.mounted = Some(fs_dir.clone());
    for (name, data) in &files {
        let read = std::fs::read(fs_dir.join("sub").join(name)).unwrap();
        assert!(read == *data, "{name} differs after remount");
    }
    run_ok(Command::new("umount").arg(&fs_dir));
    teardown.mounted = None;

    let fsck = run(Command::new("e2fsck").args(["-fn", &dev]));
    assert!(
        fsck.status.success(),
        "e2fsck -fn found problems ({}):\n{}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );

    run_ok(Command::new("losetup").args(["-d", &dev]));
    teardown.loop_device = None;
    run_ok(Command::new("fusermount3").arg("-u").arg(&fuse_dir));
    teardown.fuse_dir = None;
    let mut child = teardown.nbdfuse.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "nbdfuse did not exit after unmount");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ext4's superblock magic is in the export itself
    assert_eq!(server.backend_bytes(1024 + 0x38, 2), vec![0x53, 0xef]);
    server.wait_for_clients(0);
}
