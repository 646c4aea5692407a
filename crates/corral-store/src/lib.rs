//! corral-store: Corral's datastore — one backend-neutral trait and the embedded backend.
//!
//! The manager keeps all desired and observed state (volumes, engines, replicas, nodes and their
//! disks, snapshots, backup targets, backup volumes, backups, recurring jobs, settings) in a
//! [`Store`]: JSON documents addressed by kind and name, each with an opaque [`ResourceVersion`].
//! Writes are optimistic: `update` and `delete` take the version the caller read, and a stale
//! version is a `Conflict` error, never last-writer-wins. `watch` streams every change in commit
//! order so reconcilers can be level-triggered (list, then react to changes).
//!
//! Backends: [`RedbStore`] (embedded, the default, one file), [`EtcdStore`] (several nodes over an
//! etcd cluster; key layout and failover in its module), [`MemoryStore`] (tests). A Kubernetes
//! backend may come later behind the same trait: nothing above the trait may assume the
//! data is local, that versions are numbers, or that a watch cannot end (a watch that ends means
//! "list again").
//!
//! Leases (node liveness, the leader's claim) and writes guarded by them have one API for every
//! backend, [`Leases`]: etcd's fence across machines, [`LocalLeases`] for a one-process store.
//!
//! Typed access goes through [`Datastore`], which maps the resource types of [`resources`]
//! (`Object<Spec, Status>`) to records. [`conformance`] holds the backend test suite.
//!
//! # Threading
//! Every operation is `async` and `Send`; the redb backend runs its transactions on tokio's
//! blocking pool and serialises writes with one lock; the etcd backend's gRPC I/O runs on the
//! tokio runtime it was connected in. All types are `Send + Sync` and cheap to clone.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use corral_store::{Datastore, MemoryStore, resources::{Setting, SettingSpec}};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let ds = Datastore::new(Arc::new(MemoryStore::new()));
//! let s = ds.create(&Setting::new("replica-soft-anti-affinity", SettingSpec { value: "true".into() })).await?;
//! let mut changed = s.clone();
//! changed.spec.value = "false".into();
//! ds.update(&changed).await?;
//! // `s` now holds a stale version: writing it again is a conflict, not an overwrite.
//! assert!(ds.update(&s).await.unwrap_err().is_conflict());
//! # Ok::<(), corral_store::StoreError>(())
//! # }).unwrap();
//! ```

pub mod conformance;
mod error;
mod etcd;
mod leases;
mod memory;
mod object;
mod redb_store;
pub mod resources;
mod store;
mod watch_hub;

pub use error::{ErrorKind, Result, StoreError};
pub use etcd::{parse_etcd_url, EtcdStore, Guarded, NodeLease};
pub use leases::{Lease, Leases, LocalLeases};
pub use memory::MemoryStore;
pub use object::{Change, Datastore, Metadata, Object, Resource};
pub use redb_store::RedbStore;
pub use store::{Kind, Record, ResourceVersion, Store, WatchEvent, WatchStream};
