//! NBD wire formats (server side of fixed newstyle negotiation and the transmission phase).
//!
//! Every integer is big-endian ("network byte order"). Facts are from the NBD protocol
//! specification (`doc/proto.md` of NetworkBlockDevice/nbd); the code is Corral's own.
//!
//! ## Handshake (server greeting, then the client's flags)
//! ```text
//!  S: 0        8                16     18
//!     +--------+----------------+------+
//!     |NBDMAGIC| IHAVEOPT       |hflags|   hflags: bit0 FIXED_NEWSTYLE, bit1 NO_ZEROES
//!     +--------+----------------+------+
//!  C: 0      4
//!     +------+
//!     |cflags|                            cflags: bit0 C_FIXED_NEWSTYLE, bit1 C_NO_ZEROES
//!     +------+                            (any other bit: the server closes the connection)
//! ```
//! ## Option (client → server), 16-byte header + data
//! ```text
//!     0                8        12       16
//!     +----------------+--------+--------+---------------+
//!     | IHAVEOPT       | option | length | data[length]  |
//!     +----------------+--------+--------+---------------+
//!  NBD_OPT_GO / NBD_OPT_INFO data:
//!     +---------+-----------------+-------+--------------------+
//!     | namelen | name[namelen]   | n(16) | info type (16) × n |
//!     +---------+-----------------+-------+--------------------+
//! ```
//! ## Option reply (server → client), 20-byte header + data
//! ```text
//!     0                8        12       16       20
//!     +----------------+--------+--------+--------+-------------+
//!     | 0x3e889045565a9| option | type   | length | data        |
//!     +----------------+--------+--------+--------+-------------+
//!  NBD_REP_SERVER data:  u32 namelen | name | (optional description)
//!  NBD_REP_INFO data:    u16 info type, then
//!     NBD_INFO_EXPORT (0):      u64 size | u16 transmission flags
//!     NBD_INFO_NAME (1):        name bytes
//!     NBD_INFO_DESCRIPTION (2): description bytes
//!     NBD_INFO_BLOCK_SIZE (3):  u32 minimum | u32 preferred | u32 maximum
//!  Reply to NBD_OPT_EXPORT_NAME (no header!): u64 size | u16 transmission flags | 124 zero
//!  bytes (omitted when the client set C_NO_ZEROES)
//! ```
//! ## Request (client → server), 28 bytes + payload for WRITE
//! ```text
//!     0          4       6       8                16               24       28
//!     +----------+-------+-------+----------------+----------------+--------+----------------+
//!     |0x25609513| flags | type  | cookie         | offset         | length | data (WRITE)   |
//!     +----------+-------+-------+----------------+----------------+--------+----------------+
//!  flags: bit0 FUA, bit1 NO_HOLE, bit2 DF, bit3 REQ_ONE, bit4 FAST_ZERO
//!  type:  0 READ, 1 WRITE, 2 DISC, 3 FLUSH, 4 TRIM, 5 CACHE, 6 WRITE_ZEROES, 7 BLOCK_STATUS
//! ```
//! ## Simple reply (server → client), 16 bytes + data for a successful READ
//! ```text
//!     0          4       8                16
//!     +----------+-------+----------------+-------------+
//!     |0x67446698| error | cookie         | data (READ) |
//!     +----------+-------+----------------+-------------+
//! ```
//! ## Structured reply chunk (server → client, only after NBD_OPT_STRUCTURED_REPLY), 20 bytes + payload
//! ```text
//!     0          4       6       8                16       20
//!     +----------+-------+-------+----------------+--------+-----------------+
//!     |0x668e33ef| flags | type  | cookie         | length | payload[length] |
//!     +----------+-------+-------+----------------+--------+-----------------+
//!  flags: bit0 DONE (last chunk of this reply)
//!  OFFSET_DATA (1):  u64 offset | data            (length = 8 + data length)
//!  ERROR (32769):    u32 error | u16 msglen | message
//!  NONE (0):         no payload, DONE set
//! ```
//!
//! Decoding never panics: every decoder takes a slice or a fixed array and returns a
//! [`FormatError`] for anything malformed. [`check_request`] is the pure validation of a
//! request header against the negotiated export (bounds, flags, sizes) and decides what the
//! server must do with a payload it will not use.

use crate::error::ErrorKind;

