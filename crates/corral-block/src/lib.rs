//! The capability every block backend in Corral offers, and the reference model they are tested against.
//!
//! A *block device* here is a byte-addressed volume of fixed (but expandable) size that supports read,
//! write, unmap (discard), write-zeroes and flush. The replica's sparse-file snapshot chain, a remote
//! replica reached over the data protocol, and the engine's replicated fan-out all present this face, so
//! one conformance suite and one model-based property test can check every one of them.
//!
//! Threading model: methods take `&self`; an implementation that is shared between threads synchronises
//! internally. Nothing here spawns threads or allocates per request.
//!
//! ```
//! use corral_block::{BlockDevice, MemoryDisk};
//! let disk = MemoryDisk::new(1 << 20);
//! disk.write_at(b"hello", 4096).unwrap();
//! let mut buf = [0u8; 5];
//! disk.read_at(&mut buf, 4096).unwrap();
//! assert_eq!(&buf, b"hello");
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// The granularity of allocation inside replicas (Longhorn's `VolumeSectorSize`).
pub const BLOCK_SIZE: u64 = 4096;

/// Why a block operation failed. `kind` is stable and small, for mapping to NBD errno, HTTP or gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The range `[offset, offset+len)` is not inside a volume of `size` bytes.
    #[error("{op} at offset {offset} length {len} is beyond the volume end ({size} bytes)")]
    OutOfRange {
        /// Operation name.
        op: &'static str,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Volume size.
        size: u64,
    },
    /// The underlying storage failed.
    #[error("{op} at offset {offset}: {source}")]
    Io {
        /// Operation name.
        op: &'static str,
        /// Offset of the failed request.
        offset: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The device cannot serve I/O now (closed, no healthy replica, …).
    #[error("{0}")]
    Unavailable(String),
}

/// Checks that `[offset, offset+len)` lies within `size`, without overflow.
pub fn check_range(op: &'static str, offset: u64, len: u64, size: u64) -> Result<(), BlockError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { op, offset, len, size }),
    }
}

/// A byte-addressed block device. See the crate documentation.
pub trait BlockDevice {
    /// Current size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset`. Unwritten ranges read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError>;
    /// Writes `buf` at `offset` (any alignment).
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError>;
    /// Discards the range. Afterwards the range reads as zeros (Corral guarantees this, unlike NBD's TRIM,
    /// so that a discard never makes older snapshot data reappear).
    fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError>;
    /// Makes the range read as zeros.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), BlockError>;
}

/// A sparse in-memory block device: the reference model. Unwritten 4 KiB blocks take no memory, so a
/// model of a 1 TiB volume is cheap.
#[derive(Debug)]
pub struct MemoryDisk {
    inner: Mutex<MemoryDiskInner>,
}

#[derive(Debug, Clone)]
struct MemoryDiskInner {
    size: u64,
    blocks: BTreeMap<u64, Box<[u8; BLOCK_SIZE as usize]>>,
}

