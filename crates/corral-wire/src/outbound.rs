//! The send side shared by client and server: a queue of ready frames and one writer task per socket.
//!
//! Producers (request callers on the client, worker threads on the server) append encoded frames under a
//! short lock and wake the writer; the writer takes the whole queue at once and sends it with vectored
//! writes, so under load many frames leave in one system call, and when the queue is empty a frame
//! leaves immediately (no delay waiting for a batch). Payloads are [`Bytes`] and are never copied, except
//! small ones, which are copied next to their header to keep the number of I/O slices down.

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::frame::{Header, HEADER_LEN};

/// Payloads up to this size are copied next to their header (one slice instead of two).
const INLINE_PAYLOAD: usize = 1024;
/// Size of the chunk headers are carved from.
const SCRATCH_CHUNK: usize = 64 * 1024;
/// I/O slices per `writev` call.
const MAX_SLICES: usize = 64;

#[derive(Default)]
struct Queue {
    segments: Vec<Bytes>,
    scratch: BytesMut,
    closed: bool,
}

/// Frames waiting to be written to one socket.
#[derive(Default)]
pub(crate) struct Outbound {
    queue: Mutex<Queue>,
    ready: Notify,
}

impl Outbound {
    /// Queues one frame. Returns false (and drops it) if the outbound side is closed.
    pub(crate) fn push_frame(&self, header: &Header, payload: Bytes) -> bool {
        let mut queue = self.queue.lock();
        if queue.closed {
            return false;
        }
        let inline = payload.len() <= INLINE_PAYLOAD;
        let needed = HEADER_LEN + if inline { payload.len() } else { 0 };
        if queue.scratch.capacity() < needed {
            queue.scratch.reserve(SCRATCH_CHUNK.max(needed));
        }
        queue.scratch.extend_from_slice(&header.to_bytes());
        if inline {
            queue.scratch.extend_from_slice(&payload);
        }
        let head = queue.scratch.split().freeze();
        queue.segments.push(head);
        if !inline {
            queue.segments.push(payload);
        }
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// Queues bytes that already form whole frames. Returns false if closed.
    pub(crate) fn push_raw(&self, frame: Bytes) -> bool {
        let mut queue = self.queue.lock();
        if queue.closed {
            return false;
        }
        queue.segments.push(frame);
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// Refuses further frames; the writer sends what is queued, then stops.
    pub(crate) fn close(&self) {
        self.queue.lock().closed = true;
        self.ready.notify_one();
    }

    /// Refuses further frames and drops what is queued; the writer stops at once.
    pub(crate) fn abort(&self) {
        let mut queue = self.queue.lock();
        queue.closed = true;
        queue.segments.clear();
        drop(queue);
        self.ready.notify_one();
    }

    /// The writer loop: sends queued frames until closed (then `Ok`) or a write fails.
    pub(crate) async fn run_writer<W: AsyncWrite + Unpin>(&self, mut socket: W) -> std::io::Result<()> {
        let mut batch: Vec<Bytes> = Vec::with_capacity(256);
        loop {
            let closed = {
                let mut queue = self.queue.lock();
                std::mem::swap(&mut batch, &mut queue.segments);
                queue.closed
            };
            if batch.is_empty() {
                if closed {
                    let _ = socket.shutdown().await;
                    return Ok(());
                }
                self.ready.notified().await;
                continue;
            }
            write_all_segments(&mut socket, &mut batch).await?;
            batch.clear();
        }
    }
}

async fn write_all_segments<W: AsyncWrite + Unpin>(
    socket: &mut W,
    segments: &mut [Bytes],
) -> std::io::Result<()> {
    let mut first = 0;
    while first < segments.len() {
        if segments[first].is_empty() {
            first += 1;
            continue;
        }
        let written = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for segment in segments[first..].iter().filter(|s| !s.is_empty()).take(MAX_SLICES) {
                slices[count] = IoSlice::new(segment);
                count += 1;
            }
            socket.write_vectored(&slices[..count]).await?
        };
        if written == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "socket accepted no bytes"));
        }
        let mut left = written;
        while left > 0 && first < segments.len() {
            let len = segments[first].len();
            if left >= len {
                left -= len;
                first += 1;
            } else {
                segments[first].advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Op, Request};

    #[tokio::test]
    async fn writer_sends_frames_in_order_and_stops_when_closed() {
        let out = Outbound::default();
        let big = Bytes::from(vec![7u8; 100_000]);
        for id in 0..100u64 {
            let request = if id % 2 == 0 {
                Request::Write { offset: id, data: big.slice(..(id as usize * 997) % 5000), fua: false }
            } else {
                Request::Ping
            };
            let (header, payload) = request.encode(id).unwrap();
            assert!(out.push_frame(&header, payload));
        }
        out.close();
        assert!(!out.push_raw(Bytes::from_static(b"late")));
        let mut sink = Vec::new();
        out.run_writer(&mut sink).await.unwrap();
        let mut at = 0;
        for id in 0..100u64 {
            let (header, request, used) = crate::frame::decode_request_frame(&sink[at..]).unwrap().unwrap();
            assert_eq!(header.request_id, id);
            assert_eq!(request.op(), if id % 2 == 0 { Op::Write } else { Op::Ping });
            at += used;
        }
        assert_eq!(at, sink.len());
    }
}
