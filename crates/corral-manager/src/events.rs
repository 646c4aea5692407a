//! Events: what the manager did and what went wrong, newest last, bounded to the newest
//! [`DEFAULT_CAPACITY`] and persisted in the datastore (resource kind `events`), so they survive a
//! manager restart.
//!
//! Recording is synchronous and cheap (reconcilers record from anywhere): the event goes into an
//! in-memory ring that serves `/v1/events`, and a write-behind task stores it under a zero-padded
//! sequence number (names sort by age) and deletes the oldest stored one beyond the bound. A crash
//! may lose the last few events that were not written yet; the state itself is in the datastore,
//! events only explain it. [`EventLog::flush`] waits for the writes queued so far.
use std::collections::VecDeque;

use corral_store::resources::{Event as StoredEvent, EventSpec};
use corral_store::{Datastore, Resource};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// How many events are kept (in memory and in the store).
pub const DEFAULT_CAPACITY: usize = 1000;

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Normal,
    Warning,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// RFC 3339.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Resource kind: volume, replica, engine, node, setting, ...
    pub resource: String,
    pub name: String,
    /// Short CamelCase reason: Scheduled, SchedulingFailed, Started, Failed, Attached, ...
    pub reason: String,
    pub message: String,
}

impl Event {
    fn to_spec(&self) -> EventSpec {
        EventSpec {
            time: self.time.clone(),
            kind: match self.kind {
                EventType::Normal => "normal".into(),
                EventType::Warning => "warning".into(),
            },
            resource: self.resource.clone(),
            name: self.name.clone(),
            reason: self.reason.clone(),
            message: self.message.clone(),
        }
    }

    /// The event a stored record holds.
    pub(crate) fn from_spec(s: &EventSpec) -> Event {
        Event {
            time: s.time.clone(),
            kind: if s.kind == "warning" { EventType::Warning } else { EventType::Normal },
            resource: s.resource.clone(),
            name: s.name.clone(),
            reason: s.reason.clone(),
            message: s.message.clone(),
        }
    }
}

/// Store name of the event with sequence number `seq`.
fn record_name(seq: u64) -> String {
    format!("{seq:016}")
}

enum Write {
    Put(u64, Event),
    Delete(u64),
    Flush(oneshot::Sender<()>),
}

struct Ring {
    /// (sequence number, event), oldest first.
    events: VecDeque<(u64, Event)>,
    next_seq: u64,
}

/// Bounded event log. Repeated identical events (same resource, reason and message as the last
/// event of that resource) are recorded once.
pub struct EventLog {
    ring: Mutex<Ring>,
    capacity: usize,
    writer: Option<mpsc::UnboundedSender<Write>>,
}

impl Default for EventLog {
    /// An in-memory log (nothing persisted).
    fn default() -> Self {
        EventLog {
            ring: Mutex::new(Ring { events: VecDeque::new(), next_seq: 0 }),
            capacity: DEFAULT_CAPACITY,
            writer: None,
        }
    }
}

