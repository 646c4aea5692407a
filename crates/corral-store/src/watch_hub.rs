//! Fan-out of committed changes to in-process watchers, shared by the embedded backends.
//!
//! Each watcher has its own unbounded queue, so a slow watcher never makes the store drop an event
//! for it (delivery of every change is part of the [`crate::Store`] contract). Backends publish while
//! still holding their write lock, which makes the delivery order the commit order.
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::store::{Kind, WatchEvent, WatchStream};

#[derive(Default)]
pub(crate) struct WatchHub {
    watchers: Vec<(Option<Kind>, mpsc::UnboundedSender<WatchEvent>)>,
}

impl WatchHub {
    /// Register a watcher; events published after this call reach it.
    pub(crate) fn subscribe(&mut self, kind: Option<Kind>) -> WatchStream {
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers.push((kind, tx));
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) });
        stream.map(Ok).boxed()
    }

    /// Deliver one committed change; watchers whose stream was dropped are forgotten.
    pub(crate) fn publish(&mut self, event: WatchEvent) {
        let kind = event.record().kind;
        self.watchers.retain(|(filter, tx)| {
            if filter.is_some_and(|k| k != kind) {
                return !tx.is_closed();
            }
            tx.send(event.clone()).is_ok()
        });
    }
}
