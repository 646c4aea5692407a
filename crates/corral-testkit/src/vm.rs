//! A virtual machine whose power a test can cut: Debian's kernel booted by `qemu-system-x86_64` (TCG; nested
//! KVM hangs on these machines) from an initramfs holding busybox, the kernel modules for virtio and
//! ext4/xfs, the `corral` binary and the shared libraries it links. One virtio disk (a raw image file made
//! and formatted on the host the first time) is mounted at `/mnt` in the guest and holds replica
//! directories; user-mode networking forwards loopback ports of the host to the guest's corral processes.
//!
//! How the guest is driven: its init script mounts the disk and runs `nc -ll -p 7000 -e /bin/sh` (busybox):
//! every connection to the forwarded agent port is a shell that runs what the host sends and answers with
//! its output (see [`Vm::sh`]); long-running processes are started detached with their output in
//! `/var/log/NAME.log` ([`Vm::spawn`]). The agent is the only thing in the guest that is not a real
//! component under test.
//!
//! What a power cut loses, and why the disk is attached with `cache=none`: [`Vm::cut_power`] SIGKILLs
//! qemu, so everything in the guest's memory is gone: its page cache (every `write()` no `fsync` /
//! `fdatasync` pushed to the disk), dirty inodes and directory entries, the journal not yet committed. That
//! is what a missing sync in corral loses on a real machine. Writes qemu completed to the image file stay:
//! the host does not lose power, so no qemu cache mode can throw away writes qemu already handed to the
//! host kernel. `cache=none` (O_DIRECT on the host, a volatile write-back cache as the guest sees it) makes
//! the guest's filesystems behave as on a real disk with a write cache: they send FLUSH and FUA where
//! Linux does, and a flushed write is on the host's disk, never only in memory qemu or the host holds for
//! it. `writethrough` and `directsync` would keep as much but hide the write cache from the guest (no
//! FLUSH ever goes down, a path real disks take); `writeback` and `unsafe` leave completed writes in the
//! host's page cache, which would also survive qemu's death but would not survive a real host crash.
//! What this does not model: a disk that loses writes it completed but was never asked to flush. The
//! guest's kernel always sends that FLUSH on `fsync`, so corral's own syncs (the thing under test) are
//! covered; a bug below the guest's filesystem would not be.
//!
//! The initramfs is cached under the cargo target directory (`corral-vm/`), keyed by the identity (path,
//! size, modification time) of the corral binary, the kernel and busybox and by the init script's text, so
//! a test run builds it once.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::nbd::{require_tool_hint, run_ok};
use crate::ports::free_port;

/// The kernel the VM boots (and whose modules the initramfs carries): `CORRAL_VM_KERNEL` (a release such
/// as `6.1.0-57-amd64`), else the newest `/boot/vmlinuz-RELEASE` that has `/lib/modules/RELEASE`.
pub fn kernel_release() -> String {
    static FOUND: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Ok(release) = std::env::var("CORRAL_VM_KERNEL") {
                return release;
            }
            let mut releases: Vec<String> = std::fs::read_dir("/boot")
                .map(|dir| {
                    dir.filter_map(|entry| entry.ok())
                        .filter_map(|entry| {
                            entry.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string)
                        })
                        .filter(|release| Path::new(&format!("/lib/modules/{release}/modules.dep")).is_file())
                        .collect()
                })
                .unwrap_or_default();
            // Version order, not text order: 6.1.0-57 after 6.1.0-9.
            releases.sort_by_key(|release| {
                release
                    .split(|c: char| !c.is_ascii_digit())
                    .map(|n| n.parse::<u64>().unwrap_or(0))
                    .collect::<Vec<_>>()
            });
            releases.pop().unwrap_or_else(|| panic!("no kernel in /boot with its modules ({VM_HINT})"))
        })
        .clone()
}
/// The guest's agent port (forwarded to a free host port).
const AGENT_PORT: u16 = 7000;
/// How long a boot may take on a loaded two-core machine before the test fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const VM_HINT: &str = "Debian packages qemu-system-x86, linux-image-amd64, busybox-static, cpio, e2fsprogs, \
                       xfsprogs (scripts/install-test-deps)";

