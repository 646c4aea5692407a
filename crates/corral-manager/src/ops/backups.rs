//! Backup operations shared by the API and the reconcilers: the backup target setting, requesting
//! a backup, the per-volume guard against removing snapshots while a backup reads them, and the
//! size a volume restored from a backup gets.
use std::collections::BTreeMap;

use corral_backup::BackupUrl;
use corral_store::resources::{Backup, BackupState, BackupTarget as BackupTargetResource};
use corral_store::Datastore;

use crate::clients::backup_store::{code_of, open_target};
use crate::error::{Code, ManagerError, Result};

/// Name of the stored backup target resource.
pub const TARGET_RESOURCE: &str = "default";

/// The backup target URL, if one is set.
pub async fn target_url(ds: &Datastore) -> Result<Option<String>> {
    let t: Option<BackupTargetResource> = ds.try_get(TARGET_RESOURCE).await?;
    Ok(t.map(|t| t.spec.url).filter(|u| !u.is_empty()))
}

/// Whether a backup in `s` still runs (or waits to).
pub fn is_running_state(s: BackupState) -> bool {
    matches!(s, BackupState::Pending | BackupState::InProgress)
}

/// The per-volume guard: the name of a backup of `volume` that is pending or running, if any.
/// Snapshots of the volume must not be removed or purged while it runs.
pub async fn backup_in_progress(ds: &Datastore, volume: &str) -> Result<Option<String>> {
    let backups: Vec<Backup> = ds.list().await?;
    Ok(backups
        .into_iter()
        .find(|b| b.spec.volume == volume && is_running_state(b.status.state))
        .map(|b| b.metadata.name))
}

/// Store a request for a backup (the reconciler runs it). `name` defaults to `backup-<16 hex>`.
pub async fn request_backup(
    ds: &Datastore,
    volume: &str,
    snapshot: &str,
    labels: BTreeMap<String, String>,
    created_by_job: Option<String>,
) -> Result<Backup> {
    let name = format!("backup-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let spec = corral_store::resources::BackupSpec {
        volume: volume.to_string(),
        snapshot: snapshot.to_string(),
        labels,
        created_by_job,
    };
    Ok(ds.create(&Backup::new(name, spec)).await?)
}

/// Size of the volume a backup restores to, checked against a requested size (0 = take the
/// backup's; any other must equal it).
pub async fn size_from_backup(url: &str, requested: u64) -> Result<u64> {
    let parsed = BackupUrl::parse(url).map_err(|e| ManagerError::invalid(e.to_string()))?;
    let target = open_target(&parsed.target)?;
    let details =
        corral_backup::inspect_backup(&target, &parsed.volume, &parsed.backup).await.map_err(|e| {
            // A backup that does not exist is a bad value in this request, not a missing API object.
            let code = match e.kind() {
                corral_backup::ErrorKind::NotFound => Code::InvalidArgument,
                kind => code_of(kind),
            };
            ManagerError::new(code, format!("fromBackup {url}: {e}"))
        })?;
    if details.backup.in_progress {
        return Err(ManagerError::invalid(format!("fromBackup {url}: the backup is not complete")));
    }
    let size = details.volume_size;
    if requested == 0 {
        return Ok(size);
    }
    if requested < size {
        return Err(ManagerError::invalid(format!(
            "size {requested} is smaller than the backup's volume size {size}: a restored volume cannot shrink"
        )));
    }
    if requested > size {
        // The restored replica directories have the backup's size; growing them is the expand
        // action's job once the volume is attached.
        return Err(ManagerError::invalid(format!(
            "size {requested} differs from the backup's volume size {size}: omit the size (or give {size}) and expand the volume after the restore"
        )));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn the_guard_sees_only_pending_and_running_backups_of_the_volume() {
        let ds = Datastore::new(Arc::new(corral_store::MemoryStore::new()));
        assert_eq!(backup_in_progress(&ds, "v").await.unwrap(), None);
        let b = request_backup(&ds, "v", "s1", BTreeMap::new(), None).await.unwrap();
        assert_eq!(backup_in_progress(&ds, "v").await.unwrap(), Some(b.metadata.name.clone()));
        assert_eq!(backup_in_progress(&ds, "w").await.unwrap(), None);
        for (state, running) in
            [(BackupState::InProgress, true), (BackupState::Completed, false), (BackupState::Error, false)]
        {
            ds.modify(&b.metadata.name, |x: &mut Backup| {
                x.status.state = state;
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(backup_in_progress(&ds, "v").await.unwrap().is_some(), running, "{state:?}");
        }
    }
}
