//! The frame: Corral's engine ↔ replica message, byte by byte.
//!
//! Every message, request or response, is a fixed 40-byte header followed by `payload length` bytes.
//! All integers are little-endian; there is no padding.
//!
//! ```text
//!  offset  size  field           meaning
//!  ------  ----  --------------  ---------------------------------------------------------------------
//!       0     4  magic           the bytes "CRWL" (0x43 0x52 0x57 0x4C); anything else: the connection
//!                                is closed, since the stream cannot be trusted to be in sync
//!       4     1  version         1
//!       5     1  type            operation code (table below); responses set bit 7 (0x80 | request type)
//!       6     2  flags           bit 0 = FUA (Write/WriteZeroes/Unmap: durable before the answer);
//!                                other bits must be 0
//!       8     8  request id      chosen by the client, echoed in the response; unique among the
//!                                requests in flight on one connection
//!      16     8  offset          byte offset (data and layer ops), or the u64 argument of
//!                                SetGeneration / SetRevision / SetRebuilding (0|1) / Expand
//!      24     8  length          byte length (Read, Unmap, WriteZeroes, ReadLayer, PunchLayer,
//!                                LayerChecksum, LayerExtents: 0 = to the end); for WriteLayer the
//!                                length of the name that starts the payload
//!      32     4  payload length  bytes that follow the header, at most MAX_PAYLOAD (64 MiB + 4 KiB);
//!                                checked before anything is allocated
//!      36     2  status          responses: 0 = success, else an ErrorKind code and the payload is the
//!                                UTF-8 error message; requests: 0
//!      38     2  reserved        0
//!      40     n  payload
//! ```
//!
//! | type | request | request payload | success-response payload |
//! |---|---|---|---|
//! | 0x01 | Read | – | the data (`length` bytes) |
//! | 0x02 | Write | the data | – |
//! | 0x03 | Unmap | – | – |
//! | 0x04 | WriteZeroes | – | – |
//! | 0x05 | Flush | – | – |
//! | 0x06 | Ping | – | – |
//! | 0x10 | Hello | JSON [`Hello`] | JSON [`crate::RecoveryFacts`] |
//! | 0x20 | Info | – | JSON [`crate::RecoveryFacts`] |
//! | 0x21 | SetGeneration | – (value in `offset`) | – |
//! | 0x22 | SetRevision | – (value in `offset`) | – |
//! | 0x23 | SetRebuilding | – (0/1 in `offset`) | – |
//! | 0x24 | Snapshot | JSON [`SnapshotRequest`] | – |
//! | 0x25 | ListSnapshots | – | JSON `[SnapshotInfo]` |
//! | 0x26 | MarkRemoved | name (UTF-8) | – |
//! | 0x27 | Purge | – | – |
//! | 0x28 | Revert | name | – |
//! | 0x29 | Expand | – (new size in `offset`) | – |
//! | 0x30 | LayerExtents | name | packed extents (16 bytes each: offset, len), clipped to the range |
//! | 0x31 | ReadLayer | name | the raw layer bytes |
//! | 0x32 | LayerChecksum | name | 32 bytes of SHA-256 |
//! | 0x33 | BeginLayer | JSON [`SnapshotInfo`] | – |
//! | 0x34 | WriteLayer | name (`length` bytes), then the data | – |
//! | 0x35 | PunchLayer | name | – |
//! | 0x36 | FinishRebuild | JSON `[SnapshotInfo]`, root first | – |
//!
//! A header whose magic is wrong cannot be answered (the request id is meaningless): the server closes
//! the connection. Any other bad header (version, flags, reserved, payload too large) or an unknown type
//! is answered with a `Protocol` error carrying the request id; a payload-too-large frame also closes the
//! connection after the answer, because skipping 4 GiB is not worth it.

use bytes::Bytes;

use crate::error::{Result, WireError};
use crate::messages::{decode_json, encode_json, Hello, SnapshotInfo, SnapshotRequest};

