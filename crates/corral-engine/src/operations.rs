//! Control operations on a running engine: info, replica list/remove, snapshots (consistent across
//! replicas), revert, expand. Each takes the admin lock; those that must happen at one point of the write
//! stream (snapshot, revert, expand) also take the I/O gate exclusively, which drains in-flight writes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, BLOCK};
use crate::error::{EngineError, ErrorKind, Result};
use crate::replica_set::{Mode, ReplicaSlot, ReplicaStatus};
use corral_wire::{ErrorKind as WireErrorKind, SnapshotInfo, SnapshotRequest, WireError, HEAD_NAME};

/// Overall health of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeState {
    /// Every replica is RW.
    Healthy,
    /// At least one RW replica, and at least one replica is ERR.
    Degraded,
    /// A WO replica is being rebuilt.
    Rebuilding,
    /// No RW replica: I/O fails.
    Faulted,
}

/// What `engine info` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineInfo {
    /// Volume name.
    pub volume: String,
    /// Size in bytes.
    pub size: u64,
    /// Frontend endpoint (`nbd://…`), empty when none.
    pub frontend: String,
    /// NBD clients connected.
    pub clients: usize,
    /// Health.
    pub state: VolumeState,
    /// Current generation.
    pub generation: u64,
    /// Replica counts.
    pub replicas: usize,
    /// RW replicas.
    pub healthy_replicas: usize,
    /// Client reads completed since the engine started.
    #[serde(default)]
    pub read_ops: u64,
    /// Client writes completed since the engine started.
    #[serde(default)]
    pub write_ops: u64,
    /// Bytes of those reads.
    #[serde(default)]
    pub read_bytes: u64,
    /// Bytes of those writes.
    #[serde(default)]
    pub write_bytes: u64,
}

/// Checks a volume or snapshot name with the one name rule ([`corral_api::names`]); the head's
/// name is reserved.
pub fn validate_name(op: &'static str, name: &str) -> Result<()> {
    corral_api::check_name("volume or snapshot", name)
        .map_err(|e| EngineError::invalid(op, format!("bad name: {e}")))?;
    if name == HEAD_NAME {
        return Err(EngineError::invalid(op, format!("{HEAD_NAME:?} is reserved for the head")));
    }
    Ok(())
}

fn map_link(op: &'static str, address: &str, e: WireError) -> EngineError {
    EngineError::from_replica(
        EngineError::kind_of_replica_error(e.kind()),
        op,
        format_args!("replica {address}"),
        e,
    )
}

impl Engine {
    /// Volume summary.
    pub fn info(&self) -> EngineInfo {
        let slots = self.slots();
        let healthy = slots.iter().filter(|s| s.mode() == Mode::ReadWrite).count();
        let state = if healthy == 0 {
            VolumeState::Faulted
        } else if slots.iter().any(|s| s.mode() == Mode::WriteOnly) {
            VolumeState::Rebuilding
        } else if healthy < slots.len() {
            VolumeState::Degraded
        } else {
            VolumeState::Healthy
        };
        let frontend = self.shared.frontend.lock().clone();
        EngineInfo {
            volume: self.volume().to_string(),
            size: self.size(),
            frontend: frontend.as_ref().map(|f| f.endpoint()).unwrap_or_default(),
            clients: frontend.as_ref().map(|f| f.connected_clients()).unwrap_or(0),
            state,
            generation: self.generation(),
            replicas: slots.len(),
            healthy_replicas: healthy,
            read_ops: self.shared.io.read_ops.load(Ordering::Relaxed),
            write_ops: self.shared.io.write_ops.load(Ordering::Relaxed),
            read_bytes: self.shared.io.read_bytes.load(Ordering::Relaxed),
            write_bytes: self.shared.io.write_bytes.load(Ordering::Relaxed),
        }
    }

