//! The backup-restore power-cut scenario: a backup target (`vfs:///mnt/backups`) on the VM's disk holds
//! two backups of one volume, made in the guest from a replica the test wrote over the wire protocol. Each
//! round runs `corral backup restore --to-replica-dir` in the guest, either a full restore into a new
//! directory or an incremental one into a directory holding the other backup, and cuts the power at a
//! random moment of it, or just after it was acknowledged (its command exited 0; that catches a missing
//! sync at the end). After the reboot the destination must be:
//! - acknowledged: a replica that checks clean, is not marked unfinished, holds exactly the backup
//!   restored (every byte of the exported head) and whose restore record names it with nothing pending;
//! - not acknowledged: absent (a full restore renames its directory into place only when complete), a
//!   complete copy of one of the two backups, or marked unfinished (`rebuilding: true`), which checks
//!   clean too and which an engine refuses to serve; the same restore, run again, then finishes it.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corral_testkit::data::{block_data, sha256};
use corral_testkit::vm::{Filesystem, Vm};
use corral_wire::{Bytes, ReplicaClient, SnapshotRequest};
use rand::Rng;

use super::{seeded, CorralVm, REPLICA_PORTS};

const MIB: u64 = 1 << 20;
/// The volume: eight backup blocks of 2 MiB.
const SIZE: u64 = 16 * MIB;
const CHUNK: u64 = 2 * MIB;
const TARGET: &str = "vfs:///mnt/backups";
const VOLUME: &str = "vol-restore";
const BACKUPS: [&str; 2] = ["bk-one", "bk-two"];
/// The directory incremental restores go into; it always holds a complete restore between rounds.
const INCREMENTAL_DIR: &str = "/mnt/inc";
/// `corral backup` without Longhorn's 2 s wait between writing a lock file and reading the others.
const BACKUP_CLI: &str = "corral backup --lock-check-wait-ms 0";

/// What a campaign did.
#[derive(Debug, Default)]
pub struct Summary {
    pub cuts: usize,
    /// Restores acknowledged before their cut (then found complete).
    pub acknowledged: usize,
    /// After a cut of an unacknowledged restore: the destination was absent / complete / marked
    /// unfinished (and refused by an engine).
    pub absent_after: usize,
    pub complete_after: usize,
    pub unfinished_after: usize,
    /// Incremental restores among the cut ones.
    pub incremental: usize,
}

/// The volume's content as of backup `which` (0 or 1). Backup 1 changed chunks 0, 2 and 4, zeroed
/// chunk 5 and wrote chunk 6, which backup 0 never wrote: an incremental restore writes, zeroes and
/// skips blocks.
fn content(which: usize) -> Vec<u8> {
    (0..SIZE / CHUNK)
        .flat_map(|c| match (which, c) {
            (0, 6) | (1, 5) => vec![0u8; CHUNK as usize],
            (1, 0 | 2 | 4 | 6) => block_data(c, 2, CHUNK as usize),
            _ => block_data(c, 1, CHUNK as usize),
        })
        .collect()
}

/// What a destination directory holds after a reboot.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// No replica there.
    Absent,
    /// A replica marked unfinished (`rebuilding`).
    Unfinished,
    /// A complete copy of backup `backup`; `settled`: its record names it with nothing pending.
    Backup { backup: usize, settled: bool },
}

