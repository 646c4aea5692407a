//! The replica server's pool of worker threads, for the requests that may block for long (flush,
//! unmap, write-zeroes, FUA writes, large reads and writes, every control operation).
//!
//! Small reads and writes do not come here: the connection serves them inline (see [`crate::server`]).
//! A worker pops a [`Job`], runs it on the synchronous [`ReplicaService`], queues the answer on the
//! job's connection and returns the connection's in-flight slot.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::{Condvar, Mutex};

use crate::error::{ErrorKind, Result, WireError};
use crate::frame::{response_header, Op, Request, HEADER_LEN};
use crate::messages::{encode_extents, encode_json, Extent};
use crate::server::{ConnectionState, ReplicaService};

/// One decoded request for a worker.
pub(crate) struct Job {
    pub(crate) state: Arc<ConnectionState>,
    pub(crate) request_id: u64,
    pub(crate) request: Request,
}

#[derive(Default)]
pub(crate) struct JobQueue {
    jobs: Mutex<(VecDeque<Job>, bool)>,
    available: Condvar,
}

impl JobQueue {
    pub(crate) fn push(&self, job: Job) {
        self.jobs.lock().0.push_back(job);
        self.available.notify_one();
    }

    /// Next job; `None` once stopped and empty.
    fn pop(&self) -> Option<Job> {
        let mut jobs = self.jobs.lock();
        loop {
            if let Some(job) = jobs.0.pop_front() {
                return Some(job);
            }
            if jobs.1 {
                return None;
            }
            self.available.wait(&mut jobs);
        }
    }
}