    /// `replica ls`.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        self.slots().iter().map(|s| ReplicaStatus::of(s)).collect()
    }

    /// Removes a replica from the volume (closing its connection). Refused for the last RW replica.
    pub async fn remove_replica(&self, address: &str) -> Result<()> {
        const OP: &str = "replica rm";
        let _admin = self.shared.admin.lock().await;
        let _gate = self.shared.gate.write().await;
        let slots = self.slots();
        let slot = slots.iter().find(|s| s.address == address).ok_or_else(|| {
            EngineError::new(ErrorKind::NotFound, OP, format!("no replica {address} in this volume"))
        })?;
        if slot.mode() == Mode::ReadWrite && slots.iter().filter(|s| s.mode() == Mode::ReadWrite).count() == 1
        {
            return Err(EngineError::conflict(OP, format!("{address} is the last healthy replica")));
        }
        // Counted as a drop, so the next acknowledged write first bumps the generation past it.
        self.fail_replica(slot, OP, &WireError::service(WireErrorKind::Closed, "removed by request"));
        let remaining: Vec<Arc<ReplicaSlot>> =
            slots.iter().filter(|s| s.address != address).cloned().collect();
        *self.shared.slots.write() = Arc::new(remaining);
        self.settle(OP).await
    }

    fn refuse_during_rebuild(&self, op: &'static str) -> Result<()> {
        if let Some(address) = self.shared.rebuild.lock().active.clone() {
            return Err(EngineError::conflict(
                op,
                format!("replica {address} is being rebuilt; try again when it is RW"),
            ));
        }
        Ok(())
    }

    /// Snapshots from one RW replica (the head excluded).
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        const OP: &str = "snapshot ls";
        let slots = self.slots();
        let slot = slots
            .iter()
            .find(|s| s.readable_link().is_some())
            .ok_or_else(|| EngineError::unavailable(OP, "no healthy replica"))?;
        let link = slot.readable_link().ok_or_else(|| EngineError::unavailable(OP, "no healthy replica"))?;
        let list = tokio::time::timeout(self.shared.config.control_timeout, link.list_snapshots())
            .await
            .map_err(|_| {
                EngineError::new(ErrorKind::Io, OP, format!("replica {} did not answer", slot.address))
            })?
            .map_err(|e| map_link(OP, &slot.address, e))?;
        Ok(list.into_iter().filter(|s| s.name != HEAD_NAME).collect())
    }

    async fn require_snapshot(&self, op: &'static str, name: &str) -> Result<()> {
        validate_name(op, name)?;
        if self.snapshots().await?.iter().any(|s| s.name == name) {
            Ok(())
        } else {
            Err(EngineError::new(ErrorKind::NotFound, op, format!("no snapshot {name}")))
        }
    }

    /// Takes a snapshot on every replica at one point of the write stream: in-flight writes are drained
    /// and new ones held back until every replica has taken it. Returns the name (a UUID when omitted).
    pub async fn snapshot_create(
        &self,
        name: Option<String>,
        labels: BTreeMap<String, String>,
    ) -> Result<String> {
        const OP: &str = "snapshot create";
        let name = name.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        validate_name(OP, &name)?;
        for key in labels.keys() {
            if key.is_empty() || key.contains('=') {
                return Err(EngineError::invalid(OP, format!("bad label key {key:?}")));
            }
        }
        let _admin = self.shared.admin.lock().await;
        self.refuse_during_rebuild(OP)?;
        if self.snapshots().await?.iter().any(|s| s.name == name) {
            return Err(EngineError::new(ErrorKind::AlreadyExists, OP, format!("snapshot {name} exists")));
        }
        self.snapshot_all(OP, &name, true, labels).await?;
        Ok(name)
    }

    /// Takes snapshot `name` on every RW and WO replica with writes drained. Caller holds the admin lock.
    pub(crate) async fn snapshot_all(
        &self,
        op: &'static str,
        name: &str,
        user_created: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<()> {
        let _gate = self.shared.gate.write().await;
        let request =
            SnapshotRequest { name: name.to_string(), user_created, labels, created: Some(now_rfc3339()) };
        let slots = self.slots();
        self.fan_out_within(op, &slots, self.shared.config.control_timeout, |l| l.snapshot(request.clone()))
            .await
    }

    /// Marks a snapshot removed on every replica (its data stays until purge).
    pub async fn snapshot_remove(&self, name: &str) -> Result<()> {
        const OP: &str = "snapshot rm";
        let _admin = self.shared.admin.lock().await;
        self.refuse_during_rebuild(OP)?;
        self.require_snapshot(OP, name).await?;
        let slots = self.slots();
        self.fan_out_within(OP, &slots, self.shared.config.control_timeout, |l| {
            l.mark_removed(name.to_string())
        })
        .await
    }

    /// Folds removed snapshots away on every replica; returns when all are done.
    pub async fn snapshot_purge(&self) -> Result<()> {
        const OP: &str = "snapshot purge";
        let _admin = self.shared.admin.lock().await;
        self.refuse_during_rebuild(OP)?;
        let slots = self.slots();
        // Purge rewrites whole layers: no per-replica time limit beyond a generous one.
        self.fan_out_within(OP, &slots, self.shared.config.control_timeout * 30, |l| l.purge()).await
    }

    /// Reverts the volume to a snapshot. Maintenance only: refused while an NBD client is connected.
    pub async fn revert(&self, name: &str) -> Result<()> {
        const OP: &str = "revert";
        let _admin = self.shared.admin.lock().await;
        self.refuse_during_rebuild(OP)?;
        let frontend = self.shared.frontend.lock().clone();
        let _detached = match &frontend {
            Some(f) => match f.detach_guard() {
                Some(guard) => Some(guard),
                None => {
                    return Err(EngineError::conflict(
                        OP,
                        format!(
                            "{} NBD client(s) connected: revert is a maintenance operation, disconnect every client first",
                            f.connected_clients().max(1)
                        ),
                    ))
                }
            },
            None => None,
        };
        self.require_snapshot(OP, name).await?;
        let _gate = self.shared.gate.write().await;
        let slots = self.slots();
        self.fan_out_within(OP, &slots, self.shared.config.control_timeout, |l| l.revert(name.to_string()))
            .await
    }

    /// Grows the volume; clients that reconnect see the new size. Refused if smaller than now.
    pub async fn expand(&self, size: u64) -> Result<()> {
        const OP: &str = "expand";
        if size == 0 || size % BLOCK != 0 {
            return Err(EngineError::invalid(OP, format!("size {size} must be a positive multiple of 4096")));
        }
        let current = self.size();
        if size < current {
            return Err(EngineError::invalid(
                OP,
                format!("size {size} is smaller than the current size {current}: shrinking is not supported"),
            ));
        }
        if size == current {
            return Ok(());
        }
        let _admin = self.shared.admin.lock().await;
        self.refuse_during_rebuild(OP)?;
        let _gate = self.shared.gate.write().await;
        let slots = self.slots();
        self.fan_out_within(OP, &slots, self.shared.config.control_timeout, |l| l.expand(size)).await?;
        self.shared.size.store(size, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// The current time as RFC 3339 (UTC, seconds), without a date library.
pub(crate) fn now_rfc3339() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
