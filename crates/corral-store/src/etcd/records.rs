//! The record operations of the etcd backend: keys, the stored envelope, and the transactions
//! behind get, list, create, update and delete (guarded by a lease or not), with the settling of
//! writes whose reply was lost (see the module doc of [`super`]).
use std::time::Duration;

use futures::FutureExt;
use serde::{Deserialize, Serialize};

use super::connection::OPERATION_DEADLINE;
use super::lease::{Guard, Guarded};
use super::proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, TxnResponse,
};
use super::proto::mvccpb::KeyValue;
use super::{watch, Inner};
use crate::error::{ErrorKind, Result, StoreError};
use crate::store::{check_name, Kind, Record, ResourceVersion};

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

pub(super) fn new_write_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub(super) fn encode(write_id: &str, value: &serde_json::Value) -> Vec<u8> {
    // Serialising a `Value` to a Vec cannot fail.
    serde_json::to_vec(&Envelope { write_id, value }).unwrap_or_default()
}

pub(super) fn version_of(kv: &KeyValue) -> ResourceVersion {
    ResourceVersion(kv.mod_revision.to_string())
}

/// The revision a version stands for. A version that is not one (never issued by this backend)
/// becomes -1, which no key has, so the comparison fails as for any stale version. So does "0":
/// etcd compares an absent key as `mod_revision == 0`, which must not let an update create it.
pub(super) fn revision_of(version: &ResourceVersion) -> i64 {
    match version.0.parse::<i64>() {
        Ok(revision) if revision > 0 => revision,
        _ => -1,
    }
}

pub(super) fn decode(kind: Kind, name: &str, kv: &KeyValue) -> Result<(Record, String)> {
    let stored: StoredEnvelope = serde_json::from_slice(&kv.value).map_err(|e| {
        StoreError::new(ErrorKind::Corrupt, "decode", Some(kind), name, format!("etcd value: {e}"))
            .with_source(e)
    })?;
    let record = Record { kind, name: name.to_string(), version: version_of(kv), value: stored.value };
    Ok((record, stored.write_id))
}

pub(super) fn put(key: &[u8], value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value,
            ..PutRequest::default()
        })),
    }
}

pub(super) fn range(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..RangeRequest::default()
        })),
    }
}

pub(super) fn compare(key: &[u8], result: compare::CompareResult, target: compare::TargetUnion) -> Compare {
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
pub(super) fn ranged_kv(resp: &TxnResponse, index: usize) -> Option<&KeyValue> {
    match resp.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(range)) => range.kvs.first(),
        _ => None,
    }
}

/// Adds the fence of `guard` to a transaction: the claim must carry its lease; the failure branch
/// reads the claim (as operation 1) so the caller can tell a lost lease from a stale version.
pub(super) fn add_guard(request: &mut TxnRequest, guard: Option<&Guard>) {
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
pub(super) fn guard_lost(guard: Option<&Guard>, resp: &TxnResponse) -> bool {
    guard.is_some_and(|g| ranged_kv(resp, 1).is_none_or(|kv| kv.lease != g.lease_id))
}

/// The result of an unguarded write (which cannot lose a lease).
pub(super) fn written<T>(outcome: Guarded<T>, op: &'static str, kind: Kind, name: &str) -> Result<T> {
    match outcome {
        Guarded::Written(value) => Ok(value),
        Guarded::LeaseLost => {
            Err(StoreError::new(ErrorKind::Io, op, Some(kind), name, "lost a lease it did not hold"))
        }
    }
}

/// The first byte string after every key that starts with `prefix` (etcd's `range_end`).
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    // Prefixes here end in '/', which is not 0xff.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

impl Inner {
    pub(super) fn key(&self, kind: Kind, name: &str) -> Vec<u8> {
        format!("{}{}/{}", self.prefix, kind.as_str(), name).into_bytes()
    }

    pub(super) fn kind_prefix(&self, kind: Kind) -> Vec<u8> {
        format!("{}{}/", self.prefix, kind.as_str()).into_bytes()
    }

    /// The kind and name a key of this cluster stands for; `None` for keys that are not records.
    pub(super) fn parse_key<'k>(&self, key: &'k [u8]) -> Option<(Kind, &'k str)> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(self.prefix.as_str())?;
        let (plural, name) = rest.split_once('/')?;
        Some((Kind::from_plural(plural)?, name))
    }

    /// The store-wide revision now (a linearizable read of this cluster's prefix).
    pub(super) async fn current_revision(&self, op: &'static str, deadline: Duration) -> Result<i64> {
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

    pub(super) async fn txn(
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

    pub(super) async fn get(&self, kind: Kind, name: &str) -> Result<Record> {
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

    pub(super) async fn list(&self, kind: Kind) -> Result<Vec<Record>> {
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

    pub(super) async fn create(
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

    pub(super) async fn update(
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

    pub(super) async fn delete(
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
    pub(super) async fn first_change_after(
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
