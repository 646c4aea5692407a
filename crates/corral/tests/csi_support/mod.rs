//! What the CSI tests share: a real `corral quickstart` (corral-testkit's TestCluster), a real
//! `corral csi` process on a unix socket in a temp dir, and gRPC clients of its three services.
//!
//! The tests are plain `#[test]` functions: the cluster's helpers block, the gRPC clients run on
//! the harness's own tokio runtime through [`Csi::call`]. Dropping the harness SIGKILLs the plugin
//! and then undoes, by what the kernel shows, anything the node service left under its temp dir
//! (mounts, loop devices, `nbdfuse`), so a failing test leaves nothing mounted behind.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unused_imports)]
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use corral_csi::proto;
use corral_csi::proto::controller_client::ControllerClient;
use corral_csi::proto::identity_client::IdentityClient;
use corral_csi::proto::node_client::NodeClient;
use corral_csi::proto::volume_capability::access_mode::Mode;
use corral_csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use corral_csi::proto::VolumeCapability;
pub use corral_testkit::cluster::{processes_mentioning, TestCluster};
use corral_testkit::process::Process;
use tonic::transport::Channel;

pub const CORRAL: &str = env!("CARGO_BIN_EXE_corral");
pub const MIB: i64 = 1 << 20;
/// The quickstart's node name (TestCluster's first node).
pub const NODE: &str = "local";

/// A single-node cluster with its backup target under its data dir.
pub fn start_cluster() -> TestCluster {
    for tool in ["nbdfuse", "losetup", "mkfs.ext4", "mkfs.xfs", "fusermount3", "blkid"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
        assert!(
            found.status.success(),
            "{tool} is required by the CSI tests (libnbd-bin, util-linux, e2fsprogs, xfsprogs, fuse3)"
        );
    }
    TestCluster::builder().binary(CORRAL).build()
}

pub struct Csi {
    pub rt: tokio::runtime::Runtime,
    plugin: Option<Process>,
    dir: tempfile::TempDir,
    manager: String,
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

impl Csi {
    /// Start `corral csi` for node [`NODE`] against the cluster's manager.
    pub fn start(cluster: &TestCluster) -> Csi {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let manager = cluster.url();
        let plugin = start_plugin(dir.path(), &manager);
        let channel = rt.block_on(corral_csi::connect(&dir.path().join("csi.sock"))).unwrap();
        Csi {
            rt,
            plugin: Some(plugin),
            dir,
            manager,
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
        }
    }

    /// SIGKILL the plugin and start it again on the same socket and state dir.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut p) = self.plugin.take() {
            p.kill9();
        }
        self.plugin = Some(start_plugin(self.dir.path(), &self.manager));
        let channel = self.rt.block_on(corral_csi::connect(&self.dir.path().join("csi.sock"))).unwrap();
        self.identity = IdentityClient::new(channel.clone());
        self.controller = ControllerClient::new(channel.clone());
        self.node = NodeClient::new(channel);
    }

    /// Run a gRPC call (or any future) on the harness's runtime.
    pub fn call<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A fresh path under the harness's dir (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A directory under the harness's dir (created), as kubelet creates staging paths.
    pub fn dir(&self, name: &str) -> String {
        let p = self.path(name);
        std::fs::create_dir_all(&p).unwrap();
        p.to_string_lossy().into_owned()
    }

    pub fn stderr(&self) -> String {
        self.plugin.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }
}

fn start_plugin(dir: &Path, manager: &str) -> Process {
    let socket = dir.join("csi.sock");
    let mut cmd = Command::new(CORRAL);
    cmd.args(["csi", "--endpoint", &format!("unix://{}", socket.display()), "--node-id", NODE])
        .args(["--manager", manager, "--state-dir"])
        .arg(dir.join("state"))
        .env("CORRAL_LOG", "info");
    let (p, line) = Process::start("corral csi", &mut cmd);
    assert!(line.contains("serving unix://"), "unexpected first line {line:?}");
    p
}

impl Drop for Csi {
    fn drop(&mut self) {
        if let Some(mut p) = self.plugin.take() {
            p.kill9();
        }
        cleanup_under(self.dir.path());
    }
}

