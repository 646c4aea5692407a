//! Snapshots through CSI, and volumes made from them.
//!
//! The VolumeSnapshotClass parameter `type` picks what a CSI snapshot is: `snap` (default) is a
//! Corral snapshot in the volume's replicas, quick and gone with the volume; `bak` is that
//! snapshot backed up to the backup target, which outlives the volume and restores anywhere. The
//! ID says which (`snap/…` or `bak/…`, see [`crate::names`]).
//!
//! A new volume from a snapshot or another volume is a restore from a backup: a `bak` is restored
//! directly; a `snap` is first backed up (once: the backup is found again by its snapshot), and a
//! volume to clone first gets a snapshot named after the new volume. The manager restores backups
//! into new volumes already; copying a snapshot chain between volumes directly is a later step.
//!
//! Corral takes snapshots through a volume's engine: a detached volume is attached in
//! maintenance mode (no client, on the manager's node) for the snapshot and detached again.
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use corral_api::{BackupView, CreateSnapshot, SnapshotCreated, VolumeState};
use reqwest::Method;

use crate::controller::{page, require};
use crate::error::{CsiError, Result};
use crate::names::{check_csi_name, corral_name, SnapshotId, CSI_NAME_LABEL};
use crate::proto::volume_content_source::Type as SourceType;
use crate::proto::{
    CapacityRange, CreateSnapshotRequest, DeleteSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse,
    Snapshot, VolumeContentSource,
};
use crate::Driver;

/// How long a volume made from a snapshot waits for the backup it restores from.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(600);

/// A backup a new volume restores from.
pub(crate) struct BackupSource {
    pub url: String,
    /// Size of the volume it restores to.
    pub size: u64,
}

/// The kind of CSI snapshot a VolumeSnapshotClass asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Snap,
    Bak,
}

fn kind_of(params: &HashMap<String, String>) -> Result<Kind> {
    for k in params.keys() {
        if k != "type" && !k.starts_with("csi.storage.k8s.io/") {
            return Err(CsiError::invalid(format!("unknown snapshot parameter {k:?} (known: type)")));
        }
    }
    match params.get("type").map(String::as_str) {
        None | Some("") | Some("snap") => Ok(Kind::Snap),
        Some("bak") => Ok(Kind::Bak),
        Some(other) => Err(CsiError::invalid(format!("snapshot type {other:?} is not snap or bak"))),
    }
}

fn timestamp(rfc3339: &str) -> Option<prost_types::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
    Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
}

impl Driver {
    /// Run `f` with the volume's engine up: attach a detached volume in maintenance mode first and
    /// detach it again afterwards.
    async fn with_engine<T>(&self, volume: &str, f: impl AsyncFnOnce() -> Result<T>) -> Result<T> {
        let v = self.volume(volume).await?;
        let attached_here = match v.state {
            VolumeState::Attached => false,
            VolumeState::Detached => {
                self.api
                    .attach(volume, None, true)
                    .await
                    .map_err(|e| CsiError::api(format!("cannot attach {volume} to take a snapshot"), e))?;
                self.wait_volume(volume, "attached", |v| v.state == VolumeState::Attached).await?;
                true
            }
            s => {
                return Err(CsiError::new(
                    tonic::Code::Aborted,
                    format!("volume {volume} is {s:?}; retry once it is attached or detached").to_lowercase(),
                ))
            }
        };
        let out = f().await;
        if attached_here {
            self.api.detach(volume).await.map_err(|e| CsiError::api(format!("cannot detach {volume}"), e))?;
            self.wait_volume(volume, "detached", |v| v.state == VolumeState::Detached).await?;
        }
        out
    }

    /// Whether `volume` has the snapshot `name` (not removed).
    async fn has_snapshot(&self, volume: &str, name: &str) -> Result<bool> {
        let snaps = self
            .api
            .snapshots(volume)
            .await
            .map_err(|e| CsiError::api(format!("cannot list snapshots of {volume}"), e))?;
        Ok(snaps.iter().any(|s| s.name == name && !s.removed))
    }

