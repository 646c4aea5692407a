//! Snapshots, restores, clones, expansion and volume health through the CSI driver, against a
//! real quickstart with real mounts: a `snap` snapshot and a `bak` backup each become a new volume
//! with the files of their moment; a clone has its source's files; an expanded volume's
//! filesystem grows at its next stage; a replica SIGKILLed shows as an abnormal volume condition
//! until it is rebuilt.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod csi_support;

use std::time::{Duration, Instant};

use csi_support::*;
use proto::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};

fn write_file(path: &str, text: &str) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
}

/// Stage and publish `id` (already published to the node) at fresh paths; returns (staging, target).
fn mount(csi: &Csi, id: &str, cap: &proto::VolumeCapability) -> (String, String) {
    let staging = csi.dir(&format!("stage-{id}"));
    stage(csi, id, &staging, cap.clone(), Default::default());
    let target = csi.path(&format!("pod-{id}")).display().to_string();
    publish(csi, id, &staging, &target, cap.clone(), false);
    (staging, target)
}

fn unmount(csi: &Csi, id: &str, staging: &str, target: &str) {
    unpublish(csi, id, target);
    unstage(csi, id, staging);
}

fn controller_publish(csi: &Csi, id: &str, cap: &proto::VolumeCapability) {
    let mut c = csi.controller.clone();
    let req = proto::ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: NODE.into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    csi.call(c.controller_publish_volume(req)).unwrap();
}

