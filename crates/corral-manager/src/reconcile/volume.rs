//! The volume reconciler: replicas placed by the scheduler and served by `corral replica serve`,
//! an engine (`corral engine serve`) on the attach node, replica failure and rebuild, expand,
//! detach, delete, and the volume's state and robustness.
//!
//! Replica failure, in order: a replica whose process dies (or that its engine marks ERR) gets
//! `failedAt` and is restarted at once; if it cannot come back (its restart failed too, or its node
//! is down) while the volume is attached, a replacement is scheduled right away, away from the
//! failed replica's disk when possible ([`crate::scheduler::schedule_replacement`]). Whichever
//! becomes RW first wins: a failed replica that the engine has RW again is reused (its `failedAt`
//! cleared) and a replacement that is no longer needed is removed as surplus once N replicas are
//! RW; a failed replica is deleted (process stopped, directory removed) after
//! `staleReplicaTimeout`. An engine starts only from replicas that were RW before and did not fail
//! (`healthyAt`), so an empty replacement or a stale replica never seeds it.
//!
//! Expand: online through the attached engine; offline (detached) by a short-lived engine
//! (`x-<volume>`) started with the new `--size`, which grows the replicas at start and is stopped
//! once it runs.
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
use crate::scheduler::{schedule_replacement, schedule_replica, SchedulerSettings, VolumeRequest};
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

/// Longest time a healthy, unchanged attached volume's engine goes unasked.
const ENGINE_IDLE_POLL: Duration = Duration::from_secs(10);

/// The engine's answers at the last poll of a volume.
#[derive(Clone)]
pub(crate) struct EnginePoll {
    polled: Instant,
    /// [`fingerprint`] of the volume's records and engine process then.
    fingerprint: u64,
    replicas: Vec<EngineReplica>,
    size: u64,
}

/// What the reconciler remembers of one volume between passes (lost on restart: it only saves
/// work).
#[derive(Default)]
pub(crate) struct VolumeCache {
    engine: Option<EnginePoll>,
    /// When the volume's snapshots were last mirrored into the store.
    pub(crate) snapshots_synced: Option<Instant>,
}