/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, second word of the greeting and the prefix of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of option replies.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of transmission requests.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of simple replies.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of structured reply chunks.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: omit the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Option codes.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// Info types inside `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Command types.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Structured reply flag: last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply chunk types.
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// Size of the server greeting.
pub const GREETING_LEN: usize = 18;
/// Size of an option header.
pub const OPTION_HEADER_LEN: usize = 16;
/// Size of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Size of a request header.
pub const REQUEST_LEN: usize = 28;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;
/// Size of the header of an `OFFSET_DATA` chunk including its offset field.
pub const OFFSET_DATA_HEADER_LEN: usize = STRUCTURED_REPLY_LEN + 8;
/// The protocol's limit for strings (export names, messages).
pub const MAX_STRING_LEN: usize = 4096;

/// A decoding failure of one of the formats above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("bad magic {found:#x} (expected {expected:#x})")]
    BadMagic { expected: u64, found: u64 },
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated { what: &'static str, need: usize, have: usize },
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: &'static str },
}

fn be16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(a)
}
fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}
fn need(what: &'static str, b: &[u8], n: usize) -> Result<(), FormatError> {
    if b.len() < n {
        return Err(FormatError::Truncated { what, need: n, have: b.len() });
    }
    Ok(())
}

/// The server greeting: magic, `IHAVEOPT`, handshake flags.
pub fn encode_greeting(handshake_flags: u16) -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    out
}

/// Decode a server greeting (client side; used by tests and tools). Returns the handshake flags.
pub fn decode_greeting(b: &[u8]) -> Result<u16, FormatError> {
    need("greeting", b, GREETING_LEN)?;
    let magic = be64(b, 0);
    if magic != NBD_MAGIC {
        return Err(FormatError::BadMagic { expected: NBD_MAGIC, found: magic });
    }
    let opt = be64(b, 8);
    if opt != IHAVEOPT {
        return Err(FormatError::BadMagic { expected: IHAVEOPT, found: opt });
    }
    Ok(be16(b, 16))
}

/// Header of an option sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut out = [0u8; OPTION_HEADER_LEN];
        out[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..16].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<OptionHeader, FormatError> {
        need("option header", b, OPTION_HEADER_LEN)?;
        let magic = be64(b, 0);
        if magic != IHAVEOPT {
            return Err(FormatError::BadMagic { expected: IHAVEOPT, found: magic });
        }
        Ok(OptionHeader { option: be32(b, 8), length: be32(b, 12) })
    }
}

/// Header of an option reply sent by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply_type: u32,
    pub length: u32,
}

impl OptionReplyHeader {
    pub fn encode(&self) -> [u8; OPTION_REPLY_HEADER_LEN] {
        let mut out = [0u8; OPTION_REPLY_HEADER_LEN];
        out[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..16].copy_from_slice(&self.reply_type.to_be_bytes());
        out[16..20].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<OptionReplyHeader, FormatError> {
        need("option reply header", b, OPTION_REPLY_HEADER_LEN)?;
        let magic = be64(b, 0);
        if magic != OPTION_REPLY_MAGIC {
            return Err(FormatError::BadMagic { expected: OPTION_REPLY_MAGIC, found: magic });
        }
        Ok(OptionReplyHeader { option: be32(b, 8), reply_type: be32(b, 12), length: be32(b, 16) })
    }
}

/// Append one option reply (header and data) to `out`.
pub fn push_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&OptionReplyHeader { option, reply_type, length }.encode());
    out.extend_from_slice(data);
}

/// The data of `NBD_OPT_GO` / `NBD_OPT_INFO`: an export name and the info types asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoRequest<'a> {
    pub name: &'a [u8],
    /// Raw big-endian u16 list; iterate with [`GoRequest::info_requests`].
    requests: &'a [u8],
}

impl<'a> GoRequest<'a> {
    /// Parse the option data. The lengths inside must add up exactly to the option length.
    pub fn parse(data: &'a [u8]) -> Result<GoRequest<'a>, FormatError> {
        need("NBD_OPT_GO data", data, 4)?;
        let name_len = be32(data, 0) as usize;
        if name_len > MAX_STRING_LEN {
            return Err(FormatError::Invalid { what: "export name", detail: "longer than 4096 bytes" });
        }
        let rest = &data[4..];
        need("NBD_OPT_GO export name", rest, name_len + 2)?;
        let name = &rest[..name_len];
        let count = be16(rest, name_len) as usize;
        let requests = &rest[name_len + 2..];
        if requests.len() != count * 2 {
            return Err(FormatError::Invalid {
                what: "NBD_OPT_GO data",
                detail: "information request count does not match the option length",
            });
        }
        Ok(GoRequest { name, requests })
    }

    /// Build the option data (client side; for tests).
    pub fn encode(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + name.len() + infos.len() * 2);
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for info in infos {
            out.extend_from_slice(&info.to_be_bytes());
        }
        out
    }

