//! One database stack of `corral-bench app`: an NBD export (or a plain file) → nbdfuse → a loop device →
//! ext4 → PostgreSQL, built step by step and torn down in reverse on drop, so an error or a signal at
//! any step leaves no mount, loop device, nbdfuse or postgres behind.
//!
//! The kernel here has no NBD driver, so nbdfuse exposes the export as one file in a FUSE mount and
//! a loop device turns that file into a block device; a flush of the loop device reaches nbdfuse as
//! fsync, which sends NBD_CMD_FLUSH. The plain-file stack skips nbdfuse: a loop device over the file.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fio::{tool_error, BenchError};
use crate::interrupt;
use crate::targets::{free_port, Proc};

/// The unprivileged user PostgreSQL runs as (it refuses root).
const PG_USER: &str = "postgres";

/// What the filesystem sits on.
pub enum Backing {
    /// An NBD export, through nbdfuse.
    Nbd(String),
    /// A plain file (created with the volume's size), directly.
    File(PathBuf),
}

/// A running stack; everything it set up is undone on drop, in reverse order.
pub struct Stack {
    dir: PathBuf,
    nbdfuse: Option<Proc>,
    fuse_mount: Option<PathBuf>,
    loop_device: Option<String>,
    fs_mount: Option<PathBuf>,
    pg_started: bool,
    port: u16,
}

/// Runs `cmd` to the end in its own process group (a terminal's Ctrl-C does not reach it), its output
/// kept in files; kills it when a signal interrupts the benchmark. Returns stdout.
pub fn run_to_end(cmd: &mut Command, what: &str) -> Result<String, BenchError> {
    let out = tempfile::tempfile().map_err(|e| tool_error(what, format!("no temporary file: {e}")))?;
    let err = tempfile::tempfile().map_err(|e| tool_error(what, format!("no temporary file: {e}")))?;
    let clone = |f: &std::fs::File| f.try_clone().map_err(|e| tool_error(what, e.to_string()));
    cmd.stdin(Stdio::null()).stdout(clone(&out)?).stderr(clone(&err)?).process_group(0);
    let mut child = cmd.spawn().map_err(|e| tool_error(what, format!("cannot start: {e}")))?;
    let status = loop {
        if let Err(e) = interrupt::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(tool_error(what, e.to_string())),
        }
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut s);
        s
    };
    let (stdout, stderr) = (read(out), read(err));
    if !status.success() {
        return Err(tool_error(what, format!("{status}: {}{}", stdout.trim(), stderr.trim())));
    }
    Ok(stdout)
}

/// A command run as [`PG_USER`].
fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", PG_USER, "--", program]);
    cmd
}

/// Fails clearly when [`PG_USER`] cannot reach `dir` (a parent such as a 0700 temporary directory), which
/// initdb would otherwise report as a puzzling permission error deep into the setup.
pub fn check_postgres_can_reach(dir: &Path) -> Result<(), BenchError> {
    let mut cmd = as_postgres("test");
    cmd.arg("-x").arg(dir);
    run_to_end(&mut cmd, "runuser").map(drop).map_err(|_| {
        tool_error(
            "postgresql",
            format!(
                "user {PG_USER} cannot reach {}: put --dir under directories others may enter",
                dir.display()
            ),
        )
    })
}

/// The directory holding PostgreSQL's programs (Debian keeps `initdb` and `pg_ctl` off PATH).
fn pg_bin() -> Result<PathBuf, BenchError> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            tool_error("postgresql", format!("/usr/lib/postgresql: {e} (Debian package postgresql)"))
        })?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().ok_or_else(|| tool_error("postgresql", "no /usr/lib/postgresql/*/bin/initdb"))
}

fn program(bin: &Path, name: &str) -> String {
    bin.join(name).display().to_string()
}

