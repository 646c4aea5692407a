//! Events: what the manager did and what went wrong, newest last, kept in memory (the last 1000;
//! they are not persisted: the state itself is in the datastore).
use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

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

/// Bounded in-memory event log. Repeated identical events (same resource, reason and message)
/// are recorded once.
pub struct EventLog {
    events: Mutex<VecDeque<Event>>,
    capacity: usize,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog { events: Mutex::new(VecDeque::new()), capacity: 1000 }
    }
}

impl EventLog {
    pub fn record(
        &self,
        kind: EventType,
        resource: &str,
        name: &str,
        reason: &str,
        message: impl Into<String>,
    ) {
        let message = message.into();
        let mut events = self.events.lock();
        let repeat = events
            .iter()
            .rev()
            .find(|e| e.resource == resource && e.name == name)
            .is_some_and(|e| e.reason == reason && e.message == message);
        if repeat {
            return;
        }
        match kind {
            EventType::Warning => tracing::warn!(%resource, %name, %reason, %message, "event"),
            EventType::Normal => tracing::info!(%resource, %name, %reason, %message, "event"),
        }
        if events.len() >= self.capacity {
            events.pop_front();
        }
        events.push_back(Event {
            time: chrono::Utc::now().to_rfc3339(),
            kind,
            resource: resource.to_string(),
            name: name.to_string(),
            reason: reason.to_string(),
            message,
        });
    }

    pub fn normal(&self, resource: &str, name: &str, reason: &str, message: impl Into<String>) {
        self.record(EventType::Normal, resource, name, reason, message);
    }

    pub fn warning(&self, resource: &str, name: &str, reason: &str, message: impl Into<String>) {
        self.record(EventType::Warning, resource, name, reason, message);
    }

    /// Events, oldest first, optionally of one resource kind and/or name.
    pub fn list(&self, resource: Option<&str>, name: Option<&str>) -> Vec<Event> {
        self.events
            .lock()
            .iter()
            .filter(|e| resource.is_none_or(|r| e.resource == r) && name.is_none_or(|n| e.name == n))
            .cloned()
            .collect()
    }
}
