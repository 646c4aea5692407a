//! A conformance suite any [`BlockDevice`] can be run through: it drives the device and a
//! [`MemoryDisk`] with the same operations and compares every read.
//!
//! ```
//! use corral_block::{conformance, MemoryDisk};
//! let dev = MemoryDisk::new(1 << 20);
//! conformance::run_all(&dev).unwrap();
//! ```
//! The device must be zero-filled when handed in, at least 256 KiB, and its size a multiple of 4096.

use crate::{BlockDevice, BlockError, MemoryDisk, BLOCK_SIZE};

/// A failed conformance check: which check, and what differed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

fn fail(msg: impl Into<String>) -> Failure {
    Failure(msg.into())
}

/// Deterministic xorshift generator (no dependency, reproducible from a seed).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is mapped to a fixed non-zero seed).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in `[0, n)` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The device and the model, driven together.
pub struct Pair<'a, D: BlockDevice + ?Sized> {
    /// Device under test.
    pub dev: &'a D,
    /// Reference model.
    pub model: MemoryDisk,
}

impl<'a, D: BlockDevice + ?Sized> Pair<'a, D> {
    /// Pairs `dev` (zero-filled) with a fresh model of its size.
    pub fn new(dev: &'a D) -> Self {
        Pair { dev, model: MemoryDisk::new(dev.size()) }
    }

    /// Writes `len` bytes of a pattern derived from `seed` at `off` to both.
    pub fn write(&self, off: u64, len: usize, seed: u8) -> Result<(), Failure> {
        let buf: Vec<u8> = (0..len).map(|i| seed.wrapping_add((i % 251) as u8) | 1).collect();
        self.dev.write_at(&buf, off).map_err(|e| fail(format!("write {off}+{len}: {e}")))?;
        self.model.write_at(&buf, off).map_err(|e| fail(format!("model write: {e}")))
    }

    /// Unmaps on both.
    pub fn unmap(&self, off: u64, len: u64) -> Result<(), Failure> {
        self.dev.unmap(off, len).map_err(|e| fail(format!("unmap {off}+{len}: {e}")))?;
        self.model.unmap(off, len).map_err(|e| fail(format!("model unmap: {e}")))
    }

    /// Write-zeroes on both.
    pub fn write_zeroes(&self, off: u64, len: u64) -> Result<(), Failure> {
        self.dev.write_zeroes(off, len).map_err(|e| fail(format!("write-zeroes {off}+{len}: {e}")))?;
        self.model.write_zeroes(off, len).map_err(|e| fail(format!("model write-zeroes: {e}")))
    }

    /// Reads `[off, off+len)` from both and compares.
    pub fn check(&self, off: u64, len: usize) -> Result<(), Failure> {
        let mut a = vec![0u8; len];
        let mut b = vec![0u8; len];
        self.dev.read_at(&mut a, off).map_err(|e| fail(format!("read {off}+{len}: {e}")))?;
        self.model.read_at(&mut b, off).map_err(|e| fail(format!("model read: {e}")))?;
        if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
            return Err(fail(format!(
                "read {off}+{len} differs from the model at byte {} (device {:#04x}, model {:#04x})",
                off + i as u64,
                a[i],
                b[i]
            )));
        }
        Ok(())
    }

    /// Compares the whole device with the model.
    pub fn check_all(&self) -> Result<(), Failure> {
        let size = self.dev.size();
        let step = 1u64 << 20;
        let mut off = 0;
        while off < size {
            let n = step.min(size - off) as usize;
            self.check(off, n)?;
            off += n as u64;
        }
        Ok(())
    }
}

/// Writes, reads and discards at awkward alignments and checks every result.
pub fn alignment_cases<D: BlockDevice + ?Sized>(dev: &D) -> Result<(), Failure> {
    let p = Pair::new(dev);
    let bs = BLOCK_SIZE;
    p.write(0, 1, 1)?;
    p.write(511, 2, 2)?;
    p.write(bs - 1, 2, 3)?;
    p.write(3 * bs + 100, 3 * bs as usize, 4)?;
    p.write(8 * bs, 4 * bs as usize, 5)?;
    p.check_all()?;
    p.unmap(8 * bs + 10, bs)?;
    p.write_zeroes(3 * bs + 200, 2 * bs + 7)?;
    p.unmap(9 * bs, 2 * bs)?;
    p.check_all()?;
    p.write(bs * 2, 10, 6)?;
    p.write_zeroes(0, 5)?;
    p.check_all()?;
    dev.flush().map_err(|e| fail(format!("flush: {e}")))?;
    p.check_all()
}