/// Runs `rounds` cuts (each followed by a reboot and check) on a fresh disk image under `dir`.
pub fn run(corral: &Path, dir: &Path, filesystem: Filesystem, rounds: usize, seed: Option<u64>) -> Summary {
    let (seed, mut rng) = seeded(seed);
    eprintln!("power cut (backup restore, {filesystem:?}) seed {seed}");
    let mut vm = CorralVm::new(corral, &dir.join(format!("restore-{}.img", filesystem.name())), filesystem);
    let hashes = [sha256(&content(0)), sha256(&content(1))];
    let setup = format!("setup (seed {seed}, restore, {filesystem:?})");
    vm.vm.boot();
    make_backups(&mut vm, &setup);
    // The incremental destination starts with a complete restore of backup 0, uncut; its time is the
    // scale for the cut delays.
    let started = Instant::now();
    restore_ok(&vm.vm, 0, INCREMENTAL_DIR, &setup);
    let restore_time = started.elapsed();
    eprintln!("{setup}: an uncut full restore of {SIZE} bytes took {restore_time:?}");
    let mut incremental_holds = 0;
    let full_first = rng.random_bool(0.5);
    let mut summary = Summary::default();
    for round in 0..rounds {
        let context = format!("round {round} (seed {seed}, restore, {filesystem:?})");
        let round_started = Instant::now();
        let incremental = (round % 2 == 0) != full_first;
        let (want, dest) = if incremental {
            (1 - incremental_holds, INCREMENTAL_DIR.to_string())
        } else {
            (rng.random_range(0..2), format!("/mnt/full{round}"))
        };
        let after_ack = rng.random_bool(0.5);
        // Most cuts land inside the restore; the rest just after its acknowledgement.
        let delay = if after_ack {
            Duration::from_millis(rng.random_range(0..300))
        } else {
            restore_time.mul_f64(rng.random_range(0.0..1.2))
        };
        let acknowledged = restore_and_cut(&vm.vm, want, &dest, after_ack, delay, &context);
        vm.vm.cut_power();
        summary.cuts += 1;
        summary.incremental += usize::from(incremental);
        vm.boot_and_check(&context);
        let found = examine(&vm.vm, &dest, &hashes, &context);
        eprintln!(
            "{context}: {} restore of {} into {dest} cut {} ({delay:?}), acknowledged: {acknowledged}; found {found:?}",
            if incremental { "incremental" } else { "full" },
            BACKUPS[want],
            if after_ack { "after its acknowledgement" } else { "during it" },
        );
        let previous = incremental.then_some(incremental_holds);
        match found {
            Found::Backup { backup, settled: true } if backup == want => {
                summary.complete_after += usize::from(!acknowledged);
            }
            _ if acknowledged => panic!(
                "{context}: the restore of {} into {dest} was acknowledged but after the power cut the \
                 directory holds {found:?}",
                BACKUPS[want]
            ),
            Found::Absent if !incremental => summary.absent_after += 1,
            Found::Backup { backup, .. } if backup == want || Some(backup) == previous => {
                summary.complete_after += 1
            }
            Found::Unfinished if incremental => {
                assert_engine_refuses(&vm, corral, &dest, &context);
                summary.unfinished_after += 1;
            }
            found => panic!(
                "{context}: a cut-off {} restore of {} left {dest} holding {found:?}",
                if incremental { "incremental" } else { "full" },
                BACKUPS[want]
            ),
        }
        summary.acknowledged += usize::from(acknowledged);
        if found != (Found::Backup { backup: want, settled: true }) {
            // The same restore again finishes (or redoes) it.
            restore_ok(&vm.vm, want, &dest, &context);
            let again = examine(&vm.vm, &dest, &hashes, &context);
            assert_eq!(
                again,
                Found::Backup { backup: want, settled: true },
                "{context}: the restore run again after the cut did not leave {} in {dest}",
                BACKUPS[want]
            );
        }
        if !incremental {
            let leftover = vm.vm.sh(&format!("test -e {dest}.corral-restore-tmp"));
            assert!(
                leftover.code != 0,
                "{context}: {dest}.corral-restore-tmp is left over after the restore"
            );
        } else {
            incremental_holds = want;
        }
        eprintln!("{context}: round took {:?}", round_started.elapsed());
    }
    vm.vm.cut_power();
    summary
}