impl EventLog {
    /// A log persisted in `ds`: loads the newest `capacity` stored events (deleting older ones) and
    /// starts the write-behind task. Must be called inside a Tokio runtime.
    pub async fn persistent(ds: Datastore, capacity: usize) -> crate::Result<EventLog> {
        let capacity = capacity.max(1);
        let mut stored: Vec<StoredEvent> = ds.list().await?;
        // Names are zero-padded sequence numbers: sorted by name is sorted by age.
        stored.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let excess = stored.len().saturating_sub(capacity);
        for old in stored.drain(..excess) {
            match ds.delete::<StoredEvent>(old.name(), None).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut events = VecDeque::with_capacity(stored.len());
        let mut next_seq = 0;
        for s in &stored {
            let Ok(seq) = s.metadata.name.parse::<u64>() else { continue };
            next_seq = next_seq.max(seq + 1);
            events.push_back((seq, Event::from_spec(&s.spec)));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_behind(ds, rx));
        Ok(EventLog { ring: Mutex::new(Ring { events, next_seq }), capacity, writer: Some(tx) })
    }

    pub fn record(
        &self,
        kind: EventType,
        resource: &str,
        name: &str,
        reason: &str,
        message: impl Into<String>,
    ) {
        let message = message.into();
        let mut ring = self.ring.lock();
        let repeat = ring
            .events
            .iter()
            .rev()
            .find(|(_, e)| e.resource == resource && e.name == name)
            .is_some_and(|(_, e)| e.reason == reason && e.message == message);
        if repeat {
            return;
        }
        match kind {
            EventType::Warning => tracing::warn!(%resource, %name, %reason, %message, "event"),
            EventType::Normal => tracing::info!(%resource, %name, %reason, %message, "event"),
        }
        let event = Event {
            time: chrono::Utc::now().to_rfc3339(),
            kind,
            resource: resource.to_string(),
            name: name.to_string(),
            reason: reason.to_string(),
            message,
        };
        let seq = ring.next_seq;
        ring.next_seq += 1;
        // Queued under the lock, so the writer sees puts and deletes in sequence order.
        if let Some(w) = &self.writer {
            let _ = w.send(Write::Put(seq, event.clone()));
        }
        ring.events.push_back((seq, event));
        while ring.events.len() > self.capacity {
            if let Some((old, _)) = ring.events.pop_front() {
                if let Some(w) = &self.writer {
                    let _ = w.send(Write::Delete(old));
                }
            }
        }
    }

    pub fn normal(&self, resource: &str, name: &str, reason: &str, message: impl Into<String>) {
        self.record(EventType::Normal, resource, name, reason, message);
    }

    pub fn warning(&self, resource: &str, name: &str, reason: &str, message: impl Into<String>) {
        self.record(EventType::Warning, resource, name, reason, message);
    }

    /// Events, oldest first, optionally of one resource kind and/or name.
    pub fn list(&self, resource: Option<&str>, name: Option<&str>) -> Vec<Event> {
        self.ring
            .lock()
            .events
            .iter()
            .filter(|(_, e)| resource.is_none_or(|r| e.resource == r) && name.is_none_or(|n| e.name == n))
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// How many events are kept now.
    pub fn len(&self) -> usize {
        self.ring.lock().events.len()
    }

    /// True when no event is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until every event recorded so far is written to the store (no-op when in memory).
    pub async fn flush(&self) {
        let Some(w) = &self.writer else { return };
        let (tx, rx) = oneshot::channel();
        if w.send(Write::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write_behind(ds: Datastore, mut rx: mpsc::UnboundedReceiver<Write>) {
    while let Some(w) = rx.recv().await {
        let result = match w {
            Write::Put(seq, e) => {
                let mut rec = StoredEvent::new(record_name(seq), e.to_spec());
                rec.metadata.created = e.time.clone();
                match ds.create(&rec).await {
                    Err(err) if err.kind() == corral_store::ErrorKind::AlreadyExists => Ok(()),
                    other => other.map(drop),
                }
            }
            Write::Delete(seq) => match ds.delete::<StoredEvent>(&record_name(seq), None).await {
                Err(err) if err.is_not_found() => Ok(()),
                other => other,
            },
            Write::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        if let Err(e) = result {
            // Not recorded as an event: that would feed this very queue.
            tracing::warn!(error = %e, "cannot persist an event");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;

    fn store() -> Datastore {
        Datastore::new(Arc::new(corral_store::MemoryStore::default()))
    }

    #[tokio::test]
    async fn events_are_bounded_and_survive_a_reload() {
        let ds = store();
        let log = EventLog::persistent(ds.clone(), 5).await.unwrap();
        for i in 0..8 {
            log.normal("volume", "v", "Step", format!("step {i}"));
        }
        log.warning("volume", "v", "Step", "step 7"); // the same text again: not recorded
        log.warning("volume", "v", "Step", "step 8");
        log.flush().await;
        assert_eq!(log.len(), 5);
        let stored: Vec<StoredEvent> = ds.list().await.unwrap();
        assert_eq!(stored.len(), 5, "the store keeps only the newest 5");
        drop(log);
        let again = EventLog::persistent(ds.clone(), 5).await.unwrap();
        let msgs: Vec<String> = again.list(None, None).into_iter().map(|e| e.message).collect();
        assert_eq!(msgs, ["step 4", "step 5", "step 6", "step 7", "step 8"]);
        assert_eq!(again.list(None, None).last().unwrap().kind, EventType::Warning);
        // New events continue the sequence after the reloaded ones.
        again.normal("node", "n", "Registered", "x");
        again.flush().await;
        let stored: Vec<StoredEvent> = ds.list().await.unwrap();
        assert_eq!(stored.len(), 5);
        assert_eq!(stored.last().unwrap().spec.reason, "Registered");
        // A smaller bound on reload trims the store.
        drop(again);
        let small = EventLog::persistent(ds.clone(), 2).await.unwrap();
        assert_eq!(small.len(), 2);
        assert_eq!(ds.list::<StoredEvent>().await.unwrap().len(), 2);
    }

    #[test]
    fn a_repeated_event_is_recorded_once() {
        let log = EventLog::default();
        log.normal("volume", "v", "Attached", "x");
        log.normal("volume", "v", "Attached", "x");
        log.normal("volume", "w", "Attached", "x");
        assert_eq!(log.len(), 2);
    }
}