/// A new volume from `source`: of the source's size when `size` is None, else grown to `size`.
fn create_from(
    csi: &Csi,
    name: &str,
    source: SourceType,
    cap: &proto::VolumeCapability,
    size: Option<i64>,
) -> String {
    let mut c = csi.controller.clone();
    let mut req = create_request(name, size.unwrap_or(0), cap.clone());
    if size.is_none() {
        req.capacity_range = None;
    }
    req.volume_content_source = Some(proto::VolumeContentSource { r#type: Some(source.clone()) });
    let v = csi
        .call(c.create_volume(req.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
        .into_inner()
        .volume
        .unwrap();
    assert!(v.content_source.is_some());
    assert_eq!(v.capacity_bytes, size.unwrap_or(64 * MIB), "{name}");
    let again = csi.call(c.create_volume(req)).unwrap().into_inner().volume.unwrap();
    assert_eq!(again.volume_id, v.volume_id, "{name}: a repeated create finds the same volume");
    v.volume_id
}

fn snapshot(csi: &Csi, source: &str, name: &str, kind: &str) -> proto::Snapshot {
    let mut c = csi.controller.clone();
    let req = proto::CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        parameters: [("type".to_string(), kind.to_string())].into(),
        ..Default::default()
    };
    // A backup takes a while: the CO asks again until the snapshot is ready, as here.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = csi.call(c.create_snapshot(req.clone())).unwrap().into_inner().snapshot.unwrap();
        if s.ready_to_use {
            return s;
        }
        assert!(Instant::now() < deadline, "snapshot {name} never became ready: {s:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn snap_and_bak_snapshots_and_clones_become_volumes_with_the_same_files() {
    let cluster = start_cluster();
    let csi = Csi::start(&cluster);
    let cap = mount_cap("ext4");
    let (src, staging) = create_publish_stage(&csi, "pvc-source", 64 * MIB, cap.clone());
    let target = csi.path("pod-source").display().to_string();
    publish(&csi, &src, &staging, &target, cap.clone(), false);
    write_file(&format!("{target}/before.txt"), "before the snapshots");

    let snap = snapshot(&csi, &src, "snapshot-snap", "snap");
    assert!(snap.snapshot_id.starts_with("snap/"), "{snap:?}");
    let bak = snapshot(&csi, &src, "snapshot-bak", "bak");
    assert!(bak.snapshot_id.starts_with("bak/"), "{bak:?}");
    assert_eq!(bak.size_bytes, 64 * MIB);
    // Deleting a `bak` deletes the backup and the snapshot taken for it.
    let bak2 = snapshot(&csi, &src, "snapshot-bak-2", "bak");
    let mut c = csi.controller.clone();
    let del = proto::DeleteSnapshotRequest { snapshot_id: bak2.snapshot_id.clone(), ..Default::default() };
    csi.call(c.delete_snapshot(del)).unwrap();
    let (_, snaps) = cluster.get(&format!("/v1/volumes/{src}/snapshots"));
    let names: Vec<&str> = snaps.as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(!names.contains(&"snapshot-bak-2"), "{snaps}");
    let bak_name = bak2.snapshot_id.rsplit('/').next().unwrap().to_string();
    assert_eq!(cluster.get(&format!("/v1/backupvolumes/{src}/backups/{bak_name}")).0, 404);
    write_file(&format!("{target}/after.txt"), "after the snapshots");
    unmount(&csi, &src, &staging, &target);
    controller_unpublish(&csi, &src);

    let listed = csi
        .call(c.list_snapshots(proto::ListSnapshotsRequest {
            source_volume_id: src.clone(),
            ..Default::default()
        }))
        .unwrap()
        .into_inner();
    let ids: Vec<String> =
        listed.entries.iter().map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone()).collect();
    assert!(ids.contains(&snap.snapshot_id) && ids.contains(&bak.snapshot_id), "{ids:?}");

    let snap_source = SourceType::Snapshot(SnapshotSource { snapshot_id: snap.snapshot_id.clone() });
    let bak_source = SourceType::Snapshot(SnapshotSource { snapshot_id: bak.snapshot_id.clone() });
    let from_snap = create_from(&csi, "pvc-from-snap", snap_source, &cap, None);
    let from_bak = create_from(&csi, "pvc-from-bak", bak_source.clone(), &cap, None);
    let bigger = create_from(&csi, "pvc-from-bak-bigger", bak_source, &cap, Some(96 * MIB));
    let clone = create_from(
        &csi,
        "pvc-clone",
        SourceType::Volume(VolumeSource { volume_id: src.clone() }),
        &cap,
        None,
    );
    for (id, after, size) in [
        (&from_snap, false, 64 * MIB),
        (&from_bak, false, 64 * MIB),
        (&bigger, false, 96 * MIB),
        (&clone, true, 64 * MIB),
    ] {
        controller_publish(&csi, id, &cap);
        let (staging, target) = mount(&csi, id, &cap);
        assert_eq!(
            std::fs::read_to_string(format!("{target}/before.txt")).unwrap(),
            "before the snapshots",
            "{id}"
        );
        assert_eq!(std::path::Path::new(&format!("{target}/after.txt")).exists(), after, "{id}");
        let mut n = csi.node.clone();
        let stats = proto::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.clone(),
            ..Default::default()
        };
        let total = csi.call(n.node_get_volume_stats(stats)).unwrap().into_inner().usage[0].total;
        assert!(
            total > size * 3 / 4 && total <= size,
            "{id}: a {total}-byte filesystem on a {size}-byte volume"
        );
        unmount(&csi, id, &staging, &target);
        controller_unpublish(&csi, id);
        delete_volume(&csi, id);
    }

    let mut missing = create_request("pvc-from-nothing", 64 * MIB, cap.clone());
    missing.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(SourceType::Snapshot(SnapshotSource { snapshot_id: format!("snap/{src}/no-such") })),
    });
    assert_code(csi.call(c.create_volume(missing)), tonic::Code::NotFound, "restore from a missing snapshot");

    // The snap goes with its volume; the backup outlives it and still restores.
    let del = |id: &str| proto::DeleteSnapshotRequest { snapshot_id: id.into(), ..Default::default() };
    csi.call(c.delete_snapshot(del(&snap.snapshot_id))).unwrap();
    delete_volume(&csi, &src);
    let listed = csi.call(c.list_snapshots(proto::ListSnapshotsRequest::default())).unwrap().into_inner();
    let ids: Vec<&str> =
        listed.entries.iter().map(|e| e.snapshot.as_ref().unwrap().snapshot_id.as_str()).collect();
    assert!(ids.contains(&bak.snapshot_id.as_str()) && !ids.contains(&snap.snapshot_id.as_str()), "{ids:?}");
    let by_id = proto::ListSnapshotsRequest { snapshot_id: bak.snapshot_id.clone(), ..Default::default() };
    let found = csi.call(c.list_snapshots(by_id)).unwrap().into_inner().entries;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].snapshot.as_ref().unwrap().size_bytes, 64 * MIB);
    let bak_source = SourceType::Snapshot(SnapshotSource { snapshot_id: bak.snapshot_id.clone() });
    let orphan = create_from(&csi, "pvc-source-gone", bak_source, &cap, None);
    controller_publish(&csi, &orphan, &cap);
    let (staging, target) = mount(&csi, &orphan, &cap);
    assert_eq!(std::fs::read_to_string(format!("{target}/before.txt")).unwrap(), "before the snapshots");
    unmount(&csi, &orphan, &staging, &target);
    controller_unpublish(&csi, &orphan);
    delete_volume(&csi, &orphan);
    csi.call(c.delete_snapshot(del(&bak.snapshot_id))).unwrap();
    let left = csi.call(c.list_snapshots(proto::ListSnapshotsRequest::default())).unwrap().into_inner();
    assert!(left.entries.iter().all(|e| e.snapshot.as_ref().unwrap().snapshot_id != bak.snapshot_id));
}

