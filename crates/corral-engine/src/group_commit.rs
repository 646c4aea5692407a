//! Group commit of the engine's flushes: flushes that arrive while one fan-out is running share the
//! next one, so N concurrent NBD flushes cost at most two flush round trips per replica, not N.
//!
//! A flush must cover every write acknowledged before it was called. A fan-out that *started* after
//! the call covers it (each replica flushes after receiving the request, and every such write was
//! acknowledged by every replica before); one already running may not. So each fan-out gets a ticket, a
//! caller waits for the first fan-out numbered after the one running when it arrived, and the first
//! caller to find none running runs it for everybody waiting, then hands its result (success, or the
//! same error) to all of them. If the running caller is cancelled (its future dropped), the next waiter
//! runs a fresh fan-out: nobody is answered by a fan-out that did not finish.

use std::future::Future;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::{EngineError, Result};

/// One engine's flush group. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct FlushGroup {
    state: Mutex<GroupState>,
    finished: Notify,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Ticket of the last fan-out started.
    started: u64,
    /// Ticket of the last fan-out finished (they run one at a time, in ticket order).
    finished: u64,
    running: bool,
    /// The latest failed fan-out: its ticket and error.
    failed: Option<(u64, EngineError)>,
}

impl GroupState {
    fn outcome(&self, ticket: u64) -> Result<()> {
        match &self.failed {
            Some((failed, err)) if *failed >= ticket => Err(err.clone()),
            _ => Ok(()),
        }
    }
}

/// Ends a running fan-out: records its result, or (dropped unfinished) just lets another caller run.
struct Running<'a> {
    group: &'a FlushGroup,
    ticket: u64,
    result: Option<Result<()>>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = self.group.state.lock();
        state.running = false;
        if let Some(result) = self.result.take() {
            state.finished = self.ticket;
            if let Err(err) = result {
                state.failed = Some((self.ticket, err));
            }
        }
        drop(state);
        self.group.finished.notify_waiters();
    }
}

impl FlushGroup {
    /// Runs `flush` (a fan-out to every replica) or joins the next one; see the module documentation.
    pub(crate) async fn run<F, Fut>(&self, flush: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let ticket = self.state.lock().started + 1;
        let mine = loop {
            // Registered before the state is read, so a fan-out finishing in between still wakes us.
            let notified = self.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock();
                if state.finished >= ticket {
                    return state.outcome(ticket);
                }
                if !state.running {
                    state.running = true;
                    state.started += 1;
                    break state.started;
                }
            }
            notified.await;
        };
        let mut running = Running { group: self, ticket: mine, result: None };
        let result = flush().await;
        running.result = Some(result.clone());
        drop(running);
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::error::ErrorKind;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_share_fan_outs_and_each_waits_for_one_started_after_it() {
        let group = Arc::new(FlushGroup::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (group, runs) = (group.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                let arrived = runs.load(Ordering::SeqCst);
                group
                    .run(|| async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(())
                    })
                    .await
                    .unwrap();
                // A fan-out that started after this caller arrived has finished.
                assert!(runs.load(Ordering::SeqCst) > arrived);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let n = runs.load(Ordering::SeqCst);
        assert!((1..=4).contains(&n), "32 concurrent flushes ran {n} fan-outs");
    }

    #[tokio::test]
    async fn a_failed_fan_out_fails_everyone_it_covered_and_a_cancelled_one_is_rerun() {
        let group = FlushGroup::default();
        let err = EngineError::new(ErrorKind::Io, "flush", "disk gone");
        assert!(group.run(|| async { Err(err.clone()) }).await.is_err());
        assert!(group.run(|| async { Ok(()) }).await.is_ok(), "a later fan-out is not failed by an old one");
        // A leader dropped mid-flight leaves no one waiting for ever.
        let stuck = group.run(std::future::pending::<Result<()>>);
        assert!(tokio::time::timeout(Duration::from_millis(20), stuck).await.is_err());
        assert!(group.run(|| async { Ok(()) }).await.is_ok());
    }
}
