//! corral-replica (being written).
pub mod service;