impl Stack {
    /// Builds the stack in `dir` (fresh) on `backing` and starts PostgreSQL on it; `pgbench -i -s scale`
    /// fills it.
    pub fn start(dir: &Path, backing: &Backing, scale: u32) -> Result<Stack, BenchError> {
        let mut stack = Stack {
            dir: dir.to_path_buf(),
            nbdfuse: None,
            fuse_mount: None,
            loop_device: None,
            fs_mount: None,
            pg_started: false,
            port: free_port()?,
        };
        let device = match backing {
            Backing::File(path) => path.clone(),
            Backing::Nbd(uri) => stack.start_nbdfuse(uri)?,
        };
        let losetup = run_to_end(Command::new("losetup").args(["-f", "--show"]).arg(&device), "losetup")?;
        let loop_device = losetup.trim().to_string();
        stack.loop_device = Some(loop_device.clone());
        // Initialise inode tables and journal now: lazy init would write them in the background while
        // the benchmark runs.
        run_to_end(
            Command::new("mkfs.ext4").args([
                "-q",
                "-F",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                &loop_device,
            ]),
            "mkfs.ext4",
        )?;
        let fs = dir.join("fs");
        std::fs::create_dir_all(&fs).map_err(|e| tool_error("mkdir", format!("{}: {e}", fs.display())))?;
        run_to_end(Command::new("mount").arg(&loop_device).arg(&fs), "mount")?;
        stack.fs_mount = Some(fs.clone());
        run_to_end(Command::new("chown").arg(format!("{PG_USER}:")).arg(&fs), "chown")?;
        stack.start_postgres(&fs)?;
        let bin = pg_bin()?;
        stack.run_pgbench(&bin, &["-i", "-q", "-s", &scale.to_string()], "pgbench -i")?;
        // Start every round from a checkpointed database, so no round pays for the load's dirty pages.
        run_to_end(
            as_postgres(&program(&bin, "psql")).args(stack.connection()).args([
                "-q",
                "-c",
                "CHECKPOINT",
                "postgres",
            ]),
            "psql CHECKPOINT",
        )?;
        Ok(stack)
    }

