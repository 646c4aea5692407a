//! Smoke test of the benchmark tool itself: `engine --quick` and `app --quick` run end to end against
//! real servers (Corral replicas and engine, qemu-nbd, fio, libnbd, nbdfuse, loop devices, PostgreSQL)
//! and print every row the full runs print, and `app` leaves no mount, loop device or process behind,
//! also when SIGTERM stops it mid-round. Nothing here judges a speed: a figure only has to be there.
//! Needs root (loop devices, mounts) and the Debian packages fio, qemu-utils, libnbd-bin,
//! python3-libnbd, postgresql, e2fsprogs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `corral` binary of this build profile, as cargo reports it (built if stale; the suite has
/// usually built it already for the `corral` crate's tests).
fn corral_binary() -> PathBuf {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "corral", "--bin", "corral", "--message-format=json"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "cargo build -p corral failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "corral")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("cargo named no `corral` executable")
}

fn bench(args: &[&str], dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral-bench"));
    cmd.args(args).arg("--dir").arg(dir).arg("--corral").arg(corral_binary());
    cmd
}

/// The table rows of `stdout` whose first cells are `cells`, split into cells.
fn rows<'a>(stdout: &'a str, cells: &[&str]) -> Vec<Vec<&'a str>> {
    stdout
        .lines()
        .map(|l| l.trim().trim_matches('|').split('|').map(str::trim).collect::<Vec<_>>())
        .filter(|row| row.len() > cells.len() && row.iter().zip(cells).all(|(a, b)| a == b))
        .collect()
}

/// The leading number of a cell such as "1234", "812 µs", "3.1k IOPS" or "4.2 ms".
fn number(cell: &str) -> f64 {
    let n: String = cell.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    n.parse().unwrap_or_else(|_| panic!("no number in cell {cell:?}"))
}

/// Nothing under `dir` is still mounted or backs a loop device.
fn assert_nothing_left(dir: &Path) {
    let dir = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&dir), "a mount under {dir} was left behind:\n{mounts}");
    let loops =
        String::from_utf8_lossy(&Command::new("losetup").arg("-a").output().unwrap().stdout).to_string();
    assert!(!loops.contains(&dir), "a loop device over {dir} was left behind:\n{loops}");
    let procs = String::from_utf8_lossy(&Command::new("ps").args(["-eo", "args"]).output().unwrap().stdout)
        .to_string();
    let left: Vec<&str> = procs.lines().filter(|l| l.contains(&dir)).collect();
    assert!(left.is_empty(), "processes under {dir} were left behind: {left:?}");
}

#[test]
fn engine_quick_prints_every_durable_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(&["engine", "--quick"], &dir.path().join("engine")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "corral-bench engine --quick failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The buffered table, unchanged.
    for job in
        ["1M seq write QD8", "4K rand write QD32", "4K rand read QD1", "4K rand read QD32", "1M seq read QD8"]
    {
        // | workload | file | qemu-nbd | corral 1 | corral 3 | two ratios | (the durable table's rows are longer)
        let buffered: Vec<_> = rows(&stdout, &[job]).into_iter().filter(|row| row.len() == 7).collect();
        assert_eq!(buffered.len(), 1, "buffered row {job} missing:\n{stdout}");
        assert!(buffered[0][5].ends_with('×'), "no ratio in {:?}", buffered[0]);
    }
    let workloads = [
        "4K rand write QD1, fsync every write",
        "4K rand write QD32, fsync every 32 writes",
        "4K rand write QD1, FUA every write",
        "4K rand read QD1",
    ];
    for workload in workloads {
        for (target, replicas) in
            [("file", "1 copy"), ("qemu-nbd", "1 copy"), ("corral", "1"), ("corral", "3")]
        {
            let found = rows(&stdout, &[workload, target, replicas]);
            assert_eq!(found.len(), 1, "no row {workload} / {target} / {replicas}:\n{stdout}");
            let row = &found[0];
            // | workload | target | replicas | sync mode | IOPS | mean | p99 | ratios…
            assert_eq!(row.len(), 10, "row {row:?}");
            assert!(!row[3].is_empty(), "no sync mode in {row:?}");
            assert!(number(row[4]) > 0.0, "no IOPS in {row:?}");
            assert!(number(row[5]) > 0.0 && row[5].ends_with("µs"), "no mean latency in {row:?}");
            assert!(row[7].ends_with('×'), "no ratio to qemu-nbd in {row:?}");
        }
    }
    assert!(stdout.contains("Targets: fsync every write QD1"), "{stdout}");
}

fn assert_app_rows(stdout: &str) {
    for (target, replicas) in
        [("file + loop", "1 copy"), ("qemu-nbd", "1 copy"), ("corral", "1"), ("corral", "3")]
    {
        let found = rows(stdout, &[target, replicas]);
        assert_eq!(found.len(), 1, "no row {target} / {replicas}:\n{stdout}");
        let row = &found[0];
        // | target | replicas | sync mode | TPS | TPS per round | mean latency | TPS / qemu-nbd | …
        assert_eq!(row.len(), 9, "row {row:?}");
        assert!(number(row[3]) > 0.0, "no TPS in {row:?}");
        assert!(number(row[5]) > 0.0 && row[5].ends_with("ms"), "no latency in {row:?}");
        assert!(row[6].ends_with('×'), "no ratio in {row:?}");
    }
}

/// A temporary directory PostgreSQL's user may enter (tempdir makes it 0700).
fn open_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn app_quick_runs_pgbench_on_every_stack_and_cleans_up() {
    let dir = open_tempdir();
    let work = dir.path().join("app");
    let out = bench(&["app", "--quick"], &work).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "corral-bench app --quick failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_app_rows(&stdout);
    assert_nothing_left(&work);
}

#[test]
fn app_stopped_by_sigterm_while_building_cleans_up() {
    let dir = open_tempdir();
    let work = dir.path().join("app");
    let mut child =
        bench(&["app", "--quick"], &work).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        // Stop it while the second stack is being built, with the first one up and running postgres.
        if line.contains("qemu-nbd (1 copy): ext4") {
            std::thread::sleep(Duration::from_secs(1));
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "the second stack never started: {seen:?}");
    }
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted run must fail; it said: {seen:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "cleanup took {:?}", started.elapsed());
    assert_nothing_left(&work);
}
