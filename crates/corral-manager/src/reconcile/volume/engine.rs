//! The engine steps of a volume's reconcile: the engine on the attach node started from the
//! replicas that may seed it, polled (replicas added and removed, snapshots mirrored, online
//! expand), stopped on detach; and the offline expand of a detached volume.
use corral_im::pb::{InstanceKind, InstanceState as ImState, StartRequest};
use corral_store::resources::{
    Engine, EngineSpec, InstanceState, Replica, Robustness, Volume, VolumeState, VolumeStatus,
};
use corral_store::Resource;
use std::time::Instant;

use super::{
    active, delete_record, engine_instance_name, engine_record_name, expander_instance_name, fingerprint,
    running, EnginePoll, World, ENGINE_IDLE_POLL,
};
use corral_api::ReplicaMode as EngineMode;

use crate::clients::engine::{EngineClient, EngineReplica};
use crate::error::Result;
use crate::model::liveness::is_node_ready;
use crate::ops::snapshots;
use crate::reconcile::Reconciler;

/// Step 3: the engine on the attach node, started, polled or stopped. Returns the engine's view of
/// the replicas when it answered (None while there is no engine, or it does not answer).
pub(super) async fn run_engine(
    rec: &Reconciler,
    v: &Volume,
    replicas: &[Replica],
    engine: Option<&Engine>,
    status: &mut VolumeStatus,
    w: &mut World,
) -> Result<Option<Vec<EngineReplica>>> {
    let name = v.name().to_string();
    let want_engine = v.spec.node_id.as_deref() == Some(rec.node.as_str());
    let einst_name = engine_instance_name(&name);
    let einst = w.instances.get(&einst_name).cloned();
    let mut engine_replicas: Option<Vec<EngineReplica>> = None;
    if want_engine {
        let ready = engine_members(replicas);
        if !active(einst.as_ref()) {
            status.endpoint = None;
            status.engine_control_url = None;
            if !ready.is_empty() && rec.may_start(&einst_name) {
                start_engine(rec, v, &ready, engine, w).await?;
            }
        } else if running(einst.as_ref()) {
            let ports = einst.as_ref().map(|i| i.ports.clone()).unwrap_or_default();
            if let [nbd, control, ..] = ports[..] {
                let host = &rec.node_address;
                let control_url = format!("http://{host}:{control}");
                status.endpoint = Some(format!("nbd://{host}:{nbd}"));
                status.engine_control_url = Some(control_url.clone());
                let client = EngineClient::new(&control_url);
                let fp = fingerprint(v, replicas, einst.as_ref());
                engine_replicas = poll_engine(rec, v, replicas, &client, fp, status).await;
            }
        }
    } else if w.leader.is_some() {
        // The offline expand runs a short-lived engine on the leader's node.
        if let Some(x) = expand_offline(rec, v, replicas, w, active(einst.as_ref())).await? {
            status.current_size = x;
        }
    }
    // The engine record is its node's to delete once the process is stopped; the leader's when
    // that node is down (it stops the process when it comes back: it has no record).
    let engine_owned = engine.is_some_and(|e| {
        e.spec.node == rec.node || (w.leader.is_some() && !is_node_ready(&w.nodes, &e.spec.node))
    });
    if !want_engine && (einst.is_some() || engine_owned) {
        status.endpoint = None;
        status.engine_control_url = None;
        if einst.is_some() {
            rec.im.delete(&einst_name).await?;
            w.instances.remove(&einst_name);
            rec.events.normal("volume", &name, "Detached", "engine stopped");
            rec.volume_cache.lock().remove(&name);
        }
        if let Some(e) = engine.filter(|_| engine_owned) {
            delete_record::<Engine>(rec, e).await?;
        }
    }
    Ok(engine_replicas)
}