    /// Take the snapshot `name` of `volume` unless it exists.
    async fn ensure_snapshot(
        &self,
        volume: &str,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<()> {
        if self.has_snapshot(volume, name).await? {
            return Ok(());
        }
        self.with_engine(volume, async || {
            let body = CreateSnapshot { name: Some(name.to_string()), labels };
            let path = format!("/v1/volumes/{volume}/snapshots");
            let _: SnapshotCreated = self
                .api
                .call(Method::POST, &path, Some(&body))
                .await
                .map_err(|e| CsiError::api(format!("cannot snapshot {volume}"), e))?;
            Ok(())
        })
        .await
    }

    async fn backups_of(&self, volume: &str) -> Result<Vec<BackupView>> {
        match self.api.backups(volume).await {
            Ok(b) => Ok(b),
            Err(e) if e.code == corral_api::Code::NotFound => Ok(Vec::new()),
            Err(e) => Err(CsiError::api(format!("cannot list backups of {volume}"), e)),
        }
    }

    async fn restore_size(&self, volume: &str) -> Result<u64> {
        let bv = self
            .api
            .backup_volume(volume)
            .await
            .map_err(|e| CsiError::api(format!("cannot read backup volume {volume}"), e))?;
        Ok(bv.size)
    }

    /// The completed backup of `snapshot` of `volume`, made now when there is none.
    async fn backup_of_snapshot(&self, volume: &str, snapshot: &str) -> Result<BackupView> {
        let existing =
            self.backups_of(volume).await?.into_iter().find(|b| b.snapshot == snapshot && b.state != "error");
        let backup = match existing {
            Some(b) => b,
            None => {
                self.api.backup_create(volume, Some(snapshot), &BTreeMap::new()).await.map_err(|e| {
                    CsiError::api(format!("cannot back up snapshot {snapshot} of {volume}"), e)
                })?
            }
        };
        self.api
            .wait_backup(volume, &backup.name, BACKUP_TIMEOUT, |_| {})
            .await
            .map_err(|e| CsiError::api(format!("backup of snapshot {snapshot} of {volume}"), e))
    }

    /// The backup the new volume `target` with content source `src` restores from.
    pub(crate) async fn content_source_backup(
        &self,
        src: &VolumeContentSource,
        range: Option<&CapacityRange>,
        target: &str,
    ) -> Result<BackupSource> {
        let backup = match &src.r#type {
            None => {
                return Err(CsiError::invalid("volume content source names neither a snapshot nor a volume"))
            }
            Some(SourceType::Snapshot(s)) => {
                require("source snapshot ID", &s.snapshot_id)?;
                match SnapshotId::parse(&s.snapshot_id) {
                    None => {
                        return Err(CsiError::not_found(format!(
                            "snapshot {:?} does not exist",
                            s.snapshot_id
                        )))
                    }
                    Some(SnapshotId::Bak { volume, backup }) => {
                        let b = self.api.backup(&volume, &backup).await.map_err(|e| match e.code {
                            corral_api::Code::NotFound => {
                                CsiError::not_found(format!("snapshot {:?} does not exist", s.snapshot_id))
                            }
                            _ => CsiError::api(format!("cannot read backup {backup}"), e),
                        })?;
                        if b.state != "completed" {
                            return Err(CsiError::new(
                                tonic::Code::Unavailable,
                                format!("snapshot {:?} is not ready yet ({}%)", s.snapshot_id, b.progress),
                            ));
                        }
                        b
                    }
                    Some(SnapshotId::Snap { volume, snapshot }) => {
                        if self.find_volume(&volume).await?.is_none()
                            || !self.has_snapshot(&volume, &snapshot).await?
                        {
                            return Err(CsiError::not_found(format!(
                                "snapshot {:?} does not exist",
                                s.snapshot_id
                            )));
                        }
                        self.backup_of_snapshot(&volume, &snapshot).await?
                    }
                }
            }
            Some(SourceType::Volume(v)) => {
                require("source volume ID", &v.volume_id)?;
                let source = self.find_volume(&v.volume_id).await?.ok_or_else(|| {
                    CsiError::not_found(format!("source volume {:?} does not exist", v.volume_id))
                })?;
                // The source may be attached for the snapshot: no other call on it meanwhile.
                let _source_guard = self.lock(&source.name)?;
                // One snapshot per new volume, found again when the CO retries.
                let snapshot: String = format!("clone-{target}").chars().take(63).collect();
                self.ensure_snapshot(&source.name, &snapshot, BTreeMap::new()).await?;
                self.backup_of_snapshot(&source.name, &snapshot).await?
            }
        };
        let size = self.restore_size(&backup.volume).await?;
        let limit = range.map(|r| r.limit_bytes).unwrap_or(0);
        if limit > 0 && size > limit as u64 {
            return Err(CsiError::out_of_range(format!(
                "the source holds {size} bytes, above the limit of {limit} bytes"
            )));
        }
        Ok(BackupSource { url: backup.url, size })
    }

