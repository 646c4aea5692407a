//! The transmission phase of one connection.
//!
//! Requests are pipelined: a fixed set of `max_in_flight` worker loops runs inside the
//! connection's task (polled together through one `FuturesUnordered`, so no task is spawned
//! per request). A worker takes the read half (a fair async mutex), reads one whole request
//! (header and payload), releases it, runs the request against the backend, then takes the
//! write half and sends the whole reply. So requests run concurrently and complete out of
//! order, while each reply goes out in one piece (one writer at a time). Each worker keeps
//! its own payload buffer between requests (shrunk back when a large request grew it), and a
//! per-connection byte budget bounds the payload memory in flight.
//!
//! A protocol violation that leaves the stream unreadable (bad magic, truncated frame, a
//! payload too large to skip) ends the connection after in-flight requests are answered;
//! `NBD_CMD_DISC` and a clean end of stream do the same. Nothing here can panic on input.

use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{Mutex, Semaphore, SemaphorePermit};

use crate::backend::NbdBackend;
use crate::error::{ErrorKind, NbdError};
use crate::protocol::*;

/// Payload buffers larger than this are freed after their request instead of being kept.
const RETAIN_BUFFER: usize = 1 << 20;
/// Granularity of the payload budget semaphore.
const BUDGET_UNIT: usize = 4096;
/// Replies are gathered in a buffer this large and written with one system call when no
/// other reply is ready; bigger read payloads go straight to the socket.
const WRITE_BUFFER: usize = 256 << 10;

/// Settings of the transmission phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransmissionLimits {
    pub max_in_flight: usize,
    pub payload_budget: usize,
}

/// Shared state of one connection in transmission.
pub(crate) struct Transmission<'a, B, R, W> {
    backend: &'a B,
    params: TransmissionParams,
    reader: Mutex<R>,
    writer: Mutex<BufWriter<W>>,
    closing: AtomicBool,
    /// Requests read and not yet answered.
    in_flight: AtomicUsize,
    /// Requests whose reply is ready and about to be written: the writer that brings this
    /// to zero flushes, so every reply is flushed without one system call per reply.
    replies_ready: AtomicUsize,
    budget: Semaphore,
    budget_units: u32,
}

/// The next thing a worker has to do, as decided while it held the read half.
enum Step<'s> {
    Execute { cookie: u64, request: Request, _permit: Option<SemaphorePermit<'s>> },
    Reject { header: RequestHeader, rejection: Rejection },
    Stop,
}