/// Ask the running engine for its replicas (or take its last answer, see below), add and remove
/// replicas to match the records, mirror its snapshots when due and expand it online when the
/// volume grew. `fp` is the volume's [`fingerprint`] now.
async fn poll_engine(
    rec: &Reconciler,
    v: &Volume,
    replicas: &[Replica],
    client: &EngineClient,
    fp: u64,
    status: &mut VolumeStatus,
) -> Option<Vec<EngineReplica>> {
    let name = v.name().to_string();
    let n = v.spec.number_of_replicas as usize;
    let mut engine_replicas = None;
    // A healthy volume whose records and engine process did not change since the
    // engine was last asked is asked again only every ENGINE_IDLE_POLL: with hundreds
    // of volumes attached, polling each on every pass is most of an idle node's CPU.
    let cached = rec.volume_cache.lock().get(&name).and_then(|c| c.engine.clone()).filter(|c| {
        c.fingerprint == fp
            && c.polled.elapsed() < ENGINE_IDLE_POLL
            && v.status.state == VolumeState::Attached
            && v.status.robustness == Robustness::Healthy
            && c.size >= v.spec.size
    });
    let fresh = match cached {
        Some(c) => {
            status.current_size = c.size;
            engine_replicas = Some(c.replicas);
            None
        }
        None => Some(client.replicas().await),
    };
    match fresh {
        None => {}
        Some(Ok(list)) => {
            sync_engine_replicas(rec, client, &list, replicas, n).await;
            let due = rec
                .volume_cache
                .lock()
                .get(&name)
                .and_then(|c| c.snapshots_synced)
                .is_none_or(|t| t.elapsed() >= snapshots::RESYNC);
            if due {
                match snapshots::refresh(&rec.ds, &name, client).await {
                    Ok(_) => {
                        rec.volume_cache.lock().entry(name.clone()).or_default().snapshots_synced =
                            Some(Instant::now());
                    }
                    Err(e) => rec.events.warning("volume", &name, "SnapshotSyncFailed", e.to_string()),
                }
            }
            engine_replicas = Some(list.clone());
            if let Ok(info) = client.info().await {
                rec.volume_cache.lock().entry(name.clone()).or_default().engine = Some(EnginePoll {
                    polled: Instant::now(),
                    fingerprint: fp,
                    replicas: list,
                    size: info.size,
                });
                status.current_size = info.size;
                if info.size < v.spec.size {
                    match client.expand(v.spec.size).await {
                        Ok(()) => {
                            status.current_size = v.spec.size;
                            rec.events.normal(
                                "volume",
                                &name,
                                "Expanded",
                                format!("online to {} bytes", v.spec.size),
                            )
                        }
                        Err(e) => rec.events.warning("volume", &name, "ExpandFailed", e.to_string()),
                    }
                }
            }
        }
        Some(Err(e)) => rec.events.warning("engine", &name, "Unreachable", e.to_string()),
    }
    engine_replicas
}

/// The replicas a starting engine may use. An engine trusts its start members' data (it only
/// compares their generations), so a replica that never was RW (new, or its rebuild interrupted)
/// is one only when no replica of the volume ever was (a new volume); a failed one only when every
/// replica that was RW has failed (the engine then picks the most recent among them). Others are
/// added once the engine runs, and rebuilt.
fn engine_members(replicas: &[Replica]) -> Vec<&Replica> {
    let ready = |r: &&Replica| r.status.state == InstanceState::Running && r.status.address.is_some();
    let ever_healthy = replicas.iter().any(|r| r.status.healthy_at.is_some());
    if !ever_healthy {
        return replicas.iter().filter(ready).collect();
    }
    let sound_exists = replicas.iter().any(|r| r.status.healthy_at.is_some() && r.spec.failed_at.is_none());
    replicas
        .iter()
        .filter(ready)
        .filter(|r| r.status.healthy_at.is_some() && (r.spec.failed_at.is_none() || !sound_exists))
        .collect()
}

/// Whether an engine's replica entry is a replica of the volume whose process runs at that address.
pub(super) fn serving(e: &EngineReplica, replicas: &[Replica]) -> bool {
    replicas
        .iter()
        .any(|r| r.status.address.as_ref() == Some(&e.address) && r.status.state == InstanceState::Running)
}