    /// The info types the client asked for.
    pub fn info_requests(&self) -> impl Iterator<Item = u16> + 'a {
        self.requests.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))
    }
}

/// One `NBD_REP_INFO` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info<'a> {
    Export { size: u64, flags: u16 },
    Name(&'a [u8]),
    Description(&'a [u8]),
    BlockSize { minimum: u32, preferred: u32, maximum: u32 },
}

impl<'a> Info<'a> {
    /// Append the payload of an `NBD_REP_INFO` reply (without the option reply header).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Info::Export { size, flags } => {
                out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
            }
            Info::Name(name) => {
                out.extend_from_slice(&INFO_NAME.to_be_bytes());
                out.extend_from_slice(name);
            }
            Info::Description(text) => {
                out.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
                out.extend_from_slice(text);
            }
            Info::BlockSize { minimum, preferred, maximum } => {
                out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                out.extend_from_slice(&minimum.to_be_bytes());
                out.extend_from_slice(&preferred.to_be_bytes());
                out.extend_from_slice(&maximum.to_be_bytes());
            }
        }
    }

    /// Decode the payload of an `NBD_REP_INFO` reply.
    pub fn decode(b: &'a [u8]) -> Result<Info<'a>, FormatError> {
        need("NBD_REP_INFO", b, 2)?;
        let body = &b[2..];
        match be16(b, 0) {
            INFO_EXPORT => {
                if body.len() != 10 {
                    return Err(FormatError::Invalid { what: "NBD_INFO_EXPORT", detail: "length is not 12" });
                }
                Ok(Info::Export { size: be64(body, 0), flags: be16(body, 8) })
            }
            INFO_NAME => Ok(Info::Name(body)),
            INFO_DESCRIPTION => Ok(Info::Description(body)),
            INFO_BLOCK_SIZE => {
                if body.len() != 12 {
                    return Err(FormatError::Invalid {
                        what: "NBD_INFO_BLOCK_SIZE",
                        detail: "length is not 14",
                    });
                }
                Ok(Info::BlockSize {
                    minimum: be32(body, 0),
                    preferred: be32(body, 4),
                    maximum: be32(body, 8),
                })
            }
            _ => Err(FormatError::Invalid { what: "NBD_REP_INFO", detail: "unknown info type" }),
        }
    }
}

/// Payload of an `NBD_REP_SERVER` reply (one export in `NBD_OPT_LIST`).
pub fn encode_server_entry(name: &[u8], description: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len() + description.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(description);
    out
}

/// Decode an `NBD_REP_SERVER` payload into (name, description).
pub fn decode_server_entry(b: &[u8]) -> Result<(&[u8], &[u8]), FormatError> {
    need("NBD_REP_SERVER", b, 4)?;
    let len = be32(b, 0) as usize;
    let rest = &b[4..];
    if len > rest.len() {
        return Err(FormatError::Invalid { what: "NBD_REP_SERVER", detail: "name longer than the reply" });
    }
    Ok((&rest[..len], &rest[len..]))
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags and, unless the client asked
/// for `NO_ZEROES`, 124 zero bytes. Returns the buffer and the number of bytes to send.
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> ([u8; 134], usize) {
    let mut out = [0u8; 134];
    out[0..8].copy_from_slice(&size.to_be_bytes());
    out[8..10].copy_from_slice(&flags.to_be_bytes());
    (out, if no_zeroes { 10 } else { 134 })
}

/// A request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<RequestHeader, FormatError> {
        need("request", b, REQUEST_LEN)?;
        let magic = be32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(FormatError::BadMagic { expected: REQUEST_MAGIC.into(), found: magic.into() });
        }
        Ok(RequestHeader {
            flags: be16(b, 4),
            command: be16(b, 6),
            cookie: be64(b, 8),
            offset: be64(b, 16),
            length: be32(b, 24),
        })
    }
}

/// What the connection negotiated; [`check_request`] validates requests against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransmissionParams {
    /// Export size in bytes as announced in the handshake.
    pub size: u64,
    /// Transmission flags as announced.
    pub flags: u16,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// Maximum payload of READ and WRITE (the advertised maximum block size).
    pub max_payload: u32,
    /// Payloads of rejected writes up to this size are read and discarded; larger ones close
    /// the connection, since skipping them would let one client tie up the server.
    pub skip_limit: u32,
}

