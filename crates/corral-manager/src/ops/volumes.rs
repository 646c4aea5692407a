//! Reading and changing volumes: a missing volume is a `not_found` error, and every change is a
//! read-modify-write under the store's version check.
use corral_store::resources::Volume;
use corral_store::Datastore;
use tokio::sync::Notify;

use crate::error::{Code, ManagerError, Result};

/// The volume `name`, or a `not_found` error naming it.
pub async fn load(ds: &Datastore, name: &str) -> Result<Volume> {
    ds.get::<Volume>(name).await.map_err(|e| {
        if e.is_not_found() {
            ManagerError::not_found("volume", name)
        } else {
            e.into()
        }
    })
}

/// Read-modify-write of a volume: `f` validates against the current state and changes the spec;
/// `wake` is notified after the write so the reconcilers act on it.
/// With `expected`, the write happens only if the volume is still at that version (409 otherwise);
/// without, a conflict with a concurrent writer re-reads and re-validates.
pub async fn mutate(
    ds: &Datastore,
    wake: &Notify,
    name: &str,
    expected: Option<&str>,
    mut f: impl FnMut(&mut Volume) -> Result<()>,
) -> Result<Volume> {
    for _ in 0..20 {
        let mut v = load(ds, name).await?;
        if let Some(exp) = expected {
            if v.metadata.resource_version.as_ref().is_none_or(|cur| cur.0 != exp) {
                return Err(ManagerError::new(
                    Code::Conflict,
                    format!("volume {name:?} changed since version {exp}; read it again and retry"),
                ));
            }
        }
        f(&mut v)?;
        match ds.update(&v).await {
            Ok(v) => {
                wake.notify_one();
                return Ok(v);
            }
            Err(e) if e.is_conflict() && expected.is_none() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ManagerError::new(Code::Conflict, format!("volume {name:?} keeps changing; retry")))
}
