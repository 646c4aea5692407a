//! The replica scheduler: a pure function from the cluster's nodes, disks and existing replicas to
//! the disk a new replica of a volume goes on, or a reason why none can take it.
//!
//! Rules, in order:
//! 1. Only nodes and disks with scheduling enabled, carrying every tag of the volume's node/disk
//!    selector, whose node is not reported not-ready and whose disk reported its capacity.
//! 2. Space: a disk takes no replica when its free space minus `storageReserved` is below
//!    `storage-minimal-available-percentage` of its size, or when the sizes of the replicas
//!    scheduled on it plus this one exceed (size − reserved) × `storage-over-provisioning-percentage`.
//! 3. Anti-affinity: replicas of one volume go on different nodes. When no such node is left and
//!    `replica-soft-anti-affinity` is on, a node (preferably a disk) that already holds one is used.
//! 4. `dataLocality: best-effort`: when the volume is attached to a node without a replica of it,
//!    that node is preferred.
//! 5. Otherwise spread: fewest replicas of this volume on the disk and node, then the most
//!    provisionable space left, then names (deterministic).
use std::collections::BTreeMap;

use corral_store::resources::{ConditionType, DataLocality, Node, Replica};

use crate::model::settings::{self, Settings};

/// The settings the scheduler reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerSettings {
    pub soft_anti_affinity: bool,
    pub over_provisioning_percentage: u64,
    pub minimal_available_percentage: u64,
}

impl From<&Settings> for SchedulerSettings {
    fn from(s: &Settings) -> Self {
        SchedulerSettings {
            soft_anti_affinity: s.bool(settings::REPLICA_SOFT_ANTI_AFFINITY),
            over_provisioning_percentage: s.int(settings::OVER_PROVISIONING_PERCENTAGE),
            minimal_available_percentage: s.int(settings::MINIMAL_AVAILABLE_PERCENTAGE),
        }
    }
}

/// What is being placed.
#[derive(Debug, Clone)]
pub struct VolumeRequest<'a> {
    pub volume: &'a str,
    pub size: u64,
    pub node_selector: &'a [String],
    pub disk_selector: &'a [String],
    pub data_locality: DataLocality,
    pub attach_node: Option<&'a str>,
}

/// A replica that exists (or was just placed), as the scheduler counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedReplica {
    pub volume: String,
    pub node: String,
    pub disk: String,
    pub size: u64,
}

/// Where a new replica goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node: String,
    pub disk: String,
}

/// Why a replica could not be placed; `Display` gives `scheduling failed: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scheduling failed: {reason}")]
pub struct SchedulingFailure {
    pub reason: String,
}

struct Candidate<'a> {
    node: &'a str,
    disk: &'a str,
    provisionable_left: u64,
}

fn mib(n: u64) -> String {
    format!("{} MiB", n >> 20)
}