    pub(crate) async fn create_snapshot_inner(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
        require("source volume ID", &req.source_volume_id)?;
        check_csi_name("snapshot", &req.name)?;
        let kind = kind_of(&req.parameters)?;
        let name = corral_name(&req.name);
        let _guard = self.lock(&format!("snapshot {name}"))?;
        let v = self.volume(&req.source_volume_id).await?;
        // A CSI snapshot name is unique across volumes; Corral's are per volume.
        for other in self.api.volumes().await.map_err(|e| CsiError::api("cannot list volumes", e))? {
            if other.name == v.name {
                continue;
            }
            let taken = self.snapshot_entries(&other.name).await?.iter().any(|s| s.label == req.name);
            if taken {
                return Err(CsiError::already_exists(format!(
                    "snapshot {:?} exists for another volume ({})",
                    req.name, other.name
                )));
            }
        }
        let labels: BTreeMap<String, String> = [(CSI_NAME_LABEL.to_string(), req.name.clone())].into();
        let _volume_guard = self.lock(&v.name)?;
        self.ensure_snapshot(&v.name, &name, labels.clone()).await?;
        let created = chrono::Utc::now().to_rfc3339();
        match kind {
            Kind::Snap => Ok(Snapshot {
                size_bytes: v.size as i64,
                snapshot_id: SnapshotId::Snap { volume: v.name.clone(), snapshot: name.clone() }.to_string(),
                source_volume_id: v.name.clone(),
                creation_time: self.snapshot_time(&v.name, &name).await?.or_else(|| timestamp(&created)),
                ready_to_use: true,
                group_snapshot_id: String::new(),
            }),
            Kind::Bak => {
                let backup = match self
                    .backups_of(&v.name)
                    .await?
                    .into_iter()
                    .find(|b| b.labels.get(CSI_NAME_LABEL) == Some(&req.name))
                {
                    Some(b) => b,
                    None => self
                        .api
                        .backup_create(&v.name, Some(&name), &labels)
                        .await
                        .map_err(|e| CsiError::api(format!("cannot back up {}", v.name), e))?,
                };
                if backup.state == "error" {
                    return Err(CsiError::internal(format!(
                        "backup {} of {} failed: {}",
                        backup.name, v.name, backup.error
                    )));
                }
                Ok(Snapshot {
                    size_bytes: v.size as i64,
                    snapshot_id: SnapshotId::Bak { volume: v.name.clone(), backup: backup.name.clone() }
                        .to_string(),
                    source_volume_id: v.name.clone(),
                    creation_time: timestamp(&backup.created),
                    ready_to_use: backup.state == "completed",
                    group_snapshot_id: String::new(),
                })
            }
        }
    }

    async fn snapshot_time(&self, volume: &str, name: &str) -> Result<Option<prost_types::Timestamp>> {
        let snaps = self
            .api
            .snapshots(volume)
            .await
            .map_err(|e| CsiError::api(format!("cannot list snapshots of {volume}"), e))?;
        Ok(snaps.iter().find(|s| s.name == name).and_then(|s| timestamp(&s.created)))
    }

