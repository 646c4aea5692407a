//! `revision.counter`: the count of write/unmap/write-zeroes requests applied.
//!
//! Byte layout (4096 bytes, mode 0600):
//!
//! ```text
//! offset 0          n            4096
//!        | ASCII decimal digits | NUL (0x00) padding ... |
//!        e.g. "6\0\0\0...\0"
//! ```
//!
//! Longhorn reads 4096 bytes, strips NULs and parses a base-10 int64. Corral writes the whole 4096-byte
//! block at offset 0 in one `pwrite` (a single aligned block, which ext4/xfs write atomically). A flush
//! does not sync it (it may lag the data after a power loss; see the replica's `flush` module for why
//! that is safe); a clean close and `set_revision` do.

use std::path::Path;

use crate::error::{ReplicaError, Result};

/// The file name.
pub const FILE_NAME: &str = "revision.counter";
/// The file size.
pub const BLOCK_LEN: usize = 4096;

/// Parses the file contents.
pub fn parse(bytes: &[u8], path: &Path) -> Result<u64> {
    let block = &bytes[..bytes.len().min(BLOCK_LEN)];
    let text: &[u8] = {
        let start = block.iter().position(|&b| b != 0).unwrap_or(block.len());
        let end = block.iter().rposition(|&b| b != 0).map_or(start, |e| e + 1);
        &block[start..end]
    };
    if text.is_empty() {
        return Err(ReplicaError::corrupt(
            "read revision counter",
            path,
            "no digits (file empty or all NUL)",
        ));
    }
    if text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return Err(ReplicaError::corrupt(
            "read revision counter",
            path,
            format!("{:?} is not a decimal number", String::from_utf8_lossy(&text[..text.len().min(40)])),
        ));
    }
    let s = std::str::from_utf8(text)
        .map_err(|_| ReplicaError::corrupt("read revision counter", path, "not ASCII"))?;
    let value: u64 =
        s.parse().map_err(|e| ReplicaError::corrupt("read revision counter", path, format!("{s:?}: {e}")))?;
    if value > i64::MAX as u64 {
        return Err(ReplicaError::corrupt("read revision counter", path, format!("{value} exceeds int64")));
    }
    Ok(value)
}

/// The 4096-byte block for `value`.
pub fn encode(value: u64) -> [u8; BLOCK_LEN] {
    let mut block = [0u8; BLOCK_LEN];
    let digits = value.to_string();
    block[..digits.len()].copy_from_slice(digits.as_bytes());
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for v in [0, 6, 1234567890, i64::MAX as u64] {
            let b = encode(v);
            assert_eq!(b.len(), 4096);
            assert_eq!(parse(&b, Path::new("r")).unwrap(), v);
        }
        let b = encode(6);
        assert_eq!(b[0], b'6');
        assert!(b[1..].iter().all(|&x| x == 0));
    }

    #[test]
    fn garbage_is_rejected() {
        let p = Path::new("/d/revision.counter");
        for bad in [&b""[..], &[0u8; 4096], b"12a", b"-3", b" 5", b"99999999999999999999", b"\xff\xfe"] {
            let e = parse(bad, p).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
            assert!(e.to_string().contains("revision.counter"));
        }
    }
}
