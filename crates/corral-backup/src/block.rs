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
//!
//! The lz4 frame is written here directly (header, then each <= 4 MiB piece compressed with
//! `lz4_flex::block` straight into the caller's buffer, stored raw with the size's high bit set when it
//! does not shrink, end mark, xxh32 of the content), and frames with independent blocks and no
//! dictionary — what Longhorn and Corral write — are decoded the same way, straight into the caller's
//! buffer. Any other frame goes through `lz4_flex::frame`. This saves two copies and several megabytes of
//! freshly faulted encoder/decoder buffers per block: a measurable share of backup and restore time.

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
    let mut out = Vec::with_capacity(max_stored_size(data.len()));
    compress_into(method, data, &mut out)?;
    Ok(out)
}

/// Largest stored size of a block of `len` bytes, in any method (enough room for [`compress_into`]).
pub fn max_stored_size(len: usize) -> usize {
    let pieces = len.div_ceil(LZ4_MAX_PIECE).max(1);
    // lz4: header, per piece a size field and at worst the compressor's bound, end mark, content checksum.
    LZ4_HEADER_LEN + pieces * 4 + lz4_flex::block::get_maximum_output_size(len) + 8
}

/// Encodes a block for storage into `out`, replacing its contents (its allocation is reused).
pub fn compress_into(method: Compression, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let fail = |e: std::io::Error| BackupError::Worker(format!("{method} compression failed: {e}"));
    match method {
        Compression::None => {
            out.clear();
            out.extend_from_slice(data);
            Ok(())
        }
        Compression::Lz4 => lz4_frame_encode(data, out),
        Compression::Gzip => {
            out.clear();
            let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            encoder.write_all(data).map_err(fail)?;
            encoder.finish().map_err(fail).map(|_| ())
        }
    }
}

/// Largest piece of content in one lz4 block (the frame descriptor's 4 MiB maximum).
const LZ4_MAX_PIECE: usize = 4 << 20;
/// FLG: version 01, independent blocks, no block checksums, no content size, content checksum, no dict.
const LZ4_FLG: u8 = 0x64;
/// BD: 4 MiB maximum block size.
const LZ4_BD: u8 = 0x70;
const LZ4_HEADER_LEN: usize = 7;
const LZ4_UNCOMPRESSED_BIT: u32 = 0x8000_0000;

fn lz4_header_checksum(descriptor: &[u8]) -> u8 {
    // The header checksum is the second byte of the descriptor's xxh32.
    (twox_hash::XxHash32::oneshot(0, descriptor) >> 8) as u8
}

/// Writes one lz4 frame holding `data` into `out`.
fn lz4_frame_encode(data: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let worst = max_stored_size(data.len());
    // Only grow: a reused buffer is overwritten in place, so it is not zero-filled again.
    if out.len() < worst {
        out.resize(worst, 0);
    }
    let buf = &mut out[..];
    buf[..4].copy_from_slice(&LZ4_MAGIC);
    buf[4] = LZ4_FLG;
    buf[5] = LZ4_BD;
    buf[6] = lz4_header_checksum(&[LZ4_FLG, LZ4_BD]);
    let mut pos = LZ4_HEADER_LEN;
    for piece in data.chunks(LZ4_MAX_PIECE) {
        let body = pos + 4;
        let compressed = lz4_flex::block::compress_into(piece, &mut buf[body..])
            .map_err(|e| BackupError::Worker(format!("lz4 compression failed: {e}")))?;
        let (len, field) = if compressed < piece.len() {
            (compressed, compressed as u32)
        } else {
            // Incompressible: stored as is, as every lz4 frame writer does.
            buf[body..body + piece.len()].copy_from_slice(piece);
            (piece.len(), piece.len() as u32 | LZ4_UNCOMPRESSED_BIT)
        };
        buf[pos..body].copy_from_slice(&field.to_le_bytes());
        pos = body + len;
    }
    buf[pos..pos + 4].copy_from_slice(&0u32.to_le_bytes());
    buf[pos + 4..pos + 8].copy_from_slice(&twox_hash::XxHash32::oneshot(0, data).to_le_bytes());
    out.truncate(pos + 8);
    Ok(())
}

