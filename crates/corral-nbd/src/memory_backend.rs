//! A sparse in-memory [`NbdBackend`], for tests, examples and fuzzing.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::backend::{out_of_range, NbdBackend};
use crate::error::NbdError;

/// Bytes per allocation unit of [`MemoryBackend`].
const CHUNK: u64 = 64 << 10;
/// Number of independently locked shards (chunk index modulo this).
const SHARDS: usize = 64;

/// Sparse memory disk: 64 KiB chunks allocated on first write, freed by trim / write-zeroes
/// of whole chunks. Unwritten ranges read as zeroes. Lock per shard of chunks, so concurrent
/// requests on different chunks do not contend. "Durable" means "in memory": flush is a no-op,
/// which honestly satisfies the multi-connection flush contract.
pub struct MemoryBackend {
    size: parking_lot::RwLock<u64>,
    shards: Vec<Mutex<HashMap<u64, Box<[u8]>>>>,
}

impl MemoryBackend {
    /// An all-zero disk of `size` bytes.
    pub fn new(size: u64) -> MemoryBackend {
        MemoryBackend {
            size: parking_lot::RwLock::new(size),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Grow (or shrink) the disk; clients that connect afterwards see the new size.
    pub fn set_size(&self, size: u64) {
        *self.size.write() = size;
    }

    /// Number of allocated 64 KiB chunks (to check that trims free memory).
    pub fn allocated_chunks(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn shard(&self, chunk: u64) -> &Mutex<HashMap<u64, Box<[u8]>>> {
        &self.shards[(chunk % SHARDS as u64) as usize]
    }

    fn check(&self, op: &'static str, offset: u64, len: u64) -> Result<(), NbdError> {
        let size = *self.size.read();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(out_of_range(op, offset, len, size)),
        }
    }

    /// Visit the chunk pieces of a range: (chunk index, offset in chunk, offset in range, length).
    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize, usize)> {
        let mut pos = offset;
        let end = offset + len;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let chunk = pos / CHUNK;
            let in_chunk = pos % CHUNK;
            let n = (CHUNK - in_chunk).min(end - pos);
            let item = (chunk, in_chunk as usize, (pos - offset) as usize, n as usize);
            pos += n;
            Some(item)
        })
    }

    fn zero_range(&self, offset: u64, len: u64) {
        for (chunk, at, _, n) in Self::pieces(offset, len) {
            let mut shard = self.shard(chunk).lock();
            if n as u64 == CHUNK {
                shard.remove(&chunk);
            } else if let Some(data) = shard.get_mut(&chunk) {
                data[at..at + n].fill(0);
            }
        }
    }
}

impl NbdBackend for MemoryBackend {
    fn size(&self) -> u64 {
        *self.size.read()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.check("read", offset, buf.len() as u64)?;
        for (chunk, at, pos, n) in Self::pieces(offset, buf.len() as u64) {
            let shard = self.shard(chunk).lock();
            match shard.get(&chunk) {
                Some(data) => buf[pos..pos + n].copy_from_slice(&data[at..at + n]),
                None => buf[pos..pos + n].fill(0),
            }
        }
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), NbdError> {
        self.check("write", offset, data.len() as u64)?;
        for (chunk, at, pos, n) in Self::pieces(offset, data.len() as u64) {
            let mut shard = self.shard(chunk).lock();
            let stored = shard.entry(chunk).or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            stored[at..at + n].copy_from_slice(&data[pos..pos + n]);
        }
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        self.check("trim", offset, len)?;
        self.zero_range(offset, len);
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<(), NbdError> {
        self.check("write-zeroes", offset, len)?;
        self.zero_range(offset, len);
        Ok(())
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
            assert_eq!(disk.allocated_chunks(), 0);
            assert!(disk.write(1 << 20, &[1], false).await.is_err());
            Ok::<(), String>(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
}
