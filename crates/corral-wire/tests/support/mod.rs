//! An in-memory [`ReplicaService`] for the client/server tests, and helpers to start a server.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_block::{BlockDevice, BlockError, MemoryDisk};
use corral_wire::{
    Address, ErrorKind, Extent, Listener, RecoveryFacts, ReplicaService, Result, ServeOptions, SnapshotInfo,
    SnapshotRequest, WireError,
};
use parking_lot::Mutex;

pub struct MemoryService {
    pub disk: MemoryDisk,
    pub generation: AtomicU64,
    pub revision: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_delay: Mutex<Duration>,
    pub snapshots: Mutex<Vec<String>>,
    /// Name of the thread that ran the last write (inline on the connection, or a pool worker).
    pub last_write_thread: Mutex<Option<String>>,
    /// Name of the thread that ran the last read.
    pub last_read_thread: Mutex<Option<String>>,
    /// While set, `read_if_cached` reports a cache miss (as a replica does for data on disk only).
    pub cold: AtomicBool,
}

impl MemoryService {
    pub fn new(size: u64) -> Arc<MemoryService> {
        Arc::new(MemoryService {
            disk: MemoryDisk::new(size),
            generation: AtomicU64::new(0),
            revision: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            flush_delay: Mutex::new(Duration::ZERO),
            snapshots: Mutex::new(Vec::new()),
            last_write_thread: Mutex::new(None),
            last_read_thread: Mutex::new(None),
            cold: AtomicBool::new(false),
        })
    }
}

fn map(err: BlockError) -> WireError {
    let kind = match err {
        BlockError::OutOfRange { .. } => ErrorKind::OutOfRange,
        BlockError::Io { .. } => ErrorKind::Io,
        BlockError::Unavailable(_) => ErrorKind::Busy,
    };
    WireError::service(kind, err.to_string())
}

fn unsupported() -> WireError {
    WireError::service(ErrorKind::InvalidArgument, "not supported by the memory service")
}

impl ReplicaService for MemoryService {
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        *self.last_read_thread.lock() = std::thread::current().name().map(String::from);
        self.disk.read_at(buf, offset).map_err(map)
    }
    fn read_if_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        if self.cold.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.read(offset, buf).map(|()| true)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.revision.fetch_add(1, Ordering::SeqCst);
        *self.last_write_thread.lock() = std::thread::current().name().map(String::from);
        self.disk.write_at(data, offset).map_err(map)
    }
    fn unmap(&self, offset: u64, len: u64) -> Result<()> {
        self.disk.unmap(offset, len).map_err(map)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.disk.write_zeroes(offset, len).map_err(map)
    }
    fn flush(&self) -> Result<()> {
        let delay = *self.flush_delay.lock();
        std::thread::sleep(delay);
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn info(&self) -> Result<RecoveryFacts> {
        Ok(RecoveryFacts {
            size: self.disk.size(),
            revision: self.revision.load(Ordering::SeqCst),
            generation: self.generation.load(Ordering::SeqCst),
            dirty: true,
            was_dirty_at_open: false,
            unflushed_writes: false,
            rebuilding: false,
            head: "volume-head-000.img".into(),
            chain: self.snapshots.lock().iter().rev().cloned().collect(),
        })
    }
    fn set_generation(&self, generation: u64) -> Result<()> {
        self.generation.store(generation, Ordering::SeqCst);
        Ok(())
    }
    fn set_revision(&self, revision: u64) -> Result<()> {
        self.revision.store(revision, Ordering::SeqCst);
        Ok(())
    }
    fn set_rebuilding(&self, _rebuilding: bool) -> Result<()> {
        Ok(())
    }
    fn snapshot(&self, request: &SnapshotRequest) -> Result<()> {
        let mut snapshots = self.snapshots.lock();
        if snapshots.contains(&request.name) {
            return Err(WireError::service(
                ErrorKind::AlreadyExists,
                format!("snapshot {} exists", request.name),
            ));
        }
        snapshots.push(request.name.clone());
        Ok(())
    }
    fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(self
            .snapshots
            .lock()
            .iter()
            .map(|name| SnapshotInfo { name: name.clone(), ..SnapshotInfo::default() })
            .collect())
    }
    fn mark_removed(&self, name: &str) -> Result<()> {
        Err(WireError::service(ErrorKind::NotFound, format!("snapshot {name} not found")))
    }
    fn purge(&self) -> Result<()> {
        Ok(())
    }
    fn revert(&self, _name: &str) -> Result<()> {
        Err(unsupported())
    }
    fn expand(&self, size: u64) -> Result<()> {
        self.disk.set_size(size);
        Ok(())
    }
    fn layer_extents(&self, _name: &str) -> Result<Vec<Extent>> {
        Ok(vec![Extent { offset: 0, len: 8192 }, Extent { offset: 1 << 20, len: 4096 }])
    }
    fn read_layer(&self, _name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read(offset, buf)
    }
    fn layer_checksum(&self, _name: &str, _offset: u64, len: u64) -> Result<[u8; 32]> {
        Ok([len as u8; 32])
    }
    fn begin_layer(&self, _info: &SnapshotInfo) -> Result<()> {
        Err(unsupported())
    }
    fn write_layer(&self, _name: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.write(offset, data)
    }
    fn punch_layer(&self, _name: &str, _offset: u64, _len: u64) -> Result<()> {
        Err(unsupported())
    }
    fn finish_rebuild(&self, _chain: &[SnapshotInfo]) -> Result<()> {
        Err(unsupported())
    }
}

/// A running server; stops when dropped (or explicitly, returning the join result).
pub struct TestServer {
    pub address: String,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl TestServer {
    pub async fn start<S: ReplicaService>(service: Arc<S>, address: &str) -> TestServer {
        Self::start_with(service, address, ServeOptions { workers: 4, ..ServeOptions::default() }).await
    }

    pub async fn start_with<S: ReplicaService>(
        service: Arc<S>,
        address: &str,
        options: ServeOptions,
    ) -> TestServer {
        let listener = Listener::bind(&Address::parse(address).unwrap()).await.unwrap();
        let address = listener.local_address().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(corral_wire::serve_with(listener, service, options, async move {
            let _ = stopped.await;
        }));
        TestServer { address, stop: Some(stop), task: Some(task) }
    }

    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap(),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
