//! The CSI driver's volume lifecycle against a real quickstart, through a real gRPC client on the
//! plugin's unix socket, with real mounts: ext4 and xfs filesystems keep their files across
//! unstage/stage and a SIGKILL of the plugin, read-only publishing is honoured, every call repeats
//! idempotently, and block access publishes a device that keeps what was written to it (and a
//! dead node-side NBD client shows in the volume condition).
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod csi_support;

use std::io::{Read, Seek, SeekFrom, Write};

use csi_support::*;

fn stats(csi: &Csi, id: &str, path: &str) -> proto::NodeGetVolumeStatsResponse {
    let mut n = csi.node.clone();
    let req = proto::NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        ..Default::default()
    };
    csi.call(n.node_get_volume_stats(req)).unwrap().into_inner()
}

fn nbdfuse_of(csi: &Csi, id: &str) -> usize {
    let needle = csi.path(&format!("state/volumes/{id}.fuse")).display().to_string();
    processes_mentioning(&needle).len()
}

#[test]
fn ext4_and_xfs_keep_their_files_across_unstage_stage_and_a_plugin_restart() {
    let cluster = start_cluster();
    let mut csi = Csi::start(&cluster);
    // mkfs.xfs wants at least 300 MB; volumes are thin, so the size costs nothing.
    for (fs, name, size) in [
        ("ext4", "PVC for ext4 / a name Corral cannot take as it is", 64 * MIB),
        ("xfs", "pvc-xfs", 320 * MIB),
    ] {
        let cap = mount_cap(fs);
        let (id, staging) = create_publish_stage(&csi, name, size, cap.clone());
        assert!(corral_api::check_name("volume", &id).is_ok(), "{id}");
        let v = cluster.volume(&id);
        assert_eq!(v["labels"]["csi.corral.io/name"], name, "the CSI name is kept on the volume");
        assert!(is_mounted(&staging), "{fs}: the staging path is a mount");

        let target = csi.path(&format!("pod-{id}")).display().to_string();
        publish(&csi, &id, &staging, &target, cap.clone(), false);
        let mut f = std::fs::File::create(format!("{target}/hello.txt")).unwrap();
        f.write_all(format!("written on {fs}").as_bytes()).unwrap();
        f.sync_all().unwrap();
        drop(f);
        // Repeating stage and publish changes nothing and succeeds.
        stage(&csi, &id, &staging, cap.clone(), Default::default());
        publish(&csi, &id, &staging, &target, cap.clone(), false);

        let s = stats(&csi, &id, &target);
        let bytes = s.usage.iter().find(|u| u.unit == proto::volume_usage::Unit::Bytes as i32).unwrap();
        assert!(bytes.total > size / 2 && bytes.total <= size, "{fs}: {bytes:?}");
        assert!(bytes.used > 0 && bytes.available > 0, "{fs}: {bytes:?}");
        let inodes = s.usage.iter().find(|u| u.unit == proto::volume_usage::Unit::Inodes as i32).unwrap();
        assert!(inodes.total > 0 && inodes.used > 0, "{fs}: {inodes:?}");
        assert!(!s.volume_condition.unwrap().abnormal);

        // A restarted plugin finds what it staged: repeated calls still succeed.
        csi.kill_and_restart();
        stage(&csi, &id, &staging, cap.clone(), Default::default());
        publish(&csi, &id, &staging, &target, cap.clone(), false);
        assert_eq!(
            std::fs::read_to_string(format!("{target}/hello.txt")).unwrap(),
            format!("written on {fs}")
        );

        unpublish(&csi, &id, &target);
        unpublish(&csi, &id, &target);
        assert!(!is_mounted(&target));
        unstage(&csi, &id, &staging);
        unstage(&csi, &id, &staging);
        assert!(!is_mounted(&staging));
        wait_until("nbdfuse to exit", std::time::Duration::from_secs(10), || nbdfuse_of(&csi, &id) == 0);

        // Staged again (no format: the filesystem is there), published read-only.
        stage(&csi, &id, &staging, cap.clone(), Default::default());
        let ro_target = csi.path(&format!("pod-ro-{id}")).display().to_string();
        publish(&csi, &id, &staging, &ro_target, cap.clone(), true);
        assert_eq!(
            std::fs::read_to_string(format!("{ro_target}/hello.txt")).unwrap(),
            format!("written on {fs}")
        );
        let err = std::fs::write(format!("{ro_target}/new.txt"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{fs}: a read-only publish refuses writes");
        unpublish(&csi, &id, &ro_target);
        unstage(&csi, &id, &staging);
        controller_unpublish(&csi, &id);
        controller_unpublish(&csi, &id);
        delete_volume(&csi, &id);
        delete_volume(&csi, &id);
        assert_eq!(cluster.get(&format!("/v1/volumes/{id}")).0, 404);
    }
}

#[test]
fn block_access_publishes_a_device_that_keeps_its_data() {
    let cluster = start_cluster();
    let csi = Csi::start(&cluster);
    let cap = block_cap();
    let (id, staging) = create_publish_stage(&csi, "pvc-block", 32 * MIB, cap.clone());
    let target = csi.path("pod-device").display().to_string();
    publish(&csi, &id, &staging, &target, cap.clone(), false);
    let pattern: Vec<u8> = (0..MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    {
        let mut dev = std::fs::OpenOptions::new().read(true).write(true).open(&target).unwrap();
        assert_eq!(dev.seek(SeekFrom::End(0)).unwrap(), 32 * MIB as u64, "the device has the volume's size");
        dev.seek(SeekFrom::Start(4 * MIB as u64)).unwrap();
        dev.write_all(&pattern).unwrap();
        dev.sync_all().unwrap();
    }
    let s = stats(&csi, &id, &target);
    assert_eq!(s.usage[0].total, 32 * MIB);
    publish(&csi, &id, &staging, &target, cap.clone(), false);
    unpublish(&csi, &id, &target);
    unstage(&csi, &id, &staging);

    stage(&csi, &id, &staging, cap.clone(), Default::default());
    publish(&csi, &id, &staging, &target, cap.clone(), false);
    let mut back = vec![0u8; pattern.len()];
    let mut dev = std::fs::File::open(&target).unwrap();
    dev.seek(SeekFrom::Start(4 * MIB as u64)).unwrap();
    dev.read_exact(&mut back).unwrap();
    assert!(back == pattern, "the block device lost what was written to it");
    drop(dev);

    // The node's NBD client dies: the volume condition says so, and unstage still cleans up.
    let fuse = processes_mentioning(&csi.path(&format!("state/volumes/{id}.fuse")).display().to_string());
    assert_eq!(fuse.len(), 1, "{fuse:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(fuse[0].0 as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    wait_until("nbdfuse to die", std::time::Duration::from_secs(10), || nbdfuse_of(&csi, &id) == 0);
    let condition = stats(&csi, &id, &target).volume_condition.unwrap();
    assert!(condition.abnormal && condition.message.contains("nbdfuse"), "{condition:?}");
    unpublish(&csi, &id, &target);
    unstage(&csi, &id, &staging);
    assert!(!is_mounted(&csi.path(&format!("state/volumes/{id}.fuse")).display().to_string()));
    controller_unpublish(&csi, &id);
    delete_volume(&csi, &id);
}
