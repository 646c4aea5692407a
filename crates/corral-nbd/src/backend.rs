//! The storage behind an NBD export (contract C of the workspace).

use std::future::Future;

use crate::error::{ErrorKind, NbdError};

/// Largest chunk the default [`NbdBackend::write_zeroes_allocated`] writes at once.
const ZERO_CHUNK: usize = 1 << 20;
static ZEROES: [u8; ZERO_CHUNK] = [0u8; ZERO_CHUNK];

/// Storage served by [`crate::NbdServer`].
///
/// All methods take `&self`: the server calls them concurrently from every connection (and
/// several times concurrently per connection), so implementations synchronise internally.
/// Ranges passed in are already checked against the size the connection negotiated, which
/// is [`NbdBackend::size`] as read during that connection's handshake.
///
/// Durability contract (this is what makes `NBD_FLAG_CAN_MULTI_CONN` honest): when
/// [`NbdBackend::flush`] returns `Ok`, every write, trim and write-zeroes that had completed
/// (returned `Ok`) before the flush was called, on any connection, is durable. A `fua` write
/// is durable when it returns `Ok`.
pub trait NbdBackend: Send + Sync + 'static {
    /// Current size in bytes. Read once per connection at handshake time, so a larger value
    /// (an expand) becomes visible to clients that connect afterwards.
    fn size(&self) -> u64;

    /// Fill `buf` with the bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<(), NbdError>> + Send;

    /// Write `data` at `offset`; when `fua`, the data is durable when this returns `Ok`.
    fn write(&self, offset: u64, data: &[u8], fua: bool)
        -> impl Future<Output = Result<(), NbdError>> + Send;

    /// The client no longer needs `len` bytes at `offset` (contents afterwards are unspecified,
    /// though backends normally read back zeroes).
    fn trim(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), NbdError>> + Send;

    /// Make `len` bytes at `offset` read back as zeroes; the backend may deallocate them.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> impl Future<Output = Result<(), NbdError>> + Send;

    /// Make every completed write durable (see the durability contract above).
    fn flush(&self) -> impl Future<Output = Result<(), NbdError>> + Send;

    /// Zero `len` bytes at `offset` keeping them allocated (`NBD_CMD_FLAG_NO_HOLE`). The
    /// default writes zero buffers through [`NbdBackend::write`]; backends with a cheaper way
    /// (`fallocate(FALLOC_FL_ZERO_RANGE)`) override it.
    fn write_zeroes_allocated(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> impl Future<Output = Result<(), NbdError>> + Send {
        async move {
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(ZERO_CHUNK as u64);
                // n <= ZERO_CHUNK, so the cast and the slice are in bounds.
                self.write(offset + done, &ZEROES[..n as usize], false).await?;
                done += n;
            }
            // FUA covers every chunk written above, so flush once rather than FUA the last one.
            if fua {
                self.flush().await?;
            }
            Ok(())
        }
    }

    /// Whether [`NbdBackend::write_zeroes`] is fast (no data is moved: holes are punched or
    /// metadata is changed). Requests with `NBD_CMD_FLAG_FAST_ZERO` fail with `ENOTSUP` when
    /// this is false, as the protocol requires of a server that cannot zero quickly. Requests
    /// with both `FAST_ZERO` and `NO_HOLE` always fail with `ENOTSUP`: keeping the range
    /// allocated means writing it.
    fn can_fast_zero(&self) -> bool {
        false
    }
}

/// Shorthand for the error a backend returns for a range it cannot serve.
pub fn out_of_range(op: &'static str, offset: u64, len: u64, size: u64) -> NbdError {
    NbdError::new(ErrorKind::InvalidArgument, op, format!("range ends beyond the size {size}"))
        .at(offset, len)
}
