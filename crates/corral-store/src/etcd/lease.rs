//! Leases: a named claim (`/corral/<cluster>/.leases/<name>`, holding the holder's name) attached
//! to an etcd lease with a TTL and kept alive by a background task, and writes guarded by it.
//!
//! This is what node liveness (a node keeps `node/<name>`; it is down when the key is gone) and
//! fencing (the leader keeps `leader`, and every write it makes compares the claim's lease id, so a
//! manager that lost its lease can no longer write) are built on. The local [`NodeLease::is_held`]
//! is only advice (it turns false when a keepalive was refused or none succeeded for a TTL); the
//! guard in the transaction is what fences.
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::connection::OPERATION_DEADLINE;
use super::proto::etcdserverpb::{
    compare, request_op, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use super::records::{range, ranged_kv};
use super::Inner;
use crate::error::{ErrorKind, Result, StoreError};

/// What a write guarded by a lease did.
#[derive(Debug, Clone, PartialEq)]
pub enum Guarded<T> {
    /// The lease was held and the write was made.
    Written(T),
    /// The claim is gone or belongs to another lease: nothing was written.
    LeaseLost,
}

/// The fence a guarded write compares: the claim key must be attached to this lease.
pub(super) struct Guard {
    pub(super) key: Vec<u8>,
    pub(super) lease_id: i64,
}

/// A claim held through an etcd lease, kept alive until dropped (it then expires after its TTL)
/// or revoked.
pub struct NodeLease {
    name: String,
    id: i64,
    ttl: Duration,
    key: Vec<u8>,
    inner: Arc<Inner>,
    /// Until when the lease is known to live (the send time of the last answered keepalive + TTL).
    valid_until: Arc<Mutex<Instant>>,
    held: watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NodeLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLease")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl NodeLease {
    /// The claim's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// etcd's lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL etcd granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether the lease is still known to be alive (advice: the guarded write decides).
    pub fn is_held(&self) -> bool {
        *self.held.borrow() && Instant::now() < *self.valid_until.lock()
    }

    /// Waits until the lease is known to be lost (keepalive refused or overdue).
    pub async fn lost(&self) {
        let mut held = self.held.clone();
        let _ = held.wait_for(|held| !held).await;
    }

    pub(super) fn guard(&self) -> Guard {
        Guard { key: self.key.clone(), lease_id: self.id }
    }

    /// Gives the claim up now: the lease and its key are deleted.
    pub async fn revoke(self) -> Result<()> {
        self.keepalive.abort();
        let request = LeaseRevokeRequest { id: self.id };
        let conn = &self.inner.conn;
        conn.call("revoke lease", None, &self.name, OPERATION_DEADLINE, |i| {
            let mut client = conn.lease(i);
            async move { client.lease_revoke(request).await.map(tonic::Response::into_inner) }.boxed()
        })
        .await?;
        Ok(())
    }
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

fn check_lease_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 253 || name.chars().any(char::is_control) {
        return Err(StoreError::new(
            ErrorKind::InvalidArgument,
            "acquire lease",
            None,
            name,
            "a lease name must be 1-253 characters without control characters",
        ));
    }
    Ok(())
}

impl Inner {
    pub(super) fn lease_key(&self, name: &str) -> Vec<u8> {
        format!("{}.leases/{name}", self.prefix).into_bytes()
    }

    /// The holder of claim `name`, if it is held.
    pub(super) async fn lease_holder(&self, name: &str) -> Result<Option<String>> {
        check_lease_name(name)?;
        let request = RangeRequest { key: self.lease_key(name), ..RangeRequest::default() };
        let (resp, _) = self
            .conn
            .call("lease holder", None, name, OPERATION_DEADLINE, |i| {
                let mut kv = self.conn.kv(i);
                let request = request.clone();
                async move { kv.range(request).await.map(tonic::Response::into_inner) }.boxed()
            })
            .await?;
        Ok(resp.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }
}

/// Grants a lease of `ttl` and claims `name` for `holder` with it, unless someone holds the claim
/// (then `None`, and the new lease is revoked).
pub(super) async fn acquire(
    inner: &Arc<Inner>,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<NodeLease>> {
    check_lease_name(name)?;
    let conn = &inner.conn;
    let whole_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let ttl_secs = i64::try_from(whole_secs.max(1)).unwrap_or(i64::MAX);
    let (granted, _) = conn
        .call("acquire lease", None, name, OPERATION_DEADLINE, |i| {
            let mut client = conn.lease(i);
            let request = LeaseGrantRequest { ttl: ttl_secs, id: 0 };
            async move { client.lease_grant(request).await.map(tonic::Response::into_inner) }.boxed()
        })
        .await?;
    let granted_at = Instant::now();
    if !granted.error.is_empty() {
        return Err(StoreError::new(ErrorKind::Unavailable, "acquire lease", None, name, granted.error));
    }
    let id = granted.id;
    let ttl = Duration::from_secs(u64::try_from(granted.ttl).unwrap_or(1));
    let key = inner.lease_key(name);
    let put = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.clone(),
            value: holder.as_bytes().to_vec(),
            lease: id,
            ..PutRequest::default()
        })),
    };
    let request = TxnRequest {
        compare: vec![super::records::compare(
            &key,
            compare::CompareResult::Equal,
            compare::TargetUnion::CreateRevision(0),
        )],
        success: vec![put],
        failure: vec![range(&key)],
    };
    let (resp, _) = conn
        .call("acquire lease", None, name, OPERATION_DEADLINE, |i| {
            let mut kv = conn.kv(i);
            let request = request.clone();
            async move { kv.txn(request).await.map(tonic::Response::into_inner) }.boxed()
        })
        .await?;
    // A claim that carries this lease is ours even when the first reply was lost.
    let ours = resp.succeeded || ranged_kv(&resp, 0).is_some_and(|kv| kv.lease == id);
    let (held_tx, held) = watch::channel(true);
    let valid_until = Arc::new(Mutex::new(granted_at + ttl));
    let keepalive = tokio::spawn(keep_alive(inner.clone(), id, ttl, valid_until.clone(), held_tx));
    let lease = NodeLease {
        name: name.to_string(),
        id,
        ttl,
        key,
        inner: inner.clone(),
        valid_until,
        held,
        keepalive,
    };
    if ours {
        return Ok(Some(lease));
    }
    lease.revoke().await?;
    Ok(None)
}

