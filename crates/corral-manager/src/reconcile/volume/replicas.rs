//! The replica steps of a volume's reconcile: stale replicas removed, missing ones scheduled, the
//! processes of this node's replicas run, their modes recorded as the engine sees them, and surplus
//! replicas removed once enough are RW.
use corral_im::pb::{InstanceKind, InstanceState as ImState, StartRequest};
use corral_store::resources::{
    set_condition, ConditionType, Engine, InstanceState, Replica, ReplicaMode, ReplicaSpec, Volume,
    VolumeStatus,
};
use corral_store::{Guarded, Resource};
use std::time::Duration;

use super::{delete_record, replica_instance_name, World};
use corral_api::ReplicaMode as EngineMode;

use crate::clients::engine::{EngineClient, EngineReplica};
use crate::error::{Code, ManagerError, Result};
use crate::model::liveness::is_node_ready;
use crate::model::scheduler::{
    placed_replicas, schedule_replacement, schedule_replica, SchedulerSettings, VolumeRequest,
};
use crate::model::settings::REPLICA_REPLENISHMENT_WAIT_INTERVAL;
use crate::reconcile::restore::restore_pending;
use crate::reconcile::Reconciler;

/// Step 1a: delete this node's replicas that failed longer than `staleReplicaTimeout` ago. Returns
/// true when one was deleted (the pass for this volume ends there; the next one goes on).
pub(super) async fn remove_stale(
    rec: &Reconciler,
    v: &Volume,
    replicas: &[Replica],
    engine: Option<&Engine>,
    w: &mut World,
) -> Result<bool> {
    let stale_after = Duration::from_secs(v.spec.stale_replica_timeout.saturating_mul(60));
    for r in replicas {
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
            remove_replica(rec, r, engine, w).await?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Step 1b: enough replicas, placed by the scheduler. The record comes first; its process follows.
pub(super) async fn schedule_missing(
    rec: &Reconciler,
    v: &Volume,
    replicas: &mut Vec<Replica>,
    status: &mut VolumeStatus,
    w: &mut World,
) -> Result<()> {
    let name = v.name().to_string();
    // A replica is usable unless it failed and is not on its way back (its process running or
    // starting again on a ready node, and not ERR in the engine). While the volume is attached, a
    // replacement for every unusable one is scheduled right away; the failed one is kept (and
    // reused if it comes back) until staleReplicaTimeout. At most 2N records, so a replica that
    // keeps failing cannot make them pile up.
    let n = v.spec.number_of_replicas as usize;
    // Placing replicas is the leader's work, and its writes are guarded by its claim.
    let Some(leader) = w.leader.clone() else { return Ok(()) };
    let usable_count = replicas.iter().filter(|r| usable(rec, r, w)).count();
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
        let placed = placed_replicas(&w.replicas);
        let settings = SchedulerSettings::from(&w.settings);
        let failed: Vec<Replica> = replicas.iter().filter(|r| !usable(rec, r, w)).cloned().collect();
        let result = if replicas.len() < n {
            schedule_replica(&req, &w.nodes, &placed, settings)
        } else {
            schedule_replacement(&req, &w.nodes, &placed, &placed_replicas(&failed), settings)
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
                let created = rec
                    .ds
                    .create_guarded(rec.claims.leases(), &leader, &Replica::new(rname.clone(), spec))
                    .await?;
                let Guarded::Written(r) = created else {
                    // No longer the leader: the new one places the replica.
                    return Ok(());
                };
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
    Ok(())
}

/// Step 2: the processes of this node's replicas: started (after a restore when the volume comes
/// from a backup), restarted after a failure while the volume needs them, their state recorded.
pub(super) async fn run_processes(
    rec: &Reconciler,
    v: &Volume,
    replicas: &mut [Replica],
    w: &mut World,
) -> Result<()> {
    let n = v.spec.number_of_replicas as usize;
    let node_address = rec.node_address.clone();
    let usable_now: Vec<(String, bool)> =
        replicas.iter().map(|r| (r.name().to_string(), usable(rec, r, w))).collect();
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
                let restoring = restore_pending(rec, v, r, &w.instances).await?;
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
    Ok(())
}

/// Step 4: replica modes as the engine sees them (`engine_replicas`, None when no engine answered).
pub(super) async fn record_modes(
    rec: &Reconciler,
    replicas: &mut [Replica],
    engine_replicas: Option<&[EngineReplica]>,
    current_size: u64,
) -> Result<()> {
    for r in replicas.iter_mut() {
        let mut next = r.clone();
        let seen =
            engine_replicas.and_then(|l| l.iter().find(|e| Some(&e.address) == r.status.address.as_ref()));
        next.status.mode = match seen {
            Some(e) => Some(match e.mode {
                EngineMode::ReadWrite => ReplicaMode::RW,
                EngineMode::WriteOnly => ReplicaMode::WO,
                EngineMode::Error => ReplicaMode::ERR,
            }),
            // A replica marked ERR when its node went down stays ERR until an engine has it again.
            None if r.status.mode == Some(ReplicaMode::ERR)
                && r.spec.failed_at.is_some()
                && r.status.state == InstanceState::Error =>
            {
                Some(ReplicaMode::ERR)
            }
            None => None,
        };
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
        if seen.is_some() && current_size > next.spec.size {
            next.spec.size = current_size;
        }
        if next != *r {
            *r = rec.ds.update(&next).await?;
        }
    }
    Ok(())
}

/// Step 6, surplus: once N replicas are RW, replicas beyond them that did not fail (a replacement
/// that lost the race against a failed replica coming back, or an extra one) are removed. Failed
/// ones wait for staleReplicaTimeout.
pub(super) async fn remove_surplus(
    rec: &Reconciler,
    v: &Volume,
    replicas: &[Replica],
    engine: Option<&Engine>,
    w: &mut World,
) -> Result<()> {
    let name = v.name();
    let n = v.spec.number_of_replicas as usize;
    let mut rw: Vec<&Replica> = replicas.iter().filter(|r| r.status.mode == Some(ReplicaMode::RW)).collect();
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
            remove_replica(rec, r, engine, w).await?;
        }
    }
    Ok(())
}

/// Whether `r` counts toward the volume's replicas: not failed, or failed but coming back: on a
/// ready node, its process starting or running again (an engine that marked it ERR gets it back),
/// or, on this node, not restarted since it failed (the restart waits for its back-off); on a down
/// node, until `replica-replenishment-wait-interval` passed since it failed (the node may return
/// with the replica's data).
fn usable(rec: &Reconciler, r: &Replica, w: &World) -> bool {
    let Some(failed_at) = r.spec.failed_at.as_deref() else { return true };
    let failed_for = chrono::DateTime::parse_from_rfc3339(failed_at)
        .ok()
        .and_then(|t| chrono::Utc::now().signed_duration_since(t).to_std().ok())
        .unwrap_or_default();
    if !is_node_ready(&w.nodes, &r.spec.node) {
        let wait = Duration::from_secs(w.settings.int(REPLICA_REPLENISHMENT_WAIT_INTERVAL));
        return w.nodes.iter().any(|n| n.metadata.name == r.spec.node) && failed_for < wait;
    }
    if matches!(r.status.state, InstanceState::Starting | InstanceState::Running) {
        return true;
    }
    if r.spec.node != rec.node {
        return false;
    }
    let restarted_since =
        rec.restarts.lock().get(&replica_instance_name(r.name())).is_some_and(|t| t.elapsed() < failed_for);
    !restarted_since
}

/// Stop a replica's process, remove it from the engine, delete its directory and record. A
/// replica of another node (that is up) is removed from the engine and its removal asked for
/// (`deletionRequested`): its process and directory are that node's to remove.
pub(super) async fn remove_replica(
    rec: &Reconciler,
    r: &Replica,
    engine: Option<&Engine>,
    w: &mut World,
) -> Result<()> {
    let iname = replica_instance_name(r.name());
    if let (Some(addr), Some(url)) = (&r.status.address, engine.and_then(|e| e.status.control_url.as_ref())) {
        let _ = EngineClient::new(url).remove_replica(addr).await;
    }
    if r.spec.node != rec.node && is_node_ready(&w.nodes, &r.spec.node) {
        if r.metadata.deletion_requested.is_none() {
            let mut next = r.clone();
            next.metadata.deletion_requested = Some(chrono::Utc::now().to_rfc3339());
            let saved = rec.ds.update(&next).await?;
            w.replicas.retain(|x| x.name() != r.name());
            w.replicas.push(saved);
        }
        return Ok(());
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
