//! [`Replica::flush`]: one `fdatasync` of the data that changed, shared by every flush that arrives
//! while one is running (group commit).
//!
//! # What a flush costs, and why it is enough
//! The common path is **one** `fdatasync`, of the head (plus any older layer punched since the last
//! flush, which is rare). The revision counter is then written with a plain `pwrite` and *not* synced:
//! - It survives a killed process (it is in the page cache like everything else).
//! - After a power loss it may lag the data it counts. That is safe because the engine's start rule
//!   decides freshness by the **generation** first (made durable with its own sync before the engine
//!   acknowledges anything a dropped replica missed), and every replica a power loss interrupted is
//!   dirty (`volume.meta` says so durably from open until a clean close), so the start rule keeps
//!   exactly one of them RW and rebuilds the others from it. A lagging counter can only make a replica
//!   look older than it is (a needless rebuild), never make a replica that missed an acknowledged write
//!   look current: that one has a lower generation.
//! - A clean close syncs the counter before it clears `Dirty`, and `set_revision` syncs it, so a clean
//!   replica's counter is always exact.
//!
//! The failpoint `flush.after_data_sync` sits between the data sync and the counter write.
//!
//! # Group commit
//! A flush must cover every write that completed before it was called, so a sync that *started* after
//! the call covers it; one already running may not. Each sync gets a ticket number; a caller waits for
//! the first sync numbered after the one running when it arrived, and the first caller to find no sync
//! running runs it for everybody waiting. Under load at most two syncs are queued however many flushes
//! arrive, and at queue depth 1 the cost is one uncontended mutex.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::Ordering;

use crate::error::{ErrorKind, ReplicaError, Result};
use crate::replica::Replica;

/// Failpoint between the data sync and the revision counter write of a flush.
pub(crate) const AFTER_DATA_SYNC: &str = "flush.after_data_sync";

/// The group-commit state of one replica's flushes.
#[derive(Debug, Default)]
pub(crate) struct FlushGroup {
    state: Mutex<GroupState>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Ticket of the last sync started.
    started: u64,
    /// Ticket of the last sync finished (syncs run one at a time, in ticket order).
    finished: u64,
    running: bool,
    /// The latest failed sync: its ticket and what went wrong.
    failed: Option<(u64, ErrorKind, String)>,
}

impl Replica {
    /// Makes every write that completed before this call durable. See the module documentation.
    pub fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let group = &self.flush_group;
        let mut state = group.state.lock();
        // The sync running now (if any) may have started before writes this flush must cover.
        let ticket = state.started + 1;
        loop {
            if state.finished >= ticket {
                return match &state.failed {
                    Some((failed, kind, message)) if *failed >= ticket => Err(ReplicaError::new(
                        *kind,
                        "flush",
                        format!("the shared sync this flush joined failed: {message}"),
                    )
                    .with_path(&self.dir)),
                    _ => Ok(()),
                };
            }
            if !state.running {
                state.running = true;
                state.started += 1;
                let mine = state.started;
                drop(state);
                let result = self.sync_now();
                let mut state = group.state.lock();
                state.running = false;
                state.finished = mine;
                if let Err(err) = &result {
                    state.failed = Some((mine, err.kind(), err.to_string()));
                }
                drop(state);
                group.finished.notify_all();
                return result;
            }
            group.finished.wait(&mut state);
        }
    }

    /// One sync: `fdatasync` of the head and of any layer punched since, then the counter (unsynced).
    fn sync_now(&self) -> Result<()> {
        // Read the revision first: every request it counts has completed, so the sync below covers it.
        let revision = self.revision.load(Ordering::Acquire);
        {
            let chain = self.chain.read();
            let head = chain.head_layer();
            head.file
                .sync_data()
                .map_err(|e| ReplicaError::io("fdatasync", &self.dir.join(&head.file_name), e))?;
            for layer in chain.layers.values() {
                if layer.dirty.swap(false, Ordering::AcqRel) {
                    if let Err(e) = layer.file.sync_data() {
                        layer.dirty.store(true, Ordering::Release);
                        return Err(ReplicaError::io("fdatasync", &self.dir.join(&layer.file_name), e));
                    }
                }
            }
        }
        self.failpoints.hit(AFTER_DATA_SYNC)?;
        let mut persisted = self.persisted_revision.lock();
        if revision > *persisted {
            self.write_revision(revision, false)?;
            *persisted = revision;
        }
        Ok(())
    }
}