/// Offline expand: when a detached volume's replicas are smaller than its size, a short-lived
/// engine started with `--size` grows them (an engine expands smaller replicas at start) and is
/// stopped once it runs. Returns the new size once done. Idempotent: a restarted manager finds the
/// expander again by its name, and replicas already grown make the engine's start a no-op.
async fn expand_offline(
    rec: &Reconciler,
    v: &Volume,
    replicas: &[Replica],
    w: &mut World,
    engine_active: bool,
) -> Result<Option<u64>> {
    let name = v.name();
    let xname = expander_instance_name(name);
    let inst = w.instances.get(&xname).cloned();
    let members: Vec<&Replica> = replicas.iter().filter(|r| r.spec.failed_at.is_none()).collect();
    let behind = members.iter().any(|r| r.spec.size < v.spec.size);
    let stop = |w: &mut World| {
        w.instances.remove(&xname);
    };
    if v.spec.node_id.is_some() || engine_active || !behind || members.is_empty() {
        if inst.is_some() {
            rec.im.delete(&xname).await?;
            stop(w);
        }
        return Ok(None);
    }
    let all_running =
        members.iter().all(|r| r.status.state == InstanceState::Running && r.status.address.is_some());
    if !all_running {
        return Ok(None);
    }
    match inst.as_ref().map(|i| i.state) {
        Some(s) if s == ImState::Starting as i32 => Ok(None),
        Some(s) if s == ImState::Running as i32 => {
            let control = inst.as_ref().and_then(|i| i.ports.get(1).copied()).unwrap_or(0);
            let info = EngineClient::new(&format!("http://{}:{control}", rec.node_address)).info().await?;
            if info.size < v.spec.size {
                return Ok(None);
            }
            for r in &members {
                rec.ds
                    .modify(r.name(), |x: &mut Replica| {
                        x.spec.size = x.spec.size.max(info.size);
                        Ok(())
                    })
                    .await?;
            }
            rec.im.delete(&xname).await?;
            stop(w);
            rec.events.normal("volume", name, "Expanded", format!("offline to {} bytes", info.size));
            Ok(Some(info.size))
        }
        state => {
            if state.is_some() {
                let msg = inst.as_ref().map(|i| i.message.clone()).unwrap_or_default();
                rec.events.warning("volume", name, "ExpandFailed", msg);
                if !rec.may_start(&xname) {
                    return Ok(None);
                }
                rec.im.delete(&xname).await?;
            } else if !rec.may_start(&xname) {
                return Ok(None);
            }
            let args = engine_serve_args(name, v.spec.size, &rec.node_address, members.iter().copied());
            let req = StartRequest {
                name: xname.clone(),
                kind: InstanceKind::Engine as i32,
                args,
                port_count: 2,
                probe_host: rec.node_address.clone(),
                requested_ports: vec![],
            };
            match rec.im.start(req).await {
                Ok(i) => {
                    w.instances.insert(xname, i);
                    rec.events.normal(
                        "volume",
                        name,
                        "Expanding",
                        format!("offline to {} bytes", v.spec.size),
                    );
                }
                Err(e) if e.kind() == corral_im::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
            Ok(None)
        }
    }
}

/// Add running replicas the engine does not have (it rebuilds them: reusing their data when they
/// were members before), and drop the ones it marked ERR so they can be added again.
async fn sync_engine_replicas(
    rec: &Reconciler,
    client: &EngineClient,
    list: &[EngineReplica],
    replicas: &[Replica],
    wanted: usize,
) {
    // ERR ones, and addresses no replica has any more (its process died and came back on another
    // port before the engine noticed: the old address is dead).
    let gone = |e: &&EngineReplica| !replicas.iter().any(|r| r.status.address.as_ref() == Some(&e.address));
    for e in list.iter().filter(|e| e.mode == EngineMode::Error || gone(e)) {
        let still_ours = replicas.iter().any(|r| {
            r.status.address.as_ref() == Some(&e.address) && r.status.state == InstanceState::Running
        });
        if let Err(err) = client.remove_replica(&e.address).await {
            rec.events.warning("engine", &e.address, "RemoveFailed", err.to_string());
        } else if still_ours {
            rec.events.normal(
                "engine",
                &e.address,
                "Readding",
                "replica was ERR but its process runs; rebuilding it",
            );
        }
    }
    // Only while fewer than N are RW: a replica beyond that would be removed as surplus. Oldest
    // first, so a failed replica coming back (it has the data) goes before its replacement.
    let rw = list.iter().filter(|e| e.mode == EngineMode::ReadWrite && serving(e, replicas)).count();
    let mut candidates: Vec<&Replica> = replicas
        .iter()
        .filter(|r| r.status.state == InstanceState::Running && r.status.address.is_some())
        .filter(|r| {
            !list.iter().any(|e| Some(&e.address) == r.status.address.as_ref() && e.mode != EngineMode::Error)
        })
        .collect();
    candidates.sort_by(|a, b| (&a.metadata.created, a.name()).cmp(&(&b.metadata.created, b.name())));
    for r in candidates {
        let Some(addr) = &r.status.address else { continue };
        if rw >= wanted {
            break;
        }
        {
            match client.add_replica(addr).await {
                Ok(()) => rec.events.normal(
                    "replica",
                    r.name(),
                    "Rebuilding",
                    format!("added to the engine at {addr}"),
                ),
                Err(e) => rec.events.warning("replica", r.name(), "AddFailed", e.to_string()),
            }
        }
    }
}

/// Arguments of `corral engine serve` for `volume` of `size` bytes over the replicas that have an
/// address; the NBD port and the control port are the instance manager's `{port0}` and `{port1}`
/// on `host`, the node's address (the API of every node reaches the control port there).
fn engine_serve_args<'a>(
    volume: &str,
    size: u64,
    host: &str,
    replicas: impl Iterator<Item = &'a Replica>,
) -> Vec<String> {
    let mut args = vec![
        "engine".to_string(),
        "serve".into(),
        "--volume".into(),
        volume.to_string(),
        "--size".into(),
        size.to_string(),
    ];
    for a in replicas.filter_map(|r| r.status.address.as_ref()) {
        args.extend(["--replica".to_string(), a.clone()]);
    }
    args.extend([
        "--nbd".to_string(),
        format!("{host}:{{port0}}"),
        "--listen".into(),
        format!("{host}:{{port1}}"),
    ]);
    args
}

