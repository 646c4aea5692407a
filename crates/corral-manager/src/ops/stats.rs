//! Counters the reconcile loop updates and `/metrics` reads: kept below both so neither imports
//! the other.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::clients::engine::EngineIo;

/// Counters the reconcile loop updates and `/metrics` reads.
#[derive(Default)]
pub struct ManagerStats {
    /// Reconcile passes run.
    pub passes: AtomicU64,
    /// Duration of the last pass, microseconds.
    pub last_pass_micros: AtomicU64,
    /// I/O counters of each volume at the previous scrape, for the IOPS / throughput gauges.
    pub previous_io: Mutex<HashMap<String, (Instant, EngineIo)>>,
}

impl ManagerStats {
    /// Record one reconcile pass.
    pub fn pass_done(&self, took: Duration) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.last_pass_micros.store(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}