/// Renews lease `id` every third of its TTL, moving to the next endpoint when one fails; marks the
/// lease lost when etcd says it expired or no renewal succeeded for a whole TTL.
async fn keep_alive(
    inner: Arc<Inner>,
    id: i64,
    ttl: Duration,
    valid_until: Arc<Mutex<Instant>>,
    held: watch::Sender<bool>,
) {
    let interval = ttl / 3;
    let conn = &inner.conn;
    loop {
        let index = conn.preferred();
        let (tx, rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1);
        let requests = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        // etcd answers the call only with its first keepalive, so that one is queued before the call.
        let mut sent = Instant::now();
        if tx.send(LeaseKeepAliveRequest { id }).await.is_ok() {
            let opened = tokio::time::timeout(interval, conn.lease(index).lease_keep_alive(requests)).await;
            if let Ok(Ok(response)) = opened {
                let mut responses = response.into_inner();
                loop {
                    match tokio::time::timeout(interval, responses.next()).await {
                        Ok(Some(Ok(answer))) if answer.ttl > 0 => {
                            let granted = Duration::from_secs(u64::try_from(answer.ttl).unwrap_or(0));
                            *valid_until.lock() = sent + granted;
                        }
                        Ok(Some(Ok(_))) => {
                            // TTL -1: etcd no longer knows the lease (expired or revoked).
                            let _ = held.send(false);
                            return;
                        }
                        _ => break,
                    }
                    tokio::time::sleep(interval.saturating_sub(sent.elapsed())).await;
                    sent = Instant::now();
                    if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                        break;
                    }
                }
            }
        }
        conn.failed(index);
        if Instant::now() >= *valid_until.lock() {
            let _ = held.send(false);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
