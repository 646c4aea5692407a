//! The client's table of requests in flight on one connection: a slab of waiters, no allocation per request.
//!
//! A request id is `generation << 32 | slot index`. The generation changes each time a slot is reused, so
//! a late or forged response for an old request can never complete a newer one. A caller that stops
//! waiting (timeout, dropped future) leaves its slot *abandoned*; the reader frees it when the answer
//! comes, or [`Pending::fail_all`] frees it when the connection dies.
//!
//! Timeouts: a timed request records when it was sent; the client's watchdog asks [`Pending::overdue`]
//! a few times per timeout period for the oldest one (one scan instead of a timer per request).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::frame::Header;

/// A response as the reader hands it over: header and payload.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) header: Header,
    pub(crate) payload: Bytes,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection closed (the reason of the first failure).
    Closed(String),
    /// This request was the one found overdue by the watchdog.
    TimedOut,
}

enum SlotState {
    Free,
    Waiting { op_code: u8, waker: Option<Waker>, sent: Option<Instant> },
    Done(Result<Answer, Failure>),
    Abandoned,
}

struct Slot {
    generation: u32,
    state: SlotState,
}

/// Why a response could not be matched to a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MatchError {
    UnknownRequest(u64),
    WrongType { request_id: u64, expected: u8, got: u8 },
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    closed: Option<String>,
}

impl Table {
    fn release(&mut self, index: u32) {
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.state = SlotState::Free;
            slot.generation = slot.generation.wrapping_add(1);
            self.free.push(index);
        }
    }
}

fn split_id(request_id: u64) -> (u32, u32) {
    ((request_id & u64::from(u32::MAX)) as u32, (request_id >> 32) as u32)
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Pending {
    table: Mutex<Table>,
}

impl Pending {
    /// Reserves a slot for a request of type `op_code`; returns its request id, or the reason the
    /// connection is closed. `sent` is set for requests the watchdog must time.
    pub(crate) fn insert(&self, op_code: u8, sent: Option<Instant>) -> Result<u64, String> {
        let mut table = self.table.lock();
        if let Some(reason) = &table.closed {
            return Err(reason.clone());
        }
        let index = match table.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(table.slots.len())
                    .map_err(|_| "too many requests in flight".to_string())?;
                table.slots.push(Slot { generation: 0, state: SlotState::Free });
                index
            }
        };
        let slot = &mut table.slots[index as usize];
        slot.state = SlotState::Waiting { op_code, waker: None, sent };
        Ok(u64::from(slot.generation) << 32 | u64::from(index))
    }

    /// Hands a response to its waiter.
    pub(crate) fn complete(&self, answer: Answer) -> Result<(), MatchError> {
        let request_id = answer.header.request_id;
        let (index, generation) = split_id(request_id);
        let mut table = self.table.lock();
        let slot = match table.slots.get_mut(index as usize) {
            Some(slot) if slot.generation == generation => slot,
            _ => return Err(MatchError::UnknownRequest(request_id)),
        };
        match &mut slot.state {
            SlotState::Waiting { op_code, waker, .. } => {
                let expected = *op_code | crate::frame::RESPONSE_BIT;
                if answer.header.msg_type != expected {
                    return Err(MatchError::WrongType { request_id, expected, got: answer.header.msg_type });
                }
                let waker = waker.take();
                slot.state = SlotState::Done(Ok(answer));
                drop(table);
                if let Some(waker) = waker {
                    waker.wake();
                }
                Ok(())
            }
            SlotState::Abandoned => {
                table.release(index);
                Ok(())
            }
            SlotState::Free | SlotState::Done(_) => Err(MatchError::UnknownRequest(request_id)),
        }
    }

    /// Fails every waiting request with `reason` and refuses new ones.
    pub(crate) fn fail_all(&self, reason: &str) {
        let mut wakers = Vec::new();
        let mut table = self.table.lock();
        if table.closed.is_none() {
            table.closed = Some(reason.to_string());
        }
        for index in 0..table.slots.len() {
            match &mut table.slots[index].state {
                SlotState::Waiting { waker, .. } => {
                    wakers.extend(waker.take());
                    table.slots[index].state = SlotState::Done(Err(Failure::Closed(reason.to_string())));
                }
                SlotState::Abandoned => table.release(index as u32),
                SlotState::Free | SlotState::Done(_) => {}
            }
        }
        drop(table);
        for waker in wakers {
            waker.wake();
        }
    }

    /// The oldest timed request sent at least `after` before `now`: its slot is completed with
    /// [`Failure::TimedOut`] and its id, op code and waker are returned. The caller wakes the waiter
    /// once it has closed the client, so the caller of the request sees the client closed.
    pub(crate) fn overdue(&self, now: Instant, after: Duration) -> Option<(u64, u8, Option<Waker>)> {
        let mut table = self.table.lock();
        let mut oldest: Option<(usize, Instant)> = None;
        for (index, slot) in table.slots.iter().enumerate() {
            if let SlotState::Waiting { sent: Some(sent), .. } = slot.state {
                if oldest.is_none_or(|(_, at)| sent < at) {
                    oldest = Some((index, sent));
                }
            }
        }
        let (index, sent) = oldest?;
        if now.saturating_duration_since(sent) < after {
            return None;
        }
        let slot = &mut table.slots[index];
        let request_id = u64::from(slot.generation) << 32 | index as u64;
        let SlotState::Waiting { op_code, waker, .. } =
            std::mem::replace(&mut slot.state, SlotState::Done(Err(Failure::TimedOut)))
        else {
            return None;
        };
        Some((request_id, op_code, waker))
    }

    /// Number of requests waiting for an answer (for tests and metrics).
    pub(crate) fn in_flight(&self) -> usize {
        let table = self.table.lock();
        table.slots.iter().filter(|slot| matches!(slot.state, SlotState::Waiting { .. })).count()
    }

    /// The future that resolves with the answer to `request_id`.
    pub(crate) fn wait(&self, request_id: u64) -> AnswerFuture<'_> {
        AnswerFuture { pending: self, request_id, finished: false }
    }
}

