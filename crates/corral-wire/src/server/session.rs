//! The session rules of [`super`] (its module doc): which engine holds the replica, and the engine
//! epochs that fence an old engine off once a newer one arrived.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{ConnectionState, ReplicaService, Server};
use crate::error::{ErrorKind, Result, WireError};
use crate::messages::Hello;

/// Which engine holds the replica, and through which connections.
#[derive(Default)]
pub(super) struct Claims {
    pub(super) holder: Option<Holder>,
}

pub(super) struct Holder {
    engine_id: String,
    session: u64,
    pub(super) connections: HashMap<u64, Arc<ConnectionState>>,
    epoch: u64,
}

/// The refusal of an engine whose epoch is older than the replica's.
pub(super) fn stale_epoch(epoch: u64, current: u64) -> WireError {
    WireError::service(
        ErrorKind::Busy,
        format!(
            "engine epoch {epoch} is older than {current} accepted by this replica: a newer engine took \
             the volume over"
        ),
    )
}

impl<S: ReplicaService> Server<S> {
    /// Checks `hello`'s epoch against the replica's and raises (durably) the replica's to a newer one.
    /// Returns true when the epoch is newer than any accepted before.
    async fn check_epoch(&self, hello: &Hello) -> Result<bool> {
        let _gate = self.epoch_gate.lock().await;
        let current = self.epoch.load(Ordering::SeqCst);
        if hello.epoch < current {
            return Err(stale_epoch(hello.epoch, current));
        }
        if hello.epoch == current {
            return Ok(false);
        }
        let service = self.service.clone();
        let epoch = hello.epoch;
        tokio::task::spawn_blocking(move || service.accept_engine_epoch(epoch))
            .await
            .map_err(|e| WireError::service(ErrorKind::Io, format!("accept engine epoch {epoch}: {e}")))??;
        // From here on no request of an older session starts (see `ConnectionState::fenced`).
        self.epoch.store(epoch, Ordering::SeqCst);
        tracing::info!(engine = %hello.engine_id, epoch, "accepted a newer engine epoch");
        Ok(true)
    }

    pub(super) async fn claim(&self, state: &Arc<ConnectionState>, hello: &Hello) -> Result<()> {
        let newer_epoch = self.check_epoch(hello).await?;
        let take_over = hello.take_over || newer_epoch;
        let same = |holder: &Holder| {
            holder.engine_id == hello.engine_id
                && holder.session == hello.session
                && holder.epoch == hello.epoch
        };
        let replaced = {
            let mut claims = self.claims.lock();
            let same_session = claims.holder.as_ref().map(same);
            match same_session {
                None | Some(true) => Vec::new(),
                Some(false) if !take_over => {
                    let holder = claims.holder.as_ref().map(|h| h.engine_id.clone()).unwrap_or_default();
                    return Err(WireError::service(
                        ErrorKind::Busy,
                        format!(
                            "replica is held by engine {holder:?}; engine {:?} refused (use take-over if that engine is gone)",
                            hello.engine_id
                        ),
                    ));
                }
                Some(false) => {
                    let old = claims.holder.take().map(|h| h.connections).unwrap_or_default();
                    tracing::warn!("engine {:?} takes the replica over", hello.engine_id);
                    old.into_values().collect()
                }
            }
        };
        // Writes of the old holder that are already running must land before the new engine proceeds.
        for old in &replaced {
            old.revoke();
        }
        let deadline = tokio::time::Instant::now() + self.options.take_over_drain;
        while replaced.iter().any(|old| !old.idle()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let current = self.epoch.load(Ordering::SeqCst);
        if hello.epoch < current {
            // A newer engine arrived while this one was draining.
            return Err(stale_epoch(hello.epoch, current));
        }
        let mut claims = self.claims.lock();
        if let Some(holder) = &claims.holder {
            // Another Hello won the race while this one was draining.
            if !same(holder) {
                return Err(WireError::service(
                    ErrorKind::Busy,
                    "replica was claimed by another engine meanwhile",
                ));
            }
        }
        let holder = claims.holder.get_or_insert_with(|| Holder {
            engine_id: hello.engine_id.clone(),
            session: hello.session,
            connections: HashMap::new(),
            epoch: hello.epoch,
        });
        holder.connections.insert(state.id, state.clone());
        state.epoch.store(hello.epoch, Ordering::Release);
        state.greeted.store(true, Ordering::Release);
        Ok(())
    }
}
