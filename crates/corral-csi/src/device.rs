//! An attached volume's NBD endpoint as a block device on this node: `nbdfuse` exposes the export
//! as the file `disk` in a FUSE mount, and a loop device over that file is the block device.
//! (On nodes whose kernel has the NBD driver, `nbd-client` would do this in one step; the machines
//! this project runs on have none.)
//!
//! `nbdfuse` runs in a process group of its own, so it outlives a restart of the plugin: the
//! staged filesystem stays usable, and the next plugin finds the FUSE mount and the loop device
//! again from its state file and the kernel's tables.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::error::{CsiError, Result};
use crate::mounts::{is_mounted, run};

/// How long `nbdfuse` has to show the export's file.
const FUSE_TIMEOUT: Duration = Duration::from_secs(20);

/// The export's file inside a FUSE mount point.
pub fn export_file(fuse_dir: &Path) -> PathBuf {
    fuse_dir.join("disk")
}

/// Start `nbdfuse` for `endpoint` at `fuse_dir` unless it is mounted there already; returns its pid
/// when it was started now.
pub async fn start_fuse(endpoint: &str, fuse_dir: &Path, log: &Path) -> Result<Option<u32>> {
    if is_mounted(fuse_dir)? {
        return Ok(None);
    }
    std::fs::create_dir_all(fuse_dir)
        .map_err(|e| CsiError::io(format!("cannot create {}", fuse_dir.display()), e))?;
    let log_file = std::fs::File::create(log)
        .map_err(|e| CsiError::io(format!("cannot create {}", log.display()), e))?;
    let log_err = log_file.try_clone().map_err(|e| CsiError::io("cannot duplicate a log handle", e))?;
    let mut child = tokio::process::Command::new("nbdfuse")
        .arg(export_file(fuse_dir))
        .arg(endpoint)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        // Its own process group: a signal to the plugin's group does not unmount the volume.
        .process_group(0)
        .spawn()
        .map_err(|e| CsiError::io("cannot start nbdfuse (Debian package libnbd-bin)", e))?;
    let pid = child.id();
    let deadline = tokio::time::Instant::now() + FUSE_TIMEOUT;
    loop {
        if let Ok(meta) = std::fs::metadata(export_file(fuse_dir)) {
            if meta.len() > 0 && is_mounted(fuse_dir)? {
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(CsiError::internal(format!(
                "nbdfuse {endpoint} exited ({status}): {}",
                log_text.trim()
            )));
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.start_kill();
            return Err(CsiError::new(
                tonic::Code::DeadlineExceeded,
                format!("nbdfuse did not show {endpoint} within {FUSE_TIMEOUT:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reap it when it exits (after the unmount at unstage) so no zombie stays behind.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(pid)
}

/// Wait until the export at `endpoint` is at least `size` bytes. An engine started while its
/// volume's offline expansion was still pending grows right after it starts; an NBD client keeps
/// the size it saw when it connected, so the node connects only once the export has it all.
pub async fn wait_export_size(endpoint: &str, size: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + FUSE_TIMEOUT;
    loop {
        let out = run("nbdinfo", &["--size", endpoint]).await?;
        let now: u64 =
            out.trim().parse().map_err(|_| CsiError::internal(format!("nbdinfo printed {out:?}")))?;
        if now >= size {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CsiError::new(
                tonic::Code::Unavailable,
                format!("the engine serves {now} bytes of the volume's {size} after {FUSE_TIMEOUT:?}; retry"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The loop device over `file`: the one already there, or a new one.
pub async fn attach_loop(file: &Path) -> Result<PathBuf> {
    let f = file.to_string_lossy().into_owned();
    if let Some(existing) = loop_of(file).await? {
        return Ok(existing);
    }
    let out = run("losetup", &["--find", "--show", &f]).await?;
    Ok(PathBuf::from(out.trim()))
}

/// The loop device backed by `file`, if any.
pub async fn loop_of(file: &Path) -> Result<Option<PathBuf>> {
    let out = run("losetup", &["--associated", &file.to_string_lossy(), "--noheadings", "--output", "NAME"])
        .await?;
    Ok(out.lines().map(str::trim).find(|l| !l.is_empty()).map(PathBuf::from))
}

/// Undo [`start_fuse`] and [`attach_loop`]: detach the loop device, unmount the FUSE mount (which
/// ends `nbdfuse`), and kill `nbdfuse` if it is still there.
pub async fn stop(fuse_dir: &Path, loop_device: Option<&Path>, fuse_pid: Option<u32>) -> Result<()> {
    let file = export_file(fuse_dir);
    let mut loops: Vec<PathBuf> = loop_device.map(Path::to_path_buf).into_iter().collect();
    if is_mounted(fuse_dir)? {
        loops.extend(loop_of(&file).await?);
    }
    for l in loops {
        // Gone already after a reboot or an earlier, interrupted unstage: nothing to do.
        let _ = run("losetup", &["--detach", &l.to_string_lossy()]).await;
    }
    if is_mounted(fuse_dir)? {
        run("fusermount3", &["-u", &fuse_dir.to_string_lossy()]).await?;
    }
    if let Some(pid) = fuse_pid.and_then(|p| i32::try_from(p).ok()) {
        let pid = nix::unistd::Pid::from_raw(pid);
        if is_nbdfuse(pid) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    let _ = std::fs::remove_dir(fuse_dir);
    Ok(())
}

/// Why the node's side of a staged volume is broken, if it is: its `nbdfuse` is gone (the FUSE
/// file, and so the loop device over it, then fails every I/O).
pub fn fault(fuse_dir: &Path, fuse_pid: Option<u32>) -> Option<String> {
    let alive = fuse_pid
        .and_then(|p| i32::try_from(p).ok())
        .is_some_and(|p| is_nbdfuse(nix::unistd::Pid::from_raw(p)));
    if fuse_pid.is_some() && !alive {
        return Some(format!(
            "the volume's NBD client on this node (nbdfuse at {}) is gone: unstage and stage the volume again",
            fuse_dir.display()
        ));
    }
    None
}

/// Whether `pid` is still an nbdfuse (and not a reused pid).
fn is_nbdfuse(pid: nix::unistd::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "nbdfuse")
}
