//! The volume reconciler: replicas placed by the scheduler and served by `corral replica serve`,
//! an engine (`corral engine serve`) on the attach node, replica failure and rebuild, expand,
//! detach, delete, and the volume's state and robustness.
//!
//! Replica failure, in order: a replica whose process dies (or that its engine marks ERR) gets
//! `failedAt` and is restarted at once; if it cannot come back (its restart failed too, or its node
//! is down) while the volume is attached, a replacement is scheduled right away, away from the
//! failed replica's disk when possible ([`crate::model::scheduler::schedule_replacement`]). Whichever
//! becomes RW first wins: a failed replica that the engine has RW again is reused (its `failedAt`
//! cleared) and a replacement that is no longer needed is removed as surplus once N replicas are
//! RW; a failed replica is deleted (process stopped, directory removed) after
//! `staleReplicaTimeout`. An engine starts only from replicas that were RW before and did not fail
//! (`healthyAt`), so an empty replacement or a stale replica never seeds it.
//!
//! Expand: online through the attached engine; offline (detached) by a short-lived engine
//! (`x-<volume>`) started with the new `--size`, which grows the replicas at start and is stopped
//! once it runs.
//!
//! One pass reconciles each volume in named steps, in this order: [`replicas::remove_stale`],
//! [`replicas::schedule_missing`], [`replicas::run_processes`], [`engine::run_engine`],
//! [`replicas::record_modes`], [`update_status`], [`replicas::remove_surplus`].
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_im::pb::{Instance, InstanceState as ImState};
use corral_store::resources::{
    Engine, InstanceState, Node, Replica, Robustness, Volume, VolumeState, VolumeStatus,
};
use corral_store::{Lease, Resource};

use super::Reconciler;
use corral_api::ReplicaMode as EngineMode;

use crate::clients::engine::EngineReplica;
use crate::error::{Code, Result};
use crate::model::liveness::is_node_ready;
use crate::model::settings::Settings;
use crate::ops::snapshots;

mod engine;
mod replicas;

/// Instance-manager name of a replica's process.
pub fn replica_instance_name(replica: &str) -> String {
    format!("r-{replica}")
}

/// Instance-manager name of a volume's engine process.
pub fn engine_instance_name(volume: &str) -> String {
    format!("e-{volume}")
}

pub(super) fn engine_record_name(volume: &str) -> String {
    format!("{volume}-e")
}

pub(super) fn active(i: Option<&Instance>) -> bool {
    i.is_some_and(|i| i.state == ImState::Starting as i32 || i.state == ImState::Running as i32)
}

pub(super) fn running(i: Option<&Instance>) -> bool {
    i.is_some_and(|i| i.state == ImState::Running as i32)
}

/// Longest time a healthy, unchanged attached volume's engine goes unasked.
pub(super) const ENGINE_IDLE_POLL: Duration = Duration::from_secs(10);

/// The engine's answers at the last poll of a volume.
#[derive(Clone)]
pub(crate) struct EnginePoll {
    pub(super) polled: Instant,
    /// [`fingerprint`] of the volume's records and engine process then.
    pub(super) fingerprint: u64,
    pub(super) replicas: Vec<EngineReplica>,
    pub(super) size: u64,
}

/// What the reconciler remembers of one volume between passes (lost on restart: it only saves
/// work).
#[derive(Default)]
pub(crate) struct VolumeCache {
    pub(super) engine: Option<EnginePoll>,
    /// When the volume's snapshots were last mirrored into the store.
    pub(crate) snapshots_synced: Option<Instant>,
}