/// Unmount everything under `root` (deepest first), detach loop devices over files under it, and
/// unmount its FUSE mounts (which ends their nbdfuse).
pub fn cleanup_under(root: &Path) {
    let root = root.to_string_lossy().into_owned();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&root) && !m.ends_with(".fuse"))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    let loops = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&loops.stdout).lines() {
        let mut it = line.split_whitespace();
        if let (Some(dev), Some(file)) = (it.next(), it.next()) {
            if file.starts_with(&root) {
                let _ = Command::new("losetup").args(["-d", dev]).status();
            }
        }
    }
    let fuse: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&root))
        .collect();
    for m in fuse {
        let _ = Command::new("fusermount3").args(["-u", "-z", &m]).status();
    }
    for (pid, _) in processes_mentioning(&root) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

pub fn mount_cap(fs: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() })),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

pub fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

pub fn create_request(name: &str, bytes: i64, cap: VolumeCapability) -> proto::CreateVolumeRequest {
    proto::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(proto::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capabilities: vec![cap],
        parameters: [("numberOfReplicas".to_string(), "1".to_string())].into(),
        ..Default::default()
    }
}

/// Assert a call failed with `code`, showing the answer otherwise.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: tonic::Code,
    what: &str,
) {
    match result {
        Ok(r) => panic!("{what}: expected {code:?}, got success {:?}", r.into_inner()),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {}", s.message());
            assert!(!s.message().is_empty(), "{what}: the error has no message");
        }
    }
}

/// Create a volume, publish it to [`NODE`], stage it at a new staging dir; returns (volume ID,
/// staging path).
pub fn create_publish_stage(csi: &Csi, name: &str, bytes: i64, cap: VolumeCapability) -> (String, String) {
    let mut c = csi.controller.clone();
    let v = csi
        .call(c.create_volume(create_request(name, bytes, cap.clone())))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let publish = proto::ControllerPublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: NODE.into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    let ctx = csi.call(c.controller_publish_volume(publish)).unwrap().into_inner().publish_context;
    let staging = csi.dir(&format!("stage-{}", v.volume_id));
    stage(csi, &v.volume_id, &staging, cap, ctx);
    (v.volume_id, staging)
}

pub fn stage(
    csi: &Csi,
    id: &str,
    staging: &str,
    cap: VolumeCapability,
    publish_context: std::collections::HashMap<String, String>,
) {
    let mut n = csi.node.clone();
    let req = proto::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
        volume_capability: Some(cap),
        publish_context,
        ..Default::default()
    };
    csi.call(n.node_stage_volume(req)).unwrap_or_else(|e| panic!("stage {id}: {e:?}\n{}", csi.stderr()));
}

pub fn unstage(csi: &Csi, id: &str, staging: &str) {
    let mut n = csi.node.clone();
    let req = proto::NodeUnstageVolumeRequest { volume_id: id.into(), staging_target_path: staging.into() };
    csi.call(n.node_unstage_volume(req)).unwrap();
}

pub fn publish(csi: &Csi, id: &str, staging: &str, target: &str, cap: VolumeCapability, readonly: bool) {
    let mut n = csi.node.clone();
    let req = proto::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
        target_path: target.into(),
        volume_capability: Some(cap),
        readonly,
        ..Default::default()
    };
    csi.call(n.node_publish_volume(req)).unwrap_or_else(|e| panic!("publish {id}: {e:?}"));
}

pub fn unpublish(csi: &Csi, id: &str, target: &str) {
    let mut n = csi.node.clone();
    let req = proto::NodeUnpublishVolumeRequest { volume_id: id.into(), target_path: target.into() };
    csi.call(n.node_unpublish_volume(req)).unwrap();
}

pub fn controller_unpublish(csi: &Csi, id: &str) {
    let mut c = csi.controller.clone();
    let req = proto::ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: NODE.into(),
        ..Default::default()
    };
    csi.call(c.controller_unpublish_volume(req)).unwrap();
}

pub fn delete_volume(csi: &Csi, id: &str) {
    let mut c = csi.controller.clone();
    csi.call(c.delete_volume(proto::DeleteVolumeRequest { volume_id: id.into(), ..Default::default() }))
        .unwrap();
}

pub fn is_mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

/// Poll `f` until it returns true; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
