//! Business operations shared by the API and the reconcilers: reading and changing volumes with
//! the store's version check ([`volumes`]), the snapshot mirror ([`snapshots`]), backup requests
//! and the backup guard ([`backups`]), the counters both sides touch ([`stats`]), and the engine
//! epochs that fence the data plane ([`engine_epoch`]). They use
//! `model/` and `clients/`, never `api/` or `reconcile/`.
pub mod backups;
pub mod engine_epoch;
pub mod snapshots;
pub mod stats;
pub mod volumes;
