//! Backup targets: where a backup store lives, and the few object operations the store needs.
//!
//! URLs (Longhorn's forms):
//! ```text
//! s3://<bucket>@<region>/<path>   S3 or any S3-compatible server; region may be omitted (s3://<bucket>/<path>)
//! file:///<dir>  vfs:///<dir>     a local or NFS-mounted directory (it must exist)
//! ```
//! S3 endpoint, credentials and TLS come from the environment variables Longhorn uses:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ENDPOINTS` (e.g.
//! `http://minio:9000`), `AWS_CERT` (PEM text, or a path to a PEM file), `VIRTUAL_HOSTED_STYLE`
//! (`true` = `bucket.host` addressing), and `AWS_REGION`/`AWS_DEFAULT_REGION` when the URL has no region.
//!
//! Everything goes through `object_store`, except one read: restore reads a directory target's block
//! files itself, straight into reused buffers (`object_store` would allocate fresh memory per block, a
//! measurable cost at hundreds of MiB/s). Its local-filesystem store writes every object to a staging
//! name and renames it into place, so a crash never leaves a half-written object under its real name;
//! [`BackupTarget::sync`] adds the missing durability step (syncfs) before a config is written: one
//! flush of the target's file system instead of an fsync per block file.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectMeta, ObjectStore};

use crate::buffer_pool::BufferPool;
use crate::error::{BackupError, Result};

/// S3 settings taken from the environment (Longhorn's variable names).
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// `AWS_SESSION_TOKEN`.
    pub session_token: Option<String>,
    /// `AWS_ENDPOINTS`: the server's base URL.
    pub endpoint: Option<String>,
    /// `AWS_CERT`: a PEM certificate (bundle) to trust, or a path to one.
    pub cert: Option<String>,
    /// `VIRTUAL_HOSTED_STYLE`.
    pub virtual_hosted_style: bool,
    /// `AWS_REGION` / `AWS_DEFAULT_REGION`, used when the URL names none.
    pub default_region: Option<String>,
}

impl S3Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        S3Settings {
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
            endpoint: var("AWS_ENDPOINTS"),
            cert: var("AWS_CERT"),
            virtual_hosted_style: var("VIRTUAL_HOSTED_STYLE").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            default_region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
        }
    }
}

/// What kind of store a target is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetLocation {
    /// An S3 bucket, with a key prefix.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Region ("" = from the environment).
        region: String,
        /// Key prefix ("" = bucket root).
        prefix: String,
    },
    /// A directory.
    Directory(PathBuf),
}

/// Parses a target URL (any `?query` is ignored; see [`crate::url`] for backup URLs).
pub fn parse_target_url(url: &str) -> Result<TargetLocation> {
    let bad = |why: &str| BackupError::InvalidArgument(format!("backup target {url:?}: {why}"));
    let url = url.split('?').next().unwrap_or(url);
    if let Some(rest) = url.strip_prefix("s3://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (bucket, region) = authority.split_once('@').unwrap_or((authority, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name (expected s3://bucket@region/path)"));
        }
        let prefix = path.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(bad("'.' and '..' are not allowed in the path"));
        }
        return Ok(TargetLocation::S3 { bucket: bucket.to_string(), region: region.to_string(), prefix });
    }
    let path = url.strip_prefix("file://").or_else(|| url.strip_prefix("vfs://"));
    if let Some(path) = path {
        if !path.starts_with('/') {
            return Err(bad("the directory must be absolute (file:///dir)"));
        }
        return Ok(TargetLocation::Directory(PathBuf::from(path)));
    }
    if url.starts_with("nfs://") || url.starts_with("cifs://") || url.starts_with("azblob://") {
        return Err(bad("this scheme is not supported; mount the share and use file:///mount/point"));
    }
    Err(bad("unknown scheme: use s3://bucket@region/path, file:///dir or vfs:///dir"))
}

/// An opened backup target. Cheap to clone; safe to share between tasks.
#[derive(Clone)]
pub struct BackupTarget {
    url: String,
    location: TargetLocation,
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl std::fmt::Debug for BackupTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupTarget").field("url", &self.url).finish()
    }
}