    pub(crate) async fn delete_snapshot_inner(&self, req: DeleteSnapshotRequest) -> Result<()> {
        require("snapshot ID", &req.snapshot_id)?;
        let Some(id) = SnapshotId::parse(&req.snapshot_id) else { return Ok(()) };
        let _guard = self.lock(id.volume())?;
        match id {
            SnapshotId::Snap { volume, snapshot } => {
                if self.find_volume(&volume).await?.is_none()
                    || !self.has_snapshot(&volume, &snapshot).await?
                {
                    return Ok(());
                }
                self.with_engine(&volume, async || match self.api.snapshot_delete(&volume, &snapshot).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.code == corral_api::Code::NotFound => Ok(()),
                    Err(e) => Err(CsiError::api(format!("cannot delete snapshot {snapshot} of {volume}"), e)),
                })
                .await
            }
            SnapshotId::Bak { volume, backup } => {
                let view = match self.api.backup(&volume, &backup).await {
                    Ok(b) => b,
                    Err(e) if e.code == corral_api::Code::NotFound => return Ok(()),
                    Err(e) => {
                        return Err(CsiError::api(format!("cannot read backup {backup} of {volume}"), e))
                    }
                };
                match self.api.backup_delete(&volume, &backup).await {
                    Ok(()) => {}
                    Err(e) if e.code == corral_api::Code::NotFound => {}
                    Err(e) => {
                        return Err(CsiError::api(format!("cannot delete backup {backup} of {volume}"), e))
                    }
                }
                // The snapshot this driver took to back up goes with the backup.
                let ours = view.labels.contains_key(CSI_NAME_LABEL);
                if ours
                    && self.find_volume(&volume).await?.is_some()
                    && self.has_snapshot(&volume, &view.snapshot).await?
                {
                    self.with_engine(&volume, async || {
                        match self.api.snapshot_delete(&volume, &view.snapshot).await {
                            Ok(()) => Ok(()),
                            Err(e) if e.code == corral_api::Code::NotFound => Ok(()),
                            Err(e) => Err(CsiError::api(
                                format!("cannot delete snapshot {} of {volume}", view.snapshot),
                                e,
                            )),
                        }
                    })
                    .await?;
                }
                Ok(())
            }
        }
    }

    /// The CSI snapshots of one volume: its Corral snapshots and its backups.
    async fn snapshot_entries(&self, volume: &str) -> Result<Vec<Entry>> {
        let v = self.find_volume(volume).await?;
        let mut out = Vec::new();
        if let Some(v) = &v {
            let snaps = self
                .api
                .snapshots(volume)
                .await
                .map_err(|e| CsiError::api(format!("cannot list snapshots of {volume}"), e))?;
            for s in snaps.iter().filter(|s| !s.removed && s.name != "volume-head") {
                out.push(Entry {
                    label: s.labels.get(CSI_NAME_LABEL).cloned().unwrap_or_default(),
                    snapshot: Snapshot {
                        size_bytes: v.size as i64,
                        snapshot_id: SnapshotId::Snap { volume: volume.into(), snapshot: s.name.clone() }
                            .to_string(),
                        source_volume_id: volume.into(),
                        creation_time: timestamp(&s.created),
                        ready_to_use: true,
                        group_snapshot_id: String::new(),
                    },
                });
            }
        }
        // Backups outlive their volume: listed (and restorable) after it is gone.
        let backups = self.backups_of(volume).await?;
        let size = match &v {
            Some(v) => v.size,
            None if backups.is_empty() => 0,
            None => self.restore_size(volume).await?,
        };
        for b in backups {
            out.push(Entry {
                label: b.labels.get(CSI_NAME_LABEL).cloned().unwrap_or_default(),
                snapshot: Snapshot {
                    size_bytes: size as i64,
                    snapshot_id: SnapshotId::Bak { volume: volume.into(), backup: b.name.clone() }
                        .to_string(),
                    source_volume_id: volume.into(),
                    creation_time: timestamp(&b.created),
                    ready_to_use: b.state == "completed",
                    group_snapshot_id: String::new(),
                },
            });
        }
        Ok(out)
    }

    pub(crate) async fn list_snapshots_inner(
        &self,
        req: ListSnapshotsRequest,
    ) -> Result<ListSnapshotsResponse> {
        let mut all = Vec::new();
        if !req.snapshot_id.is_empty() {
            if let Some(id) = SnapshotId::parse(&req.snapshot_id) {
                all = self.snapshot_entries(id.volume()).await?;
                all.retain(|e| e.snapshot.snapshot_id == req.snapshot_id);
            }
        } else if !req.source_volume_id.is_empty() {
            all = self.snapshot_entries(&req.source_volume_id).await?;
        } else {
            let mut sources: std::collections::BTreeSet<String> = self
                .api
                .volumes()
                .await
                .map_err(|e| CsiError::api("cannot list volumes", e))?
                .into_iter()
                .map(|v| v.name)
                .collect();
            match self.api.backup_volumes().await {
                Ok(bvs) => sources.extend(bvs.into_iter().map(|b| b.name)),
                // No backup target set: no backups to list.
                Err(e)
                    if matches!(
                        e.code,
                        corral_api::Code::FailedPrecondition | corral_api::Code::NotFound
                    ) => {}
                Err(e) => return Err(CsiError::api("cannot list backup volumes", e)),
            }
            for source in sources {
                all.extend(self.snapshot_entries(&source).await?);
            }
        }
        if !req.source_volume_id.is_empty() {
            all.retain(|e| e.snapshot.source_volume_id == req.source_volume_id);
        }
        all.sort_by(|a, b| a.snapshot.snapshot_id.cmp(&b.snapshot.snapshot_id));
        let keys: Vec<String> = all.iter().map(|e| e.snapshot.snapshot_id.clone()).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (range, next_token) = page(&keys, &req.starting_token, req.max_entries)?;
        let entries = all
            .drain(range)
            .map(|e| crate::proto::list_snapshots_response::Entry { snapshot: Some(e.snapshot) })
            .collect();
        Ok(ListSnapshotsResponse { entries, next_token })
    }
}

/// A CSI snapshot and the CSI name it was created under (empty when not created through CSI).
struct Entry {
    label: String,
    snapshot: Snapshot,
}
