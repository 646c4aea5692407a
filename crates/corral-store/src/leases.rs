//! Leases behind one API for every backend ([`Leases`]): a named claim (`node/<name>` for a node's
//! liveness, `leader` for cluster-wide work) held by one holder while it keeps it alive, and
//! writes guarded by a claim, made only while the claim is still held.
//!
//! Two implementations: [`crate::EtcdStore`] (the claim is a key attached to an etcd lease, see its
//! module; the guard is a comparison inside the write's transaction, so it fences) and
//! [`LocalLeases`], for a store only one process uses (the embedded redb store, the memory store):
//! claims live in that process, a claim is granted unless the same process holds it already, and
//! it is never lost while held. Code above the store (the manager) is written once against
//! [`Leases`] and [`Lease`] and runs the same on one node or many.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;

use crate::error::{ErrorKind, Result, StoreError};
use crate::etcd::{Guarded, NodeLease};
use crate::store::{Kind, Record, ResourceVersion, Store};

/// A claim held by this process: through an etcd lease, or in-process for a one-process store.
/// Dropping it gives the claim up (etcd: after its TTL; local: at once).
#[derive(Debug)]
pub struct Lease {
    held: Held,
}

#[derive(Debug)]
enum Held {
    Etcd(NodeLease),
    Local(LocalLease),
}

impl Lease {
    pub(crate) fn etcd(lease: NodeLease) -> Lease {
        Lease { held: Held::Etcd(lease) }
    }

    /// The etcd lease behind this claim, if it is one.
    pub fn as_etcd(&self) -> Option<&NodeLease> {
        match &self.held {
            Held::Etcd(l) => Some(l),
            Held::Local(_) => None,
        }
    }

    /// The claim's name.
    pub fn name(&self) -> &str {
        match &self.held {
            Held::Etcd(l) => l.name(),
            Held::Local(l) => &l.name,
        }
    }

    /// The TTL the claim was granted with.
    pub fn ttl(&self) -> Duration {
        match &self.held {
            Held::Etcd(l) => l.ttl(),
            Held::Local(l) => l.ttl,
        }
    }

    /// Whether the claim is still known to be held (advice: a guarded write decides).
    pub fn is_held(&self) -> bool {
        match &self.held {
            Held::Etcd(l) => l.is_held(),
            Held::Local(l) => l.is_held(),
        }
    }

    /// Resolves once the claim is known to be lost (never, for a local claim).
    pub async fn lost(&self) {
        match &self.held {
            Held::Etcd(l) => l.lost().await,
            Held::Local(_) => futures::future::pending().await,
        }
    }

    /// Gives the claim up now.
    pub async fn revoke(self) -> Result<()> {
        match self.held {
            Held::Etcd(l) => l.revoke().await,
            Held::Local(l) => {
                drop(l);
                Ok(())
            }
        }
    }
}

/// Claims and guarded writes. Implemented by every backend (see the module doc).
pub trait Leases: Send + Sync + 'static {
    /// Claims `name` for `holder` for `ttl`, kept alive until the returned lease is dropped.
    /// `None` when someone else holds it.
    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>>>;
    /// Who holds `name` now, if anyone.
    fn lease_holder<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<String>>>;
    /// [`Store::create`], only while `lease` holds its claim.
    fn create_guarded<'a>(
        &'a self,
        lease: &'a Lease,
        kind: Kind,
        name: &'a str,
        value: serde_json::Value,
    ) -> BoxFuture<'a, Result<Guarded<Record>>>;
    /// [`Store::update`], only while `lease` holds its claim.
    fn update_guarded<'a>(
        &'a self,
        lease: &'a Lease,
        kind: Kind,
        name: &'a str,
        expected: &'a ResourceVersion,
        value: serde_json::Value,
    ) -> BoxFuture<'a, Result<Guarded<Record>>>;
    /// [`Store::delete`], only while `lease` holds its claim.
    fn delete_guarded<'a>(
        &'a self,
        lease: &'a Lease,
        kind: Kind,
        name: &'a str,
        expected: Option<&'a ResourceVersion>,
    ) -> BoxFuture<'a, Result<Guarded<()>>>;
}

fn not_etcd(op: &'static str, name: &str) -> StoreError {
    StoreError::new(ErrorKind::InvalidArgument, op, None, name, "this lease was not granted by etcd")
}

impl Leases for crate::EtcdStore {
    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>>> {
        async move { Ok(crate::EtcdStore::acquire_lease(self, name, holder, ttl).await?.map(Lease::etcd)) }
            .boxed()
    }

    fn lease_holder<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        crate::EtcdStore::lease_holder(self, name).boxed()
    }

    fn create_guarded<'a>(
        &'a self,
        lease: &'a Lease,
        kind: Kind,
        name: &'a str,
        value: serde_json::Value,
    ) -> BoxFuture<'a, Result<Guarded<Record>>> {
        async move {
            let l = lease.as_etcd().ok_or_else(|| not_etcd("create", name))?;
            crate::EtcdStore::create_guarded(self, l, kind, name, value).await
        }
        .boxed()
    }

    fn update_guarded<'a>(
        &'a self,
        lease: &'a Lease,
        kind: Kind,
        name: &'a str,
        expected: &'a ResourceVersion,
        value: serde_json::Value,
    ) -> BoxFuture<'a, Result<Guarded<Record>>> {
        async move {
            let l = lease.as_etcd().ok_or_else(|| not_etcd("update", name))?;
            crate::EtcdStore::update_guarded(self, l, kind, name, expected, value).await
        }
        .boxed()
    }

    fn delete_guarded<'a>(
        &'a self,
        lease: &'a Lease,
        kind: Kind,
        name: &'a str,
        expected: Option<&'a ResourceVersion>,
    ) -> BoxFuture<'a, Result<Guarded<()>>> {
        async move {
            let l = lease.as_etcd().ok_or_else(|| not_etcd("delete", name))?;
            crate::EtcdStore::delete_guarded(self, l, kind, name, expected).await
        }
        .boxed()
    }
}

