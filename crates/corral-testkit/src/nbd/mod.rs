//! NBD clients for tests: the real tools (`qemu-io`, libnbd's `nbdinfo`/`nbdcopy`) and [`Workload`], a
//! pipelined multi-connection workload run by libnbd whose acknowledgements the test checks.

mod workload;

pub use workload::{Ack, Connected, Op, Report, RunningWorkload, Workload};

use std::process::{Command, Output};

const NBD_TOOLS_HINT: &str =
    "Debian packages: qemu-utils, libnbd-bin, python3-libnbd, nbdkit, fio, e2fsprogs, fuse3, util-linux";

/// Fails the test (never skips) when `tool` is not on PATH.
pub fn require_tool(tool: &str) {
    require_tool_hint(tool, NBD_TOOLS_HINT);
}

/// Like [`require_tool`], with the install hint to show.
pub fn require_tool_hint(tool: &str, hint: &str) {
    let found = std::path::Path::new(tool).is_file()
        || std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false);
    assert!(found, "this test needs `{tool}` on PATH ({hint}); run scripts/install-test-deps");
}

/// Runs a command to completion; panics if it cannot start.
pub fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"))
}

/// Runs a command and panics with its output unless it succeeds; returns stdout.
pub fn run_ok(command: &mut Command) -> String {
    let out = run(command);
    assert!(
        out.status.success(),
        "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `qemu-io -f raw -c CMD… URI` and requires success (qemu-io exits 1 on a pattern mismatch, and
/// reports some failures only in its output).
pub fn qemu_io(uri: &str, commands: &[&str]) -> String {
    require_tool("qemu-io");
    let mut command = Command::new("qemu-io");
    command.args(["-f", "raw"]);
    for c in commands {
        command.args(["-c", c]);
    }
    let out = run(command.arg(uri));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("failed") && !stdout.contains("error"),
        "qemu-io {commands:?} {uri} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The export size as `nbdinfo --size` (a fresh libnbd connection) reports it.
pub fn export_size(uri: &str) -> u64 {
    require_tool("nbdinfo");
    let text = run_ok(Command::new("nbdinfo").arg("--size").arg(uri));
    text.trim().parse().unwrap_or_else(|err| panic!("nbdinfo --size {uri} printed {text:?}: {err}"))
}