impl BackupTarget {
    /// Opens a target URL with S3 settings from the environment.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, &S3Settings::from_env())
    }

    /// Opens a target URL with explicit S3 settings.
    pub fn open_with(url: &str, settings: &S3Settings) -> Result<Self> {
        let location = parse_target_url(url)?;
        let clean_url = url.split('?').next().unwrap_or(url).to_string();
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match &location {
            TargetLocation::Directory(dir) => {
                let meta = std::fs::metadata(dir)
                    .map_err(|e| BackupError::io("open backup target directory", dir, e))?;
                if !meta.is_dir() {
                    return Err(BackupError::InvalidArgument(format!(
                        "backup target {} is not a directory",
                        dir.display()
                    )));
                }
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| BackupError::store("open", dir.display().to_string(), e))?
                    .with_automatic_cleanup(true);
                (Arc::new(store), String::new())
            }
            TargetLocation::S3 { bucket, region, prefix } => {
                (Arc::new(build_s3(url, bucket, region, settings)?), prefix.clone())
            }
        };
        Ok(BackupTarget { url: clean_url, location, store, prefix })
    }

    /// The target URL as given (without query).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the target is.
    pub fn location(&self) -> &TargetLocation {
        &self.location
    }

    fn path(&self, key: &str) -> StorePath {
        if self.prefix.is_empty() {
            StorePath::from(key)
        } else {
            StorePath::from(format!("{}/{key}", self.prefix))
        }
    }

    /// The full name of a key, for messages: `s3://bucket/prefix/key` or `/dir/key`.
    pub fn describe(&self, key: &str) -> String {
        match &self.location {
            TargetLocation::S3 { bucket, .. } => format!("s3://{bucket}/{}", self.path(key)),
            TargetLocation::Directory(dir) => dir.join(key).display().to_string(),
        }
    }

    /// Reads a whole object.
    pub(crate) async fn get(&self, key: &str) -> Result<Bytes> {
        let result = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| BackupError::store("get", self.describe(key), e))?;
        result.bytes().await.map_err(|e| BackupError::store("get", self.describe(key), e))
    }

    /// Reads a whole object into a buffer from `pool` (directory targets: one read straight into the
    /// reused buffer; object stores: their response body, not copied).
    pub(crate) async fn get_pooled(&self, key: &str, pool: &Arc<BufferPool>) -> Result<Bytes> {
        let TargetLocation::Directory(dir) = &self.location else { return self.get(key).await };
        let path = dir.join(key);
        let pool = pool.clone();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
            use std::io::Read;
            let mut file = std::fs::File::open(&path)?;
            let len = usize::try_from(file.metadata()?.len()).unwrap_or(0);
            let mut buf = pool.take_empty(len);
            file.read_to_end(&mut buf)?;
            Ok(buf.into_bytes())
        })
        .await
        .map_err(|e| BackupError::Worker(e.to_string()))?;
        read.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                // The same error as the object store's own get of a missing file.
                let source = object_store::Error::NotFound { path: key.to_string(), source: Box::new(e) };
                BackupError::store("get", self.describe(key), source)
            } else {
                BackupError::io("read", dir.join(key), e)
            }
        })
    }

    /// Reads a whole object, or None if it does not exist.
    pub(crate) async fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
        match self.get(key).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a whole object (atomically replacing any old one).
    pub(crate) async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.store
            .put(&self.path(key), data.into())
            .await
            .map(|_| ())
            .map_err(|e| BackupError::store("put", self.describe(key), e))
    }

    /// Metadata of an object, or None if it does not exist.
    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(BackupError::store("head", self.describe(key), e)),
        }
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(BackupError::store("delete", self.describe(key), e)),
        }
    }

    /// Names of the "directories" directly under `dir`.
    pub(crate) async fn list_dirs(&self, dir: &str) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.path(dir)))
            .await
            .map_err(|e| BackupError::store("list", self.describe(dir), e))?;
        Ok(listing.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect())
    }

    /// Objects directly under `dir`, as (file name, metadata).
    pub(crate) async fn list_files(&self, dir: &str) -> Result<Vec<(String, ObjectMeta)>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.path(dir)))
            .await
            .map_err(|e| BackupError::store("list", self.describe(dir), e))?;
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string).map(|n| (n, m)))
            .collect())
    }

    /// Every object under `dir`, recursively, as (file name, metadata).
    pub(crate) async fn list_recursive(&self, dir: &str) -> Result<Vec<(String, ObjectMeta)>> {
        let objects: Vec<ObjectMeta> = self
            .store
            .list(Some(&self.path(dir)))
            .try_collect()
            .await
            .map_err(|e| BackupError::store("list", self.describe(dir), e))?;
        Ok(objects
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string).map(|n| (n, m)))
            .collect())
    }

    /// Makes everything written so far durable. Object stores acknowledge durable writes already; for a
    /// directory target this flushes its file system (one `syncfs`), so a config is never durable before
    /// the blocks it references.
    pub(crate) async fn sync(&self) -> Result<()> {
        let TargetLocation::Directory(dir) = &self.location else { return Ok(()) };
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || sync_filesystem(&dir))
            .await
            .map_err(|e| BackupError::Worker(e.to_string()))?
    }
}