    fn start_nbdfuse(&mut self, uri: &str) -> Result<PathBuf, BenchError> {
        let mount = self.dir.join("nbd");
        std::fs::create_dir_all(&mount)
            .map_err(|e| tool_error("mkdir", format!("{}: {e}", mount.display())))?;
        let pidfile = self.dir.join("nbdfuse.pid");
        let _ = std::fs::remove_file(&pidfile);
        let child = Command::new("nbdfuse")
            .arg("-P")
            .arg(&pidfile)
            .arg(mount.join("disk"))
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| tool_error("nbdfuse", format!("cannot start (Debian package libnbd-bin): {e}")))?;
        self.nbdfuse = Some(Proc(child));
        self.fuse_mount = Some(mount.clone());
        // nbdfuse writes its pid file once the mount serves.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pidfile.exists() {
            interrupt::interrupted()?;
            if let Some(Proc(child)) = self.nbdfuse.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(tool_error("nbdfuse", format!("exited before it served: {status}")));
                }
            }
            if Instant::now() > deadline {
                return Err(tool_error("nbdfuse", format!("{} not served after 20 s", mount.display())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(mount.join("disk"))
    }

    fn connection(&self) -> Vec<String> {
        let socket_dir = self.fs_mount.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        vec!["-h".into(), socket_dir, "-p".into(), self.port.to_string()]
    }

    fn start_postgres(&mut self, fs: &Path) -> Result<(), BenchError> {
        let bin = pg_bin()?;
        let data = fs.join("pg");
        // Setup, not measured: initdb's own fsyncs are skipped; the server then runs with full durability.
        run_to_end(
            as_postgres(&program(&bin, "initdb")).args(["-N", "-A", "trust", "-D"]).arg(&data),
            "initdb",
        )?;
        let options = format!("-p {} -k {} -c listen_addresses=''", self.port, fs.display());
        self.pg_started = true;
        run_to_end(
            as_postgres(&program(&bin, "pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(fs.join("postgres.log"))
                .args(["-o", &options, "-w", "-t", "60", "start"]),
            "pg_ctl start",
        )?;
        Ok(())
    }

    fn run_pgbench(&self, bin: &Path, args: &[&str], what: &str) -> Result<String, BenchError> {
        run_to_end(
            as_postgres(&program(bin, "pgbench")).args(self.connection()).args(args).arg("postgres"),
            what,
        )
    }

    /// One pgbench run: `clients` clients for `duration_s` seconds. Returns (TPS, mean latency in ms).
    pub fn pgbench(&self, clients: u32, duration_s: u64) -> Result<(f64, f64), BenchError> {
        let bin = pg_bin()?;
        let jobs = clients.clamp(1, 2).to_string();
        let out = self.run_pgbench(
            &bin,
            &["-c", &clients.to_string(), "-j", &jobs, "-T", &duration_s.to_string()],
            "pgbench",
        )?;
        parse_pgbench(&out).ok_or_else(|| tool_error("pgbench", format!("no tps / latency in {out:?}")))
    }
}

/// TPS and mean latency (ms) from pgbench's report.
pub fn parse_pgbench(out: &str) -> Option<(f64, f64)> {
    let number = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    Some((number("tps = ")?, number("latency average = ")?))
}

impl Drop for Stack {
    fn drop(&mut self) {
        let quiet = |cmd: &mut Command| {
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        if let (true, Some(fs), Ok(bin)) = (self.pg_started, self.fs_mount.as_ref(), pg_bin()) {
            // Immediate: the database is thrown away, there is nothing to checkpoint for.
            quiet(as_postgres(&program(&bin, "pg_ctl")).arg("-D").arg(fs.join("pg")).args([
                "-m",
                "immediate",
                "-w",
                "stop",
            ]));
        }
        if let Some(fs) = self.fs_mount.take() {
            let unmounted = (0..20).any(|_| {
                let ok =
                    Command::new("umount").arg(&fs).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
                if !ok {
                    std::thread::sleep(Duration::from_millis(250));
                }
                ok
            });
            if !unmounted {
                eprintln!("corral-bench app: {} is busy; detaching it lazily", fs.display());
                quiet(Command::new("umount").arg("-l").arg(&fs));
            }
        }
        if let Some(device) = self.loop_device.take() {
            quiet(Command::new("losetup").args(["-d", &device]));
            // The kernel detaches a loop device asynchronously: until it has let go of its backing file,
            // the nbdfuse mount holding that file is busy and will not unmount.
            let backing = format!("/sys/block/{}/loop/backing_file", device.trim_start_matches("/dev/"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&backing).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(mount) = self.fuse_mount.take() {
            // Unmounting ends nbdfuse; the Proc's drop then reaps it (or kills it if it hangs on).
            let unmounted = (0..40).any(|_| {
                let ok = Command::new("fusermount3")
                    .arg("-u")
                    .arg(&mount)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    std::thread::sleep(Duration::from_millis(250));
                }
                ok
            });
            if !unmounted {
                eprintln!("corral-bench app: {} is busy; detaching it lazily", mount.display());
                quiet(Command::new("fusermount3").arg("-u").arg("-z").arg(&mount));
            }
            if let Some(Proc(child)) = self.nbdfuse.as_mut() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        self.nbdfuse = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_pgbench;

    #[test]
    fn reads_tps_and_latency_from_a_pgbench_report() {
        let out = "transaction type: <builtin: TPC-B (sort of)>\nscaling factor: 50\nnumber of clients: 4\n\
                   latency average = 4.406 ms\ninitial connection time = 12.345 ms\n\
                   tps = 907.842152 (without initial connection time)\n";
        assert_eq!(parse_pgbench(out), Some((907.842152, 4.406)));
        assert_eq!(parse_pgbench("latency average = 1 ms\n"), None);
    }
}
