//! The etcd backend: several nodes share one [`Store`] through an etcd cluster (etcd v3 API over
//! gRPC; tested against Debian's etcd 3.4).
//!
//! # Key layout
//! One prefix per Corral cluster, so several clusters (or test runs) can share one etcd:
//! ```text
//! /corral/<cluster>/<kind plural>/<name>     e.g. /corral/prod/volumes/vol-1
//! ```
//! `<kind plural>` is [`Kind::as_str`]. Keys under `/corral/<cluster>/` whose second segment is not
//! a kind (such as the `.leases/` of [`EtcdStore::acquire_lease`]) are never listed or watched.
//!
//! # Value
//! ```text
//! {"writeId":"<uuid of the write>","value":<the JSON document>}
//! ```
//! The write id lets a client that lost the reply to a write find out whether that write was
//! applied (see "Retries" below); readers only see `value`.
//!
//! # Versions
//! A record's [`ResourceVersion`] is the key's `mod_revision` in decimal: etcd's store-wide
//! revision of the write that produced it, never reused, so a version seen before a delete and
//! re-create never matches again. `create` is a transaction comparing `create_revision == 0`;
//! `update` and `delete` compare `mod_revision` with the expected version: a stale version is
//! `Conflict` (or `NotFound` when the key is gone), never last-writer-wins.
//!
//! # Retries and failover
//! The URL `etcd://HOST:PORT[,HOST:PORT…]` lists the members to use; an operation goes to the one
//! that answered last and moves to the next when it is unreachable, times out or reports a leader
//! change, for up to 30 s. Reads are linearizable. A write whose reply was lost may have been
//! applied, so it is sent again (its comparison makes a second application impossible) and, if
//! that comparison then fails, the key's history decides: when the first change after the
//! expected revision carries this write's id, the write was applied and succeeds; a `delete`
//! whose reply was lost succeeds when that first change is a delete. Limit: a `create` whose reply
//! was lost and whose record was changed by someone else before the retry reports `AlreadyExists`.
//!
//! # Watch
//! [`Store::watch`] reads the current revision and watches the prefix from the next one, with the
//! previous value of every deleted key. When the stream from a member breaks (the member died or
//! lost its leader), the watch reopens on the next member from `last delivered revision + 1`: no
//! event is missed or repeated. If etcd compacted its history past that revision, the stream
//! yields an `Unavailable` error and ends, which by the trait's contract means "list again and
//! watch anew"; so does a reconnection that fails for 60 s.
//!
//! # Leases and fencing
//! [`EtcdStore::acquire_lease`] claims a name (`node/<name>` for a node's liveness, `leader` for
//! cluster-wide work) with an etcd lease of a TTL that a background task keeps alive; the claim is
//! the key `/corral/<cluster>/.leases/<name>` attached to the lease, so it vanishes when the lease
//! expires. `create_guarded`, `update_guarded` and `delete_guarded` add a comparison "the claim
//! still carries my lease" to the write's transaction: a holder that lost its lease (cut off for
//! longer than the TTL) gets [`Guarded::LeaseLost`] and writes nothing.
//!
//! # Threading
//! [`EtcdStore::connect`] must run inside a tokio runtime; the gRPC channels' I/O runs on that
//! runtime, which must outlive the store. The store is `Send + Sync` and cheap to clone.
mod connection;
mod lease;
mod proto;
mod records;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

pub use connection::parse_etcd_url;
use connection::{Connection, OPERATION_DEADLINE};
pub use lease::{Guarded, NodeLease};
use records::written;

use crate::error::{ErrorKind, Result, StoreError};
use crate::store::{Kind, Record, ResourceVersion, Store, WatchStream};

struct Inner {
    conn: Connection,
    url: String,
    /// `/corral/<cluster>/`
    prefix: String,
}

/// The etcd-backed store. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("url", &self.inner.url).field("prefix", &self.inner.prefix).finish()
    }
}