/// The four magic bytes that start every frame.
pub const MAGIC: [u8; 4] = *b"CRWL";
/// Protocol version carried in every frame.
pub const VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Largest data length of one Read/Write/ReadLayer/WriteLayer.
pub const MAX_DATA: u64 = 64 << 20;
/// Largest payload a frame may announce (data plus room for a layer name).
pub const MAX_PAYLOAD: u32 = (MAX_DATA as u32) + 4096;
/// Bit 7 of `type`: this frame is a response.
pub const RESPONSE_BIT: u8 = 0x80;
/// Flag bit 0: force unit access (the write is durable before it is acknowledged).
pub const FLAG_FUA: u16 = 1;
/// Longest name (snapshot or layer) carried in a frame.
pub const MAX_NAME_LEN: usize = 1024;

/// Operation codes (the `type` byte of a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Op {
    Read = 0x01,
    Write = 0x02,
    Unmap = 0x03,
    WriteZeroes = 0x04,
    Flush = 0x05,
    Ping = 0x06,
    Hello = 0x10,
    Info = 0x20,
    SetGeneration = 0x21,
    SetRevision = 0x22,
    SetRebuilding = 0x23,
    Snapshot = 0x24,
    ListSnapshots = 0x25,
    MarkRemoved = 0x26,
    Purge = 0x27,
    Revert = 0x28,
    Expand = 0x29,
    LayerExtents = 0x30,
    ReadLayer = 0x31,
    LayerChecksum = 0x32,
    BeginLayer = 0x33,
    WriteLayer = 0x34,
    PunchLayer = 0x35,
    FinishRebuild = 0x36,
}

impl Op {
    /// Every operation, for tests and fuzzing.
    pub const ALL: [Op; 24] = [
        Op::Read,
        Op::Write,
        Op::Unmap,
        Op::WriteZeroes,
        Op::Flush,
        Op::Ping,
        Op::Hello,
        Op::Info,
        Op::SetGeneration,
        Op::SetRevision,
        Op::SetRebuilding,
        Op::Snapshot,
        Op::ListSnapshots,
        Op::MarkRemoved,
        Op::Purge,
        Op::Revert,
        Op::Expand,
        Op::LayerExtents,
        Op::ReadLayer,
        Op::LayerChecksum,
        Op::BeginLayer,
        Op::WriteLayer,
        Op::PunchLayer,
        Op::FinishRebuild,
    ];

    /// The operation with this code, if any.
    pub fn from_code(code: u8) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| *op as u8 == code)
    }

    /// A short name for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Unmap => "unmap",
            Op::WriteZeroes => "write-zeroes",
            Op::Flush => "flush",
            Op::Ping => "ping",
            Op::Hello => "hello",
            Op::Info => "info",
            Op::SetGeneration => "set-generation",
            Op::SetRevision => "set-revision",
            Op::SetRebuilding => "set-rebuilding",
            Op::Snapshot => "snapshot",
            Op::ListSnapshots => "list-snapshots",
            Op::MarkRemoved => "mark-removed",
            Op::Purge => "purge",
            Op::Revert => "revert",
            Op::Expand => "expand",
            Op::LayerExtents => "layer-extents",
            Op::ReadLayer => "read-layer",
            Op::LayerChecksum => "layer-checksum",
            Op::BeginLayer => "begin-layer",
            Op::WriteLayer => "write-layer",
            Op::PunchLayer => "punch-layer",
            Op::FinishRebuild => "finish-rebuild",
        }
    }

    /// True for the I/O operations (the ones a request timeout applies to).
    pub fn is_data(self) -> bool {
        matches!(self, Op::Read | Op::Write | Op::Unmap | Op::WriteZeroes | Op::Flush)
    }
}

/// The fixed header of a frame. See the module documentation for the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// The `type` byte (an [`Op`] code, with [`RESPONSE_BIT`] in responses).
    pub msg_type: u8,
    /// Flag bits.
    pub flags: u16,
    /// Request id.
    pub request_id: u64,
    /// Offset or scalar argument.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// Number of payload bytes that follow.
    pub payload_len: u32,
    /// 0 = success; else an [`crate::ErrorKind`] code.
    pub status: u16,
}

/// Why a header could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Wrong magic: the stream is out of sync or not ours; nothing in the header can be trusted.
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// Readable header with an unsupported version, unknown flag bits or a non-zero reserved field.
    #[error("request {request_id}: {reason}")]
    Unsupported {
        /// Request id (to answer with an error).
        request_id: u64,
        /// What is wrong.
        reason: String,
    },
    /// Readable header announcing more than [`MAX_PAYLOAD`] bytes.
    #[error("request {request_id}: payload of {len} bytes exceeds the maximum of {MAX_PAYLOAD}")]
    PayloadTooLarge {
        /// Request id (to answer with an error).
        request_id: u64,
        /// Announced length.
        len: u32,
    },
}