/// Changes whenever the volume, one of its replicas or its engine process changes.
pub(super) fn fingerprint(v: &Volume, replicas: &[Replica], engine: Option<&Instance>) -> u64 {
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

pub(super) struct World {
    /// The leader claim when this manager holds it: cluster-wide steps run only then.
    leader: Option<Arc<Lease>>,
    settings: Settings,
    nodes: Vec<Node>,
    replicas: Vec<Replica>,
    engines: Vec<Engine>,
    instances: HashMap<String, Instance>,
}

pub(super) async fn pass(rec: &Reconciler, leader: Option<Arc<Lease>>) -> Result<()> {
    let instances = match rec.im.list().await {
        Ok(list) => list.into_iter().map(|i| (i.name.clone(), i)).collect(),
        Err(e) => {
            rec.events.warning("node", &rec.node, "InstanceManagerDown", e.to_string());
            return Err(e.into());
        }
    };
    let mut world = World {
        leader,
        settings: Settings::load(&rec.ds).await?,
        nodes: rec.ds.list().await?,
        replicas: rec.ds.list().await?,
        engines: rec.ds.list().await?,
        instances,
    };
    remove_requested_replicas(rec, &mut world).await?;
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
    pub(super) fn may_start(&self, instance: &str) -> bool {
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

/// Reconcile one volume, step by step (see the module doc).
async fn reconcile(rec: &Reconciler, v: &Volume, w: &mut World) -> Result<()> {
    let name = v.name().to_string();
    // A replica whose removal was asked for is its node's to remove; it no longer counts.
    let mut replicas: Vec<Replica> = w
        .replicas
        .iter()
        .filter(|r| r.spec.volume == name && r.metadata.deletion_requested.is_none())
        .cloned()
        .collect();
    replicas.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let engine = w.engines.iter().find(|e| e.spec.volume == name).cloned();

    if v.metadata.deletion_requested.is_some() {
        return delete_volume(rec, v, &replicas, engine.as_ref(), w).await;
    }
    if replicas::remove_stale(rec, v, &replicas, engine.as_ref(), w).await? {
        rec.wake.notify_one();
        return Ok(());
    }
    let mut status = v.status.clone();
    replicas::schedule_missing(rec, v, &mut replicas, &mut status, w).await?;
    replicas::run_processes(rec, v, &mut replicas, w).await?;
    // Whether the engine process was active before this pass may stop it (a detaching volume).
    let engine_was_active = active(w.instances.get(&engine_instance_name(&name)));
    let engine_replicas = engine::run_engine(rec, v, &replicas, engine.as_ref(), &mut status, w).await?;
    // The attach node owns the volume's status and its replicas' modes; the leader owns them
    // while no node that is up has the volume attached.
    let owner = match v.spec.node_id.as_deref() {
        Some(node) if is_node_ready(&w.nodes, node) => node == rec.node,
        _ => w.leader.is_some(),
    };
    if !owner {
        return Ok(());
    }
    replicas::record_modes(rec, &mut replicas, engine_replicas.as_deref(), status.current_size).await?;
    // The engine's node stops it and then deletes its record: detaching until then.
    let engine_stopping = engine_was_active
        || engine.as_ref().is_some_and(|e| e.spec.node != rec.node && is_node_ready(&w.nodes, &e.spec.node));
    update_status(rec, v, &replicas, engine_replicas.as_deref(), engine_stopping, status, w).await?;
    if engine_replicas.is_some() {
        replicas::remove_surplus(rec, v, &replicas, engine.as_ref(), w).await?;
    }
    Ok(())
}

/// Step 5: the volume's state and robustness, from the engine's view of its replicas when attached
/// and from the replica processes otherwise; the restore condition; written when changed.
async fn update_status(
    rec: &Reconciler,
    v: &Volume,
    replicas: &[Replica],
    engine_replicas: Option<&[EngineReplica]>,
    engine_stopping: bool,
    mut status: VolumeStatus,
    w: &World,
) -> Result<()> {
    let name = v.name();
    let n = v.spec.number_of_replicas as usize;
    let want_engine = v.spec.node_id.as_deref() == Some(rec.node.as_str());
    let running_replicas = replicas.iter().filter(|r| r.status.state == InstanceState::Running).count();
    (status.state, status.robustness) = if want_engine {
        match engine_replicas {
            Some(list) => {
                let rw = list
                    .iter()
                    .filter(|e| e.mode == EngineMode::ReadWrite && engine::serving(e, replicas))
                    .count();
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
    } else if engine_stopping {
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
    super::restore::restore_status(rec, v, replicas, &w.instances, &mut status).await;
    if status != v.status {
        let mut next = v.clone();
        if next.status.robustness != status.robustness {
            rec.events.normal(
                "volume",
                name,
                "Robustness",
                format!("{:?}", status.robustness).to_lowercase(),
            );
        }
        next.status = status;
        rec.ds.update(&next).await?;
    }
    Ok(())
}

/// Instance-manager name of the short-lived engine that expands a detached volume's replicas.
pub(super) fn expander_instance_name(volume: &str) -> String {
    format!("x-{volume}")
}

pub(super) async fn delete_record<R: Resource>(rec: &Reconciler, r: &R) -> Result<()> {
    match rec.ds.delete::<R>(r.name(), r.metadata().resource_version.as_ref()).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
/// Removes this node's replicas whose removal another node asked for (see
/// [`replicas::remove_replica`]), and the processes of replicas of this node that have no record
/// any more (their records were removed while the node was down).
async fn remove_requested_replicas(rec: &Reconciler, w: &mut World) -> Result<()> {
    let requested: Vec<Replica> = w
        .replicas
        .iter()
        .filter(|r| r.spec.node == rec.node && r.metadata.deletion_requested.is_some())
        .cloned()
        .collect();
    for r in requested {
        let engine = w.engines.iter().find(|e| e.spec.volume == r.spec.volume).cloned();
        replicas::remove_replica(rec, &r, engine.as_ref(), w).await?;
    }
    let orphans: Vec<String> = w
        .instances
        .keys()
        .filter(|i| {
            i.strip_prefix("r-").is_some_and(|name| !w.replicas.iter().any(|r| r.metadata.name == name))
        })
        .cloned()
        .collect();
    for i in orphans {
        rec.im.delete(&i).await?;
        w.instances.remove(&i);
        rec.events.normal("node", &rec.node, "OrphanStopped", format!("replica process {i} has no record"));
    }
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
        // A down node's replicas are forgotten by the leader: the node removes what is left of
        // their processes when it comes back (their records are gone).
        let gone_node = w.leader.is_some() && !is_node_ready(&w.nodes, &r.spec.node);
        if r.spec.node == rec.node || gone_node {
            replicas::remove_replica(rec, r, None, w).await?;
        }
    }
    let others_left = w.replicas.iter().any(|r| r.spec.volume == name && r.spec.node != rec.node);
    if !others_left {
        snapshots::forget(&rec.ds, name).await?;
        rec.volume_cache.lock().remove(name);
        delete_record(rec, v).await?;
        rec.events.normal("volume", name, "Deleted", "volume, engine and replicas removed");
    }
    Ok(())
}
