//! Backups to a directory target: the full round trip, Longhorn config shape, options, locks, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::scenario::{backup, restore_file, round_trip};
use common::*;
use corral_backup::{
    BackupTarget, BlockSize, Compression, CreateOptions, ErrorKind, LockKind, NoProgress, RestoreDestination,
    VolumeLock,
};

fn dir_target(dir: &Path) -> BackupTarget {
    BackupTarget::open(&format!("vfs://{}", dir.display())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_on_directory_target() {
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = dir_target(store.path());
    let root = store.path().to_path_buf();
    let corrupt = move |checksum: &str| {
        let path = files_with_suffix(&root, &format!("{checksum}.blk")).pop().expect("block file exists");
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
    };
    round_trip(&target, work.path(), &corrupt).await;
    assert!(files_with_suffix(store.path(), "").is_empty(), "rm-volume leaves no files");
}

/// Key order and JSON types of every key, for comparing Corral's files with Longhorn's.
fn shape(bytes: &[u8]) -> Vec<(String, &'static str)> {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let serde_json::Value::Object(map) = value else { panic!("not an object") };
    map.into_iter()
        .map(|(k, v)| {
            let kind = match v {
                serde_json::Value::Null => "null-or-object",
                serde_json::Value::Object(_) => "null-or-object",
                serde_json::Value::String(_) => "string",
                serde_json::Value::Number(_) => "number",
                serde_json::Value::Bool(_) => "bool",
                serde_json::Value::Array(_) => "array",
            };
            (k, kind)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_match_longhorn_key_order_and_types() {
    let longhorn = tempfile::tempdir().unwrap();
    extract("backupstore-vfs.tar.gz", longhorn.path());
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = dir_target(store.path());
    let replica = fixture_replica(work.path());
    let report = backup(&target, &replica, "snap2", "bk-snap2").await;
    assert_eq!(report.blocks_total, 2);

    let vol_rel = "backupstore/volumes/01/9c/vol1";
    for file in ["volume.cfg", "backups/backup_bk-snap2.cfg"] {
        let ours = std::fs::read(store.path().join(vol_rel).join(file)).unwrap();
        let theirs = std::fs::read(longhorn.path().join(vol_rel).join(file)).unwrap();
        assert_eq!(shape(&ours), shape(&theirs), "{file}");
        assert!(!ours.ends_with(b"\n"), "json.Marshal writes no trailing newline");
    }
    let ours = std::fs::read_to_string(store.path().join(vol_rel).join("volume.cfg")).unwrap();
    assert!(ours.contains(r#""CompressionMethod":"\"lz4\"""#), "{ours}");
    assert!(ours.contains(r#""DataEngine":"\"v1\"""#), "{ours}");
    assert!(ours.contains(r#""Size":"67108864""#), "{ours}");
    let cfg =
        std::fs::read_to_string(store.path().join(vol_rel).join("backups/backup_bk-snap2.cfg")).unwrap();
    // Same blocks as Longhorn's own backup of the same snapshot: identical names, same offsets.
    let theirs =
        std::fs::read_to_string(longhorn.path().join(vol_rel).join("backups/backup_bk-snap2.cfg")).unwrap();
    let blocks = |s: &str| s[s.find("\"Blocks\"").unwrap()..].to_string();
    assert_eq!(blocks(&cfg), blocks(&theirs));
    // Block files carry the same names as Longhorn's.
    let names = |dir: &Path| -> Vec<String> {
        files_with_suffix(dir, ".blk")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let ours_blocks = names(store.path());
    assert!(ours_blocks.iter().all(|b| names(longhorn.path()).contains(b)), "{ours_blocks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_sizes_and_compressions_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let replica = fixture_replica(work.path());
    let snap2 = read_volume(&replica, Some("snap2"));
    for (i, (compression, block_size)) in [
        (Compression::Gzip, BlockSize::TwoMiB),
        (Compression::None, BlockSize::TwoMiB),
        (Compression::Lz4, BlockSize::SixteenMiB),
    ]
    .into_iter()
    .enumerate()
    {
        let store = tempfile::tempdir().unwrap();
        let target = dir_target(store.path());
        let mut opts = CreateOptions::new(&replica, "snap2");
        opts.volume = Some("vol1".into());
        opts.name = Some(format!("b{i}"));
        opts.compression = Some(compression);
        opts.block_size = Some(block_size);
        opts.lock_timings = fast_locks();
        let report = corral_backup::create_backup(&target, opts, &NoProgress).await.unwrap();
        assert_eq!(report.compression, compression);
        assert_eq!(report.block_size, block_size.bytes());
        // snap2 has data at 0..8 KiB and 8 MiB..9 MiB: two 2 MiB blocks, or one 16 MiB block.
        let expected_blocks = if block_size == BlockSize::TwoMiB { 2 } else { 1 };
        assert_eq!(report.blocks_total, expected_blocks);
        let img = work.path().join(format!("r{i}.img"));
        restore_file(&target, &format!("b{i}"), &img).await;
        assert_eq!(std::fs::read(&img).unwrap(), snap2, "{compression} {block_size}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_by_name_and_never_trusted() {
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = dir_target(store.path());
    let replica = fixture_replica(work.path());

    // Disallowed names.
    let mut opts = CreateOptions::new(&replica, "snap2");
    opts.volume = Some("Bad/Name".into());
    let err = corral_backup::create_backup(&target, opts, &NoProgress).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("Bad/Name"), "{err}");
    // Missing snapshot.
    let mut opts = CreateOptions::new(&replica, "nope");
    opts.volume = Some("vol1".into());
    let err = corral_backup::create_backup(&target, opts, &NoProgress).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(files_with_suffix(store.path(), "").is_empty(), "nothing written for a failed create");

    backup(&target, &replica, "snap2", "b1").await;
    // Same backup name twice.
    let mut opts = CreateOptions::new(&replica, "snap2");
    opts.volume = Some("vol1".into());
    opts.name = Some("b1".into());
    opts.lock_timings = fast_locks();
    assert_eq!(
        corral_backup::create_backup(&target, opts, &NoProgress).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );

    let cfg_path = store.path().join("backupstore/volumes/01/9c/vol1/backups/backup_b1.cfg");
    let good = std::fs::read(&cfg_path).unwrap();
    let out = work.path().join("out.img");
    let restore = |name: &'static str| {
        let target = target.clone();
        let out = out.clone();
        async move {
            corral_backup::restore_backup(
                &target,
                "vol1",
                name,
                RestoreDestination::File(out),
                restore_opts(),
                &NoProgress,
            )
            .await
        }
    };

    // Truncated config.
    std::fs::write(&cfg_path, &good[..good.len() / 2]).unwrap();
    let err = restore("b1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("backup_b1.cfg"), "{err}");
    assert!(!out.exists());

    // Wrong block size: the config claims 16 MiB, the blocks hold 2 MiB.
    let text = String::from_utf8(good.clone())
        .unwrap()
        .replace("\"2097152\"", "\"16Mi\"")
        .replace("\"Offset\":8388608", "\"Offset\":16777216");
    std::fs::write(&cfg_path, text).unwrap();
    let err = restore("b1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains(".blk") && err.to_string().contains("block size"), "{err}");
    assert!(!out.exists());

    // Missing block.
    std::fs::write(&cfg_path, &good).unwrap();
    let victim = files_with_suffix(store.path(), ".blk").pop().unwrap();
    std::fs::remove_file(&victim).unwrap();
    let err = restore("b1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains(victim.file_name().unwrap().to_str().unwrap()), "{err}");
    assert!(!out.exists());
    let report =
        corral_backup::verify(&target, "vol1", Some("b1"), 2, fast_locks(), &NoProgress).await.unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].problem, "missing");

    // Malformed volume.cfg.
    std::fs::write(store.path().join("backupstore/volumes/01/9c/vol1/volume.cfg"), b"{\"Name\":").unwrap();
    let err = corral_backup::list_backups(&target, "vol1").await.unwrap_err();
    assert!(err.to_string().contains("volume.cfg"), "{err}");

    // A restore never overwrites a file that is not a restore.
    std::fs::write(&out, b"precious").unwrap();
    std::fs::write(
        store.path().join("backupstore/volumes/01/9c/vol1/volume.cfg"),
        b"{\"Name\":\"vol1\",\"Size\":\"67108864\"}",
    )
    .unwrap();
    let err = restore("b1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_s3_target_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = corral_backup::S3Settings {
        access_key_id: Some("k".into()),
        secret_access_key: Some("s".into()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..Default::default()
    };
    let target = BackupTarget::open_with("s3://bucket@us-east-1/backups", &settings).unwrap();
    let err = corral_backup::list_backups(&target, "vol1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("s3://bucket/backups/backupstore/volumes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_lock_excludes_backups_and_in_progress_backups_block_gc() {
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = dir_target(store.path());
    let replica = fixture_replica(work.path());
    backup(&target, &replica, "snap2", "b1").await;

    // A held deletion lock makes a backup give up with Busy.
    let held = VolumeLock::acquire(&target, "vol1", LockKind::Deletion, fast_locks()).await.unwrap();
    let lock_files = files_with_suffix(store.path(), ".lck");
    assert_eq!(lock_files.len(), 1);
    let text = std::fs::read_to_string(&lock_files[0]).unwrap();
    assert_eq!(text, format!(r#"{{"Name":"{}","Type":2,"Acquired":true}}"#, held.name()));
    let mut opts = CreateOptions::new(&replica, "snap2");
    opts.volume = Some("vol1".into());
    opts.lock_timings = fast_locks();
    let err = corral_backup::create_backup(&target, opts, &NoProgress).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(err.to_string().contains(held.name()), "{err}");
    // Backup and restore locks are compatible with each other.
    let reader = VolumeLock::acquire(&target, "vol1", LockKind::BackupOrRestore, fast_locks()).await;
    assert!(reader.is_err(), "a deletion lock also excludes restores");
    held.release().await.unwrap();
    let a = VolumeLock::acquire(&target, "vol1", LockKind::BackupOrRestore, fast_locks()).await.unwrap();
    let b = VolumeLock::acquire(&target, "vol1", LockKind::BackupOrRestore, fast_locks()).await.unwrap();
    a.release().await.unwrap();
    b.release().await.unwrap();

    // An in-progress backup (Longhorn's placeholder) keeps GC from deleting anything.
    backup(&target, &replica, "snap2", "b2").await;
    let placeholder =
        corral_backup::format::backup_config::BackupConfig::in_progress("running", "vol1", "lz4");
    std::fs::write(
        store.path().join("backupstore/volumes/01/9c/vol1/backups/backup_running.cfg"),
        placeholder.encode().unwrap(),
    )
    .unwrap();
    let blocks_before = files_with_suffix(store.path(), ".blk").len();
    let report = corral_backup::delete_backup(&target, "vol1", "b1", fast_locks()).await.unwrap();
    assert!(report.gc.skipped.as_deref().unwrap_or("").contains("running"), "{report:?}");
    assert_eq!(files_with_suffix(store.path(), ".blk").len(), blocks_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_incremental_restore_is_repaired_by_the_next_one() {
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = dir_target(store.path());
    let replica = fixture_replica(work.path());
    let snap2 = read_volume(&replica, Some("snap2"));
    backup(&target, &replica, "snap2", "b1").await;
    common::scenario::write_and_snapshot_snap3(&replica);
    let snap3 = read_volume(&replica, Some("snap3"));
    backup(&target, &replica, "snap3", "b2").await;

    let img = work.path().join("dr.img");
    restore_file(&target, "b1", &img).await;
    // Damage b2's block at 50 MiB: the incremental restore to b2 fails part-way (other blocks may be written).
    let victim = corral_backup::block::checksum(&snap3[(50 << 20)..(52 << 20)]);
    let path = files_with_suffix(store.path(), &format!("{victim}.blk")).pop().unwrap();
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, b"garbage").unwrap();
    let err = corral_backup::restore_backup(
        &target,
        "vol1",
        "b2",
        RestoreDestination::File(img.clone()),
        restore_opts(),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&victim), "{err}");
    // Going back to b1 must undo whatever part of b2 was written (the record marks b2 as pending).
    let back = restore_file(&target, "b1", &img).await;
    assert!(back.incremental);
    assert_eq!(std::fs::read(&img).unwrap(), snap2);
    // And once the block is repaired, b2 restores incrementally to the right image.
    std::fs::write(&path, good).unwrap();
    restore_file(&target, "b2", &img).await;
    assert_eq!(std::fs::read(&img).unwrap(), snap3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dr_restore_refuses_a_replica_written_after_the_restore() {
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = dir_target(store.path());
    let replica = fixture_replica(work.path());
    backup(&target, &replica, "snap2", "b1").await;
    common::scenario::write_and_snapshot_snap3(&replica);
    backup(&target, &replica, "snap3", "b2").await;
    let dr = work.path().join("dr");
    let dest = || RestoreDestination::ReplicaDir(dr.clone());
    corral_backup::restore_backup(&target, "vol1", "b1", dest(), restore_opts(), &NoProgress).await.unwrap();
    let r = corral_replica::Replica::open(&dr).unwrap();
    r.write_at(&[7u8; 4096], 0).unwrap();
    r.close().unwrap();
    let err = corral_backup::restore_backup(&target, "vol1", "b2", dest(), restore_opts(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("head holds writes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_restore_into_a_replica_dir_stays_marked_unfinished_until_run_again() {
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = dir_target(store.path());
    let replica = fixture_replica(work.path());
    backup(&target, &replica, "snap2", "b1").await;
    common::scenario::write_and_snapshot_snap3(&replica);
    let snap3 = read_volume(&replica, Some("snap3"));
    backup(&target, &replica, "snap3", "b2").await;
    let dr = work.path().join("dr");
    let dest = || RestoreDestination::ReplicaDir(dr.clone());
    let rebuilding = || corral_replica::Replica::open_read_only(&dr).unwrap().recovery_facts().rebuilding;
    corral_backup::restore_backup(&target, "vol1", "b1", dest(), restore_opts(), &NoProgress).await.unwrap();
    assert!(!rebuilding(), "a finished restore is not marked unfinished");
    // b2's block at 50 MiB is damaged: the incremental restore stops part-way, the head a mix of b1 and b2.
    let victim = corral_backup::block::checksum(&snap3[(50 << 20)..(52 << 20)]);
    let path = files_with_suffix(store.path(), &format!("{victim}.blk")).pop().unwrap();
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, b"garbage").unwrap();
    let err = corral_backup::restore_backup(&target, "vol1", "b2", dest(), restore_opts(), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&victim), "{err}");
    // Marked so that no engine starts it as an up-to-date replica (Longhorn's Rebuilding flag).
    assert!(rebuilding(), "an interrupted restore must leave its replica directory marked unfinished");
    std::fs::write(&path, good).unwrap();
    corral_backup::restore_backup(&target, "vol1", "b2", dest(), restore_opts(), &NoProgress).await.unwrap();
    assert!(!rebuilding(), "the restore run again finished it");
    assert_eq!(read_volume(&dr, None), snap3);
}
