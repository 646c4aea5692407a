//! The etcd backend: several nodes share one [`Store`] through an etcd cluster (etcd v3 API over
//! gRPC; tested against Debian's etcd 3.4).
//!
//! # Key layout
//! One prefix per Corral cluster, so several clusters (or test runs) can share one etcd:
//! ```text
//! /corral/<cluster>/<kind plural>/<name>     e.g. /corral/prod/volumes/vol-1
//! ```
//! `<kind plural>` is [`Kind::as_str`]. Keys under `/corral/<cluster>/` whose second segment is not
//! a kind (such as the `.leases/` of [`EtcdStore::grant_lease`]) are never listed or watched.
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
//! change, for up to 30 s ([`connection`]). Reads are linearizable. A write whose reply was lost
//! may have been applied, so it is sent again (its comparison makes a second application
//! impossible) and, if that comparison then fails, the key's history decides: when the first
//! change after the expected revision carries this write's id, the write was applied and
//! succeeds. Limit: a `create` whose reply was lost and whose record was changed by someone else
//! before the retry reports `AlreadyExists`.
//!
//! # Watch
//! [`Store::watch`] reads the current revision and watches the prefix from the next one, with the
//! previous value of every deleted key. When the stream from a member breaks (the member died or
//! lost its leader), the watch reopens on the next member from `last delivered revision + 1`: no
//! event is missed or repeated. If etcd compacted its history past that revision, the stream
//! yields an `Unavailable` error and ends, which by the trait's contract means "list again and
//! watch anew"; so does a reconnection that fails for 60 s.
//!
//! # Threading
//! [`EtcdStore::connect`] must run inside a tokio runtime; the gRPC channels' I/O runs on that
//! runtime, which must outlive the store. The store is `Send + Sync` and cheap to clone.
mod connection;
mod lease;
mod proto;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};

pub use connection::parse_etcd_url;
use connection::{Connection, OPERATION_DEADLINE};
use lease::Guard;
pub use lease::{Guarded, NodeLease};
use proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, TxnResponse,
};
use proto::mvccpb::KeyValue;

use crate::error::{ErrorKind, Result, StoreError};
use crate::store::{check_name, Kind, Record, ResourceVersion, Store, WatchStream};

/// How many records one `list` request fetches (all pages are read at one revision).
const LIST_PAGE: i64 = 500;

/// A stored value: the document and the id of the write that stored it.
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "writeId")]
    write_id: &'a str,
    value: &'a serde_json::Value,
}

#[derive(Deserialize)]
struct StoredEnvelope {
    #[serde(rename = "writeId")]
    write_id: String,
    value: serde_json::Value,
}

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
        let conn = Connection::new(url, endpoints)?;
        let store = EtcdStore {
            inner: Arc::new(Inner { conn, url: url.to_string(), prefix: format!("/corral/{cluster}/") }),
        };
        // Fail now, with a clear error, rather than at the first operation.
        store.inner.current_revision("open", Duration::from_secs(6)).await.map_err(|e| StoreError {
            message: format!("cannot reach the etcd store {url}: {}", e.message),
            ..e
        })?;
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

fn new_write_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn encode(write_id: &str, value: &serde_json::Value) -> Vec<u8> {
    // Serialising a `Value` to a Vec cannot fail.
    serde_json::to_vec(&Envelope { write_id, value }).unwrap_or_default()
}

fn version_of(kv: &KeyValue) -> ResourceVersion {
    ResourceVersion(kv.mod_revision.to_string())
}

/// The revision a version stands for. A version that is not one (never issued by this backend)
/// becomes -1, which no key has, so the comparison fails as for any stale version. So does "0":
/// etcd compares an absent key as `mod_revision == 0`, which must not let an update create it.
fn revision_of(version: &ResourceVersion) -> i64 {
    match version.0.parse::<i64>() {
        Ok(revision) if revision > 0 => revision,
        _ => -1,
    }
}

