//! Typed resources on top of raw records: [`Object`] (metadata + spec + status), the [`Resource`]
//! trait that ties a type to its [`Kind`], and the [`Datastore`] facade the manager uses.
use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Result, StoreError};
use crate::etcd::Guarded;
use crate::leases::{Lease, Leases};
use crate::store::{Kind, Record, ResourceVersion, Store, WatchEvent, WatchStream};

/// Identity and bookkeeping shared by every resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    /// Filled from the store on read; ignored on write (the store owns it).
    #[serde(default, skip_serializing)]
    pub resource_version: Option<ResourceVersion>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// RFC 3339, set when created.
    #[serde(default)]
    pub created: String,
    /// Set when deletion was requested; the owning reconciler cleans up, then removes the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_requested: Option<String>,
}

impl Metadata {
    /// Metadata for a new resource called `name`, created now.
    pub fn named(name: impl Into<String>) -> Metadata {
        Metadata { name: name.into(), created: chrono::Utc::now().to_rfc3339(), ..Metadata::default() }
    }
}

/// A stored resource: who it is, what is wanted (`spec`, written by users and the API) and what is
/// (`status`, written by the reconciler that owns it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object<S, T> {
    pub metadata: Metadata,
    pub spec: S,
    #[serde(default)]
    pub status: T,
}

impl<S, T: Default> Object<S, T> {
    /// A new object with default status.
    pub fn new(name: impl Into<String>, spec: S) -> Self {
        Object { metadata: Metadata::named(name), spec, status: T::default() }
    }
}

/// A typed resource kind.
pub trait Resource: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const KIND: Kind;
    fn metadata(&self) -> &Metadata;
    fn metadata_mut(&mut self) -> &mut Metadata;
    fn name(&self) -> &str {
        &self.metadata().name
    }
}