impl HeaderError {
    /// The request id, when the header was readable enough to answer.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            HeaderError::BadMagic(_) => None,
            HeaderError::Unsupported { request_id, .. } | HeaderError::PayloadTooLarge { request_id, .. } => {
                Some(*request_id)
            }
        }
    }
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

impl Header {
    /// Writes the 40 header bytes.
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.msg_type;
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.length.to_le_bytes());
        out[32..36].copy_from_slice(&self.payload_len.to_le_bytes());
        out[36..38].copy_from_slice(&self.status.to_le_bytes());
        out[38..40].copy_from_slice(&[0, 0]);
    }

    /// The encoded header as an array.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.encode(&mut out);
        out
    }

    /// Parses and validates a header (magic, version, flags, reserved, payload bound). The type byte is
    /// not interpreted here, so that an unknown type can still be answered with its request id.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        let header = Header {
            msg_type: bytes[5],
            flags: le_u16(bytes, 6),
            request_id: le_u64(bytes, 8),
            offset: le_u64(bytes, 16),
            length: le_u64(bytes, 24),
            payload_len: le_u32(bytes, 32),
            status: le_u16(bytes, 36),
        };
        let request_id = header.request_id;
        if bytes[4] != VERSION {
            let reason = format!("unsupported protocol version {} (this side speaks {VERSION})", bytes[4]);
            return Err(HeaderError::Unsupported { request_id, reason });
        }
        if header.flags & !FLAG_FUA != 0 {
            let reason = format!("unknown flag bits {:#06x}", header.flags);
            return Err(HeaderError::Unsupported { request_id, reason });
        }
        if bytes[38] != 0 || bytes[39] != 0 {
            return Err(HeaderError::Unsupported {
                request_id,
                reason: "reserved bytes are not zero".into(),
            });
        }
        if header.payload_len > MAX_PAYLOAD {
            return Err(HeaderError::PayloadTooLarge { request_id, len: header.payload_len });
        }
        Ok(header)
    }

    /// True if this is a response frame.
    pub fn is_response(&self) -> bool {
        self.msg_type & RESPONSE_BIT != 0
    }
}

/// A decoded request. Data payloads are [`Bytes`] slices of the receive buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Request {
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    Unmap {
        offset: u64,
        len: u64,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Flush,
    Ping,
    Hello(Hello),
    Info,
    SetGeneration(u64),
    SetRevision(u64),
    SetRebuilding(bool),
    Snapshot(SnapshotRequest),
    ListSnapshots,
    MarkRemoved {
        name: String,
    },
    Purge,
    Revert {
        name: String,
    },
    Expand {
        size: u64,
    },
    /// Extents of a layer within `[offset, offset + len)`; `len == 0` means to the end.
    LayerExtents {
        name: String,
        offset: u64,
        len: u64,
    },
    ReadLayer {
        name: String,
        offset: u64,
        len: u64,
    },
    LayerChecksum {
        name: String,
        offset: u64,
        len: u64,
    },
    BeginLayer(SnapshotInfo),
    WriteLayer {
        name: String,
        offset: u64,
        data: Bytes,
    },
    PunchLayer {
        name: String,
        offset: u64,
        len: u64,
    },
    FinishRebuild(Vec<SnapshotInfo>),
}

fn decode_name(op: Op, bytes: &[u8]) -> Result<String> {
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return Err(WireError::Protocol(format!("{}: name of {} bytes", op.name(), bytes.len())));
    }
    String::from_utf8(bytes.to_vec())
        .map_err(|_| WireError::Protocol(format!("{}: name is not UTF-8", op.name())))
}

fn check_data_len(op: Op, len: u64) -> Result<()> {
    if len > MAX_DATA {
        return Err(WireError::Protocol(format!(
            "{}: length {len} exceeds the maximum of {MAX_DATA}",
            op.name()
        )));
    }
    Ok(())
}

