//! The Longhorn-written backup store fixture: list, inspect, restore both backups (file and replica
//! directory), and re-encoding its configs gives Longhorn's bytes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use corral_backup::format::backup_config::BackupConfig;
use corral_backup::format::volume_config::VolumeConfig;
use corral_backup::{BackupTarget, NoProgress, RestoreDestination};

fn fixture_target() -> (tempfile::TempDir, BackupTarget) {
    let dir = tempfile::tempdir().unwrap();
    extract("backupstore-vfs.tar.gz", dir.path());
    let target = BackupTarget::open(&format!("vfs://{}", dir.path().display())).unwrap();
    (dir, target)
}

#[tokio::test]
async fn lists_and_inspects_longhorn_backups() {
    let (_dir, target) = fixture_target();
    let volumes = corral_backup::list_volumes(&target).await.unwrap();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "vol1");
    assert_eq!(volumes[0].size, VOLUME_SIZE);
    assert_eq!(volumes[0].backup_count, 2);
    assert_eq!(volumes[0].last_backup_name, "bk-snap3");
    assert_eq!(volumes[0].compression, "lz4");

    let backups = corral_backup::list_backups(&target, "vol1").await.unwrap();
    let names: Vec<_> = backups.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["bk-snap2", "bk-snap3"]);
    assert!(!backups[0].is_incremental && backups[1].is_incremental);
    assert_eq!(backups[1].block_count, 3);

    let details = corral_backup::inspect_backup(&target, "vol1", "bk-snap2").await.unwrap();
    assert_eq!(details.backup.snapshot, "snap2");
    assert_eq!(details.backup.block_count, 2);
    assert_eq!(details.backup.block_size, 2 << 20);
    assert_eq!(details.backup.labels.get("purpose").map(String::as_str), Some("sample"));
    assert_eq!(details.volume_size, VOLUME_SIZE);
    assert!(details.backup.url.ends_with("?backup=bk-snap2&volume=vol1"), "{}", details.backup.url);

    let missing = corral_backup::inspect_backup(&target, "vol1", "nope").await.unwrap_err();
    assert_eq!(missing.kind(), corral_backup::ErrorKind::NotFound);
    assert!(missing.to_string().contains("backup_nope.cfg"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_both_longhorn_backups_to_files_with_readme_checksums() {
    let (_dir, target) = fixture_target();
    let out = tempfile::tempdir().unwrap();
    for (backup, expected) in [("bk-snap2", SNAP2_SHA256), ("bk-snap3", SNAP3_SHA256)] {
        let path = out.path().join(format!("{backup}.img"));
        let report = corral_backup::restore_backup(
            &target,
            "vol1",
            backup,
            RestoreDestination::File(path.clone()),
            restore_opts(),
            &NoProgress,
        )
        .await
        .unwrap();
        assert!(!report.incremental);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), VOLUME_SIZE);
        assert_eq!(sha256_file(&path), expected, "{backup}");
        assert!(!out.path().join(format!("{backup}.img.part")).exists());
    }
    // No lock files are left behind.
    assert!(files_with_suffix(_dir.path(), ".lck").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_longhorn_backup_into_replica_directory() {
    let (_dir, target) = fixture_target();
    let out = tempfile::tempdir().unwrap();
    let replica_dir = out.path().join("vol1-r");
    corral_backup::restore_backup(
        &target,
        "vol1",
        "bk-snap3",
        RestoreDestination::ReplicaDir(replica_dir.clone()),
        restore_opts(),
        &NoProgress,
    )
    .await
    .unwrap();
    // Valid Longhorn layout: the data as one snapshot under a head.
    let replica = corral_replica::Replica::open_read_only(&replica_dir).unwrap();
    let snaps = replica.snapshots().unwrap();
    let restored: Vec<_> = snaps.iter().filter(|s| s.name != corral_replica::HEAD_NAME).collect();
    assert_eq!(restored.len(), 1, "{snaps:?}");
    let head = snaps.iter().find(|s| s.name == corral_replica::HEAD_NAME).unwrap();
    assert_eq!(head.parent.as_deref(), Some(restored[0].name.as_str()));
    drop(replica);
    assert_eq!(sha256(&read_volume(&replica_dir, Some(&restored[0].name))), SNAP3_SHA256);
    assert_eq!(sha256(&read_volume(&replica_dir, None)), SNAP3_SHA256);
}

#[test]
fn fixture_configs_reencode_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    extract("backupstore-vfs.tar.gz", dir.path());
    let cfgs = files_with_suffix(dir.path(), ".cfg");
    assert_eq!(cfgs.len(), 3);
    for path in cfgs {
        let bytes = std::fs::read(&path).unwrap();
        let name = path.display().to_string();
        let again = if path.ends_with("volume.cfg") {
            VolumeConfig::parse(&name, &bytes).unwrap().encode().unwrap()
        } else {
            BackupConfig::parse(&name, &bytes).unwrap().encode().unwrap()
        };
        assert_eq!(String::from_utf8(again).unwrap(), String::from_utf8(bytes).unwrap(), "{name}");
    }
}