impl<'a, B, R, W> Transmission<'a, B, R, W>
where
    B: NbdBackend,
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    pub(crate) fn new(
        backend: &'a B,
        params: TransmissionParams,
        reader: R,
        writer: W,
        limits: TransmissionLimits,
    ) -> Self {
        let units = limits.payload_budget.max(params.max_payload as usize).div_ceil(BUDGET_UNIT);
        let budget_units = u32::try_from(units).unwrap_or(u32::MAX);
        Transmission {
            backend,
            params,
            reader: Mutex::new(reader),
            writer: Mutex::new(BufWriter::with_capacity(WRITE_BUFFER, writer)),
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            replies_ready: AtomicUsize::new(0),
            budget: Semaphore::new(budget_units as usize),
            budget_units,
        }
    }

    /// Serve requests until the client disconnects or breaks the protocol. Returns the first
    /// protocol or socket error, if any; `Ok` for `NBD_CMD_DISC` and a clean end of stream.
    pub(crate) async fn run(&self, max_in_flight: usize) -> Result<(), NbdError> {
        let mut workers: FuturesUnordered<_> = (0..max_in_flight.max(1)).map(|_| self.worker()).collect();
        let mut first_error = None;
        while let Some(result) = workers.next().await {
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        drop(workers);
        // Every reply path flushes when it is the last ready one; this only matters if a
        // worker stopped between writing and flushing.
        if let Err(err) = self.writer.lock().await.flush().await {
            first_error.get_or_insert(NbdError::io("reply", err));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The write half, to shut it down once [`Transmission::run`] returned.
    pub(crate) fn into_writer(self) -> W {
        self.writer.into_inner().into_inner()
    }

    async fn worker(&self) -> Result<(), NbdError> {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let step = {
                let mut reader = self.reader.lock().await;
                if self.closing.load(Ordering::Acquire) {
                    return Ok(());
                }
                match self.next_step(&mut *reader, &mut buf).await {
                    Ok(step) => {
                        // Decide to stop while still holding the read half, so no other worker
                        // reads past a disconnect or an unskipped payload as if it were requests.
                        let stops = match &step {
                            Step::Stop => true,
                            Step::Reject { rejection, .. } => {
                                rejection.payload == PayloadDisposition::Disconnect
                            }
                            Step::Execute { .. } => false,
                        };
                        if stops {
                            self.closing.store(true, Ordering::Release);
                        }
                        step
                    }
                    Err(err) => {
                        self.closing.store(true, Ordering::Release);
                        return Err(err);
                    }
                }
            };
            match step {
                Step::Stop => {
                    self.closing.store(true, Ordering::Release);
                    return Ok(());
                }
                Step::Reject { header, rejection } => {
                    let err = NbdError::new(rejection.kind, command_name(header.command), rejection.reason)
                        .at(header.offset, header.length.into())
                        .with_cookie(header.cookie);
                    tracing::debug!(error = %err, "rejected NBD request");
                    let is_read = header.command == CMD_READ;
                    self.reply(header.cookie, header.offset, is_read, Err(&err), &[]).await?;
                    if rejection.payload == PayloadDisposition::Disconnect {
                        self.closing.store(true, Ordering::Release);
                        return Err(NbdError::new(
                            ErrorKind::Protocol,
                            "request",
                            "payload larger than the server will skip; closing the connection",
                        )
                        .at(header.offset, header.length.into())
                        .with_cookie(header.cookie));
                    }
                }
                Step::Execute { cookie, request, _permit } => {
                    let result = self.execute(request, &mut buf).await;
                    let (is_read, offset, data) = match request {
                        Request::Read { offset, length } if result.is_ok() => {
                            (true, offset, &buf[..length as usize])
                        }
                        Request::Read { offset, .. } => (true, offset, &buf[..0]),
                        _ => (false, 0, &buf[..0]),
                    };
                    let result = result.map_err(|e| e.with_cookie(cookie));
                    if let Err(err) = &result {
                        tracing::debug!(error = %err, "NBD request failed");
                    }
                    self.reply(cookie, offset, is_read, result.as_ref().map(|_| ()), data).await?;
                }
            }
            if buf.capacity() > RETAIN_BUFFER {
                buf = Vec::new();
            }
        }
    }

    /// Read one request (with its payload) and decide what to do with it.
    async fn next_step(&self, reader: &mut R, buf: &mut Vec<u8>) -> Result<Step<'_>, NbdError> {
        let mut raw = [0u8; REQUEST_LEN];
        let mut have = 0;
        while have < REQUEST_LEN {
            let n = reader.read(&mut raw[have..]).await.map_err(|e| NbdError::io("request", e))?;
            if n == 0 {
                if have == 0 {
                    return Ok(Step::Stop); // the client went away between requests
                }
                return Err(NbdError::new(
                    ErrorKind::Protocol,
                    "request",
                    format!("connection closed inside a request header ({have} of {REQUEST_LEN} bytes)"),
                ));
            }
            have += n;
        }
        let header = RequestHeader::decode(&raw)
            .map_err(|e| NbdError::new(ErrorKind::Protocol, "request", e.to_string()))?;
        match check_request(&header, &self.params) {
            Ok(Request::Disconnect) => Ok(Step::Stop),
            Ok(request) => {
                let payload_len = match request {
                    Request::Read { length, .. } | Request::Write { length, .. } => length as usize,
                    _ => 0,
                };
                let permit = if payload_len > 0 {
                    let units = (payload_len.div_ceil(BUDGET_UNIT) as u32).min(self.budget_units);
                    let permit = self.budget.acquire_many(units).await.map_err(|_| {
                        NbdError::new(ErrorKind::Shutdown, "request", "payload budget closed")
                    })?;
                    buf.clear();
                    buf.resize(payload_len, 0);
                    Some(permit)
                } else {
                    None
                };
                if let Request::Write { offset, length, .. } = request {
                    reader.read_exact(&mut buf[..length as usize]).await.map_err(|e| {
                        NbdError::io("request", e).at(offset, length.into()).with_cookie(header.cookie)
                    })?;
                }
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                Ok(Step::Execute { cookie: header.cookie, request, _permit: permit })
            }
            Err(rejection) => {
                if let PayloadDisposition::Discard(len) = rejection.payload {
                    discard(reader, buf, len).await.map_err(|e| {
                        NbdError::io("request", e).at(header.offset, len.into()).with_cookie(header.cookie)
                    })?;
                }
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                Ok(Step::Reject { header, rejection })
            }
        }
    }

    async fn execute(&self, request: Request, buf: &mut [u8]) -> Result<(), NbdError> {
        let backend = self.backend;
        match request {
            Request::Read { offset, length } => backend.read(offset, &mut buf[..length as usize]).await,
            Request::Write { offset, length, fua } => {
                backend.write(offset, &buf[..length as usize], fua).await
            }
            Request::Flush => backend.flush().await,
            Request::Trim { offset, length, fua } => {
                backend.trim(offset, length.into()).await?;
                if fua {
                    backend.flush().await?;
                }
                Ok(())
            }
            Request::WriteZeroes { offset, length, fua, no_hole, fast } => {
                if fast && (no_hole || !backend.can_fast_zero()) {
                    return Err(NbdError::new(
                        ErrorKind::NotSupported,
                        "write-zeroes",
                        "zeroing is not fast on this export",
                    )
                    .at(offset, length.into()));
                }
                if no_hole {
                    backend.write_zeroes_allocated(offset, length.into(), fua).await
                } else {
                    backend.write_zeroes(offset, length.into(), fua).await
                }
            }
            Request::Disconnect => Ok(()),
        }
    }

    /// Send the complete reply of one request. `data` is the read payload on success.
    ///
    /// When other requests are in flight, the worker first yields once so that requests
    /// completing in the same round append their replies too; then the last of them flushes
    /// them together. A lone request is answered at once (no added latency at QD1).
    async fn reply(
        &self,
        cookie: u64,
        offset: u64,
        is_read: bool,
        result: Result<(), &NbdError>,
        data: &[u8],
    ) -> Result<(), NbdError> {
        // Announce the reply before yielding, so a worker that writes first sees it coming
        // and leaves the flush to the last one.
        self.replies_ready.fetch_add(1, Ordering::AcqRel);
        if self.in_flight.load(Ordering::Acquire) > 1 {
            tokio::task::yield_now().await;
        }
        let mut writer = self.writer.lock().await;
        // With structured replies, a READ is always answered with chunks, and every error goes
        // as an ERROR chunk carrying its message (the specification prefers that); other
        // successes use the shorter simple reply, which the specification allows.
        let structured = self.params.structured;
        let sent = match result {
            Ok(()) if structured && is_read && data.is_empty() => {
                writer.write_all(&encode_none_chunk(cookie)).await
            }
            Ok(()) if structured && is_read => {
                // data.len() <= max_payload, which fits a chunk length with its 8-byte offset.
                let header = encode_offset_data_header(cookie, offset, data.len() as u32);
                write_all_vectored(&mut *writer, &mut [IoSlice::new(&header), IoSlice::new(data)]).await
            }
            Ok(()) => {
                let header = SimpleReply { error: 0, cookie }.encode();
                write_all_vectored(&mut *writer, &mut [IoSlice::new(&header), IoSlice::new(data)]).await
            }
            Err(err) if structured => {
                let mut chunk = Vec::with_capacity(64);
                push_error_chunk(&mut chunk, cookie, err.kind().errno(), &err.to_string());
                writer.write_all(&chunk).await
            }
            Err(err) => writer.write_all(&SimpleReply { error: err.kind().errno(), cookie }.encode()).await,
        };
        let others_ready = self.replies_ready.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let sent = match sent {
            Ok(()) if others_ready == 0 => writer.flush().await,
            other => other,
        };
        sent.map_err(|e| {
            self.closing.store(true, Ordering::Release);
            NbdError::io("reply", e).with_cookie(cookie)
        })
    }
}

async fn discard<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>, len: u32) -> std::io::Result<()> {
    let mut left = len as usize;
    buf.resize(buf.len().clamp(64 << 10, RETAIN_BUFFER), 0);
    while left > 0 {
        let n = left.min(buf.len());
        reader.read_exact(&mut buf[..n]).await?;
        left -= n;
    }
    Ok(())
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = writer.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

fn command_name(command: u16) -> &'static str {
    match command {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_DISC => "disconnect",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_WRITE_ZEROES => "write-zeroes",
        _ => "unknown-command",
    }
}
