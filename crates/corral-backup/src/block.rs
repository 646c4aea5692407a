//! Blocks: size, checksum (the block's name) and stored encoding.
//!
//! A block is `block size` bytes of the snapshot at a block-aligned offset. Its name is the first 64 hex
//! digits of the SHA-512 of the *uncompressed* bytes. The stored object is the block compressed with the
//! volume's method:
//! ```text
//! none : the raw block
//! lz4  : one LZ4 frame: magic 04 22 4D 18 | FLG 0x64 (v1, independent blocks, content checksum) |
//!        BD 0x70 (4 MiB max block) | HC | { u32le size | data }* | 00 00 00 00 | u32le xxh32 of content
//! gzip : one gzip member (1F 8B …), as Go's compress/gzip writes at its default level
//! ```
//! Readers follow Longhorn's fallback: an object that is not in the declared format but carries the other
//! compressed format's magic is decoded as that. Every decoded block is checked against its name before use.

use std::io::{Read, Write};

use crate::error::{BackupError, Result};

/// Longhorn's two allowed backup block sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum BlockSize {
    /// 2 MiB, the default.
    #[default]
    #[serde(rename = "2MiB")]
    TwoMiB,
    /// 16 MiB.
    #[serde(rename = "16MiB")]
    SixteenMiB,
}

impl BlockSize {
    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            BlockSize::TwoMiB => 2 << 20,
            BlockSize::SixteenMiB => 16 << 20,
        }
    }

    /// From a byte count; only 2 MiB and 16 MiB are allowed.
    pub fn from_bytes(bytes: u64) -> Result<Self> {
        match bytes {
            0x20_0000 => Ok(BlockSize::TwoMiB),
            0x100_0000 => Ok(BlockSize::SixteenMiB),
            other => Err(BackupError::InvalidArgument(format!(
                "block size {other} bytes is not supported: use 2MiB or 16MiB"
            ))),
        }
    }

    /// Parses a Kubernetes quantity as Longhorn stores it (`2097152`, `2Mi`, `16Mi`; empty or 0 = 2 MiB),
    /// or the CLI's spelling (`2MiB`, `16MiB`).
    pub fn parse_quantity(text: &str) -> Result<Self> {
        let t = text.trim();
        if t.is_empty() || t == "0" {
            return Ok(BlockSize::default());
        }
        let (digits, multiplier) = if let Some(d) = t.strip_suffix("MiB").or_else(|| t.strip_suffix("Mi")) {
            (d, 1u64 << 20)
        } else if let Some(d) = t.strip_suffix("KiB").or_else(|| t.strip_suffix("Ki")) {
            (d, 1u64 << 10)
        } else {
            (t, 1)
        };
        let n: u64 = digits.parse().map_err(|_| {
            BackupError::InvalidArgument(format!("block size {text:?} is not a size: use 2MiB or 16MiB"))
        })?;
        n.checked_mul(multiplier).and_then(|bytes| Self::from_bytes(bytes).ok()).ok_or_else(|| {
            BackupError::InvalidArgument(format!("block size {text:?} is not supported: use 2MiB or 16MiB"))
        })
    }
}

impl std::fmt::Display for BlockSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlockSize::TwoMiB => "2MiB",
            BlockSize::SixteenMiB => "16MiB",
        })
    }
}

/// How blocks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Raw bytes.
    None,
    /// LZ4 frame (the default).
    #[default]
    Lz4,
    /// gzip.
    Gzip,
}

impl Compression {
    /// Longhorn's name of the method.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Gzip => "gzip",
        }
    }

    /// Parses Longhorn's name of the method.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "gzip" => Ok(Compression::Gzip),
            other => Err(BackupError::InvalidArgument(format!(
                "compression method {other:?} is not supported: use lz4, gzip or none"
            ))),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// SHA-512/64 hex of a block: its name in the store.
///
/// Uses `ring`'s assembly SHA-512 (about 1.5x the `sha2` crate's speed here): hashing is the largest
/// CPU cost of both backup and restore.
pub fn checksum(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA512, data);
    hex::encode(&digest.as_ref()[..32])
}

/// True for 64 lowercase hex digits.
pub fn is_valid_checksum(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Encodes a block for storage.
pub fn compress(method: Compression, data: &[u8]) -> Result<Vec<u8>> {
    let fail = |e: std::io::Error| BackupError::Worker(format!("{method} compression failed: {e}"));
    match method {
        Compression::None => Ok(data.to_vec()),
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max4MB)
                .content_checksum(true);
            let mut encoder =
                lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::with_capacity(data.len() / 2));
            encoder.write_all(data).map_err(fail)?;
            encoder.finish().map_err(|e| fail(std::io::Error::other(e)))
        }
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 2),
                flate2::Compression::default(),
            );
            encoder.write_all(data).map_err(fail)?;
            encoder.finish().map_err(fail)
        }
    }
}

/// Decodes a stored block named `expected_checksum`, checks its length is `block_size` and its checksum,
/// and returns the block. `object` names the stored object in errors.
pub fn decode_and_verify(
    object: &str,
    method: Compression,
    stored: &[u8],
    block_size: u64,
    expected_checksum: &str,
) -> Result<Vec<u8>> {
    let data = decompress(object, method, stored, block_size)?;
    if data.len() as u64 != block_size {
        return Err(BackupError::corrupt(
            object,
            format!("block holds {} bytes, but the backup's block size is {block_size}", data.len()),
        ));
    }
    let actual = checksum(&data);
    if actual != expected_checksum {
        return Err(BackupError::corrupt(object, format!("checksum mismatch: content hashes to {actual}")));
    }
    Ok(data)
}

