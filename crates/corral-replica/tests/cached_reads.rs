//! `read_cached_at` never waits for the disk: it serves what the page cache holds and reports a miss
//! for anything else, across the snapshot chain; a blocking read of the same range then fills the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsRawFd;
use std::path::Path;

use corral_replica::{CreateOptions, Replica, SnapshotOptions};

const SIZE: u64 = 16 << 20;

/// Writes back and evicts every layer file's pages, as if the machine had restarted.
fn drop_page_cache(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "img") {
            let file = std::fs::File::open(&path).unwrap();
            file.sync_all().unwrap();
            // SAFETY: a valid descriptor and plain integers.
            let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0, "posix_fadvise on {}", path.display());
        }
    }
}

#[test]
fn cached_reads_serve_the_page_cache_and_report_misses_without_waiting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let r = Replica::create(&dir, CreateOptions { size: SIZE }).unwrap();
    r.write_at(&[1u8; 65536], 0).unwrap();
    r.snapshot("s1", SnapshotOptions::default()).unwrap();
    r.write_at(&[2u8; 4096], 4096).unwrap();

    // Everything just written is cached: served, with the chain resolved (head over snapshot).
    let mut buf = vec![0u8; 12288];
    assert!(r.read_cached_at(&mut buf, 0).unwrap());
    assert_eq!(buf[..4096], [1u8; 4096][..]);
    assert_eq!(buf[4096..8192], [2u8; 4096][..]);
    assert_eq!(buf[8192..], [1u8; 4096][..]);

    drop_page_cache(&dir);
    // The test's file system must be a real one (ext4 / xfs): on tmpfs nothing ever misses.
    assert!(!r.read_cached_at(&mut buf, 0).unwrap(), "a read of evicted data did not report a miss");
    assert!(!r.read_cached_at(&mut buf[..4096], 32768).unwrap(), "snapshot data evicted but served");
    // Unwritten blocks need no disk at all.
    let mut hole = vec![9u8; 8192];
    assert!(r.read_cached_at(&mut hole, 1 << 20).unwrap());
    assert_eq!(hole, vec![0u8; 8192]);
    // Out-of-range requests are refused the same way as blocking reads.
    assert!(r.read_cached_at(&mut buf, SIZE - 4096).is_err());

    // A blocking read brings the data back, after which the cached read serves it.
    let mut slow = vec![0u8; 12288];
    r.read_at(&mut slow, 0).unwrap();
    let mut fast = vec![0u8; 12288];
    assert!(r.read_cached_at(&mut fast, 0).unwrap());
    assert_eq!(slow, fast);
    assert_eq!(fast[4096..8192], [2u8; 4096][..]);
}