type Claims = Arc<Mutex<HashMap<String, (String, u64)>>>;

/// An in-process claim of [`LocalLeases`]; released when dropped.
#[derive(Debug)]
struct LocalLease {
    name: String,
    id: u64,
    ttl: Duration,
    claims: Claims,
}

impl LocalLease {
    fn is_held(&self) -> bool {
        self.claims.lock().get(&self.name).is_some_and(|(_, id)| *id == self.id)
    }
}

impl Drop for LocalLease {
    fn drop(&mut self) {
        let mut claims = self.claims.lock();
        if claims.get(&self.name).is_some_and(|(_, id)| *id == self.id) {
            claims.remove(&self.name);
        }
    }
}

/// Leases for a store that one process uses (embedded, memory): claims are kept in this value,
/// granted unless held already, never lost while held; guarded writes check the claim, then write.
#[derive(Clone)]
pub struct LocalLeases {
    store: Arc<dyn Store>,
    claims: Claims,
    next_id: Arc<AtomicU64>,
}

impl LocalLeases {
    /// Leases over `store`, whose guarded writes go to it.
    pub fn new(store: Arc<dyn Store>) -> LocalLeases {
        LocalLeases { store, claims: Claims::default(), next_id: Arc::new(AtomicU64::new(1)) }
    }

    fn check(&self, lease: &Lease, op: &'static str, name: &str) -> Result<bool> {
        match &lease.held {
            Held::Local(l) if Arc::ptr_eq(&l.claims, &self.claims) => Ok(l.is_held()),
            _ => Err(StoreError::new(
                ErrorKind::InvalidArgument,
                op,
                None,
                name,
                "this lease was not granted by these local leases",
            )),
        }
    }
}

impl Leases for LocalLeases {
    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>>> {
        let mut claims = self.claims.lock();
        let granted = if claims.contains_key(name) {
            None
        } else {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            claims.insert(name.to_string(), (holder.to_string(), id));
            let local = LocalLease { name: name.to_string(), id, ttl, claims: self.claims.clone() };
            Some(Lease { held: Held::Local(local) })
        };
        futures::future::ready(Ok(granted)).boxed()
    }

    fn lease_holder<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        let holder = self.claims.lock().get(name).map(|(h, _)| h.clone());
        futures::future::ready(Ok(holder)).boxed()
    }

    fn create_guarded<'a>(
        &'a self,
        lease: &'a Lease,
        kind: Kind,
        name: &'a str,
        value: serde_json::Value,
    ) -> BoxFuture<'a, Result<Guarded<Record>>> {
        async move {
            if !self.check(lease, "create", name)? {
                return Ok(Guarded::LeaseLost);
            }
            Ok(Guarded::Written(self.store.create(kind, name, value).await?))
        }
        .boxed()
    }

    fn update_guarded<'a>(
        &'a self,
        lease: &'a Lease,
        kind: Kind,
        name: &'a str,
        expected: &'a ResourceVersion,
        value: serde_json::Value,
    ) -> BoxFuture<'a, Result<Guarded<Record>>> {
        async move {
            if !self.check(lease, "update", name)? {
                return Ok(Guarded::LeaseLost);
            }
            Ok(Guarded::Written(self.store.update(kind, name, expected, value).await?))
        }
        .boxed()
    }

    fn delete_guarded<'a>(
        &'a self,
        lease: &'a Lease,
        kind: Kind,
        name: &'a str,
        expected: Option<&'a ResourceVersion>,
    ) -> BoxFuture<'a, Result<Guarded<()>>> {
        async move {
            if !self.check(lease, "delete", name)? {
                return Ok(Guarded::LeaseLost);
            }
            Ok(Guarded::Written(self.store.delete(kind, name, expected).await?))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn local_claims_are_exclusive_and_guard_writes() {
        let store = Arc::new(MemoryStore::new());
        let leases = LocalLeases::new(store.clone());
        let ttl = Duration::from_secs(5);
        let a = leases.acquire_lease("leader", "a", ttl).await.unwrap().expect("granted");
        assert!(leases.acquire_lease("leader", "b", ttl).await.unwrap().is_none());
        assert_eq!(leases.lease_holder("leader").await.unwrap().as_deref(), Some("a"));
        let written = leases.create_guarded(&a, Kind::Setting, "s", serde_json::json!({})).await.unwrap();
        assert!(matches!(written, Guarded::Written(_)));
        drop(a);
        assert_eq!(leases.lease_holder("leader").await.unwrap(), None);
        let b = leases.acquire_lease("leader", "b", ttl).await.unwrap().expect("granted after release");
        assert!(b.is_held());
        // A lease of other local leases fences nothing here: it is refused, not trusted.
        let other = LocalLeases::new(store);
        assert!(other.create_guarded(&b, Kind::Setting, "t", serde_json::json!({})).await.is_err());
    }
}
