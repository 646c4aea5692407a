//! Pure rules of the control plane: what a valid name, size, label or URL is ([`validation`]), the
//! settings and their types ([`settings`]), when a node is up ([`liveness`]), where replicas go ([`scheduler`]) and when a recurring
//! job is due ([`recurring`]). Nothing here talks to a process; the store is read only to load
//! settings. Everything above (`clients/`, `ops/`, `reconcile/`, `api/`) may use this module.
pub mod liveness;
pub mod recurring;
pub mod scheduler;
pub mod settings;
pub mod validation;