impl MemoryDisk {
    /// A zero-filled device of `size` bytes.
    pub fn new(size: u64) -> Self {
        MemoryDisk { inner: Mutex::new(MemoryDiskInner { size, blocks: BTreeMap::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryDiskInner> {
        // A panic while holding this lock can only come from a bug in this module; the data is still
        // consistent (every mutation is a single map operation), so recover it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Grows (or, for models of revert, sets) the size. Bytes beyond the old size read as zeros.
    pub fn set_size(&self, size: u64) {
        let mut inner = self.lock();
        inner.size = size;
        let first_gone = size.div_ceil(BLOCK_SIZE);
        inner.blocks.retain(|&b, _| b < first_gone);
        if size % BLOCK_SIZE != 0 {
            let last = size / BLOCK_SIZE;
            let keep = (size % BLOCK_SIZE) as usize;
            if let Some(block) = inner.blocks.get_mut(&last) {
                block[keep..].fill(0);
            }
        }
    }

    /// An independent copy (a snapshot of the model).
    pub fn duplicate(&self) -> MemoryDisk {
        MemoryDisk { inner: Mutex::new(self.lock().clone()) }
    }

    /// Number of 4 KiB blocks holding data.
    pub fn allocated_blocks(&self) -> usize {
        self.lock().blocks.len()
    }

    /// True if the 4 KiB block containing `offset` holds data (written, even with zeros, and not
    /// discarded since). Models of layered stores use it to decide which layer owns a block.
    pub fn is_allocated(&self, offset: u64) -> bool {
        self.lock().blocks.contains_key(&(offset / BLOCK_SIZE))
    }

    /// The allocated ranges as `(offset, len)` in bytes, ascending, adjacent blocks merged (what a
    /// sparse file's FIEMAP reports, at block granularity).
    pub fn extents(&self) -> Vec<(u64, u64)> {
        let inner = self.lock();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &block in inner.blocks.keys() {
            let offset = block * BLOCK_SIZE;
            match out.last_mut() {
                Some((start, len)) if *start + *len == offset => *len += BLOCK_SIZE,
                _ => out.push((offset, BLOCK_SIZE)),
            }
        }
        out
    }

    fn zero_range(inner: &mut MemoryDiskInner, offset: u64, len: u64) {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let block = pos / BLOCK_SIZE;
            let within = (pos % BLOCK_SIZE) as usize;
            let n = ((BLOCK_SIZE as usize - within) as u64).min(end - pos) as usize;
            if within == 0 && n == BLOCK_SIZE as usize {
                inner.blocks.remove(&block);
            } else if let Some(data) = inner.blocks.get_mut(&block) {
                data[within..within + n].fill(0);
            }
            pos += n as u64;
        }
    }
}

impl BlockDevice for MemoryDisk {
    fn size(&self) -> u64 {
        self.lock().size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let inner = self.lock();
        check_range("read", offset, buf.len() as u64, inner.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / BLOCK_SIZE;
            let within = (pos % BLOCK_SIZE) as usize;
            let n = (BLOCK_SIZE as usize - within).min(buf.len() - done);
            match inner.blocks.get(&block) {
                Some(data) => buf[done..done + n].copy_from_slice(&data[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        let mut inner = self.lock();
        check_range("write", offset, buf.len() as u64, inner.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / BLOCK_SIZE;
            let within = (pos % BLOCK_SIZE) as usize;
            let n = (BLOCK_SIZE as usize - within).min(buf.len() - done);
            let data = inner.blocks.entry(block).or_insert_with(|| Box::new([0u8; BLOCK_SIZE as usize]));
            data[within..within + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let mut inner = self.lock();
        check_range("unmap", offset, len, inner.size)?;
        Self::zero_range(&mut inner, offset, len);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let mut inner = self.lock();
        check_range("write-zeroes", offset, len, inner.size)?;
        Self::zero_range(&mut inner, offset, len);
        Ok(())
    }

    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn extents_report_allocated_blocks_merged_and_zero_writes_stay_allocated() {
        let disk = MemoryDisk::new(1 << 20);
        disk.write_at(&[1; 10], 4096 + 5).unwrap();
        disk.write_at(&[0; 4096], 8192).unwrap();
        disk.write_at(&[2; 1], 40960).unwrap();
        assert_eq!(disk.extents(), vec![(4096, 8192), (40960, 4096)]);
        assert!(disk.is_allocated(8192 + 100) && !disk.is_allocated(0));
        disk.unmap(8192, 4096).unwrap();
        assert_eq!(disk.extents(), vec![(4096, 4096), (40960, 4096)]);
    }

    #[test]
    fn out_of_range_is_an_error_and_changes_nothing() {
        let disk = MemoryDisk::new(8192);
        assert!(matches!(disk.write_at(&[1; 10], 8190), Err(BlockError::OutOfRange { .. })));
        assert!(matches!(disk.read_at(&mut [0; 1], u64::MAX), Err(BlockError::OutOfRange { .. })));
        assert_eq!(disk.allocated_blocks(), 0);
    }

    proptest! {
        // The model itself against a dense Vec<u8>.
        #[test]
        fn memory_disk_matches_a_dense_vector(ops in proptest::collection::vec((0u8..3, 0u64..40_000, 1usize..9000, any::<u8>()), 1..60)) {
            let size = 48_000u64;
            let disk = MemoryDisk::new(size);
            let mut dense = vec![0u8; size as usize];
            for (kind, off, len, byte) in ops {
                let len = len.min((size - off) as usize);
                match kind {
                    0 => { disk.write_at(&vec![byte; len], off).map_err(|e| TestCaseError::fail(e.to_string()))?; dense[off as usize..off as usize + len].fill(byte); }
                    1 => { disk.unmap(off, len as u64).map_err(|e| TestCaseError::fail(e.to_string()))?; dense[off as usize..off as usize + len].fill(0); }
                    _ => { disk.write_zeroes(off, len as u64).map_err(|e| TestCaseError::fail(e.to_string()))?; dense[off as usize..off as usize + len].fill(0); }
                }
            }
            let mut all = vec![0u8; size as usize];
            disk.read_at(&mut all, 0).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(all == dense);
        }
    }
}
