//! The replicas of a volume as the engine sees them: address, link, mode (RW / WO / ERR) and rebuild
//! progress. The data path takes a cheap snapshot (`Arc<Vec<…>>`) of the set per request; membership
//! changes replace the vector, mode changes are atomic stores on the slot.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use corral_wire::ReplicaProtocol;

/// A replica's role in the volume (Longhorn's controller-side modes, reference §3.1): the control
/// API's own type, so the engine reports modes with no conversion.
pub use corral_api::ReplicaMode as Mode;

/// A mode as the byte a slot stores atomically.
fn mode_to_u8(mode: Mode) -> u8 {
    match mode {
        Mode::ReadWrite => 0,
        Mode::WriteOnly => 1,
        Mode::Error => 2,
    }
}

fn mode_from_u8(v: u8) -> Mode {
    match v {
        0 => Mode::ReadWrite,
        1 => Mode::WriteOnly,
        _ => Mode::Error,
    }
}

/// One replica of the volume.
pub struct ReplicaSlot {
    /// Address as given (`tcp://host:port`, `unix:///path`).
    pub address: String,
    /// The connection; `None` when the replica could not be reached.
    pub(crate) link: Option<Arc<dyn ReplicaProtocol>>,
    mode: AtomicU8,
    /// Rebuild progress in percent (meaningful while WO).
    progress: AtomicU8,
    /// Why the replica is ERR, for `replica ls`.
    reason: Mutex<Option<String>>,
}

impl ReplicaSlot {
    pub(crate) fn new(address: String, link: Option<Arc<dyn ReplicaProtocol>>, mode: Mode) -> Arc<Self> {
        Arc::new(ReplicaSlot {
            address,
            link,
            mode: AtomicU8::new(mode_to_u8(mode)),
            progress: AtomicU8::new(0),
            reason: Mutex::new(None),
        })
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        mode_from_u8(self.mode.load(Ordering::SeqCst))
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        self.mode.store(mode_to_u8(mode), Ordering::SeqCst);
    }

    /// Sets ERR; returns the previous mode.
    pub(crate) fn set_error(&self, reason: String) -> Mode {
        *self.reason.lock() = Some(reason);
        mode_from_u8(self.mode.swap(mode_to_u8(Mode::Error), Ordering::SeqCst))
    }

    /// Why it is ERR, if it is.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().clone()
    }

    pub(crate) fn set_progress(&self, percent: u8) {
        self.progress.store(percent.min(100), Ordering::SeqCst);
    }

    /// Rebuild progress in percent.
    pub fn progress(&self) -> u8 {
        self.progress.load(Ordering::SeqCst)
    }

    /// The link when the slot takes writes (RW or WO).
    pub(crate) fn writable_link(&self) -> Option<&Arc<dyn ReplicaProtocol>> {
        match self.mode() {
            Mode::ReadWrite | Mode::WriteOnly => self.link.as_ref(),
            Mode::Error => None,
        }
    }

    /// The link when the slot serves reads (RW).
    pub(crate) fn readable_link(&self) -> Option<&Arc<dyn ReplicaProtocol>> {
        match self.mode() {
            Mode::ReadWrite => self.link.as_ref(),
            _ => None,
        }
    }
}

/// What `replica ls` shows for one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Address.
    pub address: String,
    /// RW, WO or ERR.
    pub mode: Mode,
    /// Percent copied while WO; 100 for RW; 0 for ERR.
    pub rebuild_progress: u8,
    /// Why the replica is ERR.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl ReplicaStatus {
    pub(crate) fn of(slot: &ReplicaSlot) -> Self {
        let mode = slot.mode();
        ReplicaStatus {
            address: slot.address.clone(),
            mode,
            rebuild_progress: match mode {
                Mode::ReadWrite => 100,
                Mode::WriteOnly => slot.progress(),
                Mode::Error => 0,
            },
            error: if mode == Mode::Error { slot.reason() } else { None },
        }
    }
}

/// The set of replicas; replaced as a whole when membership changes.
pub(crate) type SlotList = Arc<Vec<Arc<ReplicaSlot>>>;
