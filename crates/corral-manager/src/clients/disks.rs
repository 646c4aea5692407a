//! This node's disks: capacity and free space of the filesystem holding a disk's directory, and the
//! space a replica directory's files hold.
use corral_store::resources::DiskStatus;

/// Capacity and free space of the filesystem holding `path`. `statvfs` blocks (a hung NFS mount
/// blocks for long), so it runs on the blocking pool, never on a runtime worker.
pub async fn disk_status(path: &str) -> DiskStatus {
    let owned = path.to_string();
    match tokio::task::spawn_blocking(move || disk_status_blocking(&owned)).await {
        Ok(status) => status,
        Err(e) => DiskStatus { message: format!("cannot read {path}: {e}"), ..DiskStatus::default() },
    }
}

fn disk_status_blocking(path: &str) -> DiskStatus {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => DiskStatus {
            storage_maximum: s.blocks().saturating_mul(s.fragment_size()),
            storage_available: s.blocks_available().saturating_mul(s.fragment_size()),
            ..DiskStatus::default()
        },
        Err(e) => DiskStatus { message: format!("cannot read {path}: {e}"), ..DiskStatus::default() },
    }
}

/// Bytes allocated on disk by the files of a replica directory (0 if it cannot be read). Blocking: a
/// directory walk; call it on the blocking pool.
pub fn allocated_bytes(dir: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks().saturating_mul(512))
        .sum()
}
