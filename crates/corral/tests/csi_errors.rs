//! The CSI driver's answers to bad input, with the codes the spec (and the kubernetes-csi sanity
//! suite) require, and its idempotency: the same request twice gives the same answer, a
//! conflicting one AlreadyExists, a repeated delete or unpublish OK. Plus Identity, the
//! capabilities, capacity, paging and Aborted for two calls on one volume at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod csi_support;

use std::collections::HashMap;

use csi_support::*;
use proto::volume_capability::access_mode::Mode;
use tonic::Code;

#[test]
fn identity_capabilities_and_bad_input_answer_with_the_codes_the_spec_names() {
    let mut cluster = start_cluster();
    let csi = Csi::start(&cluster);
    let (mut id, mut c, mut n) = (csi.identity.clone(), csi.controller.clone(), csi.node.clone());

    let info = csi.call(id.get_plugin_info(proto::GetPluginInfoRequest {})).unwrap().into_inner();
    assert_eq!(info.name, "driver.corral.io");
    assert!(!info.vendor_version.is_empty());
    let probe = csi.call(id.probe(proto::ProbeRequest {})).unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
    let caps =
        csi.call(id.get_plugin_capabilities(proto::GetPluginCapabilitiesRequest {})).unwrap().into_inner();
    assert_eq!(caps.capabilities.len(), 3, "{caps:?}");
    let ccaps = csi.call(c.controller_get_capabilities(proto::ControllerGetCapabilitiesRequest {})).unwrap();
    assert!(ccaps.into_inner().capabilities.len() >= 12);
    let info = csi.call(n.node_get_info(proto::NodeGetInfoRequest {})).unwrap().into_inner();
    assert_eq!(info.node_id, NODE);
    assert_eq!(info.accessible_topology.unwrap().segments["topology.corral.io/node"], NODE);

    // CreateVolume.
    let cap = mount_cap("ext4");
    let mut no_name = create_request("", 16 * MIB, cap.clone());
    assert_code(csi.call(c.create_volume(no_name.clone())), Code::InvalidArgument, "create without a name");
    no_name.name = "x".repeat(129);
    assert_code(
        csi.call(c.create_volume(no_name)),
        Code::InvalidArgument,
        "create with a 129-character name",
    );
    let mut no_caps = create_request("pvc-nocaps", 16 * MIB, cap.clone());
    no_caps.volume_capabilities.clear();
    assert_code(csi.call(c.create_volume(no_caps)), Code::InvalidArgument, "create without capabilities");
    let mut multi = cap.clone();
    multi.access_mode =
        Some(proto::volume_capability::AccessMode { mode: Mode::MultiNodeMultiWriter as i32 });
    assert_code(
        csi.call(c.create_volume(create_request("pvc-multi", 16 * MIB, multi.clone()))),
        Code::InvalidArgument,
        "create for many writers",
    );
    let mut empty_range = create_request("pvc-range", 16 * MIB, cap.clone());
    empty_range.capacity_range = Some(proto::CapacityRange { required_bytes: 8 * MIB, limit_bytes: 4 * MIB });
    assert_code(csi.call(c.create_volume(empty_range)), Code::OutOfRange, "limit below required");
    let mut unknown = create_request("pvc-param", 16 * MIB, cap.clone());
    unknown.parameters.insert("replicaCount".into(), "3".into());
    assert_code(csi.call(c.create_volume(unknown)), Code::InvalidArgument, "unknown parameter");
    let huge = create_request("pvc-huge", 1 << 48, cap.clone());
    assert_code(csi.call(c.create_volume(huge)), Code::OutOfRange, "a size no disk can hold");
    assert_eq!(cluster.get("/v1/volumes/pvc-huge").0, 404, "a refused volume leaves nothing behind");
    let beyond = create_request("pvc-beyond", 1 << 60, cap.clone());
    assert_code(csi.call(c.create_volume(beyond)), Code::OutOfRange, "a size beyond the largest volume");
    assert_eq!(cluster.get("/v1/volumes/pvc-beyond").0, 404, "a refused volume leaves nothing behind");

    // Idempotent create: a 128-character name, the same request twice, then a conflicting size.
    let long_name = "L".repeat(128);
    let mut req = create_request(&long_name, 3 * MIB, cap.clone());
    req.parameters.insert("staleReplicaTimeout".into(), "30".into());
    let first = csi.call(c.create_volume(req.clone())).unwrap().into_inner().volume.unwrap();
    assert_eq!(first.capacity_bytes, 4 * MIB, "rounded up to the 2 MiB granularity");
    let again = csi.call(c.create_volume(req.clone())).unwrap().into_inner().volume.unwrap();
    assert_eq!(again.volume_id, first.volume_id);
    let mut bigger = req.clone();
    bigger.capacity_range = Some(proto::CapacityRange { required_bytes: 64 * MIB, limit_bytes: 0 });
    assert_code(csi.call(c.create_volume(bigger)), Code::AlreadyExists, "same name, other size");
    let vid = first.volume_id.clone();
    assert_eq!(cluster.volume(&vid)["staleReplicaTimeout"], 30);

    // ValidateVolumeCapabilities.
    let validate =
        |volume_id: &str, caps: Vec<proto::VolumeCapability>| proto::ValidateVolumeCapabilitiesRequest {
            volume_id: volume_id.into(),
            volume_capabilities: caps,
            ..Default::default()
        };
    assert_code(
        csi.call(c.validate_volume_capabilities(validate("", vec![cap.clone()]))),
        Code::InvalidArgument,
        "validate without ID",
    );
    assert_code(
        csi.call(c.validate_volume_capabilities(validate(&vid, vec![]))),
        Code::InvalidArgument,
        "validate without caps",
    );
    assert_code(
        csi.call(c.validate_volume_capabilities(validate("nope", vec![cap.clone()]))),
        Code::NotFound,
        "validate unknown",
    );
    let ok =
        csi.call(c.validate_volume_capabilities(validate(&vid, vec![cap.clone()]))).unwrap().into_inner();
    assert!(ok.confirmed.is_some());
    let no =
        csi.call(c.validate_volume_capabilities(validate(&vid, vec![multi.clone()]))).unwrap().into_inner();
    assert!(no.confirmed.is_none() && !no.message.is_empty());

    // ControllerPublish / Unpublish.
    let publish = |volume_id: &str, node_id: &str, cap: Option<proto::VolumeCapability>| {
        proto::ControllerPublishVolumeRequest {
            volume_id: volume_id.into(),
            node_id: node_id.into(),
            volume_capability: cap,
            ..Default::default()
        }
    };
    assert_code(
        csi.call(c.controller_publish_volume(publish("", NODE, Some(cap.clone())))),
        Code::InvalidArgument,
        "publish without ID",
    );
    assert_code(
        csi.call(c.controller_publish_volume(publish(&vid, "", Some(cap.clone())))),
        Code::InvalidArgument,
        "publish without node",
    );
    assert_code(
        csi.call(c.controller_publish_volume(publish(&vid, NODE, None))),
        Code::InvalidArgument,
        "publish without capability",
    );
    assert_code(
        csi.call(c.controller_publish_volume(publish("nope", NODE, Some(cap.clone())))),
        Code::NotFound,
        "publish unknown volume",
    );
    assert_code(
        csi.call(c.controller_publish_volume(publish(&vid, "no-such-node", Some(cap.clone())))),
        Code::NotFound,
        "publish to unknown node",
    );
    let unpublish = |volume_id: &str| proto::ControllerUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        node_id: NODE.into(),
        ..Default::default()
    };
    assert_code(
        csi.call(c.controller_unpublish_volume(unpublish(""))),
        Code::InvalidArgument,
        "unpublish without ID",
    );
    csi.call(c.controller_unpublish_volume(unpublish("gone-already"))).unwrap();

    // Two calls on one volume at once: one works, the other is told to retry (Aborted).
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let (a, b) = csi.call(async {
        tokio::join!(
            c1.controller_publish_volume(publish(&vid, NODE, Some(cap.clone()))),
            c2.controller_publish_volume(publish(&vid, NODE, Some(cap.clone())))
        )
    });
    let codes: Vec<Code> =
        [&a, &b].iter().map(|r| r.as_ref().map(|_| Code::Ok).unwrap_or_else(|s| s.code())).collect();
    assert!(codes.contains(&Code::Ok), "{codes:?}");
    assert!(codes.iter().all(|c| *c == Code::Ok || *c == Code::Aborted), "{codes:?}");
    let ctx =
        csi.call(c.controller_publish_volume(publish(&vid, NODE, Some(cap.clone())))).unwrap().into_inner();
    assert!(ctx.publish_context["corral.io/endpoint"].starts_with("nbd://"));

    // Node calls.
    let staging = csi.dir("staging");
    let stage =
        |volume_id: &str, path: &str, cap: Option<proto::VolumeCapability>| proto::NodeStageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: path.into(),
            volume_capability: cap,
            ..Default::default()
        };
    assert_code(
        csi.call(n.node_stage_volume(stage("", &staging, Some(cap.clone())))),
        Code::InvalidArgument,
        "stage without ID",
    );
    assert_code(
        csi.call(n.node_stage_volume(stage(&vid, "", Some(cap.clone())))),
        Code::InvalidArgument,
        "stage without path",
    );
    assert_code(
        csi.call(n.node_stage_volume(stage(&vid, &staging, None))),
        Code::InvalidArgument,
        "stage without capability",
    );
    assert_code(
        csi.call(n.node_stage_volume(stage("nope", &staging, Some(cap.clone())))),
        Code::NotFound,
        "stage unknown volume",
    );
    let missing = csi.path("no-such-dir").display().to_string();
    assert_code(
        csi.call(n.node_stage_volume(stage(&vid, &missing, Some(cap.clone())))),
        Code::NotFound,
        "stage at a missing path",
    );
    let node_publish = |volume_id: &str, target: &str| proto::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.clone(),
        target_path: target.into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    let target = csi.path("target").display().to_string();
    assert_code(
        csi.call(n.node_publish_volume(node_publish(&vid, &target))),
        Code::FailedPrecondition,
        "publish before stage",
    );
    assert_code(
        csi.call(n.node_publish_volume(node_publish("nope", &target))),
        Code::NotFound,
        "node publish unknown volume",
    );
    assert_code(
        csi.call(n.node_publish_volume(node_publish(&vid, ""))),
        Code::InvalidArgument,
        "node publish without target",
    );
    let node_unpublish = |volume_id: &str, target: &str| proto::NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.into(),
    };
    assert_code(
        csi.call(n.node_unpublish_volume(node_unpublish("", &target))),
        Code::InvalidArgument,
        "node unpublish without ID",
    );
    assert_code(
        csi.call(n.node_unpublish_volume(node_unpublish(&vid, ""))),
        Code::InvalidArgument,
        "node unpublish without target",
    );
    assert_code(
        csi.call(n.node_unpublish_volume(node_unpublish("nope", &target))),
        Code::NotFound,
        "node unpublish unknown volume",
    );
    let unstage = |volume_id: &str, path: &str| proto::NodeUnstageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: path.into(),
    };
    assert_code(
        csi.call(n.node_unstage_volume(unstage("", &staging))),
        Code::InvalidArgument,
        "unstage without ID",
    );
    assert_code(
        csi.call(n.node_unstage_volume(unstage(&vid, ""))),
        Code::InvalidArgument,
        "unstage without path",
    );
    let stats = |volume_id: &str, path: &str| proto::NodeGetVolumeStatsRequest {
        volume_id: volume_id.into(),
        volume_path: path.into(),
        ..Default::default()
    };
    assert_code(
        csi.call(n.node_get_volume_stats(stats("", &staging))),
        Code::InvalidArgument,
        "stats without ID",
    );
    assert_code(
        csi.call(n.node_get_volume_stats(stats(&vid, ""))),
        Code::InvalidArgument,
        "stats without path",
    );
    assert_code(
        csi.call(n.node_get_volume_stats(stats("nope", &staging))),
        Code::NotFound,
        "stats of unknown volume",
    );
    assert_code(
        csi.call(n.node_get_volume_stats(stats(&vid, &missing))),
        Code::NotFound,
        "stats of a missing path",
    );

    // Stage, then a conflicting stage (other filesystem) is AlreadyExists.
    csi.call(n.node_stage_volume(stage(&vid, &staging, Some(cap.clone())))).unwrap();
    assert_code(
        csi.call(n.node_stage_volume(stage(&vid, &staging, Some(mount_cap("xfs"))))),
        Code::AlreadyExists,
        "stage as another fs",
    );
    csi.call(n.node_unstage_volume(unstage(&vid, &staging))).unwrap();
    csi.call(c.controller_unpublish_volume(unpublish(&vid))).unwrap();

    // Expand.
    let expand =
        |volume_id: &str, range: Option<proto::CapacityRange>| proto::ControllerExpandVolumeRequest {
            volume_id: volume_id.into(),
            capacity_range: range,
            ..Default::default()
        };
    let range = Some(proto::CapacityRange { required_bytes: 8 * MIB, limit_bytes: 0 });
    assert_code(
        csi.call(c.controller_expand_volume(expand("", range))),
        Code::InvalidArgument,
        "expand without ID",
    );
    assert_code(
        csi.call(c.controller_expand_volume(expand(&vid, None))),
        Code::InvalidArgument,
        "expand without range",
    );
    assert_code(
        csi.call(c.controller_expand_volume(expand("nope", range))),
        Code::NotFound,
        "expand unknown",
    );
    let grown = csi.call(c.controller_expand_volume(expand(&vid, range))).unwrap().into_inner();
    assert_eq!(grown.capacity_bytes, 8 * MIB);
    assert!(grown.node_expansion_required);
    let again = csi.call(c.controller_expand_volume(expand(&vid, range))).unwrap().into_inner();
    assert_eq!(again.capacity_bytes, 8 * MIB);

    // GetVolume, capacity, list with paging.
    assert_code(
        csi.call(c.controller_get_volume(proto::ControllerGetVolumeRequest { volume_id: "nope".into() })),
        Code::NotFound,
        "get unknown",
    );
    let got = csi
        .call(c.controller_get_volume(proto::ControllerGetVolumeRequest { volume_id: vid.clone() }))
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().volume_context["csi.corral.io/name"], long_name);
    let cap_all = csi.call(c.get_capacity(proto::GetCapacityRequest::default())).unwrap().into_inner();
    assert!(cap_all.available_capacity > 0);
    let elsewhere = proto::GetCapacityRequest {
        accessible_topology: Some(proto::Topology {
            segments: HashMap::from([("topology.corral.io/node".to_string(), "other".to_string())]),
        }),
        ..Default::default()
    };
    assert_eq!(csi.call(c.get_capacity(elsewhere)).unwrap().into_inner().available_capacity, 0);
    for i in 0..3 {
        csi.call(c.create_volume(create_request(&format!("pvc-page-{i}"), 2 * MIB, cap.clone()))).unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = csi
            .call(c.list_volumes(proto::ListVolumesRequest { max_entries: 2, starting_token: token.clone() }))
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.into_iter().map(|e| e.volume.unwrap().volume_id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_code(
        csi.call(
            c.list_volumes(proto::ListVolumesRequest { max_entries: 0, starting_token: "bogus".into() }),
        ),
        Code::Aborted,
        "bad token",
    );
    assert_code(
        csi.call(
            c.list_volumes(proto::ListVolumesRequest { max_entries: -1, starting_token: String::new() }),
        ),
        Code::InvalidArgument,
        "negative max",
    );

    // Snapshot requests.
    let snap = |source: &str, name: &str| proto::CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        ..Default::default()
    };
    assert_code(
        csi.call(c.create_snapshot(snap("", "s1"))),
        Code::InvalidArgument,
        "snapshot without source",
    );
    assert_code(csi.call(c.create_snapshot(snap(&vid, ""))), Code::InvalidArgument, "snapshot without name");
    assert_code(
        csi.call(c.create_snapshot(snap("nope", "s1"))),
        Code::NotFound,
        "snapshot of unknown volume",
    );
    let mut bad_type = snap(&vid, "s1");
    bad_type.parameters.insert("type".into(), "tape".into());
    assert_code(csi.call(c.create_snapshot(bad_type)), Code::InvalidArgument, "unknown snapshot type");
    let s1 = csi.call(c.create_snapshot(snap(&vid, "S1 snapshot"))).unwrap().into_inner().snapshot.unwrap();
    assert!(s1.snapshot_id.starts_with(&format!("snap/{vid}/")) && s1.ready_to_use, "{s1:?}");
    let again =
        csi.call(c.create_snapshot(snap(&vid, "S1 snapshot"))).unwrap().into_inner().snapshot.unwrap();
    assert_eq!(again.snapshot_id, s1.snapshot_id);
    assert_code(
        csi.call(c.create_snapshot(snap("pvc-page-0", "S1 snapshot"))),
        Code::AlreadyExists,
        "same snapshot name, other volume",
    );
    assert_eq!(cluster.volume(&vid)["state"], "detached", "the snapshot's temporary attachment is gone");
    let list = |snapshot_id: &str, source: &str| proto::ListSnapshotsRequest {
        snapshot_id: snapshot_id.into(),
        source_volume_id: source.into(),
        ..Default::default()
    };
    let by_id = csi.call(c.list_snapshots(list(&s1.snapshot_id, ""))).unwrap().into_inner();
    assert_eq!(by_id.entries.len(), 1);
    assert!(csi.call(c.list_snapshots(list("snap/nope/nope", ""))).unwrap().into_inner().entries.is_empty());
    assert!(csi.call(c.list_snapshots(list("", "nope"))).unwrap().into_inner().entries.is_empty());
    assert_code(
        csi.call(c.list_snapshots(proto::ListSnapshotsRequest {
            starting_token: "bogus".into(),
            ..Default::default()
        })),
        Code::Aborted,
        "bad snapshot token",
    );
    let del = |id: &str| proto::DeleteSnapshotRequest { snapshot_id: id.into(), ..Default::default() };
    assert_code(csi.call(c.delete_snapshot(del(""))), Code::InvalidArgument, "delete snapshot without ID");
    csi.call(c.delete_snapshot(del(&s1.snapshot_id))).unwrap();
    csi.call(c.delete_snapshot(del(&s1.snapshot_id))).unwrap();
    csi.call(c.delete_snapshot(del("not-an-id"))).unwrap();
    assert!(csi.call(c.list_snapshots(list(&s1.snapshot_id, ""))).unwrap().into_inner().entries.is_empty());

    // Delete: missing ID is InvalidArgument, a repeat is OK.
    assert_code(
        csi.call(c.delete_volume(proto::DeleteVolumeRequest::default())),
        Code::InvalidArgument,
        "delete without ID",
    );
    delete_volume(&csi, &vid);
    delete_volume(&csi, &vid);

    // Probe: not ready (and no error: the plugin is fine) while the manager does not answer.
    cluster.kill();
    let probe = csi.call(id.probe(proto::ProbeRequest {})).unwrap().into_inner();
    assert_eq!(probe.ready, Some(false));
}
