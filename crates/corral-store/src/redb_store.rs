//! The embedded backend (the default): one `redb` database file.
//!
//! # On-disk layout
//! Two tables in one redb file (redb itself is crash-safe: a commit is atomic and durable when
//! `commit()` returns).
//! ```text
//! table "objects": key = "<kind plural>/<name>" (UTF-8), e.g. "volumes/vol-1"
//!                  value:
//!                  0        8                                   n
//!                  +--------+-----------------------------------+
//!                  | rev BE | JSON document (UTF-8, serde_json) |
//!                  +--------+-----------------------------------+
//!                  rev = u64 big-endian: the store revision of the write that produced this value
//! table "meta":    key "revision" -> u64: the store-wide revision, bumped by every committed write
//!                  (create, update and delete), like etcd's revision.
//! ```
//! A record's [`ResourceVersion`] is its `rev` printed in decimal. Because the counter is store-wide
//! and never reused, a version observed before a delete and re-create can never match again.
//!
//! # Threading
//! redb is synchronous. Every operation runs on tokio's blocking pool. Writes take one mutex for the
//! whole transaction *and* the publication of its watch event, so watchers see commit order.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use redb::{Database, ReadableTable, TableDefinition};

use crate::error::{ErrorKind, Result, StoreError};
use crate::store::{check_name, Kind, Record, ResourceVersion, Store, WatchEvent, WatchStream};
use crate::watch_hub::WatchHub;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";

struct Inner {
    db: Database,
    path: PathBuf,
    /// Serialises write transactions with the publication of their events.
    hub: Mutex<WatchHub>,
}

/// The redb-backed store. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

fn io_err<'a, E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
    kind: Option<Kind>,
    name: &'a str,
) -> impl FnOnce(E) -> StoreError + 'a {
    move |e| StoreError::new(ErrorKind::Io, op, kind, name, e.to_string()).with_source(e)
}

fn key(kind: Kind, name: &str) -> String {
    format!("{}/{}", kind.as_str(), name)
}

fn encode(rev: u64, value: &serde_json::Value) -> Vec<u8> {
    let mut out = rev.to_be_bytes().to_vec();
    // Serialising a `Value` to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    out
}

fn decode(kind: Kind, name: &str, bytes: &[u8]) -> Result<Record> {
    let corrupt = |msg: String| StoreError::new(ErrorKind::Corrupt, "decode", Some(kind), name, msg);
    let (rev, json) =
        bytes.split_at_checked(8).ok_or_else(|| corrupt(format!("value of {} bytes", bytes.len())))?;
    let mut rev_bytes = [0u8; 8];
    rev_bytes.copy_from_slice(rev);
    let value = serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
    Ok(Record {
        kind,
        name: name.to_string(),
        version: ResourceVersion(u64::from_be_bytes(rev_bytes).to_string()),
        value,
    })
}