fn decode(kind: Kind, name: &str, kv: &KeyValue) -> Result<(Record, String)> {
    let stored: StoredEnvelope = serde_json::from_slice(&kv.value).map_err(|e| {
        StoreError::new(ErrorKind::Corrupt, "decode", Some(kind), name, format!("etcd value: {e}"))
            .with_source(e)
    })?;
    let record = Record { kind, name: name.to_string(), version: version_of(kv), value: stored.value };
    Ok((record, stored.write_id))
}

fn put(key: &[u8], value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value,
            ..PutRequest::default()
        })),
    }
}

fn range(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..RangeRequest::default()
        })),
    }
}

fn compare(key: &[u8], result: compare::CompareResult, target: compare::TargetUnion) -> Compare {
    let target_kind = match target {
        compare::TargetUnion::CreateRevision(_) => compare::CompareTarget::Create,
        compare::TargetUnion::ModRevision(_) => compare::CompareTarget::Mod,
        compare::TargetUnion::Version(_) => compare::CompareTarget::Version,
        compare::TargetUnion::Value(_) => compare::CompareTarget::Value,
        compare::TargetUnion::Lease(_) => compare::CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: target_kind as i32,
        key: key.to_vec(),
        target_union: Some(target),
        range_end: Vec::new(),
    }
}

/// The key-value that operation `index` of a transaction's branch read (a `range`), if the key exists.
fn ranged_kv(resp: &TxnResponse, index: usize) -> Option<&KeyValue> {
    match resp.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(range)) => range.kvs.first(),
        _ => None,
    }
}

/// Adds the fence of `guard` to a transaction: the claim must carry its lease; the failure branch
/// reads the claim (as operation 1) so the caller can tell a lost lease from a stale version.
fn add_guard(request: &mut TxnRequest, guard: Option<&Guard>) {
    if let Some(guard) = guard {
        request.compare.push(compare(
            &guard.key,
            compare::CompareResult::Equal,
            compare::TargetUnion::Lease(guard.lease_id),
        ));
        request.failure.push(range(&guard.key));
    }
}

/// Whether a failed transaction failed because the claim of `guard` is gone or not its lease's.
fn guard_lost(guard: Option<&Guard>, resp: &TxnResponse) -> bool {
    guard.is_some_and(|g| ranged_kv(resp, 1).is_none_or(|kv| kv.lease != g.lease_id))
}

/// The result of an unguarded write (which cannot lose a lease).
fn written<T>(outcome: Guarded<T>, op: &'static str, kind: Kind, name: &str) -> Result<T> {
    match outcome {
        Guarded::Written(value) => Ok(value),
        Guarded::LeaseLost => {
            Err(StoreError::new(ErrorKind::Io, op, Some(kind), name, "lost a lease it did not hold"))
        }
    }
}

/// The first byte string after every key that starts with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    // Prefixes here end in '/', which is not 0xff.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

impl Inner {
    fn key(&self, kind: Kind, name: &str) -> Vec<u8> {
        format!("{}{}/{}", self.prefix, kind.as_str(), name).into_bytes()
    }

    fn kind_prefix(&self, kind: Kind) -> Vec<u8> {
        format!("{}{}/", self.prefix, kind.as_str()).into_bytes()
    }

