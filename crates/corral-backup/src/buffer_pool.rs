//! Reusable block-sized buffers for the backup and restore pipelines.
//!
//! A fresh 2 MiB allocation is fresh memory from the kernel: every 4 KiB page of it faults and is zeroed
//! on first touch, which costs about as much as compressing the block. The pipelines therefore take
//! their read, compressed and decoded buffers from a pool and give them back when the block is done.
//! A buffer handed to the object store ([`PooledBuffer::into_bytes`]) comes back when the store drops it.
//!
//! The pool keeps at most `max_free` idle buffers, so its memory is bounded by the pipeline's concurrency.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A pool of byte buffers. Shared as `Arc<BufferPool>`.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    max_free: usize,
}

impl BufferPool {
    /// A pool that keeps at most `max_free` idle buffers.
    pub fn new(max_free: usize) -> Arc<Self> {
        Arc::new(BufferPool { free: Mutex::new(Vec::new()), max_free })
    }

    /// A buffer of exactly `len` bytes. Its contents are unspecified (zeros when newly allocated, old data
    /// when reused): callers overwrite it.
    pub fn take(self: &Arc<Self>, len: usize) -> PooledBuffer {
        let mut buf = self.pop();
        if buf.len() < len {
            buf.resize(len, 0);
        } else {
            buf.truncate(len);
        }
        PooledBuffer { buf, pool: self.clone() }
    }

    /// A buffer with unspecified length and contents, for code that overwrites and sizes it itself
    /// (e.g. [`crate::block::compress_into`], which only grows a buffer and so does not zero it again).
    pub fn take_any(self: &Arc<Self>) -> PooledBuffer {
        PooledBuffer { buf: self.pop(), pool: self.clone() }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn take_empty(self: &Arc<Self>, capacity: usize) -> PooledBuffer {
        let mut buf = self.pop();
        buf.clear();
        buf.reserve(capacity);
        PooledBuffer { buf, pool: self.clone() }
    }

    fn pop(&self) -> Vec<u8> {
        self.free.lock().ok().and_then(|mut free| free.pop()).unwrap_or_default()
    }

    fn give_back(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.max_free {
                free.push(buf);
            }
        }
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.free.lock().map(|f| f.len()).unwrap_or(0)
    }
}

/// A buffer that returns to its pool when dropped.
#[derive(Debug)]
pub(crate) struct PooledBuffer {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    /// Hands the buffer to code that wants [`Bytes`] (the object store) without copying; it returns to
    /// the pool when the last clone of the `Bytes` is dropped.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl Deref for PooledBuffer {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_bounded() {
        let pool = BufferPool::new(2);
        let mut a = pool.take(8);
        a.copy_from_slice(b"abcdefgh");
        let ptr = a.as_ptr();
        drop(a);
        assert_eq!(pool.idle(), 1);
        // Same allocation again, shortened to the requested length.
        let b = pool.take(4);
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b.len(), 4);
        let (c, d, e) = (pool.take(4), pool.take(4), pool.take(4));
        drop((b, c, d, e));
        assert_eq!(pool.idle(), 2, "at most max_free idle buffers are kept");
        let empty = pool.take_empty(100);
        assert!(empty.is_empty() && empty.capacity() >= 100);
    }

    #[test]
    fn bytes_return_the_buffer_when_dropped() {
        let pool = BufferPool::new(4);
        let mut buf = pool.take_empty(16);
        buf.extend_from_slice(b"block data");
        let bytes = buf.into_bytes();
        let clone = bytes.clone();
        assert_eq!(&clone[..], b"block data");
        drop(bytes);
        assert_eq!(pool.idle(), 0, "still referenced by a clone");
        drop(clone);
        assert_eq!(pool.idle(), 1);
    }
}