pub(crate) struct WorkerPool {
    pub(crate) queue: Arc<JobQueue>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WorkerPool {
    pub(crate) fn start<S: ReplicaService>(service: Arc<S>, workers: usize) -> Result<WorkerPool> {
        let queue = Arc::new(JobQueue::default());
        let mut threads = Vec::with_capacity(workers);
        for index in 0..workers {
            let queue = queue.clone();
            let service = service.clone();
            let thread = std::thread::Builder::new()
                .name(format!("replica-worker-{index}"))
                .spawn(move || {
                    while let Some(job) = queue.pop() {
                        run_job(&*service, job);
                    }
                })
                .map_err(|source| WireError::Io { op: "spawn worker", addr: String::new(), source })?;
            threads.push(thread);
        }
        Ok(WorkerPool { queue, threads })
    }

    /// Runs what is queued, then stops the threads.
    pub(crate) fn stop(self) {
        self.queue.jobs.lock().1 = true;
        self.queue.available.notify_all();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The successful answer of a request.
enum Reply {
    Empty,
    Payload(Bytes),
    /// A whole frame already built (header included), for reads.
    Frame(Bytes),
}

fn run_job<S: ReplicaService>(service: &S, job: Job) {
    let Job { state, request_id, request } = job;
    let op = request.op();
    // Checked again here: a newer engine may have taken the replica over while this job was queued.
    let fenced = match request {
        Request::Hello(_) | Request::Info | Request::Ping => None,
        _ => state.fenced(),
    };
    let result = match fenced {
        Some(err) => Err(err),
        None => execute(service, request_id, request),
    };
    match result {
        Ok(Reply::Empty) => state.push_ok(op as u8, request_id, Bytes::new()),
        Ok(Reply::Payload(payload)) => state.push_ok(op as u8, request_id, payload),
        Ok(Reply::Frame(frame)) => {
            state.out.push_raw(frame);
        }
        Err(err) => {
            tracing::debug!(request_id, op = op.name(), "request failed: {err}");
            state.push_error(op as u8, request_id, err.kind(), &err.wire_message());
        }
    }
    state.slots.add_permits(1);
}

/// Reads `len` bytes with `fill` straight into a response frame (one allocation, no copy).
fn read_frame(
    op: Op,
    request_id: u64,
    len: u64,
    fill: impl FnOnce(&mut [u8]) -> Result<()>,
) -> Result<Reply> {
    let len32 =
        u32::try_from(len).map_err(|_| WireError::service(ErrorKind::InvalidArgument, "read too large"))?;
    let mut frame = BytesMut::zeroed(HEADER_LEN + len as usize);
    fill(&mut frame[HEADER_LEN..])?;
    let header = response_header(op as u8, request_id, 0, len32);
    header.encode(
        <&mut [u8; HEADER_LEN]>::try_from(&mut frame[..HEADER_LEN])
            .map_err(|_| WireError::Protocol("header slice".into()))?,
    );
    Ok(Reply::Frame(frame.freeze()))
}

fn json_reply<T: serde::Serialize>(value: &T) -> Result<Reply> {
    Ok(Reply::Payload(Bytes::from(encode_json(value)?)))
}

fn execute<S: ReplicaService>(service: &S, request_id: u64, request: Request) -> Result<Reply> {
    let op = request.op();
    match request {
        Request::Read { offset, len } => read_frame(op, request_id, len, |buf| service.read(offset, buf)),
        Request::Write { offset, data, fua } => {
            service.write(offset, &data)?;
            if fua {
                service.flush()?;
            }
            Ok(Reply::Empty)
        }
        Request::Unmap { offset, len, fua } => {
            service.unmap(offset, len)?;
            if fua {
                service.flush()?;
            }
            Ok(Reply::Empty)
        }
        Request::WriteZeroes { offset, len, fua } => {
            service.write_zeroes(offset, len)?;
            if fua {
                service.flush()?;
            }
            Ok(Reply::Empty)
        }
        Request::Flush => service.flush().map(|()| Reply::Empty),
        Request::Ping => Ok(Reply::Empty),
        Request::Hello(_) | Request::Info => json_reply(&service.info()?),
        Request::SetGeneration(generation) => service.set_generation(generation).map(|()| Reply::Empty),
        Request::SetRevision(revision) => service.set_revision(revision).map(|()| Reply::Empty),
        Request::SetRebuilding(rebuilding) => service.set_rebuilding(rebuilding).map(|()| Reply::Empty),
        Request::Snapshot(body) => service.snapshot(&body).map(|()| Reply::Empty),
        Request::ListSnapshots => json_reply(&service.list_snapshots()?),
        Request::MarkRemoved { name } => service.mark_removed(&name).map(|()| Reply::Empty),
        Request::Purge => service.purge().map(|()| Reply::Empty),
        Request::Revert { name } => service.revert(&name).map(|()| Reply::Empty),
        Request::Expand { size } => service.expand(size).map(|()| Reply::Empty),
        Request::LayerExtents { name, offset, len } => {
            let end = if len == 0 { u64::MAX } else { offset.saturating_add(len) };
            let clipped: Vec<Extent> = service
                .layer_extents(&name)?
                .into_iter()
                .filter_map(|extent| {
                    let start = extent.offset.max(offset);
                    let stop = extent.offset.saturating_add(extent.len).min(end);
                    (start < stop).then_some(Extent { offset: start, len: stop - start })
                })
                .collect();
            let packed = encode_extents(&clipped);
            if packed.len() > crate::frame::MAX_PAYLOAD as usize {
                return Err(WireError::service(
                    ErrorKind::InvalidArgument,
                    format!(
                        "layer {name} has {} extents in that range: ask for a smaller range",
                        clipped.len()
                    ),
                ));
            }
            Ok(Reply::Payload(Bytes::from(packed)))
        }
        Request::ReadLayer { name, offset, len } => {
            read_frame(op, request_id, len, |buf| service.read_layer(&name, offset, buf))
        }
        Request::LayerChecksum { name, offset, len } => {
            Ok(Reply::Payload(Bytes::copy_from_slice(&service.layer_checksum(&name, offset, len)?)))
        }
        Request::BeginLayer(info) => service.begin_layer(&info).map(|()| Reply::Empty),
        Request::WriteLayer { name, offset, data } => {
            service.write_layer(&name, offset, &data).map(|()| Reply::Empty)
        }
        Request::PunchLayer { name, offset, len } => {
            service.punch_layer(&name, offset, len).map(|()| Reply::Empty)
        }
        Request::FinishRebuild(chain) => service.finish_rebuild(&chain).map(|()| Reply::Empty),
    }
}