async fn start_engine(
    rec: &Reconciler,
    v: &Volume,
    ready: &[&Replica],
    engine: Option<&Engine>,
    w: &mut World,
) -> Result<()> {
    let name = v.name();
    let iname = engine_instance_name(name);
    let size = v.status.current_size.max(ready.iter().map(|r| r.spec.size).min().unwrap_or(v.spec.size));
    let args = engine_serve_args(name, size, &rec.node_address, ready.iter().copied());
    // Same ports as last time when possible: clients reconnect to the endpoint they knew.
    let previous: Vec<u32> = engine
        .and_then(|e| e.status.endpoint.as_ref().zip(e.status.control_url.as_ref()))
        .and_then(|(ep, cu)| {
            Some(vec![ep.rsplit(':').next()?.parse().ok()?, cu.rsplit(':').next()?.parse().ok()?])
        })
        .unwrap_or_default();
    let mut req = StartRequest {
        name: iname.clone(),
        kind: InstanceKind::Engine as i32,
        args,
        port_count: 2,
        probe_host: rec.node_address.clone(),
        requested_ports: previous.clone(),
    };
    let started = match rec.im.start(req.clone()).await {
        Err(e) if e.kind() == corral_im::ErrorKind::Exhausted && !previous.is_empty() => {
            req.requested_ports.clear();
            rec.im.start(req).await
        }
        other => other,
    };
    let inst = match started {
        Ok(i) => i,
        Err(e) if e.kind() == corral_im::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    rec.events.normal("volume", name, "Attaching", format!("engine started with {} replica(s)", ready.len()));
    let spec = EngineSpec {
        volume: name.to_string(),
        node: rec.node.clone(),
        size,
        replicas: ready
            .iter()
            .filter_map(|r| Some((r.name().to_string(), r.status.address.clone()?)))
            .collect(),
        desired_state: Default::default(),
    };
    let mut record = match engine {
        Some(e) => {
            let mut e = e.clone();
            e.spec = spec;
            e
        }
        None => Engine::new(engine_record_name(name), spec),
    };
    if let [nbd, control, ..] = inst.ports[..] {
        let host = &rec.node_address;
        record.status.endpoint = Some(format!("nbd://{host}:{nbd}"));
        record.status.control_url = Some(format!("http://{host}:{control}"));
    }
    record.status.state = InstanceState::Starting;
    let saved = if engine.is_some() { rec.ds.update(&record).await? } else { rec.ds.create(&record).await? };
    w.engines.retain(|e| e.spec.volume != name);
    w.engines.push(saved);
    w.instances.insert(iname, inst);
    Ok(())
}