/// Resolves to the answer of one request, or the reason its connection closed. Dropping it before it
/// resolves abandons the slot (freed when the answer arrives).
pub(crate) struct AnswerFuture<'a> {
    pending: &'a Pending,
    request_id: u64,
    finished: bool,
}

impl Future for AnswerFuture<'_> {
    type Output = Result<Answer, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (index, generation) = split_id(self.request_id);
        let mut table = self.pending.table.lock();
        let Some(slot) = table.slots.get_mut(index as usize).filter(|slot| slot.generation == generation)
        else {
            drop(table);
            self.finished = true;
            return Poll::Ready(Err(Failure::Closed("request slot lost".to_string())));
        };
        match &mut slot.state {
            SlotState::Waiting { waker, .. } => {
                match waker {
                    Some(existing) if existing.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            SlotState::Done(_) => {
                let state = std::mem::replace(&mut slot.state, SlotState::Free);
                table.release(index);
                drop(table);
                self.finished = true;
                match state {
                    SlotState::Done(result) => Poll::Ready(result),
                    _ => Poll::Ready(Err(Failure::Closed("request slot in an impossible state".to_string()))),
                }
            }
            SlotState::Free | SlotState::Abandoned => {
                drop(table);
                self.finished = true;
                Poll::Ready(Err(Failure::Closed("request slot lost".to_string())))
            }
        }
    }
}