/// Modules loaded in the guest (with what `modules.dep` says they need, dependencies first).
/// crc32c_generic comes first: the emulated CPU has no SSE 4.2, and ext4 and xfs ask for "crc32c".
const MODULES: &[&str] = &[
    "kernel/crypto/crc32c_generic.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/fs/ext4/ext4.ko",
    "kernel/fs/xfs/xfs.ko",
];

/// The guest's init: load modules, bring up the network slirp expects, mount the disk, run the agent.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /var/log /tmp
for m in $(cat /modules/order); do insmod "/modules/$m" || echo "corral-vm: insmod $m failed"; done
ip link set lo up; ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
fs=$(sed -n 's/.*corral\.fs=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
if mount -t "$fs" /dev/vda /mnt; then echo "corral-vm: disk mounted ($fs)"; else echo "corral-vm: MOUNT FAILED"; fi
echo corral-vm: agent ready
nc -ll -p 7000 -e /bin/sh
echo "corral-vm: agent exited"
poweroff -f
"#;

/// The filesystem on the VM's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    Ext4,
    Xfs,
}

impl Filesystem {
    /// The name `mount -t` takes.
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

/// The output of a command run in the guest.
#[derive(Debug)]
pub struct ShellOutput {
    /// Its exit code.
    pub code: i32,
    /// Its stdout and stderr, interleaved.
    pub output: String,
}

/// A VM with one disk image, booted and power-cut by the test; qemu is SIGKILLed on drop.
pub struct Vm {
    initramfs: PathBuf,
    disk: PathBuf,
    filesystem: Filesystem,
    memory_mib: u32,
    /// (guest port, host port) pairs, the agent's first.
    forwards: Vec<(u16, u16)>,
    qemu: Option<Child>,
    console: PathBuf,
    boots: u32,
}

impl Vm {
    /// Prepares a VM running `corral` with its disk image at `disk` (a raw file of 512 MiB made and
    /// formatted with `filesystem` if absent) and the host forwarding a free loopback port to each of
    /// `guest_ports`. Nothing runs until [`Vm::boot`].
    pub fn new(corral: &Path, disk: &Path, filesystem: Filesystem, guest_ports: &[u16]) -> Vm {
        for tool in ["qemu-system-x86_64", "cpio", "ldd"] {
            require_tool_hint(tool, VM_HINT);
        }
        let initramfs = initramfs(corral);
        if !disk.exists() {
            make_disk(disk, filesystem);
        }
        let forwards = std::iter::once(AGENT_PORT)
            .chain(guest_ports.iter().copied())
            .map(|g| (g, free_port()))
            .collect();
        let console = disk.with_extension("console.log");
        Vm {
            initramfs,
            disk: disk.to_path_buf(),
            filesystem,
            memory_mib: 1024,
            forwards,
            qemu: None,
            console,
            boots: 0,
        }
    }

    /// `127.0.0.1:PORT` on the host that reaches `guest_port` in the guest.
    pub fn host_address(&self, guest_port: u16) -> String {
        format!("127.0.0.1:{}", self.host_port(guest_port))
    }

    /// The host port forwarded to `guest_port`.
    pub fn host_port(&self, guest_port: u16) -> u16 {
        self.forwards
            .iter()
            .find(|(g, _)| *g == guest_port)
            .map(|(_, h)| *h)
            .unwrap_or_else(|| panic!("guest port {guest_port} is not forwarded"))
    }