/// Decodes a frame with independent blocks and no dictionary straight into `out` (at most `limit`
/// bytes). Returns false, leaving the work to `lz4_flex::frame`, for any other frame and for anything
/// malformed (so that the general decoder's error describes it). Block and content checksums are not
/// checked here: the caller checks the block's SHA-512, which is stronger.
fn lz4_frame_decode_fast(stored: &[u8], limit: usize, out: &mut Vec<u8>) -> bool {
    let Some(&[flg, bd]) = stored.get(4..6) else { return false };
    let (version, independent, block_checksums, content_size, content_checksum, reserved_or_dict) =
        (flg >> 6, flg & 0x20 != 0, flg & 0x10 != 0, flg & 0x08 != 0, flg & 0x04 != 0, flg & 0x03 != 0);
    if version != 1 || !independent || reserved_or_dict {
        return false;
    }
    let max_block = match (bd >> 4) & 0x7 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        _ => return false,
    };
    let hc_pos = if content_size { 14 } else { 6 };
    match (stored.get(4..hc_pos), stored.get(hc_pos)) {
        (Some(descriptor), Some(&hc)) if lz4_header_checksum(descriptor) == hc => {}
        _ => return false,
    }
    if out.len() < limit {
        out.resize(limit, 0);
    }
    let mut pos = hc_pos + 1;
    let mut written = 0usize;
    loop {
        let Some(field) = stored.get(pos..pos + 4) else { return false };
        let field = u32::from_le_bytes([field[0], field[1], field[2], field[3]]);
        pos += 4;
        if field == 0 {
            break;
        }
        let len = (field & !LZ4_UNCOMPRESSED_BIT) as usize;
        if len > max_block {
            return false;
        }
        let Some(data) = stored.get(pos..pos + len) else { return false };
        pos += len + if block_checksums { 4 } else { 0 };
        let Some(dest) = out.get_mut(written..limit) else { return false };
        if field & LZ4_UNCOMPRESSED_BIT != 0 {
            let Some(dest) = dest.get_mut(..len) else { return false };
            dest.copy_from_slice(data);
            written += len;
        } else {
            match lz4_flex::block::decompress_into(data, dest) {
                Ok(n) => written += n,
                Err(_) => return false,
            }
        }
    }
    if content_checksum {
        pos += 4;
    }
    if pos != stored.len() {
        // Trailing data (another frame, or damage): the general decoder handles or reports it.
        return false;
    }
    out.truncate(written);
    true
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
    let mut out = Vec::new();
    decode_and_verify_into(object, method, stored, block_size, expected_checksum, &mut out)?;
    Ok(out)
}

/// [`decode_and_verify`] into `out`, replacing its contents (its allocation is reused). On error `out`
/// holds nothing the caller may use.
pub fn decode_and_verify_into(
    object: &str,
    method: Compression,
    stored: &[u8],
    block_size: u64,
    expected_checksum: &str,
    out: &mut Vec<u8>,
) -> Result<()> {
    decompress(object, method, stored, block_size, out)?;
    if out.len() as u64 != block_size {
        return Err(BackupError::corrupt(
            object,
            format!("block holds {} bytes, but the backup's block size is {block_size}", out.len()),
        ));
    }
    let actual = checksum(out);
    if actual != expected_checksum {
        return Err(BackupError::corrupt(object, format!("checksum mismatch: content hashes to {actual}")));
    }
    Ok(())
}