/// Out-of-range requests fail with `OutOfRange` and change nothing.
pub fn out_of_range_cases<D: BlockDevice + ?Sized>(dev: &D) -> Result<(), Failure> {
    let p = Pair::new(dev);
    p.write(0, 4096, 9)?;
    let size = dev.size();
    let expect_oor = |r: Result<(), BlockError>, what: &str| match r {
        Err(BlockError::OutOfRange { .. }) => Ok(()),
        other => Err(fail(format!("{what}: expected OutOfRange, got {other:?}"))),
    };
    expect_oor(dev.write_at(&[1; 10], size - 5), "write across the end")?;
    expect_oor(dev.write_at(&[1; 1], u64::MAX), "write at u64::MAX")?;
    expect_oor(dev.read_at(&mut [0; 10], size - 5), "read across the end")?;
    expect_oor(dev.unmap(0, size + 4096), "unmap past the end")?;
    expect_oor(dev.write_zeroes(u64::MAX - 1, 4096), "write-zeroes overflowing")?;
    p.check_all()
}

/// `n` random operations (seeded), each followed by a read check, then a full comparison.
pub fn random_ops<D: BlockDevice + ?Sized>(dev: &D, seed: u64, n: usize) -> Result<(), Failure> {
    let p = Pair::new(dev);
    let mut rng = Rng::new(seed);
    let size = dev.size();
    for i in 0..n {
        let off = rng.below(size);
        let len = (1 + rng.below(3 * BLOCK_SIZE)).min(size - off);
        match rng.below(10) {
            0..=4 => p.write(off, len as usize, i as u8)?,
            5 => p.unmap(off, len)?,
            6 => p.write_zeroes(off, len)?,
            7 => dev.flush().map_err(|e| fail(format!("flush: {e}")))?,
            _ => {}
        }
        let roff = rng.below(size);
        p.check(roff, (1 + rng.below(2 * BLOCK_SIZE)).min(size - roff) as usize)?;
    }
    p.check_all()
}

/// Every check above. `dev` must be zero-filled; afterwards it holds test data.
pub fn run_all<D: BlockDevice + ?Sized>(dev: &D) -> Result<(), Failure> {
    alignment_cases(dev)?;
    // The following start from the current contents: reset by zeroing everything first.
    dev.write_zeroes(0, dev.size()).map_err(|e| fail(format!("write-zeroes whole device: {e}")))?;
    out_of_range_cases(dev)?;
    dev.write_zeroes(0, dev.size()).map_err(|e| fail(format!("write-zeroes whole device: {e}")))?;
    random_ops(dev, 42, 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_passes_its_own_suite() {
        run_all(&MemoryDisk::new(1 << 20)).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A device that loses sub-block writes must fail the suite (the suite can fail).
    struct Broken(MemoryDisk);
    impl BlockDevice for Broken {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_at(&self, b: &mut [u8], o: u64) -> Result<(), BlockError> {
            self.0.read_at(b, o)
        }
        fn write_at(&self, b: &[u8], o: u64) -> Result<(), BlockError> {
            if b.len() < 512 {
                Ok(())
            } else {
                self.0.write_at(b, o)
            }
        }
        fn unmap(&self, o: u64, l: u64) -> Result<(), BlockError> {
            self.0.unmap(o, l)
        }
        fn write_zeroes(&self, o: u64, l: u64) -> Result<(), BlockError> {
            self.0.write_zeroes(o, l)
        }
        fn flush(&self) -> Result<(), BlockError> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_device_fails_the_suite() {
        assert!(run_all(&Broken(MemoryDisk::new(1 << 20))).is_err());
    }
}
