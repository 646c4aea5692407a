//! The node's commands and the mount table: running `mount`, `mkfs`, `blkid`, … with errors that
//! carry their stderr, reading `/proc/self/mountinfo`, and `statvfs`.
use std::path::{Path, PathBuf};

use crate::error::{CsiError, Result};

/// Run a command; its stdout, or an Internal error with its stderr.
pub async fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| CsiError::io(format!("cannot run {program} (is it installed?)"), e))?;
    if !out.status.success() {
        return Err(CsiError::internal(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Mount points as the kernel lists them (octal escapes such as `\040` decoded).
pub fn mount_points() -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CsiError::io("cannot read /proc/self/mountinfo", e))?;
    Ok(text.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(unescape(p))).collect())
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point.
pub fn is_mounted(path: &Path) -> Result<bool> {
    Ok(mount_points()?.iter().any(|p| p == path))
}

/// Unmount `path` while it is mounted (stacked mounts too).
pub async fn unmount_all(path: &Path) -> Result<()> {
    let p = path.to_string_lossy().into_owned();
    while is_mounted(path)? {
        run("umount", &[&p]).await?;
    }
    Ok(())
}

/// The filesystem on `device`, or `None` when it is blank.
pub async fn filesystem_of(device: &Path) -> Result<Option<String>> {
    let out = tokio::process::Command::new("blkid")
        .args(["-p", "-s", "TYPE", "-o", "value"])
        .arg(device)
        .output()
        .await
        .map_err(|e| CsiError::io("cannot run blkid", e))?;
    match out.status.code() {
        Some(0) => {
            Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty()))
        }
        // blkid's "nothing found".
        Some(2) => Ok(None),
        _ => Err(CsiError::internal(format!(
            "blkid {} failed: {}",
            device.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Make a filesystem: ext4 with 4 KiB blocks, or xfs with 4 KiB blocks and sectors.
pub async fn make_filesystem(fs: &str, device: &Path) -> Result<()> {
    let dev = device.to_string_lossy().into_owned();
    match fs {
        "ext4" => run("mkfs.ext4", &["-q", "-F", "-b", "4096", &dev]).await.map(drop),
        "xfs" => run("mkfs.xfs", &["-q", "-f", "-b", "size=4096", "-s", "size=4096", &dev]).await.map(drop),
        other => Err(CsiError::invalid(format!("filesystem {other:?} is not supported"))),
    }
}

/// Grow the filesystem mounted at `mount_point` on `device` to the device's size.
pub async fn grow_filesystem(fs: &str, device: &Path, mount_point: &Path) -> Result<()> {
    match fs {
        "ext4" => run("resize2fs", &[&device.to_string_lossy()]).await.map(drop),
        "xfs" => run("xfs_growfs", &[&mount_point.to_string_lossy()]).await.map(drop),
        _ => Ok(()),
    }
}

/// Grow the ext4 filesystem on the unmounted `device` to the device's size when it is smaller
/// (checked first, as resize2fs requires). Growing before the mount needs no CAP_SYS_RESOURCE,
/// which online ext4 resizing does and a plugin container may lack.
pub async fn grow_ext4_unmounted(device: &Path) -> Result<()> {
    let dev = device.to_string_lossy().into_owned();
    let header = run("dumpe2fs", &["-h", &dev]).await?;
    let field = |name: &str| -> Option<u64> {
        header.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok())
    };
    let (Some(blocks), Some(block_size)) = (field("Block count:"), field("Block size:")) else {
        return Err(CsiError::internal(format!("dumpe2fs -h {dev} shows no block count or size")));
    };
    if blocks.saturating_add(1).saturating_mul(block_size) > device_size(device).await? {
        return Ok(());
    }
    let fsck = tokio::process::Command::new("e2fsck")
        .args(["-f", "-p", &dev])
        .output()
        .await
        .map_err(|e| CsiError::io("cannot run e2fsck", e))?;
    // 0: clean, 1: errors corrected.
    if !matches!(fsck.status.code(), Some(0 | 1)) {
        return Err(CsiError::internal(format!(
            "e2fsck -f -p {dev} before growing it failed ({}): {}",
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout).trim()
        )));
    }
    run("resize2fs", &[&dev]).await.map(drop)
}

/// Bytes of a block device (or a file).
pub async fn device_size(device: &Path) -> Result<u64> {
    let out = run("blockdev", &["--getsize64", &device.to_string_lossy()]).await?;
    out.trim()
        .parse()
        .map_err(|_| CsiError::internal(format!("blockdev printed {out:?} for {}", device.display())))
}

/// Usage of the filesystem holding `path`: (bytes total, bytes available, bytes used, inodes
/// total, inodes free, inodes used).
pub fn usage(path: &Path) -> Result<[u64; 6]> {
    let s = nix::sys::statvfs::statvfs(path)
        .map_err(|e| CsiError::io(format!("statvfs {}", path.display()), std::io::Error::from(e)))?;
    let frag = s.fragment_size() as u64;
    let (total, avail, free) =
        (s.blocks() as u64 * frag, s.blocks_available() as u64 * frag, s.blocks_free() as u64 * frag);
    let (inodes, ifree) = (s.files() as u64, s.files_free() as u64);
    Ok([total, avail, total.saturating_sub(free), inodes, ifree, inodes.saturating_sub(ifree)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape(r"/plain\0"), r"/plain\0");
    }

    #[test]
    fn the_root_is_mounted() -> Result<()> {
        assert!(is_mounted(Path::new("/"))?);
        Ok(())
    }
}
