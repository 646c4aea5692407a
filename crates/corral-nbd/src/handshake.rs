//! Fixed newstyle negotiation: the greeting, the client flags and the option loop, up to the
//! point where the connection enters the transmission phase (or ends).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::backend::NbdBackend;
use crate::error::{ErrorKind, NbdError};
use crate::protocol::*;
use crate::server::ExportConfig;

/// Largest option payload the server reads. A `NBD_OPT_GO` needs at most 4 + 4096 + 2 + 2n
/// bytes; anything far larger is a broken or hostile client, answered with
/// `NBD_REP_ERR_TOO_BIG` and a closed connection.
pub(crate) const MAX_OPTION_DATA: u32 = 64 << 10;
/// Options allowed per connection before the server decides the client is looping.
const MAX_OPTIONS: usize = 4096;

/// How negotiation ended.
#[derive(Debug)]
pub(crate) enum HandshakeEnd {
    /// Enter transmission with these parameters.
    Transmission(TransmissionParams),
    /// The client sent `NBD_OPT_ABORT` (soft disconnect).
    Aborted,
}

fn protocol_error(message: impl Into<String>) -> NbdError {
    NbdError::new(ErrorKind::Protocol, "handshake", message)
}

fn io_error(err: std::io::Error) -> NbdError {
    NbdError::io("handshake", err)
}

/// Run the server side of the handshake on a fresh connection.
pub(crate) async fn negotiate<R, W, B>(
    reader: &mut R,
    writer: &mut W,
    config: &ExportConfig,
    backend: &B,
) -> Result<HandshakeEnd, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    B: NbdBackend,
{
    writer.write_all(&encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)).await.map_err(io_error)?;
    writer.flush().await.map_err(io_error)?;

    let client_flags = reader.read_u32().await.map_err(io_error)?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(protocol_error(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    let mut structured = false;
    let mut data = Vec::new();
    let mut out = Vec::with_capacity(256);

    for _ in 0..MAX_OPTIONS {
        let mut header = [0u8; OPTION_HEADER_LEN];
        reader.read_exact(&mut header).await.map_err(io_error)?;
        let header = OptionHeader::decode(&header).map_err(|e| protocol_error(e.to_string()))?;
        let option = header.option;
        out.clear();
        if header.length > MAX_OPTION_DATA {
            if option != OPT_EXPORT_NAME {
                push_option_reply(&mut out, option, REP_ERR_TOO_BIG, b"option data too large");
                // Best effort: the connection is closed right after.
                let _ = writer.write_all(&out).await;
            }
            return Err(protocol_error(format!("option {option} carries {} bytes", header.length)));
        }
        data.resize(header.length as usize, 0);
        reader.read_exact(&mut data).await.map_err(io_error)?;

        let params = |structured: bool| TransmissionParams {
            size: backend.size(),
            flags: config.transmission_flags(structured, backend.can_fast_zero()),
            structured,
            max_payload: config.max_block_size,
            skip_limit: config.skip_limit(),
        };

        match option {
            OPT_EXPORT_NAME => {
                if !config.matches(&data) {
                    // The protocol gives no way to refuse EXPORT_NAME but closing.
                    return Err(protocol_error(format!(
                        "unknown export {:?} requested with NBD_OPT_EXPORT_NAME",
                        String::from_utf8_lossy(&data)
                    )));
                }
                let p = params(structured);
                let (reply, n) = encode_export_name_reply(p.size, p.flags, no_zeroes);
                writer.write_all(&reply[..n]).await.map_err(io_error)?;
                writer.flush().await.map_err(io_error)?;
                return Ok(HandshakeEnd::Transmission(p));
            }
            OPT_ABORT => {
                push_option_reply(&mut out, option, REP_ACK, &[]);
                // The client may already have closed; that is fine.
                let _ = writer.write_all(&out).await;
                let _ = writer.flush().await;
                return Ok(HandshakeEnd::Aborted);
            }
            OPT_LIST => {
                if data.is_empty() {
                    let entry = encode_server_entry(config.name.as_bytes(), config.description.as_bytes());
                    push_option_reply(&mut out, option, REP_SERVER, &entry);
                    push_option_reply(&mut out, option, REP_ACK, &[]);
                } else {
                    push_option_reply(&mut out, option, REP_ERR_INVALID, b"NBD_OPT_LIST carries no data");
                }
            }
            OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    structured = true;
                    push_option_reply(&mut out, option, REP_ACK, &[]);
                } else {
                    push_option_reply(
                        &mut out,
                        option,
                        REP_ERR_INVALID,
                        b"NBD_OPT_STRUCTURED_REPLY carries no data",
                    );
                }
            }
            OPT_INFO | OPT_GO => match GoRequest::parse(&data) {
                Err(e) => {
                    push_option_reply(&mut out, option, REP_ERR_INVALID, e.to_string().as_bytes());
                }
                Ok(go) if !config.matches(go.name) => {
                    let message = format!("unknown export {:?}", String::from_utf8_lossy(go.name));
                    push_option_reply(&mut out, option, REP_ERR_UNKNOWN, message.as_bytes());
                }
                Ok(go) => {
                    let p = params(structured);
                    let mut info = Vec::with_capacity(64);
                    Info::Export { size: p.size, flags: p.flags }.encode_into(&mut info);
                    push_option_reply(&mut out, option, REP_INFO, &info);
                    // Block size constraints are always sent: minimum 1 means the client needs
                    // no alignment, and the maximum tells it how to split large requests.
                    info.clear();
                    Info::BlockSize {
                        minimum: 1,
                        preferred: config.preferred_block_size,
                        maximum: config.max_block_size,
                    }
                    .encode_into(&mut info);
                    push_option_reply(&mut out, option, REP_INFO, &info);
                    for requested in go.info_requests() {
                        info.clear();
                        match requested {
                            INFO_NAME => Info::Name(config.name.as_bytes()).encode_into(&mut info),
                            INFO_DESCRIPTION => {
                                Info::Description(config.description.as_bytes()).encode_into(&mut info)
                            }
                            _ => continue, // EXPORT and BLOCK_SIZE already sent; unknown ones ignored
                        }
                        push_option_reply(&mut out, option, REP_INFO, &info);
                    }
                    push_option_reply(&mut out, option, REP_ACK, &[]);
                    if option == OPT_GO {
                        writer.write_all(&out).await.map_err(io_error)?;
                        writer.flush().await.map_err(io_error)?;
                        return Ok(HandshakeEnd::Transmission(p));
                    }
                }
            },
            _ => {
                // STARTTLS, meta contexts, extended headers and anything unknown.
                let message = format!("option {option} is not supported by this server");
                push_option_reply(&mut out, option, REP_ERR_UNSUP, message.as_bytes());
            }
        }
        writer.write_all(&out).await.map_err(io_error)?;
        writer.flush().await.map_err(io_error)?;
    }
    Err(protocol_error(format!("more than {MAX_OPTIONS} options")))
}