    /// Starts qemu on the disk image and waits until the guest's agent answers (the disk is then mounted).
    /// The host ports may change at a boot (see the comment inside): ask [`Vm::host_address`] after it.
    pub fn boot(&mut self) {
        assert!(self.qemu.is_none(), "the VM is already running");
        self.boots += 1;
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut attempts = 0;
        self.start_qemu();
        loop {
            if let Some(status) = self.qemu.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.qemu = None;
                let console = self.console_text();
                // The host ports were free when picked, but between boots another test's VM may have
                // taken one (qemu then cannot set up the forward): pick new ones and start again.
                attempts += 1;
                if attempts < 4 && (console.contains("host forwarding") || console.trim().is_empty()) {
                    eprintln!("qemu exited with {status} at start ({}); new host ports", console.trim());
                    for (_, host) in self.forwards.iter_mut() {
                        *host = free_port();
                    }
                    self.start_qemu();
                    continue;
                }
                panic!("qemu exited with {status} while booting; console:\n{console}");
            }
            // slirp accepts a forwarded connection before the guest listens; only an answer counts.
            if let Ok(out) = self.try_sh("echo agent-$((40+2))", Duration::from_secs(5)) {
                if out.output.contains("agent-42") {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the VM did not boot within {BOOT_TIMEOUT:?}; console:\n{}",
                self.console_text()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let console = self.console_text();
        assert!(!console.contains("MOUNT FAILED"), "the guest could not mount its disk; console:\n{console}");
    }

    fn start_qemu(&mut self) {
        let kernel = format!("/boot/vmlinuz-{}", kernel_release());
        assert!(Path::new(&kernel).is_file(), "no kernel {kernel} ({VM_HINT})");
        let hostfwd: String =
            self.forwards.iter().map(|(g, h)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}")).collect();
        let console = std::fs::File::create(&self.console)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", self.console.display()));
        let console_err =
            console.try_clone().unwrap_or_else(|err| panic!("cannot duplicate the console file: {err}"));
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-nographic", "-no-reboot", "-nodefaults"])
            .args(["-serial", "stdio", "-m", &self.memory_mib.to_string()])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&self.initramfs)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 quiet corral.fs={}", self.filesystem.name()))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio,cache=none", self.disk.display()))
            .arg("-netdev")
            .arg(format!("user,id=net0{hostfwd}"))
            .args(["-device", "virtio-net-pci,netdev=net0,romfile="])
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err);
        let child = command.spawn().unwrap_or_else(|err| panic!("cannot start qemu: {err} ({VM_HINT})"));
        self.qemu = Some(child);
    }

    /// Whether qemu runs.
    pub fn is_running(&self) -> bool {
        self.qemu.is_some()
    }

    /// qemu's process id while it runs: a thread that must cut the power at a chosen moment, while the
    /// test holds the [`Vm`], SIGKILLs it (then [`Vm::cut_power`] reaps it).
    pub fn qemu_pid(&self) -> Option<u32> {
        self.qemu.as_ref().map(Child::id)
    }

    /// How many times the VM was booted.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// The power cut: SIGKILL qemu (the guest's memory, page cache included, is gone) and reap it.
    pub fn cut_power(&mut self) {
        if let Some(mut child) = self.qemu.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `script` in the guest's shell and returns its exit code and output; panics if the agent does
    /// not answer within `limit`.
    pub fn sh_within(&self, script: &str, limit: Duration) -> ShellOutput {
        self.try_sh(script, limit).unwrap_or_else(|err| {
            panic!("the guest did not run {script:?}: {err}; console:\n{}", self.console_text())
        })
    }

    /// [`Vm::sh_within`] with a 120 s limit.
    pub fn sh(&self, script: &str) -> ShellOutput {
        self.sh_within(script, Duration::from_secs(120))
    }

    /// Runs `script` in the guest and panics with its output unless it exits 0; returns the output.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.code == 0, "in the guest, {script:?} exited {}:\n{}", out.code, out.output);
        out.output
    }

    /// Runs `script` in the guest like [`Vm::sh_within`], but returns an error instead of panicking when
    /// no complete answer comes: a test that cuts the power while the command runs learns from `Ok` that
    /// the command finished (and with which code) before the cut.
    pub fn try_sh(&self, script: &str, limit: Duration) -> std::io::Result<ShellOutput> {
        let address = self.host_address(AGENT_PORT);
        let mut stream = TcpStream::connect(&address)?;
        stream.set_read_timeout(Some(limit))?;
        // The marker carries the exit code; a connection that slirp accepted while nothing listened in
        // the guest ends without it.
        let wrapped = format!("exec 2>&1\n{script}\necho \"__corral_vm_rc=$?\"\n");
        stream.write_all(wrapped.as_bytes())?;
        stream.shutdown(Shutdown::Write)?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        let Some((output, code)) = text.rsplit_once("__corral_vm_rc=") else {
            return Err(std::io::Error::other(format!("no exit code in the agent's answer {text:?}")));
        };
        let code = code.trim().parse().map_err(|_| std::io::Error::other(format!("bad answer {text:?}")))?;
        Ok(ShellOutput { code, output: output.to_string() })
    }

    /// Starts `command` (a shell command without single quotes) detached in the guest, its output in
    /// `/var/log/NAME.log`, and returns its first output line once there is one; panics if none comes
    /// within `limit`.
    pub fn spawn(&self, name: &str, command: &str, limit: Duration) -> String {
        let log = format!("/var/log/{name}.log");
        self.sh_ok(&format!("rm -f {log}; setsid sh -c '{command}' </dev/null >{log} 2>&1 &"));
        let deadline = Instant::now() + limit;
        loop {
            let out = self.sh(&format!("head -n 1 {log}"));
            let first = out.output.trim();
            if !first.is_empty() {
                return first.to_string();
            }
            assert!(Instant::now() < deadline, "{name} printed nothing in the guest within {limit:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The guest's log of a process started by [`Vm::spawn`].
    pub fn log(&self, name: &str) -> String {
        self.sh(&format!("cat /var/log/{name}.log")).output
    }

    /// What the guest printed on its console since the last boot.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.cut_power();
    }
}

/// Makes a sparse 512 MiB raw image formatted with `filesystem`.
fn make_disk(disk: &Path, filesystem: Filesystem) {
    let file =
        std::fs::File::create(disk).unwrap_or_else(|err| panic!("cannot create {}: {err}", disk.display()));
    file.set_len(512 << 20).unwrap_or_else(|err| panic!("cannot size {}: {err}", disk.display()));
    let mut mkfs = match filesystem {
        Filesystem::Ext4 => {
            require_tool_hint("mkfs.ext4", VM_HINT);
            let mut c = Command::new("mkfs.ext4");
            c.args(["-q", "-F"]);
            c
        }
        Filesystem::Xfs => {
            require_tool_hint("mkfs.xfs", VM_HINT);
            let mut c = Command::new("mkfs.xfs");
            c.args(["-q", "-f"]);
            c
        }
    };
    run_ok(mkfs.arg(disk));
}

/// The cached initramfs for `corral`, built if absent.
fn initramfs(corral: &Path) -> PathBuf {
    let corral =
        corral.canonicalize().unwrap_or_else(|err| panic!("no corral binary at {}: {err}", corral.display()));
    let busybox = Path::new("/bin/busybox");
    let kernel = PathBuf::from(format!("/boot/vmlinuz-{}", kernel_release()));
    let mut key = Sha256::new();
    for path in [corral.as_path(), busybox, kernel.as_path()] {
        key.update(identity(path).as_bytes());
    }
    key.update(INIT_SCRIPT.as_bytes());
    key.update(MODULES.join(",").as_bytes());
    let key = hex::encode(&key.finalize()[..8]);
    // The binary sits in TARGET/PROFILE/; the cache goes next to the profile directories.
    let target = corral.parent().and_then(Path::parent).unwrap_or_else(|| Path::new("/tmp"));
    let cached = target.join("corral-vm").join(format!("initramfs-{key}.cpio"));
    if cached.is_file() {
        return cached;
    }
    let parent = cached.parent().unwrap_or(target);
    std::fs::create_dir_all(parent).unwrap_or_else(|err| panic!("cannot create {}: {err}", parent.display()));
    let staging =
        tempfile::tempdir_in(parent).unwrap_or_else(|err| panic!("cannot make a staging dir: {err}"));
    let root = staging.path().join("root");
    stage_root(&root, &corral, busybox);
    // Built under a unique name and renamed into place: tests in parallel processes may race to build.
    let partial = staging.path().join("initramfs.cpio");
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
        root.display(),
        partial.display()
    )));
    std::fs::rename(&partial, &cached)
        .unwrap_or_else(|err| panic!("cannot move the initramfs to {}: {err}", cached.display()));
    prune_old_images(parent, &cached);
    cached
}

