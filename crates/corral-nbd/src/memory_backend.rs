//! A sparse in-memory [`NbdBackend`], for tests, examples and fuzzing: `corral_block::MemoryDisk` (the
//! workspace's one in-memory block store) behind the NBD backend face.

use corral_block::{BlockDevice, BlockError, MemoryDisk};

use crate::backend::{out_of_range, NbdBackend};
use crate::error::NbdError;

/// Sparse memory disk: 4 KiB blocks allocated on first write, freed by trim / write-zeroes of whole
/// blocks. Unwritten ranges read as zeroes. "Durable" means "in memory": flush is a no-op, which
/// honestly satisfies the multi-connection flush contract.
pub struct MemoryBackend {
    disk: MemoryDisk,
}

impl MemoryBackend {
    /// An all-zero disk of `size` bytes.
    pub fn new(size: u64) -> MemoryBackend {
        MemoryBackend { disk: MemoryDisk::new(size) }
    }

    /// Grow (or shrink) the disk; clients that connect afterwards see the new size.
    pub fn set_size(&self, size: u64) {
        self.disk.set_size(size);
    }

    /// Number of allocated 4 KiB blocks (to check that trims free memory).
    pub fn allocated_blocks(&self) -> usize {
        self.disk.allocated_blocks()
    }
}

/// The store's error as NBD reports it: out of range stays out of range (EINVAL), anything else is an
/// I/O error with the store's error as its source.
fn nbd_error(op: &'static str, err: BlockError) -> NbdError {
    match err {
        BlockError::OutOfRange { offset, len, size, .. } => out_of_range(op, offset, len, size),
        other => NbdError::new(crate::error::ErrorKind::Io, op, other.to_string()).with_source(other),
    }
}

impl NbdBackend for MemoryBackend {
    fn size(&self) -> u64 {
        self.disk.size()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.disk.read_at(buf, offset).map_err(|e| nbd_error("read", e))
    }

    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), NbdError> {
        self.disk.write_at(data, offset).map_err(|e| nbd_error("write", e))
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        self.disk.unmap(offset, len).map_err(|e| nbd_error("trim", e))
    }

    async fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<(), NbdError> {
        self.disk.write_zeroes(offset, len).map_err(|e| nbd_error("write-zeroes", e))
    }

    async fn flush(&self) -> Result<(), NbdError> {
        Ok(())
    }

    fn can_fast_zero(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map(|rt| rt.block_on(f))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sparse_reads_writes_and_zeroing_agree_with_a_model() {
        block_on(async {
            let disk = MemoryBackend::new(1 << 20);
            let mut model = vec![0u8; 1 << 20];
            let mut seed = 0x1234_5678u64;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for _ in 0..300 {
                let offset = next() % (1 << 20);
                let len = (next() % (200 << 10)).min((1 << 20) - offset);
                match next() % 3 {
                    0 => {
                        let byte = next() as u8;
                        let data = vec![byte; len as usize];
                        disk.write(offset, &data, false).await.map_err(|e| e.to_string())?;
                        model[offset as usize..(offset + len) as usize].fill(byte);
                    }
                    1 => {
                        disk.write_zeroes(offset, len, false).await.map_err(|e| e.to_string())?;
                        model[offset as usize..(offset + len) as usize].fill(0);
                    }
                    _ => {
                        let mut buf = vec![1u8; len as usize];
                        disk.read(offset, &mut buf).await.map_err(|e| e.to_string())?;
                        assert_eq!(buf, model[offset as usize..(offset + len) as usize]);
                    }
                }
            }
            let mut all = vec![0u8; 1 << 20];
            disk.read(0, &mut all).await.map_err(|e| e.to_string())?;
            assert_eq!(all, model);
            disk.trim(0, 1 << 20).await.map_err(|e| e.to_string())?;
            assert_eq!(disk.allocated_blocks(), 0);
            assert!(disk.write(1 << 20, &[1], false).await.is_err());
            Ok::<(), String>(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
}
