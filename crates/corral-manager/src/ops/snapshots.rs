//! Snapshots mirrored into the datastore (resource `Snapshot`, named `<volume>.<snapshot>`).
//!
//! The engine (and the replicas' metadata behind it) is the truth; the store holds what it last
//! showed, so snapshots can be listed while a volume is detached and watched like any resource.
//! The mirror is refreshed after every snapshot change the manager makes (API create/delete,
//! recurring jobs), whenever the snapshots of an attached volume are listed, when a volume
//! attaches, and at most every [`RESYNC`] otherwise; the records of a deleted volume go with it.
use std::collections::BTreeMap;
use std::time::Duration;

use corral_store::resources::{Snapshot, SnapshotSpec, SnapshotStatus};
use corral_store::{Datastore, Resource};

use crate::clients::engine::{EngineClient, EngineSnapshot};
use crate::error::Result;
use crate::model::recurring::JOB_LABEL;

/// Longest time between two refreshes of an attached volume's mirror.
pub const RESYNC: Duration = Duration::from_secs(60);

/// Store name of a volume's snapshot.
pub fn record_name(volume: &str, snapshot: &str) -> String {
    format!("{volume}.{snapshot}")
}

/// The snapshot records of `volume`, oldest first.
pub async fn stored(ds: &Datastore, volume: &str) -> Result<Vec<Snapshot>> {
    let mut all: Vec<Snapshot> = ds.list().await?;
    all.retain(|s| s.spec.volume == volume);
    all.sort_by(|a, b| (&a.status.created, &a.spec.snapshot).cmp(&(&b.status.created, &b.spec.snapshot)));
    Ok(all)
}

/// A record as the API shows snapshots (the engine's shape).
pub fn as_engine_snapshot(s: &Snapshot) -> EngineSnapshot {
    EngineSnapshot {
        name: s.spec.snapshot.clone(),
        parent: s.status.parent.clone(),
        children: Vec::new(),
        removed: false,
        user_created: s.status.user_created,
        created: s.status.created.clone(),
        size: s.status.size,
        labels: s.metadata.labels.clone(),
    }
}

/// Make the records of `volume` match `engine_list` (the head and removed snapshots excluded).
pub async fn mirror(ds: &Datastore, volume: &str, engine_list: &[EngineSnapshot]) -> Result<()> {
    let live: BTreeMap<&str, &EngineSnapshot> = engine_list
        .iter()
        .filter(|s| !s.removed && s.name != "volume-head")
        .map(|s| (s.name.as_str(), s))
        .collect();
    let have = stored(ds, volume).await?;
    for rec in &have {
        if !live.contains_key(rec.spec.snapshot.as_str()) {
            match ds.delete::<Snapshot>(rec.name(), None).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    for (name, s) in live {
        let status = SnapshotStatus {
            created: s.created.clone(),
            parent: s.parent.clone(),
            size: s.size,
            user_created: s.user_created,
            ready: true,
        };
        match have.iter().find(|r| r.spec.snapshot == name) {
            Some(r) if r.status == status && r.metadata.labels == s.labels => {}
            Some(r) => {
                let mut next = r.clone();
                next.status = status;
                next.metadata.labels = s.labels.clone();
                match ds.update(&next).await {
                    Ok(_) => {}
                    // Someone else refreshed it meanwhile: the next refresh settles it.
                    Err(e) if e.is_conflict() || e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                let spec = SnapshotSpec {
                    volume: volume.to_string(),
                    snapshot: name.to_string(),
                    created_by_job: s.labels.get(JOB_LABEL).cloned(),
                };
                let mut rec = Snapshot::new(record_name(volume, name), spec);
                rec.status = status;
                rec.metadata.labels = s.labels.clone();
                match ds.create(&rec).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == corral_store::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// Read the engine's snapshots and mirror them; returns the engine's list (head excluded).
pub async fn refresh(ds: &Datastore, volume: &str, engine: &EngineClient) -> Result<Vec<EngineSnapshot>> {
    let list = engine.snapshots().await?;
    mirror(ds, volume, &list).await?;
    Ok(list.into_iter().filter(|s| s.name != "volume-head" && !s.removed).collect())
}

/// Delete every snapshot record of `volume`.
pub async fn forget(ds: &Datastore, volume: &str) -> Result<()> {
    for rec in stored(ds, volume).await? {
        match ds.delete::<Snapshot>(rec.name(), None).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;

    fn snap(name: &str, removed: bool, job: Option<&str>) -> EngineSnapshot {
        EngineSnapshot {
            name: name.into(),
            parent: None,
            children: vec![],
            removed,
            user_created: true,
            created: format!("2026-01-01T00:00:0{}Z", name.len()),
            size: 4096,
            labels: job.map(|j| BTreeMap::from([(JOB_LABEL.to_string(), j.to_string())])).unwrap_or_default(),
        }
    }

    #[tokio::test]
    async fn the_mirror_follows_the_engine_list() {
        let ds = Datastore::new(Arc::new(corral_store::MemoryStore::default()));
        let names = |v: Vec<Snapshot>| v.into_iter().map(|s| s.spec.snapshot).collect::<Vec<_>>();
        mirror(
            &ds,
            "v",
            &[snap("a", false, None), snap("bb", false, Some("daily")), snap("volume-head", false, None)],
        )
        .await
        .unwrap();
        mirror(&ds, "w", &[snap("a", false, None)]).await.unwrap();
        assert_eq!(names(stored(&ds, "v").await.unwrap()), ["a", "bb"]);
        let bb: Snapshot = ds.get("v.bb").await.unwrap();
        assert_eq!(bb.spec.created_by_job.as_deref(), Some("daily"));
        // Removed in the engine (marked, or gone): removed from the store; other volumes untouched.
        mirror(&ds, "v", &[snap("a", true, None), snap("ccc", false, None)]).await.unwrap();
        assert_eq!(names(stored(&ds, "v").await.unwrap()), ["ccc"]);
        assert_eq!(names(stored(&ds, "w").await.unwrap()), ["a"]);
        forget(&ds, "v").await.unwrap();
        assert!(stored(&ds, "v").await.unwrap().is_empty());
        assert_eq!(as_engine_snapshot(&ds.get::<Snapshot>("w.a").await.unwrap()).name, "a");
    }
}