    /// The kind and name a key of this cluster stands for; `None` for keys that are not records.
    fn parse_key<'k>(&self, key: &'k [u8]) -> Option<(Kind, &'k str)> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(self.prefix.as_str())?;
        let (plural, name) = rest.split_once('/')?;
        Some((Kind::from_plural(plural)?, name))
    }

    /// The store-wide revision now (a linearizable read of this cluster's prefix).
    async fn current_revision(&self, op: &'static str, deadline: Duration) -> Result<i64> {
        let prefix = self.prefix.clone().into_bytes();
        let request = RangeRequest {
            range_end: prefix_end(&prefix),
            key: prefix,
            count_only: true,
            ..RangeRequest::default()
        };
        let (resp, _) = self
            .conn
            .call(op, None, "", deadline, |i| {
                let mut kv = self.conn.kv(i);
                let request = request.clone();
                async move { kv.range(request).await.map(tonic::Response::into_inner) }.boxed()
            })
            .await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    async fn txn(
        &self,
        op: &'static str,
        kind: Kind,
        name: &str,
        request: TxnRequest,
    ) -> Result<(TxnResponse, bool)> {
        self.conn
            .call(op, Some(kind), name, OPERATION_DEADLINE, |i| {
                let mut kv = self.conn.kv(i);
                let request = request.clone();
                async move { kv.txn(request).await.map(tonic::Response::into_inner) }.boxed()
            })
            .await
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Record> {
        let request = RangeRequest { key: self.key(kind, name), ..RangeRequest::default() };
        let (resp, _) = self
            .conn
            .call("get", Some(kind), name, OPERATION_DEADLINE, |i| {
                let mut kv = self.conn.kv(i);
                let request = request.clone();
                async move { kv.range(request).await.map(tonic::Response::into_inner) }.boxed()
            })
            .await?;
        match resp.kvs.first() {
            Some(kv) => Ok(decode(kind, name, kv)?.0),
            None => Err(StoreError::new(ErrorKind::NotFound, "get", Some(kind), name, "not found")),
        }
    }

    async fn list(&self, kind: Kind) -> Result<Vec<Record>> {
        let prefix = self.kind_prefix(kind);
        let range_end = prefix_end(&prefix);
        let mut start = prefix.clone();
        // Every page is read at the revision of the first, so the list is one consistent snapshot.
        let mut revision = 0;
        let mut records = Vec::new();
        loop {
            let request = RangeRequest {
                key: start.clone(),
                range_end: range_end.clone(),
                limit: LIST_PAGE,
                revision,
                ..RangeRequest::default()
            };
            let (resp, _) = self
                .conn
                .call("list", Some(kind), "", OPERATION_DEADLINE, |i| {
                    let mut kv = self.conn.kv(i);
                    let request = request.clone();
                    async move { kv.range(request).await.map(tonic::Response::into_inner) }.boxed()
                })
                .await?;
            if revision == 0 {
                revision = resp.header.as_ref().map_or(0, |h| h.revision);
            }
            for kv in &resp.kvs {
                let name = kv.key.get(prefix.len()..).map(String::from_utf8_lossy).unwrap_or_default();
                records.push(decode(kind, &name, kv)?.0);
            }
            match resp.kvs.last() {
                Some(last) if resp.more => {
                    start = last.key.clone();
                    start.push(0);
                }
                _ => return Ok(records),
            }
        }
    }

    async fn create(
        &self,
        kind: Kind,
        name: &str,
        value: serde_json::Value,
        guard: Option<&Guard>,
    ) -> Result<Guarded<Record>> {
        check_name("create", kind, name)?;
        let key = self.key(kind, name);
        let write_id = new_write_id();
        let mut request = TxnRequest {
            compare: vec![compare(
                &key,
                compare::CompareResult::Equal,
                compare::TargetUnion::CreateRevision(0),
            )],
            success: vec![put(&key, encode(&write_id, &value))],
            failure: vec![range(&key)],
        };
        add_guard(&mut request, guard);
        let (resp, maybe_applied) = self.txn("create", kind, name, request).await?;
        if resp.succeeded {
            let revision = resp.header.map_or(0, |h| h.revision);
            let version = ResourceVersion(revision.to_string());
            return Ok(Guarded::Written(Record { kind, name: name.to_string(), version, value }));
        }
        if let Some(kv) = ranged_kv(&resp, 0) {
            let (record, stored_id) = decode(kind, name, kv)?;
            if maybe_applied && stored_id == write_id {
                return Ok(Guarded::Written(record));
            }
        }
        if guard_lost(guard, &resp) {
            return Ok(Guarded::LeaseLost);
        }
        Err(StoreError::new(ErrorKind::AlreadyExists, "create", Some(kind), name, "already exists"))
    }

    async fn update(
        &self,
        kind: Kind,
        name: &str,
        expected: &ResourceVersion,
        value: serde_json::Value,
        guard: Option<&Guard>,
    ) -> Result<Guarded<Record>> {
        let key = self.key(kind, name);
        let expected_rev = revision_of(expected);
        let write_id = new_write_id();
        let mut request = TxnRequest {
            compare: vec![compare(
                &key,
                compare::CompareResult::Equal,
                compare::TargetUnion::ModRevision(expected_rev),
            )],
            success: vec![put(&key, encode(&write_id, &value))],
            failure: vec![range(&key)],
        };
        add_guard(&mut request, guard);
        let (resp, maybe_applied) = self.txn("update", kind, name, request).await?;
        if resp.succeeded {
            let revision = resp.header.map_or(0, |h| h.revision);
            let version = ResourceVersion(revision.to_string());
            return Ok(Guarded::Written(Record { kind, name: name.to_string(), version, value }));
        }
        if maybe_applied {
            let current = ranged_kv(&resp, 0);
            if let Some(watch::Change::Put(kv)) =
                self.first_change_after("update", kind, name, expected_rev, current).await?
            {
                let (record, stored_id) = decode(kind, name, &kv)?;
                if stored_id == write_id {
                    return Ok(Guarded::Written(record));
                }
            }
        }
        if guard_lost(guard, &resp) {
            return Ok(Guarded::LeaseLost);
        }
        match ranged_kv(&resp, 0) {
            None => Err(StoreError::new(ErrorKind::NotFound, "update", Some(kind), name, "not found")),
            Some(kv) => Err(StoreError::new(
                ErrorKind::Conflict,
                "update",
                Some(kind),
                name,
                format!("version {expected} is stale (current {})", kv.mod_revision),
            )),
        }
    }

    async fn delete(
        &self,
        kind: Kind,
        name: &str,
        expected: Option<&ResourceVersion>,
        guard: Option<&Guard>,
    ) -> Result<Guarded<()>> {
        let key = self.key(kind, name);
        let condition = match expected {
            Some(v) => compare(
                &key,
                compare::CompareResult::Equal,
                compare::TargetUnion::ModRevision(revision_of(v)),
            ),
            None => compare(&key, compare::CompareResult::NotEqual, compare::TargetUnion::CreateRevision(0)),
        };
        let delete = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.clone(),
                ..DeleteRangeRequest::default()
            })),
        };
        let mut request =
            TxnRequest { compare: vec![condition], success: vec![delete], failure: vec![range(&key)] };
        add_guard(&mut request, guard);
        let (resp, maybe_applied) = self.txn("delete", kind, name, request).await?;
        if resp.succeeded {
            return Ok(Guarded::Written(()));
        }
        if maybe_applied {
            let applied = match expected {
                // The record is gone: this delete (or an identical one) took it.
                None => ranged_kv(&resp, 0).is_none(),
                Some(v) => matches!(
                    self.first_change_after("delete", kind, name, revision_of(v), ranged_kv(&resp, 0))
                        .await?,
                    Some(watch::Change::Deleted)
                ),
            };
            if applied {
                return Ok(Guarded::Written(()));
            }
        }
        if guard_lost(guard, &resp) {
            return Ok(Guarded::LeaseLost);
        }
        match ranged_kv(&resp, 0) {
            None => Err(StoreError::new(ErrorKind::NotFound, "delete", Some(kind), name, "not found")),
            Some(kv) => Err(StoreError::new(
                ErrorKind::Conflict,
                "delete",
                Some(kind),
                name,
                format!("version is stale (current {})", kv.mod_revision),
            )),
        }
    }

    /// The first change of `kind/name` after `revision`, from etcd's history; `current` is the
    /// record as the failed transaction read it.
    async fn first_change_after(
        &self,
        op: &'static str,
        kind: Kind,
        name: &str,
        revision: i64,
        current: Option<&KeyValue>,
    ) -> Result<Option<watch::Change>> {
        // With the current record written at or before `revision`, nothing changed after it.
        let changed = match current {
            _ if revision < 0 => return Ok(None),
            Some(kv) if kv.mod_revision <= revision => return Ok(None),
            Some(_) => true,
            None => false,
        };
        watch::first_change_after(self, op, kind, name, self.key(kind, name), revision, changed).await
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