/// Changes whenever the volume, one of its replicas or its engine process changes.
fn fingerprint(v: &Volume, replicas: &[Replica], engine: Option<&Instance>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.metadata.resource_version.hash(&mut h);
    for r in replicas {
        r.metadata.resource_version.hash(&mut h);
    }
    engine.map(|e| (e.revision, e.pid)).hash(&mut h);
    h.finish()
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
    // A replica is usable unless it failed and is not on its way back (its process running or
    // starting again on a ready node, and not ERR in the engine). While the volume is attached, a
    // replacement for every unusable one is scheduled right away; the failed one is kept (and
    // reused if it comes back) until staleReplicaTimeout. At most 2N records, so a replica that
    // keeps failing cannot make them pile up.
    let n = v.spec.number_of_replicas as usize;
    let usable_count = replicas.iter().filter(|r| usable(rec, r, &w.nodes)).count();
    let replace = v.spec.node_id.is_some() && usable_count < n && replicas.len() < 2 * n;
    if replicas.len() < n || replace {
        let req = VolumeRequest {
            volume: &name,
            size: v.spec.size,
            node_selector: &v.spec.node_selector,
            disk_selector: &v.spec.disk_selector,
            data_locality: v.spec.data_locality,
            attach_node: v.spec.node_id.as_deref(),
        };
        let placed = crate::api::placed_replicas(&w.replicas);
        let settings = SchedulerSettings::from(&w.settings);
        let failed: Vec<Replica> = replicas.iter().filter(|r| !usable(rec, r, &w.nodes)).cloned().collect();
        let result = if replicas.len() < n {
            schedule_replica(&req, &w.nodes, &placed, settings)
        } else {
            schedule_replacement(&req, &w.nodes, &placed, &crate::api::placed_replicas(&failed), settings)
        };
        match result {
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
                let why = if failed.is_empty() {
                    String::new()
                } else {
                    let names: Vec<&str> = failed.iter().map(|f| f.name()).collect();
                    format!(" to replace failed {}", names.join(", "))
                };
                rec.events.normal(
                    "volume",
                    &name,
                    "Scheduled",
                    format!("replica {rname} on {}/{}{why}", p.node, p.disk),
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
    let usable_now: Vec<(String, bool)> =
        replicas.iter().map(|r| (r.name().to_string(), usable(rec, r, &w.nodes))).collect();
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
                // While attached, a failed replica counts as back once its engine has it RW again
                // (step 4); while detached, a running process is all there is to check.
                if v.spec.node_id.is_none() {
                    next.spec.failed_at = None;
                }
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
                // A failed replica is restarted (to be reused) only while the volume needs it.
                let others_usable =
                    usable_now.iter().filter(|(rn, ok)| *ok && rn.as_str() != r.name()).count();
                if next.spec.failed_at.is_some() && others_usable >= n {
                    if next != *r {
                        *r = rec.ds.update(&next).await?;
                    }
                    continue;
                }
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
                // A fromBackup replica starts only once its restore job has built its directory.
                let restoring = super::backup::restore_pending(rec, v, r, &w.instances).await?;
                if !restoring && rec.may_start(&iname) {
                    let mut args =
                        vec!["replica".to_string(), "serve".into(), "--dir".into(), r.spec.data_dir.clone()];
                    let restored = v.spec.from_backup.is_some() && !v.status.restore_done;
                    if !r.status.initialized && !restored {
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
        let ready = engine_members(&replicas);
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
                // A healthy volume whose records and engine process did not change since the
                // engine was last asked is asked again only every ENGINE_IDLE_POLL: with hundreds
                // of volumes attached, polling each on every pass is most of an idle node's CPU.
                let fp = fingerprint(v, &replicas, einst.as_ref());
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
                        sync_engine_replicas(rec, &client, &list, &replicas, n).await;
                        let due = rec
                            .volume_cache
                            .lock()
                            .get(&name)
                            .and_then(|c| c.snapshots_synced)
                            .is_none_or(|t| t.elapsed() >= crate::snapshots::RESYNC);
                        if due {
                            match crate::snapshots::refresh(&rec.ds, &name, &client).await {
                                Ok(_) => {
                                    rec.volume_cache
                                        .lock()
                                        .entry(name.clone())
                                        .or_default()
                                        .snapshots_synced = Some(Instant::now());
                                }
                                Err(e) => {
                                    rec.events.warning("volume", &name, "SnapshotSyncFailed", e.to_string())
                                }
                            }
                        }
                        engine_replicas = Some(list.clone());
                        if let Ok(info) = client.info().await {
                            rec.volume_cache.lock().entry(name.clone()).or_default().engine =
                                Some(EnginePoll {
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
                                    Err(e) => {
                                        rec.events.warning("volume", &name, "ExpandFailed", e.to_string())
                                    }
                                }
                            }
                        }
                    }
                    Some(Err(e)) => rec.events.warning("engine", &name, "Unreachable", e.to_string()),
                }
            }
        }
    } else if let Some(x) = expand_offline(rec, v, &replicas, w, active(einst.as_ref())).await? {
        status.current_size = x;
    }
    if !want_engine && (einst.is_some() || engine.is_some()) {
        status.endpoint = None;
        status.engine_control_url = None;
        if einst.is_some() {
            rec.im.delete(&einst_name).await?;
            w.instances.remove(&einst_name);
            rec.events.normal("volume", &name, "Detached", "engine stopped");
            rec.volume_cache.lock().remove(&name);
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
        match next.status.mode {
            Some(ReplicaMode::ERR) if next.spec.failed_at.is_none() => {
                next.spec.failed_at = Some(chrono::Utc::now().to_rfc3339());
                rec.events.warning("replica", r.name(), "Failed", "the engine marked it ERR");
            }
            Some(ReplicaMode::RW) if next.spec.failed_at.is_some() => {
                next.spec.failed_at = None;
                rec.events.normal("replica", r.name(), "Reused", "rebuilt from its own data; RW again");
            }
            _ => {}
        }
        if next.status.mode == Some(ReplicaMode::RW) && next.status.healthy_at.is_none() {
            next.status.healthy_at = Some(chrono::Utc::now().to_rfc3339());
        }
        // A replica the engine serves has the engine's size (after an online expand).
        if seen.is_some() && status.current_size > next.spec.size {
            next.spec.size = status.current_size;
        }
        if next != *r {
            *r = rec.ds.update(&next).await?;
        }
    }

    // 5. State and robustness.
    let running_replicas = replicas.iter().filter(|r| r.status.state == InstanceState::Running).count();
    (status.state, status.robustness) = if want_engine {
        match &engine_replicas {
            Some(list) => {
                let rw = list.iter().filter(|e| e.mode == "RW" && serving(e, &replicas)).count();
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
    super::backup::restore_status(rec, v, &replicas, &w.instances, &mut status).await;
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

    // 6. Surplus: once N replicas are RW, replicas beyond them that did not fail (a replacement
    // that lost the race against a failed replica coming back, or an extra one) are removed. Failed
    // ones wait for staleReplicaTimeout.
    if engine_replicas.is_some() {
        let mut rw: Vec<&Replica> =
            replicas.iter().filter(|r| r.status.mode == Some(ReplicaMode::RW)).collect();
        if rw.len() >= n {
            rw.sort_by(|a, b| (&a.metadata.created, a.name()).cmp(&(&b.metadata.created, b.name())));
            let keep: Vec<&str> = rw[..n].iter().map(|r| r.name()).collect();
            let surplus: Vec<Replica> = replicas
                .iter()
                .filter(|r| !keep.contains(&r.name()) && r.spec.failed_at.is_none())
                .cloned()
                .collect();
            for r in &surplus {
                rec.events.normal(
                    "replica",
                    r.name(),
                    "Surplus",
                    format!("{name} has {n} RW replicas without it"),
                );
                remove_replica(rec, r, engine.as_ref(), w).await?;
            }
        }
    }
    Ok(())
}

/// Whether `r` counts toward the volume's replicas: not failed, or failed but coming back: on a
/// ready node, its process starting or running again (an engine that marked it ERR gets it back),
/// or, on this node, not restarted since it failed (the restart waits for its back-off).
fn usable(rec: &Reconciler, r: &Replica, nodes: &[Node]) -> bool {
    let Some(failed_at) = r.spec.failed_at.as_deref() else { return true };
    let node_ready = nodes
        .iter()
        .find(|n| n.metadata.name == r.spec.node)
        .is_some_and(|n| !n.status.conditions.iter().any(|c| c.kind == ConditionType::Ready && !c.status));
    if !node_ready {
        return false;
    }
    if matches!(r.status.state, InstanceState::Starting | InstanceState::Running) {
        return true;
    }
    if r.spec.node != rec.node {
        return false;
    }
    let failed_for = chrono::DateTime::parse_from_rfc3339(failed_at)
        .ok()
        .and_then(|t| chrono::Utc::now().signed_duration_since(t).to_std().ok())
        .unwrap_or_default();
    let restarted_since =
        rec.restarts.lock().get(&replica_instance_name(r.name())).is_some_and(|t| t.elapsed() < failed_for);
    !restarted_since
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
fn serving(e: &EngineReplica, replicas: &[Replica]) -> bool {
    replicas
        .iter()
        .any(|r| r.status.address.as_ref() == Some(&e.address) && r.status.state == InstanceState::Running)
}

/// Instance-manager name of the short-lived engine that expands a detached volume's replicas.
fn expander_instance_name(volume: &str) -> String {
    format!("x-{volume}")
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
            let info = EngineClient::new(&format!("http://127.0.0.1:{control}")).info().await?;
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
            let args = engine_serve_args(name, v.spec.size, members.iter().copied());
            let req = StartRequest {
                name: xname.clone(),
                kind: InstanceKind::Engine as i32,
                args,
                port_count: 2,
                probe_host: "127.0.0.1".into(),
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
    for e in list.iter().filter(|e| e.mode == "ERR" || gone(e)) {
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
    let rw = list.iter().filter(|e| e.mode == "RW" && serving(e, replicas)).count();
    let mut candidates: Vec<&Replica> = replicas
        .iter()
        .filter(|r| r.status.state == InstanceState::Running && r.status.address.is_some())
        .filter(|r| !list.iter().any(|e| Some(&e.address) == r.status.address.as_ref() && e.mode != "ERR"))
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
/// address; the NBD port and the control port are the instance manager's `{port0}` and `{port1}`.
fn engine_serve_args<'a>(
    volume: &str,
    size: u64,
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
        "127.0.0.1:{port0}".into(),
        "--listen".into(),
        "127.0.0.1:{port1}".into(),
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
    let args = engine_serve_args(name, size, ready.iter().copied());
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
    for inst in [engine_instance_name(name), expander_instance_name(name)] {
        if w.instances.contains_key(&inst) {
            rec.im.delete(&inst).await?;
            w.instances.remove(&inst);
        }
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
        crate::snapshots::forget(&rec.ds, name).await?;
        rec.volume_cache.lock().remove(name);
        delete_record(rec, v).await?;
        rec.events.normal("volume", name, "Deleted", "volume, engine and replicas removed");
    }
    Ok(())
}
