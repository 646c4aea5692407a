//! Named failpoints: test-only places where the engine "dies" as if its process were killed there.
//! Compiled in only for this crate's tests and with the `failpoints` feature; otherwise every check is
//! an inlined `false` and the data path carries no trace of them.
//!
//! Dying (`Engine::die_at`) closes every replica connection at once (requests not yet sent are
//! dropped, nothing is rolled back, no generation is bumped) and refuses new connections, so no further
//! I/O leaves the engine; the crash tests then start a new engine on the same replicas. Every name is in
//! [`ALL`]; the crash tests iterate over it, so a failpoint added without a test fails the suite.

/// Every failpoint, in the order a volume's life reaches them.
pub const ALL: &[&str] = &[
    // A write acknowledged by the first replica and never sent to the others.
    FANOUT_AFTER_FIRST_ACK,
    // A flush done on the first replica and never sent to the others.
    FLUSH_AFTER_SOME_REPLICAS,
    // A snapshot taken on the first replica only.
    SNAPSHOT_AFTER_SOME_REPLICAS,
    // The first replica reverted, the others not.
    REVERT_AFTER_SOME_REPLICAS,
    // The first replica grown, the others not.
    EXPAND_AFTER_SOME_REPLICAS,
    // A rebuild target holding half of one extent of a layer.
    REBUILD_COPY_MID_EXTENT,
    // A verified rebuild target with the current generation, still marked rebuilding.
    REBUILD_BEFORE_SET_RW,
    // A verified rebuild target no longer marked rebuilding, before the engine set it RW.
    REBUILD_AFTER_CLEAR_REBUILDING,
];

/// See [`ALL`].
pub const FANOUT_AFTER_FIRST_ACK: &str = "engine.fanout.after_first_ack";
/// See [`ALL`].
pub const FLUSH_AFTER_SOME_REPLICAS: &str = "engine.flush.after_some_replicas";
/// See [`ALL`].
pub const SNAPSHOT_AFTER_SOME_REPLICAS: &str = "engine.snapshot.after_some_replicas";
/// See [`ALL`].
pub const REVERT_AFTER_SOME_REPLICAS: &str = "engine.revert.after_some_replicas";
/// See [`ALL`].
pub const EXPAND_AFTER_SOME_REPLICAS: &str = "engine.expand.after_some_replicas";
/// See [`ALL`].
pub const REBUILD_COPY_MID_EXTENT: &str = "rebuild.copy.mid_extent";
/// See [`ALL`].
pub const REBUILD_BEFORE_SET_RW: &str = "rebuild.before_set_rw";
/// See [`ALL`].
pub const REBUILD_AFTER_CLEAR_REBUILDING: &str = "rebuild.after_clear_rebuilding";

/// The failpoint a fanned-out operation stops at, by the operation's name.
#[cfg(any(test, feature = "failpoints"))]
pub(crate) fn for_fan_out(op: &str) -> Option<&'static str> {
    match op {
        "write" | "write-zeroes" | "trim" => Some(FANOUT_AFTER_FIRST_ACK),
        "flush" => Some(FLUSH_AFTER_SOME_REPLICAS),
        "snapshot create" => Some(SNAPSHOT_AFTER_SOME_REPLICAS),
        "revert" => Some(REVERT_AFTER_SOME_REPLICAS),
        "expand" => Some(EXPAND_AFTER_SOME_REPLICAS),
        _ => None,
    }
}

/// The failpoint armed on one engine (per instance, so parallel tests do not interfere), and whether
/// the engine died at it.
#[derive(Debug, Default)]
pub(crate) struct Failpoints {
    #[cfg(any(test, feature = "failpoints"))]
    armed: parking_lot::Mutex<Option<String>>,
    #[cfg(any(test, feature = "failpoints"))]
    dead: std::sync::atomic::AtomicBool,
}

impl Failpoints {
    /// Arms `name` (one at a time; the first hit fires it).
    #[cfg(any(test, feature = "failpoints"))]
    pub(crate) fn arm(&self, name: &str) {
        *self.armed.lock() = Some(name.to_string());
    }

    /// True if `name` is armed; the caller then runs the failpoint's path and fires it.
    #[cfg(any(test, feature = "failpoints"))]
    pub(crate) fn is_armed(&self, name: &str) -> bool {
        self.armed.lock().as_deref() == Some(name)
    }

    /// Without failpoints compiled in, nothing is ever armed.
    #[cfg(not(any(test, feature = "failpoints")))]
    #[inline(always)]
    pub(crate) fn is_armed(&self, _name: &str) -> bool {
        false
    }

    /// Records the death (disarming the failpoint).
    #[cfg(any(test, feature = "failpoints"))]
    pub(crate) fn fire(&self) {
        *self.armed.lock() = None;
        self.dead.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// True once the engine died at a failpoint: it must open no connection any more.
    #[cfg(any(test, feature = "failpoints"))]
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Without failpoints compiled in, the engine never dies at one.
    #[cfg(not(any(test, feature = "failpoints")))]
    #[inline(always)]
    pub(crate) fn is_dead(&self) -> bool {
        false
    }
}
