//! The volume reconciler: replicas placed by the scheduler and served by `corral replica serve`,
//! an engine (`corral engine serve`) on the attach node, replica failure and rebuild, expand,
//! detach, delete, and the volume's state and robustness.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use corral_im::pb::{Instance, InstanceKind, InstanceState as ImState, StartRequest};
use corral_store::resources::{
    set_condition, ConditionType, Engine, EngineSpec, InstanceState, Node, Replica, ReplicaMode, ReplicaSpec,
    Robustness, Volume, VolumeState,
};
use corral_store::Resource;

use super::Reconciler;
use crate::engine_client::{EngineClient, EngineReplica};
use crate::error::{Code, ManagerError, Result};
use crate::scheduler::{schedule_replica, SchedulerSettings, VolumeRequest};
use crate::settings::Settings;

/// Instance-manager name of a replica's process.
pub fn replica_instance_name(replica: &str) -> String {
    format!("r-{replica}")
}

/// Instance-manager name of a volume's engine process.
pub fn engine_instance_name(volume: &str) -> String {
    format!("e-{volume}")
}

fn engine_record_name(volume: &str) -> String {
    format!("{volume}-e")
}

fn active(i: Option<&Instance>) -> bool {
    i.is_some_and(|i| i.state == ImState::Starting as i32 || i.state == ImState::Running as i32)
}

fn running(i: Option<&Instance>) -> bool {
    i.is_some_and(|i| i.state == ImState::Running as i32)
}

/// Least time between two starts of one process, so a process that cannot run does not spin.
const RESTART_BACKOFF: Duration = Duration::from_secs(3);

struct World {
    settings: Settings,
    nodes: Vec<Node>,
    replicas: Vec<Replica>,
    engines: Vec<Engine>,
    instances: HashMap<String, Instance>,
}

pub(super) async fn pass(rec: &Reconciler) -> Result<()> {
    let instances = match rec.im.list().await {
        Ok(list) => list.into_iter().map(|i| (i.name.clone(), i)).collect(),
        Err(e) => {
            rec.events.warning("node", &rec.node, "InstanceManagerDown", e.to_string());
            return Err(e.into());
        }
    };
    let mut world = World {
        settings: Settings::load(&rec.ds).await?,
        nodes: rec.ds.list().await?,
        replicas: rec.ds.list().await?,
        engines: rec.ds.list().await?,
        instances,
    };
    let volumes: Vec<Volume> = rec.ds.list().await?;
    for v in volumes {
        if let Err(e) = reconcile(rec, &v, &mut world).await {
            if e.code != Code::Conflict {
                rec.events.warning("volume", v.name(), "ReconcileFailed", e.to_string());
            }
            rec.wake.notify_one();
        }
    }
    Ok(())
}

impl Reconciler {
    fn may_start(&self, instance: &str) -> bool {
        let mut r = self.restarts.lock();
        let now = Instant::now();
        match r.get(instance) {
            Some(t) if now.duration_since(*t) < RESTART_BACKOFF => false,
            _ => {
                r.insert(instance.to_string(), now);
                true
            }
        }
    }
}