fn decompress(object: &str, method: Compression, stored: &[u8], limit: u64) -> Result<Vec<u8>> {
    let effective = match method {
        Compression::None => Compression::None,
        _ if stored.starts_with(&LZ4_MAGIC) => Compression::Lz4,
        _ if stored.starts_with(&GZIP_MAGIC) => Compression::Gzip,
        _ => {
            return Err(BackupError::corrupt(
                object,
                format!("not a {method} stream (neither lz4 nor gzip magic; {} bytes)", stored.len()),
            ))
        }
    };
    // Read at most one byte more than a block, so a damaged or hostile object cannot blow up memory.
    let mut out = Vec::with_capacity(usize::try_from(limit).unwrap_or(0));
    let read = match effective {
        Compression::None => {
            out.extend_from_slice(stored);
            Ok(stored.len())
        }
        Compression::Lz4 => lz4_flex::frame::FrameDecoder::new(stored).take(limit + 1).read_to_end(&mut out),
        Compression::Gzip => flate2::read::GzDecoder::new(stored).take(limit + 1).read_to_end(&mut out),
    };
    read.map_err(|e| BackupError::corrupt(object, format!("cannot decode {effective} data: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_block() -> Vec<u8> {
        let mut block = vec![0u8; 2 << 20];
        for (i, b) in block.iter_mut().enumerate().take(100_000) {
            *b = (i * 7 % 251) as u8;
        }
        block
    }

    #[test]
    fn block_sizes() {
        assert_eq!(BlockSize::parse_quantity("2097152").unwrap(), BlockSize::TwoMiB);
        assert_eq!(BlockSize::parse_quantity("16Mi").unwrap(), BlockSize::SixteenMiB);
        assert_eq!(BlockSize::parse_quantity("16MiB").unwrap(), BlockSize::SixteenMiB);
        assert_eq!(BlockSize::parse_quantity("").unwrap(), BlockSize::TwoMiB);
        assert_eq!(BlockSize::parse_quantity("0").unwrap(), BlockSize::TwoMiB);
        for bad in ["3Mi", "4096", "x", "99999999999999999999Mi", "-2Mi"] {
            assert!(BlockSize::parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checksum_equals_sha2_crate() {
        use sha2::{Digest, Sha512};
        let data = sample_block();
        assert_eq!(checksum(&data), hex::encode(&Sha512::digest(&data)[..32]));
    }

    #[test]
    fn checksum_is_sha512_truncated() {
        // SHA-512("abc") starts with ddaf35a193617aba…
        let c = checksum(b"abc");
        assert_eq!(c.len(), 64);
        assert!(c.starts_with("ddaf35a193617aba"));
        assert!(is_valid_checksum(&c));
        assert!(!is_valid_checksum(&c.to_uppercase()));
    }

    #[test]
    fn every_method_round_trips_and_verifies() {
        let block = sample_block();
        let name = checksum(&block);
        for method in [Compression::None, Compression::Lz4, Compression::Gzip] {
            let stored = compress(method, &block).unwrap();
            let back = decode_and_verify("obj", method, &stored, block.len() as u64, &name).unwrap();
            assert_eq!(back, block, "{method}");
        }
    }

    #[test]
    fn lz4_frame_header_matches_longhorn() {
        let stored = compress(Compression::Lz4, &sample_block()).unwrap();
        // magic, FLG 0x64, BD 0x70 — the same descriptor as the fixture's blocks (written by pierrec/lz4).
        assert_eq!(&stored[..6], &[0x04, 0x22, 0x4d, 0x18, 0x64, 0x70]);
    }

    #[test]
    fn fallback_between_lz4_and_gzip() {
        let block = sample_block();
        let name = checksum(&block);
        let gz = compress(Compression::Gzip, &block).unwrap();
        assert_eq!(decode_and_verify("o", Compression::Lz4, &gz, block.len() as u64, &name).unwrap(), block);
        let lz = compress(Compression::Lz4, &block).unwrap();
        assert_eq!(decode_and_verify("o", Compression::Gzip, &lz, block.len() as u64, &name).unwrap(), block);
    }

    #[test]
    fn damage_is_detected_and_named() {
        let block = sample_block();
        let name = checksum(&block);
        let mut stored = compress(Compression::Lz4, &block).unwrap();
        let mid = stored.len() / 2;
        stored[mid] ^= 0xff;
        let err =
            decode_and_verify("blocks/aa/bb/x.blk", Compression::Lz4, &stored, block.len() as u64, &name)
                .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
        assert!(err.to_string().contains("blocks/aa/bb/x.blk"), "{err}");
        // Raw block with one flipped byte: checksum mismatch.
        let mut raw = block.clone();
        raw[5] ^= 1;
        let err = decode_and_verify("o", Compression::None, &raw, block.len() as u64, &name).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        // Wrong block size.
        let err = decode_and_verify("o", Compression::None, &block, 16 << 20, &name).unwrap_err();
        assert!(err.to_string().contains("block size"), "{err}");
        // Garbage that is neither format.
        assert!(decode_and_verify("o", Compression::Lz4, b"hello", 2 << 20, &name).is_err());
        // Truncated frame.
        let lz = compress(Compression::Lz4, &block).unwrap();
        assert!(decode_and_verify("o", Compression::Lz4, &lz[..lz.len() - 10], 2 << 20, &name).is_err());
    }
}
