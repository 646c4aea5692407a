//! An in-memory backend: the reference the others are checked against, and a fast store for tests
//! of the layers above. Same contract as every backend (see [`crate::Store`]), minus persistence.
use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;

use crate::error::{ErrorKind, Result, StoreError};
use crate::store::{check_name, Kind, Record, ResourceVersion, Store, WatchEvent, WatchStream};
use crate::watch_hub::WatchHub;

#[derive(Default)]
struct State {
    objects: BTreeMap<(Kind, String), (u64, serde_json::Value)>,
    revision: u64,
    hub: WatchHub,
}

/// A store that lives in memory only.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn record(kind: Kind, name: &str, rev: u64, value: &serde_json::Value) -> Record {
    Record { kind, name: name.to_string(), version: ResourceVersion(rev.to_string()), value: value.clone() }
}

impl Store for MemoryStore {
    fn get(&self, kind: Kind, name: &str) -> BoxFuture<'_, Result<Record>> {
        let state = self.state.lock();
        let result = match state.objects.get(&(kind, name.to_string())) {
            Some((rev, value)) => Ok(record(kind, name, *rev, value)),
            None => Err(StoreError::new(ErrorKind::NotFound, "get", Some(kind), name, "not found")),
        };
        futures::future::ready(result).boxed()
    }

    fn list(&self, kind: Kind) -> BoxFuture<'_, Result<Vec<Record>>> {
        let state = self.state.lock();
        let records = state
            .objects
            .range((kind, String::new())..)
            .take_while(|((k, _), _)| *k == kind)
            .map(|((k, n), (rev, v))| record(*k, n, *rev, v))
            .collect();
        futures::future::ready(Ok(records)).boxed()
    }

    fn create(&self, kind: Kind, name: &str, value: serde_json::Value) -> BoxFuture<'_, Result<Record>> {
        let result = check_name("create", kind, name).and_then(|()| {
            let mut state = self.state.lock();
            let key = (kind, name.to_string());
            if state.objects.contains_key(&key) {
                return Err(StoreError::new(
                    ErrorKind::AlreadyExists,
                    "create",
                    Some(kind),
                    name,
                    "already exists",
                ));
            }
            state.revision += 1;
            let rev = state.revision;
            let rec = record(kind, name, rev, &value);
            state.objects.insert(key, (rev, value));
            state.hub.publish(WatchEvent::Put(rec.clone()));
            Ok(rec)
        });
        futures::future::ready(result).boxed()
    }

    fn update(
        &self,
        kind: Kind,
        name: &str,
        expected: &ResourceVersion,
        value: serde_json::Value,
    ) -> BoxFuture<'_, Result<Record>> {
        let mut state = self.state.lock();
        let key = (kind, name.to_string());
        let result = match state.objects.get(&key) {
            None => Err(StoreError::new(ErrorKind::NotFound, "update", Some(kind), name, "not found")),
            Some((rev, _)) if rev.to_string() != expected.0 => Err(StoreError::new(
                ErrorKind::Conflict,
                "update",
                Some(kind),
                name,
                format!("version {expected} is stale (current {rev})"),
            )),
            Some(_) => {
                state.revision += 1;
                let rev = state.revision;
                let rec = record(kind, name, rev, &value);
                state.objects.insert(key, (rev, value));
                state.hub.publish(WatchEvent::Put(rec.clone()));
                Ok(rec)
            }
        };
        futures::future::ready(result).boxed()
    }

    fn delete(
        &self,
        kind: Kind,
        name: &str,
        expected: Option<&ResourceVersion>,
    ) -> BoxFuture<'_, Result<()>> {
        let mut state = self.state.lock();
        let key = (kind, name.to_string());
        let result = match state.objects.get(&key) {
            None => Err(StoreError::new(ErrorKind::NotFound, "delete", Some(kind), name, "not found")),
            Some((rev, _)) if expected.is_some_and(|e| e.0 != rev.to_string()) => Err(StoreError::new(
                ErrorKind::Conflict,
                "delete",
                Some(kind),
                name,
                format!("version is stale (current {rev})"),
            )),
            Some(_) => {
                if let Some((rev, value)) = state.objects.remove(&key) {
                    state.revision += 1;
                    state.hub.publish(WatchEvent::Deleted(record(kind, name, rev, &value)));
                }
                Ok(())
            }
        };
        futures::future::ready(result).boxed()
    }

    fn watch(&self, kind: Option<Kind>) -> BoxFuture<'_, Result<WatchStream>> {
        let stream = self.state.lock().hub.subscribe(kind);
        futures::future::ready(Ok(stream)).boxed()
    }
}