async fn reconcile(rec: &Reconciler, v: &Volume, w: &mut World) -> Result<()> {
    let name = v.name().to_string();
    let mut replicas: Vec<Replica> = w.replicas.iter().filter(|r| r.spec.volume == name).cloned().collect();
    replicas.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let engine = w.engines.iter().find(|e| e.spec.volume == name).cloned();

    if v.metadata.deletion_requested.is_some() {
        return delete_volume(rec, v, &replicas, engine.as_ref(), w).await;
    }

    let mut status = v.status.clone();

    // 1. Enough replicas, placed by the scheduler. The record comes first; its process follows.
    let stale_after = Duration::from_secs(v.spec.stale_replica_timeout.saturating_mul(60));
    for r in &replicas {
        let expired = r
            .spec
            .failed_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| {
                chrono::Utc::now().signed_duration_since(t).to_std().unwrap_or_default() > stale_after
            });
        if expired && r.spec.node == rec.node {
            rec.events.warning(
                "replica",
                r.name(),
                "Stale",
                "failed longer than staleReplicaTimeout; deleting it",
            );
            remove_replica(rec, r, engine.as_ref(), w).await?;
            rec.wake.notify_one();
            return Ok(());
        }
    }
    if (replicas.len() as u32) < v.spec.number_of_replicas {
        let req = VolumeRequest {
            volume: &name,
            size: v.spec.size,
            node_selector: &v.spec.node_selector,
            disk_selector: &v.spec.disk_selector,
            data_locality: v.spec.data_locality,
            attach_node: v.spec.node_id.as_deref(),
        };
        let placed = crate::api::placed_replicas(&w.replicas);
        match schedule_replica(&req, &w.nodes, &placed, SchedulerSettings::from(&w.settings)) {
            Ok(p) => {
                let node = w.nodes.iter().find(|n| n.metadata.name == p.node);
                let disk_path =
                    node.and_then(|n| n.spec.disks.get(&p.disk)).map(|d| d.path.clone()).unwrap_or_default();
                let rname = format!("{name}-r-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
                let spec = ReplicaSpec {
                    volume: name.clone(),
                    node: p.node.clone(),
                    disk: p.disk.clone(),
                    data_dir: format!("{}/replicas/{rname}", disk_path.trim_end_matches('/')),
                    size: v.spec.size,
                    desired_state: Default::default(),
                    failed_at: None,
                };
                let r = rec.ds.create(&Replica::new(rname.clone(), spec)).await?;
                rec.events.normal(
                    "volume",
                    &name,
                    "Scheduled",
                    format!("replica {rname} on {}/{}", p.node, p.disk),
                );
                w.replicas.push(r.clone());
                replicas.push(r);
                set_condition(&mut status.conditions, ConditionType::Scheduled, true, "", "");
            }
            Err(f) => {
                set_condition(
                    &mut status.conditions,
                    ConditionType::Scheduled,
                    false,
                    "SchedulingFailed",
                    &f.to_string(),
                );
                rec.events.warning("volume", &name, "SchedulingFailed", f.to_string());
            }
        }
    } else {
        set_condition(&mut status.conditions, ConditionType::Scheduled, true, "", "");
    }

    // 2. Replica processes on this node.
    let node_address = rec.node_address.clone();
    for r in replicas.iter_mut().filter(|r| r.spec.node == rec.node) {
        let iname = replica_instance_name(r.name());
        let inst = w.instances.get(&iname).cloned();
        let mut next = r.clone();
        match inst.as_ref().map(|i| i.state) {
            Some(s) if s == ImState::Running as i32 => {
                let port = inst.as_ref().and_then(|i| i.ports.first().copied()).unwrap_or(0);
                next.status.state = InstanceState::Running;
                next.status.address = Some(format!("tcp://{node_address}:{port}"));
                next.status.initialized = true;
                next.status.message.clear();
                next.spec.failed_at = None;
            }
            Some(s) if s == ImState::Starting as i32 => next.status.state = InstanceState::Starting,
            other => {
                if other == Some(ImState::Error as i32) {
                    let msg = inst.as_ref().map(|i| i.message.clone()).unwrap_or_default();
                    if next.status.state != InstanceState::Error {
                        rec.events.warning("replica", r.name(), "Failed", msg.clone());
                    }
                    next.status.state = InstanceState::Error;
                    next.status.message = msg;
                    if next.spec.failed_at.is_none() {
                        next.spec.failed_at = Some(chrono::Utc::now().to_rfc3339());
                    }
                }
                next.status.address = None;
                let never_served = other == Some(ImState::Error as i32) && !r.status.initialized;
                if never_served && r.spec.node == rec.node && rec.may_start(&iname) {
                    // It failed before any engine used it (a crash while the replica was being
                    // created leaves a partial directory): start over from an empty directory.
                    match std::fs::remove_dir_all(&r.spec.data_dir) {
                        Ok(()) => rec.events.normal(
                            "replica",
                            r.name(),
                            "Reset",
                            "never served; recreating its directory",
                        ),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => rec.events.warning("replica", r.name(), "ResetFailed", e.to_string()),
                    }
                    rec.restarts.lock().remove(&iname);
                }
                if rec.may_start(&iname) {
                    let mut args =
                        vec!["replica".to_string(), "serve".into(), "--dir".into(), r.spec.data_dir.clone()];
                    if !r.status.initialized {
                        args.extend(["--size".to_string(), r.spec.size.to_string()]);
                    }
                    args.extend(["--listen".to_string(), format!("{node_address}:{{port0}}")]);
                    let req = StartRequest {
                        name: iname.clone(),
                        kind: InstanceKind::Replica as i32,
                        args,
                        port_count: 1,
                        probe_host: node_address.clone(),
                        requested_ports: vec![],
                    };
                    match rec.im.start(req).await {
                        Ok(i) => {
                            w.instances.insert(iname.clone(), i);
                            next.status.state = InstanceState::Starting;
                        }
                        Err(e) if e.kind() == corral_im::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            next.status.state = InstanceState::Error;
                            next.status.message = e.to_string();
                        }
                    }
                }
            }
        }
        if next != *r {
            *r = rec.ds.update(&next).await?;
        }
    }

    // 3. The engine on the attach node.
    let want_engine = v.spec.node_id.as_deref() == Some(rec.node.as_str());
    let einst_name = engine_instance_name(&name);
    let einst = w.instances.get(&einst_name).cloned();
    let mut engine_replicas: Option<Vec<EngineReplica>> = None;
    if want_engine {
        let ready: Vec<&Replica> = replicas
            .iter()
            .filter(|r| r.status.state == InstanceState::Running && r.status.address.is_some())
            .collect();
        if !active(einst.as_ref()) {
            status.endpoint = None;
            status.engine_control_url = None;
            if !ready.is_empty() && rec.may_start(&einst_name) {
                start_engine(rec, v, &ready, engine.as_ref(), w).await?;
            }
        } else if running(einst.as_ref()) {
            let ports = einst.as_ref().map(|i| i.ports.clone()).unwrap_or_default();
            if let [nbd, control, ..] = ports[..] {
                let control_url = format!("http://127.0.0.1:{control}");
                status.endpoint = Some(format!("nbd://127.0.0.1:{nbd}"));
                status.engine_control_url = Some(control_url.clone());
                let client = EngineClient::new(&control_url);
                match client.replicas().await {
                    Ok(list) => {
                        sync_engine_replicas(rec, &client, &list, &replicas).await;
                        engine_replicas = Some(list);
                        if let Ok(info) = client.info().await {
                            status.current_size = info.size;
                            if info.size < v.spec.size {
                                match client.expand(v.spec.size).await {
                                    Ok(()) => rec.events.normal(
                                        "volume",
                                        &name,
                                        "Expanded",
                                        format!("to {} bytes", v.spec.size),
                                    ),
                                    Err(e) => {
                                        rec.events.warning("volume", &name, "ExpandFailed", e.to_string())
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => rec.events.warning("engine", &name, "Unreachable", e.to_string()),
                }
            }
        }
    } else if einst.is_some() || engine.is_some() {
        status.endpoint = None;
        status.engine_control_url = None;
        if einst.is_some() {
            rec.im.delete(&einst_name).await?;
            w.instances.remove(&einst_name);
            rec.events.normal("volume", &name, "Detached", "engine stopped");
        }
        if let Some(e) = &engine {
            delete_record::<Engine>(rec, e).await?;
        }
    }

    // 4. Replica modes as the engine sees them.
    for r in replicas.iter_mut() {
        let mut next = r.clone();
        let seen = engine_replicas
            .as_ref()
            .and_then(|l| l.iter().find(|e| Some(&e.address) == r.status.address.as_ref()));
        next.status.mode = seen.map(|e| match e.mode.as_str() {
            "RW" => ReplicaMode::RW,
            "WO" => ReplicaMode::WO,
            _ => ReplicaMode::ERR,
        });
        next.status.rebuild_progress = seen.map_or(0, |e| e.rebuild_progress);
        if next != *r {
            *r = rec.ds.update(&next).await?;
        }
    }

    // 5. State and robustness.
    let n = v.spec.number_of_replicas as usize;
    let running_replicas = replicas.iter().filter(|r| r.status.state == InstanceState::Running).count();
    (status.state, status.robustness) = if want_engine {
        match &engine_replicas {
            Some(list) => {
                let rw = list.iter().filter(|e| e.mode == "RW").count();
                let robustness = if rw >= n {
                    Robustness::Healthy
                } else if rw > 0 {
                    Robustness::Degraded
                } else {
                    Robustness::Faulted
                };
                (VolumeState::Attached, robustness)
            }
            None => (VolumeState::Attaching, Robustness::Unknown),
        }
    } else if active(einst.as_ref()) {
        (VolumeState::Detaching, Robustness::Unknown)
    } else if replicas.iter().all(|r| r.status.initialized) && replicas.len() >= n {
        let robustness = if running_replicas >= n {
            Robustness::Healthy
        } else if running_replicas > 0 {
            Robustness::Degraded
        } else {
            Robustness::Faulted
        };
        (VolumeState::Detached, robustness)
    } else {
        (VolumeState::Creating, Robustness::Unknown)
    };
    status.current_node = if want_engine { v.spec.node_id.clone() } else { None };
    if status != v.status {
        let mut next = v.clone();
        if next.status.robustness != status.robustness {
            rec.events.normal(
                "volume",
                &name,
                "Robustness",
                format!("{:?}", status.robustness).to_lowercase(),
            );
        }
        next.status = status;
        rec.ds.update(&next).await?;
    }
    Ok(())
}

/// Add running replicas the engine does not have (it rebuilds them: reusing their data when they
/// were members before), and drop the ones it marked ERR so they can be added again.
async fn sync_engine_replicas(
    rec: &Reconciler,
    client: &EngineClient,
    list: &[EngineReplica],
    replicas: &[Replica],
) {
    for e in list.iter().filter(|e| e.mode == "ERR") {
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
    for r in replicas {
        let Some(addr) = &r.status.address else { continue };
        if r.status.state != InstanceState::Running {
            continue;
        }
        let known = list.iter().any(|e| &e.address == addr && e.mode != "ERR");
        if !known {
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
    let mut args = vec![
        "engine".to_string(),
        "serve".into(),
        "--volume".into(),
        name.to_string(),
        "--size".into(),
        size.to_string(),
    ];
    for r in ready {
        if let Some(a) = &r.status.address {
            args.extend(["--replica".to_string(), a.clone()]);
        }
    }
    args.extend([
        "--nbd".to_string(),
        "127.0.0.1:{port0}".into(),
        "--listen".into(),
        "127.0.0.1:{port1}".into(),
    ]);
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
        probe_host: "127.0.0.1".into(),
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
        record.status.endpoint = Some(format!("nbd://127.0.0.1:{nbd}"));
        record.status.control_url = Some(format!("http://127.0.0.1:{control}"));
    }
    record.status.state = InstanceState::Starting;
    let saved = if engine.is_some() { rec.ds.update(&record).await? } else { rec.ds.create(&record).await? };
    w.engines.retain(|e| e.spec.volume != name);
    w.engines.push(saved);
    w.instances.insert(iname, inst);
    Ok(())
}

async fn delete_record<R: Resource>(rec: &Reconciler, r: &R) -> Result<()> {
    match rec.ds.delete::<R>(r.name(), r.metadata().resource_version.as_ref()).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Stop a replica's process, remove it from the engine, delete its directory and record.
async fn remove_replica(rec: &Reconciler, r: &Replica, engine: Option<&Engine>, w: &mut World) -> Result<()> {
    let iname = replica_instance_name(r.name());
    if let (Some(addr), Some(url)) = (&r.status.address, engine.and_then(|e| e.status.control_url.as_ref())) {
        let _ = EngineClient::new(url).remove_replica(addr).await;
    }
    match rec.im.delete(&iname).await {
        Ok(_) => {}
        Err(e) if e.kind() == corral_im::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    w.instances.remove(&iname);
    if r.spec.node == rec.node && !r.spec.data_dir.is_empty() {
        if let Err(e) = std::fs::remove_dir_all(&r.spec.data_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(ManagerError::new(
                    Code::Internal,
                    format!("cannot remove replica directory {}: {e}", r.spec.data_dir),
                ));
            }
        }
    }
    delete_record(rec, r).await?;
    w.replicas.retain(|x| x.name() != r.name());
    Ok(())
}

async fn delete_volume(
    rec: &Reconciler,
    v: &Volume,
    replicas: &[Replica],
    engine: Option<&Engine>,
    w: &mut World,
) -> Result<()> {
    let name = v.name();
    if v.status.state != VolumeState::Deleting {
        let mut next = v.clone();
        next.status.state = VolumeState::Deleting;
        next.status.endpoint = None;
        rec.ds.update(&next).await?;
        return Ok(());
    }
    let einst = engine_instance_name(name);
    if w.instances.contains_key(&einst) {
        rec.im.delete(&einst).await?;
        w.instances.remove(&einst);
    }
    if let Some(e) = engine {
        delete_record(rec, e).await?;
    }
    for r in replicas {
        if r.spec.node == rec.node {
            remove_replica(rec, r, None, w).await?;
        }
    }
    if replicas.iter().all(|r| r.spec.node == rec.node) {
        delete_record(rec, v).await?;
        rec.events.normal("volume", name, "Deleted", "volume, engine and replicas removed");
    }
    Ok(())
}
