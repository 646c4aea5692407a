//! Shared helpers of the corral-backup integration tests: fixtures (from the repository, through
//! corral-testkit), fast lock timings, client settings for the testkit's S3 servers.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod scenario;

use corral_backup::{LockTimings, RestoreOptions, S3Settings};
use corral_testkit::s3::{S3Server, MOTO_ACCESS_KEY, MOTO_SECRET_KEY};

pub use corral_testkit::data::{files_with_suffix, sha256, sha256_file};
pub use corral_testkit::fixtures::HEAD_SHA256 as SNAP3_SHA256;
pub use corral_testkit::fixtures::{extract_longhorn as extract, SNAP2_SHA256, VOLUME_SIZE};

/// The fixture replica directory (chain snap 68129740… <- snap2 <- head), extracted into `dir`.
pub fn fixture_replica(dir: &Path) -> PathBuf {
    corral_testkit::fixtures::extract_longhorn_replica(dir)
}

pub fn fast_locks() -> LockTimings {
    LockTimings {
        check_wait: Duration::from_millis(20),
        max_wait: Duration::from_millis(500),
        check_interval: Duration::from_millis(50),
        refresh: Duration::from_secs(60),
        expiry: Duration::from_secs(150),
    }
}

pub fn restore_opts() -> RestoreOptions {
    RestoreOptions { concurrency: 4, lock_timings: fast_locks() }
}

/// The whole volume as of `snapshot` (None = head), through the replica library.
pub fn read_volume(dir: &Path, snapshot: Option<&str>) -> Vec<u8> {
    let replica = corral_replica::Replica::open_read_only(dir).unwrap();
    let mut buf = vec![0u8; usize::try_from(replica.size()).unwrap()];
    match snapshot {
        Some(s) => replica.read_snapshot_at(s, &mut buf, 0).unwrap(),
        None => replica.read_at(&mut buf, 0).unwrap(),
    }
    buf
}

/// A moto S3 server on a free loopback port (corral-testkit), killed on drop.
pub struct Moto(pub S3Server);

impl Moto {
    pub fn start() -> Moto {
        Moto(S3Server::moto())
    }

    pub fn endpoint(&self) -> String {
        self.0.endpoint()
    }

    pub fn settings(&self) -> S3Settings {
        S3Settings {
            access_key_id: Some(MOTO_ACCESS_KEY.into()),
            secret_access_key: Some(MOTO_SECRET_KEY.into()),
            endpoint: Some(self.endpoint()),
            default_region: Some("us-east-1".into()),
            ..S3Settings::default()
        }
    }

    /// Sends one plain (unsigned) HTTP request; moto does not check signatures. Returns the status code.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> u16 {
        self.0.plain_request(method, path, body)
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.0.create_bucket(bucket);
    }
}

/// Client settings for an s3s-fs server (corral-testkit's [`S3Server::s3s_fs`]) with these keys.
pub fn s3s_fs_settings(server: &S3Server, access_key: &str, secret_key: &str) -> S3Settings {
    S3Settings {
        access_key_id: Some(access_key.into()),
        secret_access_key: Some(secret_key.into()),
        endpoint: Some(server.endpoint()),
        default_region: Some("us-east-1".into()),
        ..S3Settings::default()
    }
}
