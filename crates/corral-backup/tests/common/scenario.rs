//! The backup/restore round trip every target must pass (run against a directory and against S3).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use corral_backup::{BackupTarget, CreateOptions, CreateReport, NoProgress, RestoreDestination};
use corral_replica::{Replica, SnapshotOptions};

use super::*;

pub async fn backup(target: &BackupTarget, replica: &Path, snapshot: &str, name: &str) -> CreateReport {
    let mut opts = CreateOptions::new(replica, snapshot);
    opts.volume = Some("vol1".into());
    opts.name = Some(name.into());
    opts.lock_timings = fast_locks();
    opts.labels = BTreeMap::from([("purpose".to_string(), "test".to_string())]);
    corral_backup::create_backup(target, opts, &NoProgress).await.unwrap()
}

pub async fn restore_file(target: &BackupTarget, backup: &str, path: &Path) -> corral_backup::RestoreReport {
    corral_backup::restore_backup(
        target,
        "vol1",
        backup,
        RestoreDestination::File(path.into()),
        restore_opts(),
        &NoProgress,
    )
    .await
    .unwrap()
}

/// Writes to the fixture replica after snap2 and takes snapshot `snap3`: the changed 2 MiB blocks against
/// snap2 are 0 (F at 512, already in the head), 10 (G), 16 (E at 32 MiB, in the head) and 25 (H).
pub fn write_and_snapshot_snap3(replica_dir: &Path) {
    let replica = Replica::open(replica_dir).unwrap();
    replica.write_at(&[b'G'; 4096], 20 << 20).unwrap();
    replica.write_at(&[b'H'; 8192], 50 << 20).unwrap();
    replica.snapshot("snap3", SnapshotOptions { user_created: true, ..Default::default() }).unwrap();
    replica.close().unwrap();
}

/// The shared round trip. `corrupt_block` damages the stored object of one block (by checksum).
pub async fn round_trip(target: &BackupTarget, work: &Path, corrupt_block: &dyn Fn(&str)) {
    let replica_dir = fixture_replica(work);
    let snap2 = read_volume(&replica_dir, Some("snap2"));
    assert_eq!(sha256(&snap2), SNAP2_SHA256);

    // Full backup of snap2, restored to a file: equal to the snapshot.
    let b1 = backup(target, &replica_dir, "snap2", "b1").await;
    assert!(!b1.incremental);
    assert_eq!((b1.blocks_total, b1.blocks_read, b1.blocks_uploaded), (2, 2, 2));
    assert_eq!(b1.url, format!("{}?backup=b1&volume=vol1", target.url()));
    let img1 = work.join("b1.img");
    restore_file(target, "b1", &img1).await;
    assert_eq!(std::fs::read(&img1).unwrap(), snap2);

    // More writes and a new snapshot: only the changed blocks are read and uploaded.
    write_and_snapshot_snap3(&replica_dir);
    let snap3 = read_volume(&replica_dir, Some("snap3"));
    let b2 = backup(target, &replica_dir, "snap3", "b2").await;
    assert!(b2.incremental);
    assert_eq!(b2.base_backup.as_deref(), Some("b1"));
    assert_eq!(b2.blocks_read, 4, "{b2:?}");
    assert_eq!(b2.blocks_uploaded, 4, "{b2:?}");
    assert_eq!(b2.blocks_total, 5, "{b2:?}");
    let img2 = work.join("b2.img");
    restore_file(target, "b2", &img2).await;
    assert_eq!(std::fs::read(&img2).unwrap(), snap3);

    // A backup of the same data again uploads nothing (dedup), but still lists every block.
    let b3 = backup(target, &replica_dir, "snap3", "b3").await;
    assert!(!b3.incremental, "same snapshot as the last backup: Longhorn takes a full backup");
    assert_eq!((b3.blocks_total, b3.blocks_uploaded, b3.blocks_deduplicated), (5, 0, 5));

    // DR into a file: b1, then b2 incrementally.
    let dr_file = work.join("dr.img");
    restore_file(target, "b1", &dr_file).await;
    let step = restore_file(target, "b2", &dr_file).await;
    assert!(step.incremental);
    assert_eq!(step.previous_backup.as_deref(), Some("b1"));
    assert_eq!((step.blocks_written, step.blocks_unchanged), (4, 1));
    assert_eq!(std::fs::read(&dr_file).unwrap(), snap3);

    // DR into a replica directory: b1, then b2 incrementally; equal to a full restore of b2.
    let dr_dir = work.join("dr-replica");
    corral_backup::restore_backup(
        target,
        "vol1",
        "b1",
        RestoreDestination::ReplicaDir(dr_dir.clone()),
        restore_opts(),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(read_volume(&dr_dir, None), snap2);
    let step = corral_backup::restore_backup(
        target,
        "vol1",
        "b2",
        RestoreDestination::ReplicaDir(dr_dir.clone()),
        restore_opts(),
        &NoProgress,
    )
    .await
    .unwrap();
    assert!(step.incremental);
    assert_eq!(step.blocks_written, 4);
    assert_eq!(read_volume(&dr_dir, None), snap3);
    let snaps = Replica::open_read_only(&dr_dir).unwrap().snapshots().unwrap();
    assert_eq!(snaps.len(), 2, "one restored snapshot and the head: {snaps:?}");

    // Deleting b1 keeps every block b2 needs and removes the rest (b1's old block 0).
    let deleted = corral_backup::delete_backup(target, "vol1", "b1", fast_locks()).await.unwrap();
    assert_eq!(deleted.gc.skipped, None);
    assert_eq!(deleted.gc.blocks_deleted, 1, "{deleted:?}");
    assert_eq!(deleted.gc.blocks_referenced, 5);
    assert_eq!(deleted.last_backup, "b3");
    let verified = corral_backup::verify(target, "vol1", None, 4, fast_locks(), &NoProgress).await.unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    assert_eq!(verified.blocks_checked, 5);
    let img2b = work.join("b2-after-delete.img");
    restore_file(target, "b2", &img2b).await;
    assert_eq!(std::fs::read(&img2b).unwrap(), snap3);
    let names: Vec<_> =
        corral_backup::list_backups(target, "vol1").await.unwrap().into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["b2", "b3"]);

    // A corrupt block: restore and verify fail and name it; the image is not written.
    let inspect = corral_backup::inspect_backup(target, "vol1", "b2").await.unwrap();
    assert_eq!(inspect.backup.block_count, 5);
    let victim = block::checksum(&snap3[(20 << 20)..(22 << 20)]);
    corrupt_block(&victim);
    let bad_img = work.join("bad.img");
    let err = corral_backup::restore_backup(
        target,
        "vol1",
        "b2",
        RestoreDestination::File(bad_img.clone()),
        restore_opts(),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), corral_backup::ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&victim), "{err}");
    assert!(!bad_img.exists());
    let report =
        corral_backup::verify(target, "vol1", Some("b2"), 4, fast_locks(), &NoProgress).await.unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].checksum, victim);
    assert!(report.problems[0].object.contains(&victim));
    assert_eq!(report.problems[0].referenced_by, vec![("b2".to_string(), 20 << 20)]);

    // Deleting the volume removes everything.
    corral_backup::delete_volume(target, "vol1", fast_locks()).await.unwrap();
    assert!(corral_backup::list_volumes(target).await.unwrap().is_empty());
}

use corral_backup::block;
