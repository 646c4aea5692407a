//! Spawning children from one long-lived thread.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. Tokio's
//! blocking-pool threads come and go, so children are spawned from a dedicated thread that lives
//! as long as the [`crate::Supervisor`]: when the instance manager dies (even by SIGKILL) or drops
//! its supervisor, every child gets SIGTERM from the kernel and no orphan is left behind.
//! Each child also gets its own process group, so a Ctrl-C in the terminal reaches only the
//! instance manager, which then stops its children in order (engines before replicas).
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::mpsc;

use tokio::process::Child;
use tokio::sync::oneshot;

type Job = (std::process::Command, oneshot::Sender<io::Result<Child>>);

/// Handle to the spawning thread; the thread ends when the last handle is dropped.
pub(crate) struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Start the thread. Must be called inside a tokio runtime (children are registered with its
    /// process reaper).
    pub(crate) fn start() -> io::Result<Spawner> {
        let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("corral-im-spawner".into()).spawn(move || {
            let _runtime = handle.enter();
            while let Ok((cmd, reply)) = rx.recv() {
                let mut cmd = tokio::process::Command::from(cmd);
                cmd.kill_on_drop(true);
                let _ = reply.send(cmd.spawn());
            }
        })?;
        Ok(Spawner { jobs: tx })
    }

    /// Spawn `program args` with piped stdout/stderr, its own process group and a parent-death
    /// signal.
    pub(crate) async fn spawn(&self, program: &std::path::Path, args: &[String]) -> io::Result<Child> {
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Output goes to a pipe and into the instance's log: no terminal colour codes.
        cmd.env("NO_COLOR", "1");
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid, setpgid); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then no signal would come.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (tx, rx) = oneshot::channel();
        self.jobs.send((cmd, tx)).map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}