impl EtcdStore {
    /// Connects to the etcd members of `url` (`etcd://HOST:PORT[,HOST:PORT…]`) and uses the keys of
    /// Corral cluster `cluster`. Fails with `InvalidArgument` on a bad URL or cluster name and with
    /// `Unavailable` (naming the endpoints) when no member answers within a few seconds.
    pub async fn connect(url: &str, cluster: &str) -> Result<EtcdStore> {
        let endpoints = parse_etcd_url(url)?;
        if cluster.is_empty()
            || cluster.contains('/')
            || cluster.starts_with('.')
            || cluster.chars().any(char::is_control)
        {
            return Err(StoreError::new(
                ErrorKind::InvalidArgument,
                "open",
                None,
                cluster,
                "a cluster name must be non-empty, without '/' or control characters, not starting with '.'",
            ));
        }
        let prefix = format!("/corral/{cluster}/");
        let conn = Connection::new(url, endpoints, prefix.clone())?;
        let store = EtcdStore { inner: Arc::new(Inner { conn, url: url.to_string(), prefix }) };
        // Fail now, with a clear error, rather than at the first operation.
        store
            .inner
            .current_revision("open", Duration::from_secs(6))
            .await
            .map_err(|e| StoreError { name: url.to_string(), ..e })?;
        Ok(store)
    }

    /// The URL this store was opened with.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The endpoints in use, as parsed from the URL.
    pub fn endpoints(&self) -> &[String] {
        self.inner.conn.endpoints()
    }

    /// The key prefix of this cluster, `/corral/<cluster>/`.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Claims `name` (e.g. `node/n1`, `leader`) for `holder` with a new lease of `ttl` (etcd rounds
    /// it up to whole seconds, at least its minimum), kept alive in the background until the
    /// returned lease is dropped or revoked. `None` when someone else holds the claim.
    pub async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<NodeLease>> {
        lease::acquire(&self.inner, name, holder, ttl).await
    }

    /// Who holds claim `name` now, if anyone (a claim whose lease expired is gone).
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>> {
        self.inner.lease_holder(name).await
    }

    /// [`Store::create`], only while `lease` still holds its claim.
    pub async fn create_guarded(
        &self,
        lease: &NodeLease,
        kind: Kind,
        name: &str,
        value: serde_json::Value,
    ) -> Result<Guarded<Record>> {
        self.inner.create(kind, name, value, Some(&lease.guard())).await
    }

    /// [`Store::update`], only while `lease` still holds its claim.
    pub async fn update_guarded(
        &self,
        lease: &NodeLease,
        kind: Kind,
        name: &str,
        expected: &ResourceVersion,
        value: serde_json::Value,
    ) -> Result<Guarded<Record>> {
        self.inner.update(kind, name, expected, value, Some(&lease.guard())).await
    }

    /// [`Store::delete`], only while `lease` still holds its claim.
    pub async fn delete_guarded(
        &self,
        lease: &NodeLease,
        kind: Kind,
        name: &str,
        expected: Option<&ResourceVersion>,
    ) -> Result<Guarded<()>> {
        self.inner.delete(kind, name, expected, Some(&lease.guard())).await
    }
}

impl Store for EtcdStore {
    fn get(&self, kind: Kind, name: &str) -> BoxFuture<'_, Result<Record>> {
        let name = name.to_string();
        async move { self.inner.get(kind, &name).await }.boxed()
    }

    fn list(&self, kind: Kind) -> BoxFuture<'_, Result<Vec<Record>>> {
        async move { self.inner.list(kind).await }.boxed()
    }

    fn create(&self, kind: Kind, name: &str, value: serde_json::Value) -> BoxFuture<'_, Result<Record>> {
        let name = name.to_string();
        async move { written(self.inner.create(kind, &name, value, None).await?, "create", kind, &name) }
            .boxed()
    }

    fn update(
        &self,
        kind: Kind,
        name: &str,
        expected: &ResourceVersion,
        value: serde_json::Value,
    ) -> BoxFuture<'_, Result<Record>> {
        let name = name.to_string();
        let expected = expected.clone();
        async move {
            written(self.inner.update(kind, &name, &expected, value, None).await?, "update", kind, &name)
        }
        .boxed()
    }

    fn delete(
        &self,
        kind: Kind,
        name: &str,
        expected: Option<&ResourceVersion>,
    ) -> BoxFuture<'_, Result<()>> {
        let name = name.to_string();
        let expected = expected.cloned();
        async move {
            written(self.inner.delete(kind, &name, expected.as_ref(), None).await?, "delete", kind, &name)
        }
        .boxed()
    }

    fn watch(&self, kind: Option<Kind>) -> BoxFuture<'_, Result<WatchStream>> {
        async move {
            let now = self.inner.current_revision("watch", OPERATION_DEADLINE).await?;
            Ok(watch::resuming(self.inner.clone(), kind, now + 1))
        }
        .boxed()
    }
}
