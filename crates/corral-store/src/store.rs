//! The backend-neutral datastore trait and its raw record types.
//!
//! A backend stores JSON documents addressed by `(kind, name)`, each with an opaque
//! [`ResourceVersion`] that changes on every write. Nothing here assumes the data is local: the
//! embedded backend keeps a store-wide revision counter exactly as etcd does, and a Kubernetes
//! backend would map the version to `metadata.resourceVersion`. Versions are compared only for
//! equality; callers must not parse or order them.
use std::fmt;
use std::pin::Pin;

use futures::future::BoxFuture;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Result, StoreError};

/// The kinds of resource Corral stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    Volume,
    Engine,
    Replica,
    Node,
    Snapshot,
    BackupTarget,
    BackupVolume,
    Backup,
    RecurringJob,
    Setting,
    /// What the manager did and what went wrong (bounded: the manager keeps the newest ones).
    Event,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 11] = [
        Kind::Volume,
        Kind::Engine,
        Kind::Replica,
        Kind::Node,
        Kind::Snapshot,
        Kind::BackupTarget,
        Kind::BackupVolume,
        Kind::Backup,
        Kind::RecurringJob,
        Kind::Setting,
        Kind::Event,
    ];

    /// Plural lowercase name, used as a key prefix by backends and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Volume => "volumes",
            Kind::Engine => "engines",
            Kind::Replica => "replicas",
            Kind::Node => "nodes",
            Kind::Snapshot => "snapshots",
            Kind::BackupTarget => "backuptargets",
            Kind::BackupVolume => "backupvolumes",
            Kind::Backup => "backups",
            Kind::RecurringJob => "recurringjobs",
            Kind::Setting => "settings",
            Kind::Event => "events",
        }
    }

    /// Inverse of [`Kind::as_str`].
    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Opaque version of one stored resource; changes on every write. Compare only for equality.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResourceVersion(pub String);

impl fmt::Display for ResourceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stored resource as the backend sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: Kind,
    pub name: String,
    pub version: ResourceVersion,
    pub value: serde_json::Value,
}

/// One change, as delivered by [`Store::watch`].
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// Created or updated: the new record.
    Put(Record),
    /// Deleted: the last record stored under that name.
    Deleted(Record),
}

impl WatchEvent {
    /// The record this event carries.
    pub fn record(&self) -> &Record {
        match self {
            WatchEvent::Put(r) | WatchEvent::Deleted(r) => r,
        }
    }
}

/// A stream of changes. It ends with an error if the backend can no longer guarantee that every
/// change is delivered (the watcher must then list again and watch anew).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// The datastore: every backend implements this, and everything above it is written against it.
///
/// Contract, checked by [`crate::conformance`]:
/// - `create` fails with `AlreadyExists` when the name exists; `update` and `delete` with an
///   expected version fail with `Conflict` unless it is the current one (never last-writer-wins);
///   both fail with `NotFound` when the name does not exist.
/// - `watch` delivers every change made after it returned, in commit order, without gaps.
/// - What was acknowledged survives closing and reopening the store.
pub trait Store: Send + Sync + 'static {
    /// The current record of `kind/name`.
    fn get(&self, kind: Kind, name: &str) -> BoxFuture<'_, Result<Record>>;
    /// Every record of `kind`, sorted by name.
    fn list(&self, kind: Kind) -> BoxFuture<'_, Result<Vec<Record>>>;
    /// Store a new record; fails if the name exists.
    fn create(&self, kind: Kind, name: &str, value: serde_json::Value) -> BoxFuture<'_, Result<Record>>;
    /// Replace the record if its current version is `expected`.
    fn update(
        &self,
        kind: Kind,
        name: &str,
        expected: &ResourceVersion,
        value: serde_json::Value,
    ) -> BoxFuture<'_, Result<Record>>;
    /// Delete the record; with `Some(expected)` only if that is its current version.
    fn delete(&self, kind: Kind, name: &str, expected: Option<&ResourceVersion>)
        -> BoxFuture<'_, Result<()>>;
    /// Changes from now on, of one kind or (`None`) of all kinds.
    fn watch(&self, kind: Option<Kind>) -> BoxFuture<'_, Result<WatchStream>>;
}

/// Reject names no backend can store as a key.
pub(crate) fn check_name(op: &'static str, kind: Kind, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 253 || name.contains('/') || name.chars().any(char::is_control) {
        return Err(StoreError::new(
            ErrorKind::InvalidArgument,
            op,
            Some(kind),
            name,
            "a resource name must be 1-253 characters without '/' or control characters",
        ));
    }
    Ok(())
}