/// Writes the volume's two versions into a replica in the guest (`/mnt/r0`, checked after every cut),
/// snapshots each, stops the replica and backs both snapshots up into the target on the VM's disk.
fn make_backups(vm: &mut CorralVm, context: &str) {
    let port = REPLICA_PORTS[0];
    let line = vm.vm.spawn(
        "source",
        &format!("echo $$ >/tmp/source.pid; exec corral replica serve --dir /mnt/r0 --size {SIZE} --listen 0.0.0.0:{port}"),
        Duration::from_secs(90),
    );
    assert!(line.starts_with("listening on"), "{context}: the source replica did not start: {line}");
    vm.replicas = vm.replicas.max(1);
    let address = format!("tcp://{}", vm.vm.host_address(port));
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let client = ReplicaClient::connect(&address, 2).await.unwrap_or_else(|e| panic!("{context}: {e}"));
        client.hello("power-cut-restore", false).await.unwrap_or_else(|e| panic!("{context}: {e}"));
        let mut old = vec![0u8; SIZE as usize];
        for (which, snapshot) in ["s0", "s1"].into_iter().enumerate() {
            let new = content(which);
            for offset in (0..SIZE).step_by(MIB as usize) {
                let range = offset as usize..(offset + MIB) as usize;
                if new[range.clone()] != old[range.clone()] {
                    let data = Bytes::from(new[range].to_vec());
                    client.write(offset, data).await.unwrap_or_else(|e| panic!("{context}: write: {e}"));
                }
            }
            let request =
                SnapshotRequest { name: snapshot.to_string(), user_created: true, ..Default::default() };
            client.snapshot(request).await.unwrap_or_else(|e| panic!("{context}: snapshot {snapshot}: {e}"));
            old = new;
        }
    });
    vm.vm.sh_ok("pid=$(cat /tmp/source.pid); kill $pid; while kill -0 $pid 2>/dev/null; do sleep 0.1; done");
    vm.vm.sh_ok("mkdir -p /mnt/backups");
    for (snapshot, backup) in ["s0", "s1"].into_iter().zip(BACKUPS) {
        vm.vm.sh_ok(&format!(
            "{BACKUP_CLI} create --replica-dir /mnt/r0 --snapshot {snapshot} --target {TARGET} \
             --volume {VOLUME} --name {backup}"
        ));
    }
    // The backups are the test's input, not under test: make them durable before any cut.
    vm.vm.sh_ok("sync");
}

fn restore_command(backup: usize, dest: &str) -> String {
    format!(
        "{BACKUP_CLI} restore '{TARGET}?backup={}&volume={VOLUME}' --to-replica-dir {dest} --concurrency 2",
        BACKUPS[backup]
    )
}

/// Restores uncut and requires success.
fn restore_ok(vm: &Vm, backup: usize, dest: &str, context: &str) {
    let out = vm.sh_within(&restore_command(backup, dest), Duration::from_secs(300));
    assert!(
        out.code == 0,
        "{context}: the restore of {} into {dest} failed:\n{}",
        BACKUPS[backup],
        out.output
    );
}

/// Starts the restore and SIGKILLs qemu `delay` after its start, or (`after_ack`) `delay` after it was
/// acknowledged. Returns whether it was acknowledged (its command exited 0) before the cut.
fn restore_and_cut(
    vm: &Vm,
    backup: usize,
    dest: &str,
    after_ack: bool,
    delay: Duration,
    context: &str,
) -> bool {
    let pid = vm.qemu_pid().unwrap_or_else(|| panic!("{context}: the VM is not running"));
    let command = restore_command(backup, dest);
    let result = std::thread::scope(|scope| {
        let (done, finished) = mpsc::channel();
        let restore = scope.spawn(move || {
            let result = vm.try_sh(&command, Duration::from_secs(300));
            let _ = done.send(());
            result
        });
        if after_ack {
            let _ = finished.recv_timeout(Duration::from_secs(300));
            std::thread::sleep(delay);
        } else {
            // A restore that ends before the delay is cut right after its end.
            let _ = finished.recv_timeout(delay);
        }
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        restore.join().unwrap_or_else(|_| panic!("{context}: the restore thread panicked"))
    });
    match result {
        // A complete answer came through qemu's network before qemu died: the restore had finished.
        Ok(out) if out.code == 0 => true,
        Ok(out) => {
            panic!("{context}: the restore of {} into {dest} failed:\n{}", BACKUPS[backup], out.output)
        }
        Err(_) => false,
    }
}

