//! The same round trip against a real S3-compatible server (moto_server, started by the test on a free
//! loopback port; the test fails if moto_server is not installed).
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