#[test]
fn an_expanded_volume_grows_at_its_next_stage_and_a_killed_replica_shows_until_rebuilt() {
    let cluster = start_cluster();
    let csi = Csi::start(&cluster);
    let cap = mount_cap("ext4");
    let mut req = create_request("pvc-grow", 64 * MIB, cap.clone());
    req.parameters.insert("numberOfReplicas".into(), "2".into());
    let mut c = csi.controller.clone();
    let id = csi.call(c.create_volume(req)).unwrap().into_inner().volume.unwrap().volume_id;
    controller_publish(&csi, &id, &cap);
    let (staging, target) = mount(&csi, &id, &cap);
    write_file(&format!("{target}/kept.txt"), "kept across expansion");
    cluster.wait_volume(&id, "healthy", Duration::from_secs(60), |v| v["robustness"] == "healthy");

    // A replica dies: ControllerGetVolume and NodeGetVolumeStats say so, until the rebuild ends.
    let v = cluster.volume(&id);
    let replica = v["replicas"][0]["name"].as_str().unwrap().to_string();
    let procs = processes_mentioning(&format!("replicas/{replica} "));
    assert_eq!(procs.len(), 1, "one process serves {replica}: {procs:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(procs[0].0 as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let condition = |c: &mut proto::controller_client::ControllerClient<_>| {
        csi.call(c.controller_get_volume(proto::ControllerGetVolumeRequest { volume_id: id.clone() }))
            .unwrap()
            .into_inner()
            .status
            .unwrap()
            .volume_condition
            .unwrap()
    };
    let mut abnormal_seen = false;
    wait_until("the volume condition to turn abnormal", Duration::from_secs(30), || {
        abnormal_seen = condition(&mut c).abnormal;
        abnormal_seen
    });
    let mut n = csi.node.clone();
    let stats = proto::NodeGetVolumeStatsRequest {
        volume_id: id.clone(),
        volume_path: target.clone(),
        ..Default::default()
    };
    let during =
        csi.call(n.node_get_volume_stats(stats.clone())).unwrap().into_inner().volume_condition.unwrap();
    // The rebuild may already have ended between the two calls; what it reports must agree with the volume.
    let robust = cluster.volume(&id)["robustness"].clone();
    assert!(during.abnormal || robust == "healthy", "{during:?} while {robust}");
    wait_until("the volume condition to be normal again", Duration::from_secs(120), || {
        !condition(&mut c).abnormal
    });
    assert!(
        !csi.call(n.node_get_volume_stats(stats)).unwrap().into_inner().volume_condition.unwrap().abnormal
    );

    // Expansion through CSI is offline: refused while published, applied at the next stage.
    let expand = proto::ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(proto::CapacityRange { required_bytes: 128 * MIB, limit_bytes: 0 }),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    assert_code(
        csi.call(c.controller_expand_volume(expand.clone())),
        tonic::Code::FailedPrecondition,
        "expand while published",
    );
    unmount(&csi, &id, &staging, &target);
    controller_unpublish(&csi, &id);
    let grown = csi.call(c.controller_expand_volume(expand)).unwrap().into_inner();
    assert_eq!(grown.capacity_bytes, 128 * MIB);
    assert!(grown.node_expansion_required);
    controller_publish(&csi, &id, &cap);
    let (staging, target) = mount(&csi, &id, &cap);
    let stats = proto::NodeGetVolumeStatsRequest {
        volume_id: id.clone(),
        volume_path: target.clone(),
        ..Default::default()
    };
    let bytes = csi.call(n.node_get_volume_stats(stats)).unwrap().into_inner().usage[0];
    assert!(bytes.total > 100 * MIB, "the filesystem grew at stage: {bytes:?}");
    let node_expand = proto::NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.clone(),
        ..Default::default()
    };
    assert_eq!(csi.call(n.node_expand_volume(node_expand)).unwrap().into_inner().capacity_bytes, 128 * MIB);
    assert_eq!(std::fs::read_to_string(format!("{target}/kept.txt")).unwrap(), "kept across expansion");
    unmount(&csi, &id, &staging, &target);
    controller_unpublish(&csi, &id);
    delete_volume(&csi, &id);
}