impl RedbStore {
    /// Open the database at `path`, creating it (and its tables) if absent. Fails with
    /// `Unavailable` if another process holds it open.
    pub fn open(path: &Path) -> Result<RedbStore> {
        let name = path.display().to_string();
        let db = Database::create(path).map_err(|e| {
            let kind = match e {
                redb::DatabaseError::DatabaseAlreadyOpen => ErrorKind::Unavailable,
                _ => ErrorKind::Io,
            };
            StoreError::new(kind, "open", None, &name, e.to_string()).with_source(e)
        })?;
        let txn = db.begin_write().map_err(io_err("open", None, &name))?;
        {
            txn.open_table(OBJECTS).map_err(io_err("open", None, &name))?;
            txn.open_table(META).map_err(io_err("open", None, &name))?;
        }
        txn.commit().map_err(io_err("open", None, &name))?;
        Ok(RedbStore {
            inner: Arc::new(Inner { db, path: path.to_path_buf(), hub: Mutex::new(WatchHub::default()) }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T>> {
        let inner = self.inner.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| {
                StoreError::new(ErrorKind::Unavailable, op, None, "", format!("store task failed: {e}"))
            })?
        }
        .boxed()
    }
}

impl Inner {
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Record>> {
        let txn = self.db.begin_read().map_err(io_err("get", Some(kind), name))?;
        let table = txn.open_table(OBJECTS).map_err(io_err("get", Some(kind), name))?;
        let got = table.get(key(kind, name).as_str()).map_err(io_err("get", Some(kind), name))?;
        got.map(|v| decode(kind, name, v.value())).transpose()
    }

    /// One write transaction: `f` sees the current record (if any) and returns what to store
    /// (`Some(value)`), to delete (`None`), or an error that aborts without change.
    fn write(
        &self,
        op: &'static str,
        kind: Kind,
        name: &str,
        f: impl FnOnce(Option<&Record>) -> Result<Option<serde_json::Value>>,
    ) -> Result<Option<Record>> {
        let mut hub = self.hub.lock();
        let txn = self.db.begin_write().map_err(io_err(op, Some(kind), name))?;
        let k = key(kind, name);
        let (event, result) = {
            let mut objects = txn.open_table(OBJECTS).map_err(io_err(op, Some(kind), name))?;
            let mut meta = txn.open_table(META).map_err(io_err(op, Some(kind), name))?;
            let current = objects
                .get(k.as_str())
                .map_err(io_err(op, Some(kind), name))?
                .map(|v| decode(kind, name, v.value()))
                .transpose()?;
            let next = f(current.as_ref())?;
            let rev =
                meta.get(REVISION_KEY).map_err(io_err(op, Some(kind), name))?.map_or(0, |v| v.value()) + 1;
            meta.insert(REVISION_KEY, rev).map_err(io_err(op, Some(kind), name))?;
            match next {
                Some(value) => {
                    objects.insert(k.as_str(), encode(rev, &value).as_slice()).map_err(io_err(
                        op,
                        Some(kind),
                        name,
                    ))?;
                    let rec = Record {
                        kind,
                        name: name.to_string(),
                        version: ResourceVersion(rev.to_string()),
                        value,
                    };
                    (WatchEvent::Put(rec.clone()), Some(rec))
                }
                None => {
                    objects.remove(k.as_str()).map_err(io_err(op, Some(kind), name))?;
                    let Some(last) = current else {
                        return Err(StoreError::new(ErrorKind::NotFound, op, Some(kind), name, "not found"));
                    };
                    (WatchEvent::Deleted(last), None)
                }
            }
        };
        txn.commit().map_err(io_err(op, Some(kind), name))?;
        hub.publish(event);
        Ok(result)
    }
}

fn missing(op: &'static str, kind: Kind, name: &str) -> StoreError {
    StoreError::new(ErrorKind::NotFound, op, Some(kind), name, "not found")
}

fn stale(
    op: &'static str,
    kind: Kind,
    name: &str,
    expected: &ResourceVersion,
    current: &ResourceVersion,
) -> StoreError {
    StoreError::new(
        ErrorKind::Conflict,
        op,
        Some(kind),
        name,
        format!("version {expected} is stale (current {current})"),
    )
}

impl Store for RedbStore {
    fn get(&self, kind: Kind, name: &str) -> BoxFuture<'_, Result<Record>> {
        let name = name.to_string();
        self.run("get", move |inner| inner.get(kind, &name)?.ok_or_else(|| missing("get", kind, &name)))
    }

    fn list(&self, kind: Kind) -> BoxFuture<'_, Result<Vec<Record>>> {
        self.run("list", move |inner| {
            let txn = inner.db.begin_read().map_err(io_err("list", Some(kind), ""))?;
            let table = txn.open_table(OBJECTS).map_err(io_err("list", Some(kind), ""))?;
            let prefix = format!("{}/", kind.as_str());
            // '0' is the character after '/', so this range is exactly the keys with the prefix.
            let end = format!("{}0", kind.as_str());
            let mut out = Vec::new();
            for entry in table.range(prefix.as_str()..end.as_str()).map_err(io_err("list", Some(kind), ""))? {
                let (k, v) = entry.map_err(io_err("list", Some(kind), ""))?;
                let name = k.value().strip_prefix(prefix.as_str()).unwrap_or_default().to_string();
                out.push(decode(kind, &name, v.value())?);
            }
            Ok(out)
        })
    }

    fn create(&self, kind: Kind, name: &str, value: serde_json::Value) -> BoxFuture<'_, Result<Record>> {
        let name = name.to_string();
        self.run("create", move |inner| {
            check_name("create", kind, &name)?;
            let rec = inner.write("create", kind, &name, |current| match current {
                Some(_) => Err(StoreError::new(
                    ErrorKind::AlreadyExists,
                    "create",
                    Some(kind),
                    &name,
                    "already exists",
                )),
                None => Ok(Some(value)),
            })?;
            rec.ok_or_else(|| missing("create", kind, &name))
        })
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
        self.run("update", move |inner| {
            let rec = inner.write("update", kind, &name, |current| match current {
                None => Err(missing("update", kind, &name)),
                Some(cur) if cur.version != expected => {
                    Err(stale("update", kind, &name, &expected, &cur.version))
                }
                Some(_) => Ok(Some(value)),
            })?;
            rec.ok_or_else(|| missing("update", kind, &name))
        })
    }

    fn delete(
        &self,
        kind: Kind,
        name: &str,
        expected: Option<&ResourceVersion>,
    ) -> BoxFuture<'_, Result<()>> {
        let name = name.to_string();
        let expected = expected.cloned();
        self.run("delete", move |inner| {
            inner.write("delete", kind, &name, |current| match (current, &expected) {
                (None, _) => Err(missing("delete", kind, &name)),
                (Some(cur), Some(exp)) if &cur.version != exp => {
                    Err(stale("delete", kind, &name, exp, &cur.version))
                }
                (Some(_), _) => Ok(None),
            })?;
            Ok(())
        })
    }

    fn watch(&self, kind: Option<Kind>) -> BoxFuture<'_, Result<WatchStream>> {
        let stream = self.inner.hub.lock().subscribe(kind);
        futures::future::ready(Ok(stream)).boxed()
    }
}