/// What `dest` holds: its replica must check clean; a complete copy must equal one backup byte for byte.
fn examine(vm: &Vm, dest: &str, hashes: &[String; 2], context: &str) -> Found {
    if vm.sh(&format!("test -e {dest}/volume.meta")).code != 0 {
        return Found::Absent;
    }
    let check = vm.sh(&format!("corral replica check --dir {dest}"));
    assert!(check.code == 0, "{context}: {dest} does not check clean after the cut:\n{}", check.output);
    let info = vm.sh_ok(&format!("corral replica info --dir {dest} --json 2>/dev/null"));
    let info: serde_json::Value =
        serde_json::from_str(&info).unwrap_or_else(|e| panic!("{context}: bad replica info {info:?}: {e}"));
    match info["rebuilding"].as_bool() {
        Some(true) => return Found::Unfinished,
        Some(false) => {}
        None => panic!("{context}: replica info of {dest} has no rebuilding flag: {info}"),
    }
    let exported = vm.sh_ok(&format!(
        "corral replica export --dir {dest} --output /tmp/export.img && sha256sum /tmp/export.img; rm -f /tmp/export.img"
    ));
    let hash = exported.split_whitespace().next().unwrap_or_default();
    let backup = hashes.iter().position(|h| h == hash).unwrap_or_else(|| {
        panic!("{context}: {dest} is not marked unfinished but holds neither backup (sha256 {hash})")
    });
    let record = vm.sh_ok(&format!("cat {dest}/corral-restore.json"));
    let record: serde_json::Value = serde_json::from_str(&record)
        .unwrap_or_else(|e| panic!("{context}: bad restore record {record:?}: {e}"));
    let settled = record["backup"].as_str() == Some(BACKUPS[backup]) && record["pending"].is_null();
    Found::Backup { backup, settled }
}

/// Serves the unfinished `dest` in the guest and starts an engine over it alone: the engine must refuse
/// to start (no replica is up to date), never serve the half-restored volume.
fn assert_engine_refuses(vm: &CorralVm, corral: &Path, dest: &str, context: &str) {
    let port = REPLICA_PORTS[1];
    let line = vm.vm.spawn(
        "unfinished",
        &format!(
            "echo $$ >/tmp/unfinished.pid; exec corral replica serve --dir {dest} --listen 0.0.0.0:{port}"
        ),
        Duration::from_secs(90),
    );
    assert!(line.starts_with("listening on"), "{context}: {dest} could not be served: {line}");
    let replica = format!("tcp://{}", vm.vm.host_address(port));
    let mut engine = std::process::Command::new(corral)
        .args(["engine", "serve", "--volume", VOLUME, "--size", &SIZE.to_string()])
        .args(["--nbd", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--replica-timeout", "60s"])
        .args(["--replica", &replica, "--no-auto-rebuild"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{context}: cannot start corral engine: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = engine.kill();
            let out = engine.wait_with_output().ok();
            panic!("{context}: an engine over the unfinished restore in {dest} kept running: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = engine.wait_with_output().unwrap_or_else(|e| panic!("{context}: engine output: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        !out.status.success() && text.contains("no replica is reachable and up to date"),
        "{context}: an engine over the unfinished restore in {dest} did not refuse it ({}): {text}",
        out.status
    );
    vm.vm.sh_ok(
        "pid=$(cat /tmp/unfinished.pid); kill $pid; while kill -0 $pid 2>/dev/null; do sleep 0.1; done",
    );
}