impl Request {
    /// The operation of this request.
    pub fn op(&self) -> Op {
        match self {
            Request::Read { .. } => Op::Read,
            Request::Write { .. } => Op::Write,
            Request::Unmap { .. } => Op::Unmap,
            Request::WriteZeroes { .. } => Op::WriteZeroes,
            Request::Flush => Op::Flush,
            Request::Ping => Op::Ping,
            Request::Hello(_) => Op::Hello,
            Request::Info => Op::Info,
            Request::SetGeneration(_) => Op::SetGeneration,
            Request::SetRevision(_) => Op::SetRevision,
            Request::SetRebuilding(_) => Op::SetRebuilding,
            Request::Snapshot(_) => Op::Snapshot,
            Request::ListSnapshots => Op::ListSnapshots,
            Request::MarkRemoved { .. } => Op::MarkRemoved,
            Request::Purge => Op::Purge,
            Request::Revert { .. } => Op::Revert,
            Request::Expand { .. } => Op::Expand,
            Request::LayerExtents { .. } => Op::LayerExtents,
            Request::ReadLayer { .. } => Op::ReadLayer,
            Request::LayerChecksum { .. } => Op::LayerChecksum,
            Request::BeginLayer(_) => Op::BeginLayer,
            Request::WriteLayer { .. } => Op::WriteLayer,
            Request::PunchLayer { .. } => Op::PunchLayer,
            Request::FinishRebuild(_) => Op::FinishRebuild,
        }
    }

    /// Decodes a request from a validated header and its payload. Errors are `Protocol` errors.
    pub fn decode(header: &Header, payload: Bytes) -> Result<Request> {
        if header.is_response() {
            return Err(WireError::Protocol(format!(
                "a response frame (type {:#04x}) sent as request",
                header.msg_type
            )));
        }
        let op = Op::from_code(header.msg_type)
            .ok_or_else(|| WireError::Protocol(format!("unknown message type {:#04x}", header.msg_type)))?;
        let fua = header.flags & FLAG_FUA != 0;
        let (offset, len) = (header.offset, header.length);
        let no_payload = |request: Request| -> Result<Request> {
            if payload.is_empty() {
                Ok(request)
            } else {
                Err(WireError::Protocol(format!(
                    "{}: unexpected payload of {} bytes",
                    op.name(),
                    payload.len()
                )))
            }
        };
        match op {
            Op::Read => {
                check_data_len(op, len)?;
                no_payload(Request::Read { offset, len })
            }
            Op::Write => Ok(Request::Write { offset, data: payload, fua }),
            Op::Unmap => no_payload(Request::Unmap { offset, len, fua }),
            Op::WriteZeroes => no_payload(Request::WriteZeroes { offset, len, fua }),
            Op::Flush => no_payload(Request::Flush),
            Op::Ping => no_payload(Request::Ping),
            Op::Hello => Ok(Request::Hello(decode_json("Hello", &payload)?)),
            Op::Info => no_payload(Request::Info),
            Op::SetGeneration => no_payload(Request::SetGeneration(offset)),
            Op::SetRevision => no_payload(Request::SetRevision(offset)),
            Op::SetRebuilding => match offset {
                0 | 1 => no_payload(Request::SetRebuilding(offset == 1)),
                other => Err(WireError::Protocol(format!("set-rebuilding: value {other} is not 0 or 1"))),
            },
            Op::Snapshot => Ok(Request::Snapshot(decode_json("Snapshot", &payload)?)),
            Op::ListSnapshots => no_payload(Request::ListSnapshots),
            Op::MarkRemoved => Ok(Request::MarkRemoved { name: decode_name(op, &payload)? }),
            Op::Purge => no_payload(Request::Purge),
            Op::Revert => Ok(Request::Revert { name: decode_name(op, &payload)? }),
            Op::Expand => no_payload(Request::Expand { size: offset }),
            Op::LayerExtents => Ok(Request::LayerExtents { name: decode_name(op, &payload)?, offset, len }),
            Op::ReadLayer => {
                check_data_len(op, len)?;
                Ok(Request::ReadLayer { name: decode_name(op, &payload)?, offset, len })
            }
            Op::LayerChecksum => Ok(Request::LayerChecksum { name: decode_name(op, &payload)?, offset, len }),
            Op::BeginLayer => Ok(Request::BeginLayer(decode_json("BeginLayer", &payload)?)),
            Op::WriteLayer => {
                let name_len =
                    usize::try_from(len).ok().filter(|n| *n <= payload.len()).ok_or_else(|| {
                        WireError::Protocol(format!(
                            "write-layer: name length {len} exceeds the payload of {} bytes",
                            payload.len()
                        ))
                    })?;
                let name = decode_name(op, &payload[..name_len])?;
                Ok(Request::WriteLayer { name, offset, data: payload.slice(name_len..) })
            }
            Op::PunchLayer => Ok(Request::PunchLayer { name: decode_name(op, &payload)?, offset, len }),
            Op::FinishRebuild => Ok(Request::FinishRebuild(decode_json("FinishRebuild", &payload)?)),
        }
    }