fn sync_filesystem(dir: &FsPath) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(dir).map_err(|e| BackupError::io("open for syncfs", dir, e))?;
    // SAFETY: `file` is an open descriptor that outlives the call; syncfs only reads the descriptor.
    let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
    if rc != 0 {
        return Err(BackupError::io("syncfs", dir, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn build_s3(
    url: &str,
    bucket: &str,
    region: &str,
    settings: &S3Settings,
) -> Result<object_store::aws::AmazonS3> {
    use object_store::aws::AmazonS3Builder;
    let region = if region.is_empty() {
        settings.default_region.clone().unwrap_or_else(|| "us-east-1".into())
    } else {
        region.to_string()
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(&region)
        .with_virtual_hosted_style_request(settings.virtual_hosted_style)
        .with_retry(object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: 4,
            retry_timeout: Duration::from_secs(60),
        });
    if let Some(id) = &settings.access_key_id {
        builder = builder.with_access_key_id(id);
    }
    if let Some(secret) = &settings.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(token) = &settings.session_token {
        builder = builder.with_token(token);
    }
    let mut options = object_store::ClientOptions::new().with_connect_timeout(Duration::from_secs(10));
    if let Some(endpoint) = &settings.endpoint {
        let endpoint = endpoint.trim_end_matches('/');
        options = options.with_allow_http(endpoint.starts_with("http://"));
        // With virtual-hosted style object_store expects the bucket in the endpoint's host, as Longhorn builds it.
        let endpoint = match (settings.virtual_hosted_style, endpoint.split_once("://")) {
            (true, Some((scheme, host))) if !host.starts_with(&format!("{bucket}.")) => {
                format!("{scheme}://{bucket}.{host}")
            }
            _ => endpoint.to_string(),
        };
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(cert) = &settings.cert {
        let pem = if cert.contains("-----BEGIN") {
            cert.as_bytes().to_vec()
        } else {
            std::fs::read(cert).map_err(|e| BackupError::io("read AWS_CERT", cert, e))?
        };
        let certs = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
            BackupError::InvalidArgument(format!("AWS_CERT is not a usable PEM certificate: {e}"))
        })?;
        for c in certs {
            options = options.with_root_certificate(c);
        }
    }
    builder
        .with_client_options(options)
        .build()
        .map_err(|e| BackupError::InvalidArgument(format!("backup target {url:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_target_urls() {
        assert_eq!(
            parse_target_url("s3://backups@us-east-1/some/path/").unwrap(),
            TargetLocation::S3 {
                bucket: "backups".into(),
                region: "us-east-1".into(),
                prefix: "some/path".into()
            }
        );
        assert_eq!(
            parse_target_url("s3://backups/").unwrap(),
            TargetLocation::S3 { bucket: "backups".into(), region: String::new(), prefix: String::new() }
        );
        assert_eq!(
            parse_target_url("vfs:///var/backups?x=1").unwrap(),
            TargetLocation::Directory("/var/backups".into())
        );
        assert_eq!(parse_target_url("file:///b").unwrap(), TargetLocation::Directory("/b".into()));
        for bad in ["s3://@r/p", "file://relative", "nfs://server:/x", "http://x", "s3://b/../x"] {
            assert!(parse_target_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_directory_is_named() {
        let err = BackupTarget::open("file:///nonexistent/corral-backup-target").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/corral-backup-target"), "{err}");
    }
}