/// Implement [`Resource`] for `Object<Spec, Status>` aliases.
macro_rules! resource {
    ($(#[$doc:meta])* $alias:ident = $spec:ty, $status:ty, $kind:expr) => {
        $(#[$doc])*
        pub type $alias = $crate::object::Object<$spec, $status>;
        impl $crate::object::Resource for $alias {
            const KIND: $crate::store::Kind = $kind;
            fn metadata(&self) -> &$crate::object::Metadata {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut $crate::object::Metadata {
                &mut self.metadata
            }
        }
    };
}
pub(crate) use resource;

fn decode<R: Resource>(record: Record) -> Result<R> {
    let mut obj: R = serde_json::from_value(record.value).map_err(|e| {
        StoreError::new(ErrorKind::Corrupt, "decode", Some(R::KIND), &record.name, e.to_string())
            .with_source(e)
    })?;
    obj.metadata_mut().name = record.name;
    obj.metadata_mut().resource_version = Some(record.version);
    Ok(obj)
}

fn encode<R: Resource>(op: &'static str, obj: &R) -> Result<serde_json::Value> {
    serde_json::to_value(obj).map_err(|e| {
        StoreError::new(ErrorKind::InvalidArgument, op, Some(R::KIND), obj.name(), e.to_string())
            .with_source(e)
    })
}

/// A typed change.
#[derive(Debug, Clone)]
pub enum Change<R> {
    Put(R),
    Deleted(R),
}

/// The typed facade over any [`Store`] backend. Cheap to clone.
#[derive(Clone)]
pub struct Datastore {
    store: Arc<dyn Store>,
}

impl Datastore {
    /// Wrap a backend.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Datastore { store }
    }

    /// The raw backend.
    pub fn raw(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn get<R: Resource>(&self, name: &str) -> Result<R> {
        decode(self.store.get(R::KIND, name).await?)
    }

    /// `Ok(None)` when absent.
    pub async fn try_get<R: Resource>(&self, name: &str) -> Result<Option<R>> {
        match self.get(name).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list<R: Resource>(&self) -> Result<Vec<R>> {
        self.store.list(R::KIND).await?.into_iter().map(decode).collect()
    }

    /// Store a new object; returns it with its version.
    pub async fn create<R: Resource>(&self, obj: &R) -> Result<R> {
        let value = encode("create", obj)?;
        decode(self.store.create(R::KIND, obj.name(), value).await?)
    }

    /// Write `obj` if its `metadata.resourceVersion` is still current (else `Conflict`).
    pub async fn update<R: Resource>(&self, obj: &R) -> Result<R> {
        let version = obj.metadata().resource_version.clone().ok_or_else(|| {
            StoreError::new(
                ErrorKind::InvalidArgument,
                "update",
                Some(R::KIND),
                obj.name(),
                "no resource version",
            )
        })?;
        let value = encode("update", obj)?;
        decode(self.store.update(R::KIND, obj.name(), &version, value).await?)
    }

    /// Read-modify-write with retry on conflict: `f` is applied to the current object until the
    /// write wins. `f` returning an error aborts.
    pub async fn modify<R: Resource>(
        &self,
        name: &str,
        mut f: impl FnMut(&mut R) -> Result<()>,
    ) -> Result<R> {
        loop {
            let mut obj: R = self.get(name).await?;
            f(&mut obj)?;
            match self.update(&obj).await {
                Err(e) if e.is_conflict() => continue,
                other => return other,
            }
        }
    }

    /// Delete; with the object's version when `obj` carries one.
    pub async fn delete<R: Resource>(&self, name: &str, version: Option<&ResourceVersion>) -> Result<()> {
        self.store.delete(R::KIND, name, version).await
    }

    /// [`Datastore::create`], only while `lease` (granted by `leases`) holds its claim.
    pub async fn create_guarded<R: Resource>(
        &self,
        leases: &dyn Leases,
        lease: &Lease,
        obj: &R,
    ) -> Result<Guarded<R>> {
        let value = encode("create", obj)?;
        match leases.create_guarded(lease, R::KIND, obj.name(), value).await? {
            Guarded::Written(r) => Ok(Guarded::Written(decode(r)?)),
            Guarded::LeaseLost => Ok(Guarded::LeaseLost),
        }
    }

    /// [`Datastore::update`], only while `lease` (granted by `leases`) holds its claim.
    pub async fn update_guarded<R: Resource>(
        &self,
        leases: &dyn Leases,
        lease: &Lease,
        obj: &R,
    ) -> Result<Guarded<R>> {
        let version = obj.metadata().resource_version.clone().ok_or_else(|| {
            StoreError::new(
                ErrorKind::InvalidArgument,
                "update",
                Some(R::KIND),
                obj.name(),
                "no resource version",
            )
        })?;
        let value = encode("update", obj)?;
        match leases.update_guarded(lease, R::KIND, obj.name(), &version, value).await? {
            Guarded::Written(r) => Ok(Guarded::Written(decode(r)?)),
            Guarded::LeaseLost => Ok(Guarded::LeaseLost),
        }
    }

    /// [`Datastore::delete`], only while `lease` (granted by `leases`) holds its claim.
    pub async fn delete_guarded<R: Resource>(
        &self,
        leases: &dyn Leases,
        lease: &Lease,
        name: &str,
        version: Option<&ResourceVersion>,
    ) -> Result<Guarded<()>> {
        leases.delete_guarded(lease, R::KIND, name, version).await
    }

    /// Raw change stream of one kind or all kinds.
    pub async fn watch_raw(&self, kind: Option<Kind>) -> Result<WatchStream> {
        self.store.watch(kind).await
    }

    /// Typed change stream of `R`.
    pub async fn watch<R: Resource>(&self) -> Result<futures::stream::BoxStream<'static, Result<Change<R>>>> {
        let raw = self.store.watch(Some(R::KIND)).await?;
        Ok(raw
            .map(|ev| match ev? {
                WatchEvent::Put(r) => decode(r).map(Change::Put),
                WatchEvent::Deleted(r) => decode(r).map(Change::Deleted),
            })
            .boxed())
    }
}