/// A validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Read { offset: u64, length: u32 },
    Write { offset: u64, length: u32, fua: bool },
    Flush,
    Trim { offset: u64, length: u32, fua: bool },
    WriteZeroes { offset: u64, length: u32, fua: bool, no_hole: bool, fast: bool },
    Disconnect,
}

/// What to do with the payload of a request the server refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadDisposition {
    /// The request carries no payload.
    None,
    /// Read and discard this many bytes, then reply with the error.
    Discard(u32),
    /// The payload cannot be skipped safely: reply with the error, then close the connection.
    Disconnect,
}

/// A request the server answers with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub kind: ErrorKind,
    pub reason: &'static str,
    pub payload: PayloadDisposition,
}

/// Validate a request header against the negotiated parameters. Pure; never panics.
///
/// Errors follow the specification: an unknown command or flag gives `EINVAL`; a read or trim
/// beyond the end `EINVAL`; a write or write-zeroes beyond the end `ENOSPC`; a write to a
/// read-only export `EPERM`; a READ/WRITE longer than the maximum block size `EINVAL`.
pub fn check_request(h: &RequestHeader, p: &TransmissionParams) -> Result<Request, Rejection> {
    let is_write = h.command == CMD_WRITE;
    let payload = if is_write {
        if h.length <= p.skip_limit {
            PayloadDisposition::Discard(h.length)
        } else {
            PayloadDisposition::Disconnect
        }
    } else {
        PayloadDisposition::None
    };
    let reject = |kind: ErrorKind, reason: &'static str| Rejection { kind, reason, payload };

    let fua_ok = p.flags & TFLAG_SEND_FUA != 0;
    let mut allowed = if fua_ok { CMD_FLAG_FUA } else { 0 };
    match h.command {
        CMD_READ if p.structured && p.flags & TFLAG_SEND_DF != 0 => allowed |= CMD_FLAG_DF,
        CMD_WRITE_ZEROES => {
            allowed |= CMD_FLAG_NO_HOLE;
            if p.flags & TFLAG_SEND_FAST_ZERO != 0 {
                allowed |= CMD_FLAG_FAST_ZERO;
            }
        }
        _ => {}
    }
    let known_command =
        matches!(h.command, CMD_READ | CMD_WRITE | CMD_DISC | CMD_FLUSH | CMD_TRIM | CMD_WRITE_ZEROES);
    if !known_command {
        return Err(reject(ErrorKind::InvalidArgument, "unknown command"));
    }
    if h.flags & !allowed != 0 {
        return Err(reject(ErrorKind::InvalidArgument, "command flag not valid for this command"));
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let end = h.offset.checked_add(u64::from(h.length));
    let in_range = matches!(end, Some(end) if end <= p.size);
    let read_only = p.flags & TFLAG_READ_ONLY != 0;
    match h.command {
        CMD_READ => {
            if h.length > p.max_payload {
                return Err(reject(ErrorKind::InvalidArgument, "read longer than the maximum block size"));
            }
            if !in_range {
                return Err(reject(ErrorKind::InvalidArgument, "read beyond the end of the export"));
            }
            Ok(Request::Read { offset: h.offset, length: h.length })
        }
        CMD_WRITE => {
            if h.length > p.max_payload {
                return Err(reject(ErrorKind::InvalidArgument, "write longer than the maximum block size"));
            }
            if read_only {
                return Err(reject(ErrorKind::PermissionDenied, "export is read-only"));
            }
            if !in_range {
                return Err(reject(ErrorKind::NoSpace, "write beyond the end of the export"));
            }
            Ok(Request::Write { offset: h.offset, length: h.length, fua })
        }
        CMD_TRIM => {
            if p.flags & TFLAG_SEND_TRIM == 0 {
                return Err(reject(ErrorKind::InvalidArgument, "trim not negotiated"));
            }
            if read_only {
                return Err(reject(ErrorKind::PermissionDenied, "export is read-only"));
            }
            if !in_range {
                return Err(reject(ErrorKind::InvalidArgument, "trim beyond the end of the export"));
            }
            Ok(Request::Trim { offset: h.offset, length: h.length, fua })
        }
        CMD_WRITE_ZEROES => {
            if p.flags & TFLAG_SEND_WRITE_ZEROES == 0 {
                return Err(reject(ErrorKind::InvalidArgument, "write-zeroes not negotiated"));
            }
            if read_only {
                return Err(reject(ErrorKind::PermissionDenied, "export is read-only"));
            }
            if !in_range {
                return Err(reject(ErrorKind::NoSpace, "write-zeroes beyond the end of the export"));
            }
            Ok(Request::WriteZeroes {
                offset: h.offset,
                length: h.length,
                fua,
                no_hole: h.flags & CMD_FLAG_NO_HOLE != 0,
                fast: h.flags & CMD_FLAG_FAST_ZERO != 0,
            })
        }
        CMD_FLUSH => {
            if p.flags & TFLAG_SEND_FLUSH == 0 {
                return Err(reject(ErrorKind::InvalidArgument, "flush not negotiated"));
            }
            Ok(Request::Flush)
        }
        _ => Ok(Request::Disconnect),
    }
}

/// A simple reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

impl SimpleReply {
    pub fn encode(&self) -> [u8; SIMPLE_REPLY_LEN] {
        let mut out = [0u8; SIMPLE_REPLY_LEN];
        out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        out[4..8].copy_from_slice(&self.error.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<SimpleReply, FormatError> {
        need("simple reply", b, SIMPLE_REPLY_LEN)?;
        let magic = be32(b, 0);
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(FormatError::BadMagic { expected: SIMPLE_REPLY_MAGIC.into(), found: magic.into() });
        }
        Ok(SimpleReply { error: be32(b, 4), cookie: be64(b, 8) })
    }
}

/// A structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StructuredReply {
    pub flags: u16,
    pub reply_type: u16,
    pub cookie: u64,
    pub length: u32,
}

impl StructuredReply {
    pub fn encode(&self) -> [u8; STRUCTURED_REPLY_LEN] {
        let mut out = [0u8; STRUCTURED_REPLY_LEN];
        out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.reply_type.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..20].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<StructuredReply, FormatError> {
        need("structured reply", b, STRUCTURED_REPLY_LEN)?;
        let magic = be32(b, 0);
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(FormatError::BadMagic {
                expected: STRUCTURED_REPLY_MAGIC.into(),
                found: magic.into(),
            });
        }
        Ok(StructuredReply {
            flags: be16(b, 4),
            reply_type: be16(b, 6),
            cookie: be64(b, 8),
            length: be32(b, 16),
        })
    }
}