/// Place one replica of `req` given the existing replicas of every volume.
pub fn schedule_replica(
    req: &VolumeRequest<'_>,
    nodes: &[Node],
    existing: &[PlacedReplica],
    s: SchedulerSettings,
) -> Result<Placement, SchedulingFailure> {
    let mut scheduled: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for r in existing {
        *scheduled.entry((r.node.as_str(), r.disk.as_str())).or_default() += r.size;
    }
    let mine = |node: &str, disk: Option<&str>| {
        existing
            .iter()
            .filter(|r| r.volume == req.volume && r.node == node && disk.is_none_or(|d| r.disk == d))
            .count()
    };
    let mut rejected: Vec<String> = Vec::new();
    let mut candidates: Vec<Candidate<'_>> = Vec::new();
    if nodes.is_empty() {
        return Err(SchedulingFailure { reason: "no node is registered".into() });
    }
    for node in nodes {
        let n = node.metadata.name.as_str();
        if !node.spec.allow_scheduling {
            rejected.push(format!("node {n}: scheduling disabled"));
            continue;
        }
        if node.status.conditions.iter().any(|c| c.kind == ConditionType::Ready && !c.status) {
            rejected.push(format!("node {n}: not ready"));
            continue;
        }
        if let Some(tag) = req.node_selector.iter().find(|t| !node.spec.tags.contains(t)) {
            rejected.push(format!("node {n}: no tag {tag:?}"));
            continue;
        }
        if node.spec.disks.is_empty() {
            rejected.push(format!("node {n}: no disk"));
        }
        for (d, disk) in &node.spec.disks {
            if !disk.allow_scheduling {
                rejected.push(format!("disk {n}/{d}: scheduling disabled"));
                continue;
            }
            if let Some(tag) = req.disk_selector.iter().find(|t| !disk.tags.contains(t)) {
                rejected.push(format!("disk {n}/{d}: no tag {tag:?}"));
                continue;
            }
            let Some(status) = node.status.disks.get(d) else {
                rejected.push(format!("disk {n}/{d}: capacity not reported yet"));
                continue;
            };
            let max = status.storage_maximum;
            let free = status.storage_available.saturating_sub(disk.storage_reserved);
            if u128::from(free) * 100 < u128::from(max) * u128::from(s.minimal_available_percentage) {
                rejected.push(format!(
                    "disk {n}/{d}: {} free after {} reserved is below {}% of {}",
                    mib(free),
                    mib(disk.storage_reserved),
                    s.minimal_available_percentage,
                    mib(max)
                ));
                continue;
            }
            let usable = max.saturating_sub(disk.storage_reserved);
            let limit = u64::try_from(u128::from(usable) * u128::from(s.over_provisioning_percentage) / 100)
                .unwrap_or(u64::MAX);
            let already = scheduled.get(&(n, d.as_str())).copied().unwrap_or(0);
            if already.saturating_add(req.size) > limit {
                rejected.push(format!(
                    "disk {n}/{d}: {} scheduled + {} exceeds {} ({}% of {} usable)",
                    mib(already),
                    mib(req.size),
                    mib(limit),
                    s.over_provisioning_percentage,
                    mib(usable)
                ));
                continue;
            }
            candidates.push(Candidate { node: n, disk: d, provisionable_left: limit - already - req.size });
        }
    }
    if candidates.is_empty() {
        rejected.truncate(4);
        return Err(SchedulingFailure {
            reason: format!(
                "no disk can take a {} replica of {}: {}",
                mib(req.size),
                req.volume,
                rejected.join("; ")
            ),
        });
    }
    let fresh: Vec<&Candidate<'_>> = candidates.iter().filter(|c| mine(c.node, None) == 0).collect();
    let pool: Vec<&Candidate<'_>> = if !fresh.is_empty() {
        fresh
    } else if s.soft_anti_affinity {
        candidates.iter().collect()
    } else {
        let mut nodes: Vec<&str> = candidates.iter().map(|c| c.node).collect();
        nodes.dedup();
        return Err(SchedulingFailure {
            reason: format!(
                "every schedulable node ({}) already holds a replica of {} and {} is off",
                nodes.join(", "),
                req.volume,
                settings::REPLICA_SOFT_ANTI_AFFINITY
            ),
        });
    };
    let local: Vec<&Candidate<'_>> = match (req.data_locality, req.attach_node) {
        (DataLocality::BestEffort, Some(an)) if mine(an, None) == 0 => {
            pool.iter().copied().filter(|c| c.node == an).collect()
        }
        _ => Vec::new(),
    };
    let pool = if local.is_empty() { pool } else { local };
    let best = pool
        .into_iter()
        .min_by(|a, b| {
            (
                mine(a.node, Some(a.disk)),
                mine(a.node, None),
                std::cmp::Reverse(a.provisionable_left),
                a.node,
                a.disk,
            )
                .cmp(&(
                    mine(b.node, Some(b.disk)),
                    mine(b.node, None),
                    std::cmp::Reverse(b.provisionable_left),
                    b.node,
                    b.disk,
                ))
        })
        .ok_or_else(|| SchedulingFailure { reason: "no candidate".into() })?;
    Ok(Placement { node: best.node.to_string(), disk: best.disk.to_string() })
}

/// Place `count` replicas one after another (each counts for the next). All or nothing.
pub fn schedule_replicas(
    req: &VolumeRequest<'_>,
    count: u32,
    nodes: &[Node],
    existing: &[PlacedReplica],
    s: SchedulerSettings,
) -> Result<Vec<Placement>, SchedulingFailure> {
    let mut existing = existing.to_vec();
    let mut out = Vec::new();
    for i in 0..count {
        let p = schedule_replica(req, nodes, &existing, s).map_err(|f| SchedulingFailure {
            reason: format!("replica {} of {count}: {}", i + 1, f.reason),
        })?;
        existing.push(PlacedReplica {
            volume: req.volume.to_string(),
            node: p.node.clone(),
            disk: p.disk.clone(),
            size: req.size,
        });
        out.push(p);
    }
    Ok(out)
}