fn decompress(object: &str, method: Compression, stored: &[u8], limit: u64, out: &mut Vec<u8>) -> Result<()> {
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
    if effective == Compression::Lz4 {
        if let Ok(limit) = usize::try_from(limit) {
            if lz4_frame_decode_fast(stored, limit, out) {
                return Ok(());
            }
        }
    }
    // Read at most one byte more than a block, so a damaged or hostile object cannot blow up memory.
    out.clear();
    out.reserve(usize::try_from(limit).unwrap_or(0));
    let read = match effective {
        Compression::None => {
            out.extend_from_slice(stored);
            Ok(stored.len())
        }
        Compression::Lz4 => lz4_flex::frame::FrameDecoder::new(stored).take(limit + 1).read_to_end(out),
        Compression::Gzip => flate2::read::GzDecoder::new(stored).take(limit + 1).read_to_end(out),
    };
    read.map_err(|e| BackupError::corrupt(object, format!("cannot decode {effective} data: {e}")))?;
    Ok(())
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

    fn reference_decode(stored: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        lz4_flex::frame::FrameDecoder::new(stored).read_to_end(&mut out).unwrap();
        out
    }

    fn reference_encode(data: &[u8], info: lz4_flex::frame::FrameInfo) -> Vec<u8> {
        let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        use rand::{Rng, SeedableRng};
        let mut out = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill(&mut out[..]);
        out
    }

    #[test]
    fn our_lz4_frames_decode_with_the_reference_decoder() {
        let mut mixed = random_bytes(16 << 20, 7);
        mixed[..5 << 20].fill(0x5a); // a compressible piece, then incompressible ones
        for data in [Vec::new(), b"x".to_vec(), sample_block(), random_bytes(2 << 20, 1), mixed] {
            let stored = compress(Compression::Lz4, &data).unwrap();
            assert!(stored.len() <= max_stored_size(data.len()));
            assert_eq!(reference_decode(&stored), data, "{} bytes", data.len());
            let mut out = Vec::new();
            assert!(lz4_frame_decode_fast(&stored, data.len(), &mut out), "fast path takes our frames");
            assert_eq!(out, data);
        }
    }

    #[test]
    fn compress_into_reuses_a_dirty_buffer() {
        let a = random_bytes(2 << 20, 3);
        let b = sample_block();
        let mut out = Vec::new();
        for method in [Compression::Lz4, Compression::Gzip, Compression::None] {
            compress_into(method, &a, &mut out).unwrap();
            compress_into(method, &b, &mut out).unwrap();
            assert_eq!(out, compress(method, &b).unwrap(), "{method}");
            let mut decoded = vec![0xee; 5];
            decode_and_verify_into("o", method, &out, b.len() as u64, &checksum(&b), &mut decoded).unwrap();
            assert_eq!(decoded, b, "{method}");
        }
    }

    #[test]
    fn other_writers_lz4_frames_decode() {
        use lz4_flex::frame::{BlockMode, BlockSize as Lz4Block, FrameInfo};
        let mut data = random_bytes(3 << 20, 5);
        data[1 << 20..2 << 20].fill(0);
        for block_size in [Lz4Block::Max64KB, Lz4Block::Max256KB, Lz4Block::Max1MB, Lz4Block::Max4MB] {
            for (mode, block_checksums, content_size) in [
                (BlockMode::Independent, false, None),
                (BlockMode::Independent, true, Some(data.len() as u64)),
                (BlockMode::Linked, false, None),
            ] {
                let info = FrameInfo::new()
                    .block_size(block_size)
                    .block_mode(mode)
                    .block_checksums(block_checksums)
                    .content_size(content_size)
                    .content_checksum(true);
                let stored = reference_encode(&data, info);
                let mut out = Vec::new();
                let fast = lz4_frame_decode_fast(&stored, data.len(), &mut out);
                assert_eq!(fast, mode == BlockMode::Independent, "{block_size:?} {mode:?}");
                decode_and_verify_into(
                    "o",
                    Compression::Lz4,
                    &stored,
                    data.len() as u64,
                    &checksum(&data),
                    &mut out,
                )
                .unwrap();
                assert_eq!(out, data, "{block_size:?} {mode:?} {block_checksums}");
            }
        }
    }

    #[test]
    fn an_lz4_frame_larger_than_the_block_is_refused() {
        let data = random_bytes(3 << 20, 9);
        let stored = compress(Compression::Lz4, &data).unwrap();
        let mut out = Vec::new();
        assert!(!lz4_frame_decode_fast(&stored, 2 << 20, &mut out));
        let err = decode_and_verify_into("o", Compression::Lz4, &stored, 2 << 20, &checksum(&data), &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("block size"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        // Damaged frames: never a panic; whatever the fast path accepts, the reference decoder agrees on.
        #[test]
        fn damaged_lz4_frames_never_panic(
            flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..4096,
        ) {
            let mut data = random_bytes(3000, 11);
            data[..1500].fill(b'a');
            let mut stored = compress(Compression::Lz4, &data).unwrap();
            for (at, value) in flips {
                let at = at % stored.len();
                stored[at] ^= value;
            }
            stored.truncate(cut.max(4).min(stored.len()));
            let mut out = Vec::new();
            if lz4_frame_decode_fast(&stored, 4096, &mut out) {
                let mut reference = Vec::new();
                if lz4_flex::frame::FrameDecoder::new(&stored[..]).read_to_end(&mut reference).is_ok() {
                    proptest::prop_assert_eq!(&out, &reference);
                }
            }
            let _ = decode_and_verify_into("o", Compression::Lz4, &stored, 3000, &checksum(&data), &mut out);
        }
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