/// Deletes initramfs images of earlier builds (40 MB each) untouched for six hours: every rebuild of
/// corral makes a new one. Younger ones may still be in use by a test or campaign running now.
fn prune_old_images(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(6 * 3600));
        let image = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("initramfs-"));
        if old && image && path != keep {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Path, size and modification time: enough to notice a rebuilt binary or an upgraded kernel.
fn identity(path: &Path) -> String {
    let meta = std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{} is missing: {err} ({VM_HINT})", path.display()));
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
    format!("{}:{}:{}\n", path.display(), meta.len(), mtime.as_nanos())
}

fn stage_root(root: &Path, corral: &Path, busybox: &Path) {
    for dir in ["bin", "sbin", "proc", "sys", "dev", "mnt", "tmp", "modules", "usr/bin", "usr/sbin"] {
        mkdir(&root.join(dir));
    }
    copy(busybox, &root.join("bin/busybox"));
    // The binary without its debug sections: a smaller initramfs unpacks faster under TCG.
    let staged_corral = root.join("bin/corral");
    let stripped = Command::new("objcopy").arg("--strip-debug").arg(corral).arg(&staged_corral).status();
    if !stripped.is_ok_and(|s| s.success()) {
        copy(corral, &staged_corral);
    }
    for library in linked_libraries(corral) {
        let inside = root.join(library.strip_prefix("/").unwrap_or(&library));
        if let Some(dir) = inside.parent() {
            mkdir(dir);
        }
        copy(&library, &inside);
    }
    let modules_dir = PathBuf::from(format!("/lib/modules/{}", kernel_release()));
    let order = module_load_order(&modules_dir);
    for module in &order {
        let name = module.rsplit('/').next().unwrap_or(module);
        copy(&modules_dir.join(module), &root.join("modules").join(name));
    }
    let names: Vec<&str> = order.iter().map(|m| m.rsplit('/').next().unwrap_or(m)).collect();
    write(&root.join("modules/order"), &(names.join("\n") + "\n"));
    write(&root.join("init"), INIT_SCRIPT);
    let mut perms = std::fs::metadata(root.join("init"))
        .unwrap_or_else(|err| panic!("cannot stat the init script: {err}"))
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(root.join("init"), perms)
        .unwrap_or_else(|err| panic!("cannot make the init script executable: {err}"));
}

/// The shared libraries `ldd` reports for `binary`, the dynamic loader included.
fn linked_libraries(binary: &Path) -> Vec<PathBuf> {
    let text = run_ok(Command::new("ldd").arg(binary));
    text.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// [`MODULES`] with everything they need, each after its dependencies (from `modules.dep`).
fn module_load_order(modules_dir: &Path) -> Vec<String> {
    let dep_file = modules_dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_file)
        .unwrap_or_else(|err| panic!("cannot read {}: {err} ({VM_HINT})", dep_file.display()));
    let deps: std::collections::HashMap<&str, Vec<&str>> = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, needs)| (module, needs.split_whitespace().collect()))
        .collect();
    fn visit<'a>(
        module: &'a str,
        deps: &std::collections::HashMap<&'a str, Vec<&'a str>>,
        order: &mut Vec<String>,
    ) {
        if order.iter().any(|m| m == module) {
            return;
        }
        let needs = deps.get(module).unwrap_or_else(|| panic!("{module} is not in modules.dep ({VM_HINT})"));
        for need in needs {
            visit(need, deps, order);
        }
        order.push(module.to_string());
    }
    let mut order = Vec::new();
    for module in MODULES {
        visit(module, &deps, &mut order);
    }
    order
}

fn mkdir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|err| panic!("cannot copy {} to {}: {err}", from.display(), to.display()));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}
