//! Read, write, unmap, write-zeroes and flush.
//!
//! Locking: a data operation holds the chain lock shared (the layer set cannot change under it), the
//! stripe locks of the 1 MiB regions it modifies (so a read-modify-write of a block never interleaves
//! with another write of the same block), and takes the index lock only to look up or record owners,
//! never across a system call.

use parking_lot::MutexGuard;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use crate::error::{ErrorKind, ReplicaError, Result};
use crate::fsutil;
use crate::range_map::RangeMap;
use crate::replica::{blocks_of, Chain, LayerId, Replica, REGION_BLOCKS, STRIPES};
use crate::BLOCK_SIZE;

const BS: u64 = BLOCK_SIZE;

/// Whether a read may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// An ordinary blocking read.
    Wait,
    /// Only from the page cache (`preadv2` with `RWF_NOWAIT`): stops, reporting "would block", as soon
    /// as some of the data would have to come from the disk.
    CachedOnly,
}

/// Reads `buf.len()` bytes at `offset`; bytes past the end of the file read as zeros (older layers
/// keep their pre-expansion size).
pub(crate) fn pread_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    pread_full_in(file, buf, offset, ReadMode::Wait).map(|_| ())
}

/// [`pread_full`] in `mode`: `Ok(false)` when a [`ReadMode::CachedOnly`] read would have to wait (the
/// buffer is then partly filled, and the caller must read again in [`ReadMode::Wait`]).
fn pread_full_in(file: &File, buf: &mut [u8], offset: u64, mode: ReadMode) -> std::io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        let read = match mode {
            ReadMode::Wait => file.read_at(&mut buf[done..], offset + done as u64),
            ReadMode::CachedOnly => pread_nowait(file, &mut buf[done..], offset + done as u64),
        };
        match read {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(true);
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// One `preadv2(RWF_NOWAIT)`: what the page cache holds at `offset`, or `WouldBlock` if nothing there
/// is cached. A short count means only part was cached (or the end of the file was reached).
fn pread_nowait(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: `iov` describes `buf`, which is valid for writes of `buf.len()` bytes and outlives the
    // call; the descriptor is borrowed from `file`, open for the duration of the call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Held stripe locks (one in the common case of a request inside one 1 MiB region); they are only
/// held, never read, and released on drop.
#[allow(dead_code)]
pub(crate) enum StripeGuard<'a> {
    None,
    One(MutexGuard<'a, ()>),
    Many(Vec<MutexGuard<'a, ()>>),
}

impl Replica {
    pub(crate) fn check_range(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(ReplicaError::new(
                ErrorKind::OutOfRange,
                op,
                format!("range {offset}+{len} is beyond the volume end ({size} bytes)"),
            )
            .with_offset(offset)
            .with_path(&self.dir)),
        }
    }

    /// Locks the stripes of the regions touched by blocks `[start, end)`, in ascending stripe order.
    pub(crate) fn lock_stripes(&self, start: u64, end: u64) -> StripeGuard<'_> {
        if start >= end {
            return StripeGuard::None;
        }
        let first = start / REGION_BLOCKS;
        let last = (end - 1) / REGION_BLOCKS;
        if first == last {
            return StripeGuard::One(self.stripes[(first % STRIPES as u64) as usize].lock());
        }
        let mut ids: Vec<usize> = if last - first + 1 >= STRIPES as u64 {
            (0..STRIPES).collect()
        } else {
            (first..=last).map(|r| (r % STRIPES as u64) as usize).collect()
        };
        ids.sort_unstable();
        ids.dedup();
        StripeGuard::Many(ids.into_iter().map(|i| self.stripes[i].lock()).collect())
    }

    /// Fills `buf` with the volume's bytes at `offset` (as seen through the head).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range("read", offset, buf.len() as u64)?;
        let chain = self.chain.read();
        self.read_live(&chain, buf, offset)
    }

    /// [`Self::read_at`] if every byte is in the page cache; `Ok(false)` (and `buf` partly filled) as
    /// soon as some would have to come from the disk. Never waits for the disk, so a server can run it
    /// on a thread that must not block, and send only the misses to threads that may.
    pub fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> Result<bool> {
        self.check_range("read", offset, buf.len() as u64)?;
        let chain = self.chain.read();
        self.read_live_in(&chain, buf, offset, ReadMode::CachedOnly)
    }

    pub(crate) fn read_live(&self, chain: &Chain, buf: &mut [u8], offset: u64) -> Result<()> {
        self.read_live_in(chain, buf, offset, ReadMode::Wait).map(|_| ())
    }

    fn read_live_in(&self, chain: &Chain, buf: &mut [u8], offset: u64, mode: ReadMode) -> Result<bool> {
        if buf.is_empty() {
            return Ok(true);
        }
        let (first, last) = blocks_of(offset, buf.len() as u64);
        // Fast path: the whole request has one owner (or none), so no piece list is built.
        let (run_end, owner) = self.maps.read().top.run_at(first);
        if run_end >= last {
            return self.read_pieces_in(chain, &[(first, last, owner)], buf, offset, mode);
        }
        let pieces = self.maps.read().top.cover(first, last);
        self.read_pieces_in(chain, &pieces, buf, offset, mode)
    }

    /// Reads `buf` at `offset` from the owners given by `pieces` (block ranges covering the request).
    pub(crate) fn read_pieces(
        &self,
        chain: &Chain,
        pieces: &[(u64, u64, Option<LayerId>)],
        buf: &mut [u8],
        offset: u64,
    ) -> Result<()> {
        self.read_pieces_in(chain, pieces, buf, offset, ReadMode::Wait).map(|_| ())
    }

    /// [`Self::read_pieces`] in `mode`; `Ok(false)` when a cached-only read would have to wait.
    fn read_pieces_in(
        &self,
        chain: &Chain,
        pieces: &[(u64, u64, Option<LayerId>)],
        buf: &mut [u8],
        offset: u64,
        mode: ReadMode,
    ) -> Result<bool> {
        let end = offset + buf.len() as u64;
        for &(s, e, owner) in pieces {
            let bs = (s * BS).max(offset);
            let be = (e * BS).min(end);
            if bs >= be {
                continue;
            }
            let dst = &mut buf[(bs - offset) as usize..(be - offset) as usize];
            match owner {
                None => dst.fill(0),
                Some(id) => {
                    let layer = chain.layer(id)?;
                    let complete = pread_full_in(&layer.file, dst, bs, mode).map_err(|e| {
                        ReplicaError::io("read", &self.dir.join(&layer.file_name), e).with_offset(bs)
                    })?;
                    if !complete {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Writes `buf` at `offset` (any alignment).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable("write")?;
        self.check_range("write", offset, buf.len() as u64)?;
        if !buf.is_empty() {
            let chain = self.chain.read();
            let (first, last) = blocks_of(offset, buf.len() as u64);
            let _stripes = self.lock_stripes(first, last);
            self.write_locked(&chain, buf, offset)?;
        }
        self.revision.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Writes into the head; the caller holds the chain lock and the stripes of the range.
    pub(crate) fn write_locked(&self, chain: &Chain, buf: &[u8], offset: u64) -> Result<()> {
        let head = chain.head_layer();
        let head_path = || self.dir.join(&head.file_name);
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let blk = pos / BS * BS;
            if pos == blk && end - pos >= BS {
                let run_end = pos + (end - pos) / BS * BS;
                let run = &buf[(pos - offset) as usize..(run_end - offset) as usize];
                fsutil::write_all_at_in_pieces(&head.file, run, pos)
                    .map_err(|e| ReplicaError::io("write", &head_path(), e).with_offset(pos))?;
                pos = run_end;
            } else {
                // Read-modify-write the whole block so the head only ever holds whole 4 KiB blocks.
                let part_end = end.min(blk + BS);
                let mut block = [0u8; BS as usize];
                self.read_live(chain, &mut block, blk)?;
                block[(pos - blk) as usize..(part_end - blk) as usize]
                    .copy_from_slice(&buf[(pos - offset) as usize..(part_end - offset) as usize]);
                head.file
                    .write_all_at(&block, blk)
                    .map_err(|e| ReplicaError::io("write", &head_path(), e).with_offset(blk))?;
                pos = part_end;
            }
        }
        let (first, last) = blocks_of(offset, buf.len() as u64);
        self.record_head_owns(chain, first, last);
        Ok(())
    }

    fn record_head_owns(&self, chain: &Chain, first: u64, last: u64) {
        if self.maps.read().top.all_equal(first, last, chain.head) {
            return;
        }
        let mut maps = self.maps.write();
        maps.top.insert(first, last, chain.head);
        maps.extents_mut(chain.head).add(first, last);
    }

    /// Discards `[offset, offset+len)`: afterwards it reads as zeros, before and after reopen. Punches
    /// holes in the head (and in the removed snapshots directly under it, as Longhorn does) where no
    /// older layer that must stay visible has data; elsewhere the head gets an allocated zero range.
    pub fn unmap(&self, offset: u64, len: u64) -> Result<()> {
        self.discard("unmap", offset, len, true)
    }

    /// Makes `[offset, offset+len)` read as zeros whatever lies below.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.discard("write-zeroes", offset, len, false)
    }

    fn discard(&self, op: &'static str, offset: u64, len: u64, punch_removed: bool) -> Result<()> {
        self.check_writable(op)?;
        self.check_range(op, offset, len)?;
        if len > 0 {
            let chain = self.chain.read();
            let (first, last) = blocks_of(offset, len);
            let _stripes = self.lock_stripes(first, last);
            let end = offset + len;
            let a = offset.div_ceil(BS) * BS;
            let b = end / BS * BS;
            if a >= b {
                self.write_locked(&chain, &vec![0u8; len as usize], offset)?;
            } else {
                if offset < a {
                    self.write_locked(&chain, &vec![0u8; (a - offset) as usize], offset)?;
                }
                if b < end {
                    self.write_locked(&chain, &vec![0u8; (end - b) as usize], b)?;
                }
                self.discard_blocks(&chain, a / BS, b / BS, punch_removed)?;
            }
        }
        self.revision.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Zeroes whole blocks `[s, e)`. Caller holds the chain lock and the stripes.
    fn discard_blocks(&self, chain: &Chain, s: u64, e: u64, punch_removed: bool) -> Result<()> {
        let head = chain.head_layer();
        // Removed snapshots directly under the head, each with a single child, may be punched too.
        let mut punchable: Vec<LayerId> = Vec::new();
        if punch_removed {
            for &id in chain.live.iter().skip(1) {
                let layer = chain.layer(id)?;
                if layer.meta.removed && chain.child_count(id) == 1 {
                    punchable.push(id);
                } else {
                    break;
                }
            }
        }
        let below = &chain.live[(1 + punchable.len()).min(chain.live.len())..];
        let (covered, head_has) = {
            let maps = self.maps.read();
            let mut covered = RangeMap::new();
            for &id in below {
                maps.extents_of(id).for_each_piece(s, e, |ps, pe, ()| covered.add(ps, pe));
            }
            let head_has = !maps.extents_of(chain.head).pieces(s, e).is_empty()
                || punchable.iter().any(|&p| !maps.extents_of(p).pieces(s, e).is_empty());
            (covered, head_has)
        };
        let free = covered.gaps(s, e);
        let head_path = || self.dir.join(&head.file_name);
        for (cs, ce, ()) in covered.iter() {
            fsutil::zero_range(&head.file, cs * BS, (ce - cs) * BS)
                .map_err(|err| ReplicaError::io("zero range", &head_path(), err).with_offset(cs * BS))?;
        }
        if head_has {
            for &(fs, fe) in &free {
                fsutil::punch_hole(&head.file, fs * BS, (fe - fs) * BS)
                    .map_err(|err| ReplicaError::io("punch hole", &head_path(), err).with_offset(fs * BS))?;
                for &p in &punchable {
                    let layer = chain.layer(p)?;
                    fsutil::punch_hole(&layer.file, fs * BS, (fe - fs) * BS).map_err(|err| {
                        ReplicaError::io("punch hole", &self.dir.join(&layer.file_name), err)
                            .with_offset(fs * BS)
                    })?;
                    layer.dirty.store(true, Ordering::Release);
                }
            }
        }
        let mut maps = self.maps.write();
        for (cs, ce, ()) in covered.iter() {
            maps.top.insert(cs, ce, chain.head);
            maps.extents_mut(chain.head).add(cs, ce);
        }
        for &(fs, fe) in &free {
            maps.top.clear(fs, fe);
            maps.extents_mut(chain.head).clear(fs, fe);
            for &p in &punchable {
                maps.extents_mut(p).clear(fs, fe);
            }
        }
        Ok(())
    }
}

impl corral_block::BlockDevice for Replica {
    fn size(&self) -> u64 {
        Replica::size(self)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), corral_block::BlockError> {
        Ok(Replica::read_at(self, buf, offset)?)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), corral_block::BlockError> {
        Ok(Replica::write_at(self, buf, offset)?)
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), corral_block::BlockError> {
        Ok(Replica::unmap(self, offset, len)?)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), corral_block::BlockError> {
        Ok(Replica::write_zeroes(self, offset, len)?)
    }

    fn flush(&self) -> Result<(), corral_block::BlockError> {
        Ok(Replica::flush(self)?)
    }
}
