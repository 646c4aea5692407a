//! The same round trip against real S3-compatible servers started by the tests on free loopback ports
//! (moto_server; s3s-fs, which checks SigV4 signatures); a test fails if its server is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::scenario::round_trip;
use common::*;
use corral_backup::{layout, BackupTarget};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_on_s3_target() {
    let moto = Moto::start();
    moto.create_bucket("backups");
    let work = tempfile::tempdir().unwrap();
    let target = BackupTarget::open_with("s3://backups@us-east-1/cluster-a/", &moto.settings()).unwrap();
    // A second client, independent of the library, damages objects behind its back.
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("backups")
        .with_region("us-east-1")
        .with_endpoint(moto.endpoint())
        .with_allow_http(true)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    let handle = tokio::runtime::Handle::current();
    let corrupt = |checksum: &str| {
        use object_store::ObjectStore;
        let key = object_store::path::Path::from(format!("cluster-a/{}", layout::block("vol1", checksum)));
        // Replace the object with a damaged copy: the lz4 frame header followed by garbage.
        let mut garbage = vec![0x04, 0x22, 0x4d, 0x18, 0x64, 0x70, 0xb9];
        garbage.extend_from_slice(&[0xab; 4000]);
        tokio::task::block_in_place(|| handle.block_on(raw.put(&key, garbage.into()))).unwrap();
    };
    round_trip(&target, work.path(), &corrupt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_named() {
    let moto = Moto::start();
    let target = BackupTarget::open_with("s3://no-such-bucket@us-east-1/", &moto.settings()).unwrap();
    let err = corral_backup::list_backups(&target, "vol1").await.unwrap_err();
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_permission_denied_and_write_nothing() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("s3");
    std::fs::create_dir_all(root.join("locked")).unwrap();
    let server = corral_testkit::s3::S3Server::s3s_fs(&root, "right-key", "right-secret");
    let replica = fixture_replica(work.path());
    for (key, secret) in [("right-key", "wrong-secret"), ("wrong-key", "right-secret")] {
        let target =
            BackupTarget::open_with("s3://locked@us-east-1/b", &s3s_fs_settings(&server, key, secret))
                .unwrap();
        let mut opts = corral_backup::CreateOptions::new(&replica, "snap2");
        opts.volume = Some("vol1".into());
        opts.lock_timings = fast_locks();
        let err = corral_backup::create_backup(&target, opts, &corral_backup::NoProgress).await.unwrap_err();
        assert_eq!(err.kind(), corral_backup::ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("s3://locked/b/"), "{err}");
        assert!(err.to_string().contains("refused the credentials"), "{err}");
        let err = corral_backup::list_volumes(&target).await.unwrap_err();
        assert_eq!(err.kind(), corral_backup::ErrorKind::PermissionDenied, "{err}");
        assert!(files_with_suffix(&root, "").is_empty(), "{:?}", files_with_suffix(&root, ""));
    }
    // The right pair works: the refusal was about the credentials.
    let target = BackupTarget::open_with(
        "s3://locked@us-east-1/b",
        &s3s_fs_settings(&server, "right-key", "right-secret"),
    )
    .unwrap();
    let report = common::scenario::backup(&target, &replica, "snap2", "ok").await;
    assert_eq!(report.blocks_uploaded, 2);
    assert_eq!(files_with_suffix(&root, ".blk").len(), 2);
}