/// Header (with the offset field) of a final `OFFSET_DATA` chunk carrying `data_len` bytes.
/// `data_len` must be at most `u32::MAX - 8` (the server caps reads far below that).
pub fn encode_offset_data_header(cookie: u64, offset: u64, data_len: u32) -> [u8; OFFSET_DATA_HEADER_LEN] {
    let mut out = [0u8; OFFSET_DATA_HEADER_LEN];
    let header = StructuredReply {
        flags: REPLY_FLAG_DONE,
        reply_type: REPLY_TYPE_OFFSET_DATA,
        cookie,
        length: data_len.saturating_add(8),
    };
    out[..STRUCTURED_REPLY_LEN].copy_from_slice(&header.encode());
    out[STRUCTURED_REPLY_LEN..].copy_from_slice(&offset.to_be_bytes());
    out
}

/// A final `NONE` chunk (successful reply without data).
pub fn encode_none_chunk(cookie: u64) -> [u8; STRUCTURED_REPLY_LEN] {
    StructuredReply { flags: REPLY_FLAG_DONE, reply_type: REPLY_TYPE_NONE, cookie, length: 0 }.encode()
}

/// Append a final `ERROR` chunk with `errno` and a message (cut at 4096 bytes on a char boundary).
pub fn push_error_chunk(out: &mut Vec<u8>, cookie: u64, errno: u32, message: &str) {
    let mut cut = message.len().min(MAX_STRING_LEN);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let message = &message.as_bytes()[..cut];
    let header = StructuredReply {
        flags: REPLY_FLAG_DONE,
        reply_type: REPLY_TYPE_ERROR,
        cookie,
        length: 6 + message.len() as u32,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
}

/// Decode the payload of an `ERROR` chunk into (errno, message).
pub fn decode_error_chunk(payload: &[u8]) -> Result<(u32, &[u8]), FormatError> {
    need("error chunk", payload, 6)?;
    let errno = be32(payload, 0);
    let len = be16(payload, 4) as usize;
    if len > payload.len() - 6 {
        return Err(FormatError::Invalid { what: "error chunk", detail: "message longer than the chunk" });
    }
    if errno == 0 {
        return Err(FormatError::Invalid { what: "error chunk", detail: "error value is zero" });
    }
    Ok((errno, &payload[6..6 + len]))
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
