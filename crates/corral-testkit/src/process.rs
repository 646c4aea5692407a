//! A real child process for a test: started, recognised by its first stdout line (a server's
//! "listening on ADDR" or "ready …"), stopped with SIGKILL or SIGTERM, and SIGKILLed on drop so a failing
//! test leaves nothing behind.
//!
//! Both pipes are drained on their own threads: a chatty child never blocks on a full pipe, and its
//! stderr is kept (and echoed, so a test's captured output shows it) for the panic message when it fails.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a child may take to print its first line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a child's stderr is kept for messages (the end of it).
const STDERR_KEPT: usize = 64 << 10;

/// Why a child did not announce itself.
#[derive(Debug)]
pub struct StartError {
    /// What the test called the process.
    pub name: String,
    /// The first line, if one came but was not accepted by the caller.
    pub first_line: Option<String>,
    /// The exit status, if the child had exited.
    pub status: Option<ExitStatus>,
    /// Everything (the last 64 KiB) the child wrote to stderr.
    pub stderr: String,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} did not start: first stdout line {:?}, ", self.name, self.first_line)?;
        match self.status {
            Some(status) => write!(f, "exited with {status}")?,
            None => write!(f, "still running (killed)")?,
        }
        write!(f, ", stderr:\n{}", self.stderr)
    }
}

impl std::error::Error for StartError {}

/// The captured stderr of a child and whether the child closed it.
#[derive(Default)]
struct StderrLog {
    text: Mutex<String>,
    closed: AtomicBool,
}

/// A running child process, SIGKILLed and reaped on drop.
pub struct Process {
    name: String,
    child: Option<Child>,
    stderr: Arc<StderrLog>,
    stdout_after_ready: Arc<Mutex<Vec<String>>>,
    /// Set when the child closed stdout (every line is then in `stdout_after_ready`).
    stdout_closed: Arc<AtomicBool>,
}

impl Process {
    /// Spawns `command` with piped output and waits (up to [`START_TIMEOUT`]) for its first stdout line.
    /// Panics with the child's stderr if no line comes.
    pub fn start(name: &str, command: &mut Command) -> (Process, String) {
        Self::try_start(name, command, START_TIMEOUT).unwrap_or_else(|err| panic!("{err}"))
    }

    /// Like [`Process::start`], returning why the child did not start instead of panicking (for tests of
    /// start-up errors).
    pub fn try_start(
        name: &str,
        command: &mut Command,
        timeout: Duration,
    ) -> Result<(Process, String), StartError> {
        let mut process = Self::spawn_piped(name, command);
        let stdout = process.child.as_mut().and_then(|c| c.stdout.take());
        let Some(stdout) = stdout else {
            return Err(process.start_error(None));
        };
        let (sender, receiver) = mpsc::channel();
        let (rest, closed) = (process.stdout_after_ready.clone(), process.stdout_closed.clone());
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let first = reader.read_line(&mut line).map(|n| (n, line));
            let _ = sender.send(first);
            // Keep draining so the child never blocks on a full pipe.
            drain_stdout(reader, &rest, &closed);
        });
        match receiver.recv_timeout(timeout) {
            Ok(Ok((n, line))) if n > 0 => Ok((process, line.trim_end().to_string())),
            _ => Err(process.start_error(None)),
        }
    }

    /// Spawns `command` without waiting for a line (servers recognised by their port instead).
    pub fn spawn(name: &str, command: &mut Command) -> Process {
        let mut process = Self::spawn_piped(name, command);
        if let Some(stdout) = process.child.as_mut().and_then(|c| c.stdout.take()) {
            let (rest, closed) = (process.stdout_after_ready.clone(), process.stdout_closed.clone());
            std::thread::spawn(move || drain_stdout(BufReader::new(stdout), &rest, &closed));
        }
        process
    }

    fn spawn_piped(name: &str, command: &mut Command) -> Process {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {name} ({:?}): {err}", command.get_program()));
        let stderr = Arc::new(StderrLog::default());
        if let Some(pipe) = child.stderr.take() {
            let log = stderr.clone();
            let prefix = name.to_string();
            std::thread::spawn(move || drain_stderr(pipe, &prefix, &log));
        } else {
            stderr.closed.store(true, Ordering::SeqCst);
        }
        Process {
            name: name.to_string(),
            child: Some(child),
            stderr,
            stdout_after_ready: Arc::default(),
            stdout_closed: Arc::default(),
        }
    }

    /// Kills the child and describes it, with the first line the caller rejected (if any).
    pub fn start_error(mut self, first_line: Option<String>) -> StartError {
        // A child that closed stdout is usually exiting: give it a moment so its status is known.
        let status = self.wait_exit(Duration::from_secs(1));
        self.kill9();
        self.wait_pipes_closed(Duration::from_secs(2));
        StartError { name: self.name.clone(), first_line, status, stderr: self.stderr() }
    }

    /// Waits (up to `limit`) until the drain threads saw both pipes close, so every line is recorded.
    fn wait_pipes_closed(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let closed =
            || self.stderr.closed.load(Ordering::SeqCst) && self.stdout_closed.load(Ordering::SeqCst);
        while !closed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The child's stdin, when the command asked for a pipe (`Stdio::piped()`); taken once.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.as_mut().and_then(|c| c.stdin.take())
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while the child has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the child wrote to stderr so far (the last 64 KiB).
    pub fn stderr(&self) -> String {
        self.stderr.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Stdout lines after the first one.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_after_ready.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// How many stdout lines came after the first one.
    pub fn stdout_line_count(&self) -> usize {
        self.stdout_after_ready.lock().map(|l| l.len()).unwrap_or_default()
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, …) to a running child.
    pub fn signal(&self, signal: Signal) {
        let pid = self.pid().unwrap_or_else(|| panic!("{} was already stopped", self.name));
        let pid = Pid::from_raw(i32::try_from(pid).unwrap_or_else(|_| panic!("pid {pid} out of range")));
        kill(pid, signal).unwrap_or_else(|err| panic!("cannot send {signal} to {}: {err}", self.name));
    }

    /// SIGKILL and reap: the crash a test means. Does nothing when already stopped.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for the child to exit. Returns its exit status, or `None` when it
    /// had to be SIGKILLed after the grace period (or was already stopped).
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Waits up to `limit` for the child to exit on its own; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.wait_pipes_closed(Duration::from_secs(10));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn drain_stdout(reader: impl BufRead, lines: &Mutex<Vec<String>>, closed: &AtomicBool) {
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if let Ok(mut lines) = lines.lock() {
            lines.push(line);
        }
    }
    closed.store(true, Ordering::SeqCst);
}

fn drain_stderr(pipe: impl Read, prefix: &str, log: &StderrLog) {
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        eprintln!("[{prefix}] {line}");
        if let Ok(mut text) = log.text.lock() {
            text.push_str(&line);
            text.push('\n');
            if text.len() > STDERR_KEPT {
                let mut cut = text.len() - STDERR_KEPT;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                text.drain(..cut);
            }
        }
    }
    log.closed.store(true, Ordering::SeqCst);
}