    /// Encodes this request: the header (with `request_id`) and the payload, which for data is a clone
    /// of the caller's [`Bytes`] (a reference count, not a copy).
    pub fn encode(&self, request_id: u64) -> Result<(Header, Bytes)> {
        let mut header = Header { msg_type: self.op() as u8, request_id, ..Header::default() };
        let name_payload = |name: &str| Bytes::copy_from_slice(name.as_bytes());
        let fua_flag = |fua: bool| if fua { FLAG_FUA } else { 0 };
        let payload = match self {
            Request::Read { offset, len } => {
                (header.offset, header.length) = (*offset, *len);
                Bytes::new()
            }
            Request::Write { offset, data, fua } => {
                (header.offset, header.flags) = (*offset, fua_flag(*fua));
                header.length = data.len() as u64;
                data.clone()
            }
            Request::Unmap { offset, len, fua } | Request::WriteZeroes { offset, len, fua } => {
                (header.offset, header.length, header.flags) = (*offset, *len, fua_flag(*fua));
                Bytes::new()
            }
            Request::Flush | Request::Ping | Request::Info | Request::ListSnapshots | Request::Purge => {
                Bytes::new()
            }
            Request::Hello(hello) => Bytes::from(encode_json(hello)?),
            Request::SetGeneration(value) | Request::SetRevision(value) | Request::Expand { size: value } => {
                header.offset = *value;
                Bytes::new()
            }
            Request::SetRebuilding(value) => {
                header.offset = u64::from(*value);
                Bytes::new()
            }
            Request::Snapshot(body) => Bytes::from(encode_json(body)?),
            Request::MarkRemoved { name } | Request::Revert { name } => name_payload(name),
            Request::LayerExtents { name, offset, len }
            | Request::ReadLayer { name, offset, len }
            | Request::LayerChecksum { name, offset, len }
            | Request::PunchLayer { name, offset, len } => {
                (header.offset, header.length) = (*offset, *len);
                name_payload(name)
            }
            Request::BeginLayer(info) => Bytes::from(encode_json(info)?),
            Request::WriteLayer { name, offset, data } => {
                (header.offset, header.length) = (*offset, name.len() as u64);
                let mut joined = Vec::with_capacity(name.len() + data.len());
                joined.extend_from_slice(name.as_bytes());
                joined.extend_from_slice(data);
                Bytes::from(joined)
            }
            Request::FinishRebuild(chain) => Bytes::from(encode_json(chain)?),
        };
        header.payload_len =
            u32::try_from(payload.len()).ok().filter(|len| *len <= MAX_PAYLOAD).ok_or_else(|| {
                WireError::Protocol(format!(
                    "{}: payload of {} bytes is too large",
                    self.op().name(),
                    payload.len()
                ))
            })?;
        Ok((header, payload))
    }
}

/// The header of a response to `request` (type `op | 0x80`), success when `status == 0`.
pub fn response_header(op_code: u8, request_id: u64, status: u16, payload_len: u32) -> Header {
    Header {
        msg_type: op_code | RESPONSE_BIT,
        request_id,
        length: u64::from(payload_len),
        payload_len,
        status,
        ..Header::default()
    }
}

/// Decodes one whole frame (header and payload) from the start of `bytes`, as a test or fuzz entry
/// point: returns the header, the decoded request (if it is a request) and the number of bytes used.
/// `Ok(None)` means more bytes are needed.
pub fn decode_request_frame(bytes: &[u8]) -> Result<Option<(Header, Request, usize)>> {
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::decode(head).map_err(|err| WireError::Protocol(err.to_string()))?;
    let total = HEADER_LEN + header.payload_len as usize;
    if bytes.len() < total {
        return Ok(None);
    }
    let request = Request::decode(&header, Bytes::copy_from_slice(&bytes[HEADER_LEN..total]))?;
    Ok(Some((header, request, total)))
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
