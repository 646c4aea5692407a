//! Named failpoints: test-only hooks that make a multi-file operation stop at a given step, as if the
//! process had died there (no rollback runs). Compiled in only for this crate's tests and with the
//! `failpoints` feature; otherwise [`Failpoints::hit`] is an inlined no-op.
//!
//! Every name is listed in [`ALL`]; the crash tests arm each one in turn, then drop the replica without
//! closing it, reopen the directory and compare with the model.

use crate::error::Result;

/// Every failpoint, in the order the operations reach them.
pub const ALL: &[&str] = &[
    "flush.after_data_sync",
    "snapshot.after_new_head",
    "snapshot.after_new_head_meta",
    "snapshot.after_link",
    "snapshot.after_snap_meta",
    "snapshot.after_commit",
    "snapshot.after_cleanup",
    "revert.after_new_head",
    "revert.after_commit",
    "revert.after_cleanup",
    "purge.after_mark_system",
    "purge.remove.after_meta",
    "purge.coalesce.mid_copy",
    "purge.coalesce.after_copy",
    "purge.coalesce.after_intent",
    "purge.coalesce.after_commit",
    "purge.coalesce.after_delete",
    "purge.prune.mid_punch",
    "finish_rebuild.after_intent",
    "finish_rebuild.after_meta",
    "finish_rebuild.after_head",
    "finish_rebuild.after_delete",
];

/// The message prefix of a failpoint error (such errors skip rollback).
pub(crate) const PREFIX: &str = "failpoint ";

/// The failpoints armed on one replica (per instance, so parallel tests do not interfere).
#[derive(Debug, Default)]
pub(crate) struct Failpoints {
    #[cfg(any(test, feature = "failpoints"))]
    armed: parking_lot::Mutex<Option<(String, u32)>>,
}

impl Failpoints {
    /// Arms `name` to fail on its `nth` hit (1 = the first).
    #[cfg(any(test, feature = "failpoints"))]
    pub(crate) fn arm(&self, name: &str, nth: u32) {
        *self.armed.lock() = Some((name.to_string(), nth.max(1)));
    }

    /// Called at a named step: errors if that step is armed and its count is reached.
    #[inline]
    pub(crate) fn hit(&self, name: &'static str) -> Result<()> {
        #[cfg(any(test, feature = "failpoints"))]
        {
            let mut armed = self.armed.lock();
            if let Some((armed_name, remaining)) = armed.as_mut() {
                if armed_name == name {
                    *remaining -= 1;
                    if *remaining == 0 {
                        *armed = None;
                        return Err(crate::error::ReplicaError::new(
                            crate::ErrorKind::Io,
                            "failpoint",
                            format!("{PREFIX}{name}"),
                        ));
                    }
                }
            }
        }
        let _ = name;
        Ok(())
    }
}

/// True if `e` was raised by a failpoint (the operation must then leave the disk exactly as it is).
pub(crate) fn is_failpoint(e: &crate::ReplicaError) -> bool {
    e.op() == "failpoint" && e.message().starts_with(PREFIX)
}
