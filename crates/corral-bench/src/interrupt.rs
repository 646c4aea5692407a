//! Ctrl-C, SIGTERM and SIGHUP end a benchmark through its error path, so the guards' `Drop`s unmount,
//! detach and kill what the run set up instead of the process dying with mounts and servers left behind.
//!
//! The signals are blocked in the main thread (before any other thread exists, so every later thread
//! inherits the mask) and one thread waits for them and raises a flag; long steps poll the flag and stop
//! with [`interrupted`]'s error. Children start with an empty signal mask (std resets it in the child),
//! and those the benchmark starts sit in their own process groups, so a terminal's Ctrl-C reaches only
//! this process and the cleanup runs against servers that are still alive.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigSet, Signal};

use crate::fio::{tool_error, BenchError};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Routes SIGINT, SIGTERM and SIGHUP to the flag. Call first thing in `main`.
pub fn install() -> Result<(), BenchError> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block().map_err(|e| tool_error("signals", format!("cannot block SIGINT/SIGTERM: {e}")))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                eprintln!("corral-bench: {signal}: stopping and cleaning up");
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
        })
        .map_err(|e| tool_error("signals", format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

/// An error once a signal asked the run to stop.
pub fn interrupted() -> Result<(), BenchError> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(tool_error("corral-bench", "interrupted by a signal"))
    } else {
        Ok(())
    }
}