impl Drop for AnswerFuture<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (index, generation) = split_id(self.request_id);
        let mut table = self.pending.table.lock();
        let Some(slot) = table.slots.get_mut(index as usize).filter(|slot| slot.generation == generation)
        else {
            return;
        };
        match slot.state {
            SlotState::Waiting { .. } => slot.state = SlotState::Abandoned,
            SlotState::Done(_) => table.release(index),
            SlotState::Free | SlotState::Abandoned => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{response_header, Op};

    fn answer_for(request_id: u64, op: Op) -> Answer {
        Answer { header: response_header(op as u8, request_id, 0, 0), payload: Bytes::new() }
    }

    #[tokio::test]
    async fn answers_reach_their_waiters_and_slots_are_reused_with_a_new_generation() {
        let pending = Pending::default();
        let first = pending.insert(Op::Read as u8, None).unwrap();
        let second = pending.insert(Op::Write as u8, None).unwrap();
        assert_ne!(first, second);
        pending.complete(answer_for(second, Op::Write)).unwrap();
        pending.complete(answer_for(first, Op::Read)).unwrap();
        assert_eq!(pending.wait(first).await.unwrap().header.request_id, first);
        assert_eq!(pending.wait(second).await.unwrap().header.request_id, second);
        let reused = pending.insert(Op::Read as u8, None).unwrap();
        assert_eq!(reused & 0xffff_ffff, second & 0xffff_ffff, "slot reused");
        assert_ne!(reused, second, "generation changed");
        // An answer carrying the old id of the reused slot is refused.
        assert_eq!(pending.complete(answer_for(second, Op::Read)), Err(MatchError::UnknownRequest(second)));
    }

    #[tokio::test]
    async fn wrong_response_type_is_refused() {
        let pending = Pending::default();
        let id = pending.insert(Op::Read as u8, None).unwrap();
        assert!(matches!(pending.complete(answer_for(id, Op::Write)), Err(MatchError::WrongType { .. })));
    }

    #[tokio::test]
    async fn abandoned_slots_are_freed_by_the_late_answer() {
        let pending = Pending::default();
        let id = pending.insert(Op::Flush as u8, None).unwrap();
        drop(pending.wait(id));
        assert_eq!(pending.in_flight(), 0);
        pending.complete(answer_for(id, Op::Flush)).unwrap();
        let next = pending.insert(Op::Flush as u8, None).unwrap();
        assert_eq!(next & 0xffff_ffff, id & 0xffff_ffff);
    }

    #[tokio::test]
    async fn only_the_oldest_timed_request_past_its_deadline_is_overdue() {
        let pending = Pending::default();
        let start = Instant::now();
        let untimed = pending.insert(Op::Purge as u8, None).unwrap();
        let old = pending.insert(Op::Write as u8, Some(start)).unwrap();
        let young = pending.insert(Op::Read as u8, Some(start + Duration::from_millis(500))).unwrap();
        let after = Duration::from_secs(1);
        assert!(pending.overdue(start + Duration::from_millis(999), after).is_none());
        let (id, op, _) = pending.overdue(start + after, after).unwrap();
        assert_eq!((id, op), (old, Op::Write as u8));
        assert_eq!(pending.wait(old).await.unwrap_err(), Failure::TimedOut);
        // The younger one is not overdue yet; the untimed one never is.
        assert!(pending.overdue(start + Duration::from_millis(1499), after).is_none());
        let (id, op, _) = pending.overdue(start + Duration::from_secs(3600), after).unwrap();
        assert_eq!((id, op), (young, Op::Read as u8));
        assert!(pending.overdue(start + Duration::from_secs(3600), after).is_none());
        assert_eq!(pending.in_flight(), 1, "the untimed request {untimed} is still waiting");
    }

    #[tokio::test]
    async fn fail_all_fails_waiters_and_refuses_new_requests() {
        let pending = Pending::default();
        let id = pending.insert(Op::Read as u8, None).unwrap();
        let waiter = pending.wait(id);
        pending.fail_all("connection reset");
        assert_eq!(waiter.await.unwrap_err(), Failure::Closed("connection reset".into()));
        assert_eq!(pending.insert(Op::Read as u8, None).unwrap_err(), "connection reset");
    }
}
