//! Checks of user input, shared by the API and the CLI-facing parts.
use crate::error::{ManagerError, Result};

/// Volumes are sized in whole 2 MiB blocks (the backup block size; Longhorn rounds the same way).
pub const SIZE_ALIGNMENT: u64 = 2 << 20;
/// Largest volume size (1 PiB), the API's rule.
pub const MAX_SIZE: u64 = corral_api::MAX_VOLUME_SIZE;
/// Most replicas a volume may ask for.
pub const MAX_REPLICAS: u32 = 20;

/// Corral's one name rule, [`corral_api::names`] (`^[a-z0-9][a-z0-9._-]{0,62}$`): names of volumes,
/// snapshots, backups, jobs, disks.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    corral_api::check_name(what, name).map_err(|e| ManagerError::invalid(e.to_string()))
}

/// A volume size: non-zero and a multiple of 2 MiB.
pub fn check_size(size: u64) -> Result<()> {
    if size == 0 {
        return Err(ManagerError::invalid("size must be greater than 0"));
    }
    if size > MAX_SIZE {
        return Err(ManagerError::invalid(format!(
            "size {size} is larger than the largest volume, 1 PiB ({MAX_SIZE} bytes)"
        )));
    }
    if size % SIZE_ALIGNMENT != 0 {
        return Err(ManagerError::invalid(format!(
            "size {size} is not a multiple of 2 MiB ({SIZE_ALIGNMENT} bytes); try {}",
            size.div_ceil(SIZE_ALIGNMENT) * SIZE_ALIGNMENT
        )));
    }
    Ok(())
}

/// A count the API documents as a signed 64-bit integer (`format: int64`) but holds as `u64`: values
/// above `i64::MAX` would be stored, yet other clients (and the OpenAPI document) cannot represent
/// them, so they are refused like any other out-of-range input.
pub fn check_int64(field: &str, value: u64) -> Result<()> {
    if value > i64::MAX as u64 {
        return Err(ManagerError::invalid(format!("{field} {value} is larger than {}", i64::MAX)));
    }
    Ok(())
}

/// Label keys and values: printable, bounded.
pub fn check_labels(labels: &std::collections::BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() || k.len() > 253 || v.len() > 253 || k.chars().chain(v.chars()).any(char::is_control)
        {
            return Err(ManagerError::invalid(format!("invalid label {k:?}={v:?}")));
        }
    }
    Ok(())
}

/// A backup URL or target as Corral supports them.
pub fn check_backup_url(url: &str) -> Result<()> {
    const SCHEMES: [&str; 4] = ["s3://", "file:///", "vfs:///", "nfs://"];
    if !SCHEMES.iter().any(|s| url.starts_with(s)) || url.chars().any(char::is_control) {
        return Err(ManagerError::invalid(format!(
            "invalid backup URL {url:?}: expected s3://bucket@region/path, file:///path, vfs:///path or nfs://server:/path"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "vol-1", "0", "a.b_c-d", &"a".repeat(63)] {
            check_name("volume", ok).unwrap();
        }
        for bad in ["", "-a", ".a", "A", "vol 1", "vol/1", "é", &"a".repeat(64), "a\n"] {
            assert!(check_name("volume", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes() {
        check_size(2 << 20).unwrap();
        check_size(256 << 20).unwrap();
        assert!(check_size(0).is_err());
        assert!(check_size(4096).is_err());
        assert!(check_size((2 << 20) + 512).unwrap_err().message.contains("4194304"));
    }

    #[test]
    fn backup_urls() {
        check_backup_url("s3://bucket@us-east-1/path").unwrap();
        check_backup_url("file:///var/backups").unwrap();
        assert!(check_backup_url("http://x").is_err());
        assert!(check_backup_url("/tmp").is_err());
    }
}
