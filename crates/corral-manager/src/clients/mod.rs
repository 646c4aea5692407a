//! Calls out of the manager: the engines' control APIs ([`engine`]), the node's instance manager
//! ([`instance_manager`]), the backup store ([`backup_store`]) and this node's disks ([`disks`]).
//! Each turns the other side's errors into [`crate::ManagerError`]s with a stable code; none knows
//! about the API or the reconcilers.
pub mod backup_store;
pub mod disks;
pub mod engine;
pub mod instance_manager;
