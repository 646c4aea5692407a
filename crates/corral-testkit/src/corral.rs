//! The `corral replica serve` process. The test passes the binary's path
//! (`env!("CARGO_BIN_EXE_corral")`), which only a test target of the `corral` crate knows.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::process::{Process, StartError, START_TIMEOUT};

/// How long SIGTERM may take before a replica counts as hung.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(20);

/// A `corral replica serve` process; SIGKILLed on drop.
pub struct ReplicaServer {
    /// The running process (stopped by [`ReplicaServer::kill9`] or [`ReplicaServer::terminate`]).
    pub process: Process,
    /// `tcp://HOST:PORT` or `unix://PATH`, from its "listening on" line.
    pub address: String,
    /// Its replica directory.
    pub dir: PathBuf,
    corral: PathBuf,
}

impl ReplicaServer {
    /// Starts a replica in `dir` (created with `size` if new) listening on `listen` (`127.0.0.1:0`,
    /// `unix:PATH`); panics with its stderr if it does not start.
    pub fn start(corral: &Path, dir: &Path, size: Option<&str>, listen: &str) -> ReplicaServer {
        Self::try_start(corral, dir, size, listen).unwrap_or_else(|err| panic!("{err}"))
    }

    /// Like [`ReplicaServer::start`], returning why it did not start (exit status and stderr).
    pub fn try_start(
        corral: &Path,
        dir: &Path,
        size: Option<&str>,
        listen: &str,
    ) -> Result<ReplicaServer, StartError> {
        let mut command = Command::new(corral);
        command.args(["replica", "serve", "--dir"]).arg(dir).args(["--listen", listen]);
        if let Some(size) = size {
            command.args(["--size", size]);
        }
        let (process, line) = Process::try_start("replica", &mut command, START_TIMEOUT)?;
        match line.strip_prefix("listening on ") {
            Some(address) => Ok(ReplicaServer {
                process,
                address: address.to_string(),
                dir: dir.to_path_buf(),
                corral: corral.to_path_buf(),
            }),
            None => Err(process.start_error(Some(line))),
        }
    }

    /// `HOST:PORT` of a TCP address, to restart on the same port.
    pub fn listen_arg(&self) -> String {
        self.address.trim_start_matches("tcp://").to_string()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> u32 {
        self.process.pid().unwrap_or_else(|| panic!("replica {} is not running", self.address))
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM and wait for a clean exit; panics if it needs more than [`TERMINATE_GRACE`].
    pub fn terminate(&mut self) -> ExitStatus {
        self.process
            .terminate(TERMINATE_GRACE)
            .unwrap_or_else(|| panic!("replica {} ignored SIGTERM for {TERMINATE_GRACE:?}", self.address))
    }

    /// SIGKILLs it and starts it again on the same directory and address. The port was just freed; the
    /// start is retried for a few seconds in case the kernel still holds it.
    pub fn restart(&mut self, size: Option<&str>) {
        self.kill9();
        let listen = self.listen_arg();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Self::try_start(&self.corral, &self.dir, size, &listen) {
                Ok(started) => {
                    *self = started;
                    return;
                }
                Err(err) if Instant::now() >= deadline => panic!("replica did not restart: {err}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}