/// Place a replacement for failed replicas of `req.volume` (they are in `existing` too).
///
/// Preference, first that places: (1) a disk holding no replica of the volume, failed ones
/// included, with the failed replicas still counted for anti-affinity; (2) any disk,
/// failed replicas counted; (3) failed replicas not counted, so that with hard anti-affinity the
/// node of a failed replica can take its replacement when no other node can.
pub fn schedule_replacement(
    req: &VolumeRequest<'_>,
    nodes: &[Node],
    existing: &[PlacedReplica],
    failed: &[PlacedReplica],
    s: SchedulerSettings,
) -> Result<Placement, SchedulingFailure> {
    let on_failed_disk = |n: &str, d: &str| failed.iter().any(|f| f.node == n && f.disk == d);
    let mut avoiding = nodes.to_vec();
    for n in &mut avoiding {
        let name = n.metadata.name.clone();
        n.spec.disks.retain(|d, _| !on_failed_disk(&name, d));
    }
    if let Ok(p) = schedule_replica(req, &avoiding, existing, s) {
        // Only a disk free of this volume is worth avoiding the failed ones for: stacking on a
        // healthy replica's disk is worse than reusing a failed replica's.
        if !existing.iter().any(|e| e.volume == req.volume && e.node == p.node && e.disk == p.disk) {
            return Ok(p);
        }
    }
    if let Ok(p) = schedule_replica(req, nodes, existing, s) {
        return Ok(p);
    }
    let mut without_failed = existing.to_vec();
    for f in failed {
        if let Some(i) = without_failed.iter().position(|e| e == f) {
            without_failed.remove(i);
        }
    }
    schedule_replica(req, nodes, &without_failed, s)
}

/// Whether the disks of `volume`'s replicas can hold it at `new_size`: each disk's scheduled
/// bytes, with this replica counted at the new size, must stay within the disk's over-provisioning
/// limit — the limit a new replica is placed under (an expand the disks cannot hold fails the
/// replicas instead).
pub fn check_expand(
    volume: &str,
    new_size: u64,
    nodes: &[Node],
    existing: &[PlacedReplica],
    s: SchedulerSettings,
) -> Result<(), SchedulingFailure> {
    for r in existing.iter().filter(|r| r.volume == volume) {
        let node = nodes.iter().find(|n| n.metadata.name == r.node);
        let (Some(disk), Some(status)) =
            (node.and_then(|n| n.spec.disks.get(&r.disk)), node.and_then(|n| n.status.disks.get(&r.disk)))
        else {
            continue; // a replica on a disk that is gone is replaced, not grown
        };
        let usable = status.storage_maximum.saturating_sub(disk.storage_reserved);
        let limit = u64::try_from(u128::from(usable) * u128::from(s.over_provisioning_percentage) / 100)
            .unwrap_or(u64::MAX);
        let others: u64 = existing
            .iter()
            .filter(|o| o.node == r.node && o.disk == r.disk && o.volume != volume)
            .map(|o| o.size)
            .sum();
        if others.saturating_add(new_size) > limit {
            return Err(SchedulingFailure {
                reason: format!(
                    "disk {}/{} cannot hold {volume} at {}: {} of other replicas + {} exceeds {} ({}% of {} usable)",
                    r.node,
                    r.disk,
                    mib(new_size),
                    mib(others),
                    mib(new_size),
                    mib(limit),
                    s.over_provisioning_percentage,
                    mib(usable)
                ),
            });
        }
    }
    Ok(())
}

/// Where the stored replicas are, as the scheduler counts them.
pub fn placed_replicas(replicas: &[Replica]) -> Vec<PlacedReplica> {
    replicas
        .iter()
        .map(|r| PlacedReplica {
            volume: r.spec.volume.clone(),
            node: r.spec.node.clone(),
            disk: r.spec.disk.clone(),
            size: r.spec.size,
        })
        .collect()
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
