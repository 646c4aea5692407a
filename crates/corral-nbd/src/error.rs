//! The one error type of `corral-nbd`.
//!
//! [`NbdError`] carries a small stable [`ErrorKind`] (which maps to the NBD error value sent to
//! the client, see [`ErrorKind::errno`]) plus context: the operation, the byte range and the
//! request cookie when known, a human-readable message and an optional source error.

use std::fmt;

/// Stable classification of an error. Backends pick the kind; the server turns it into the NBD
/// error value of the reply (the protocol only allows the values listed in [`ErrorKind::errno`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `EPERM`: the operation is not permitted (for example a write to a read-only export).
    PermissionDenied,
    /// `EIO`: the data could not be read or written.
    Io,
    /// `ENOMEM`: the server could not allocate memory for the request.
    NoMemory,
    /// `EINVAL`: a malformed request, a read/trim beyond the end, an unknown command or flag.
    InvalidArgument,
    /// `ENOSPC`: a write beyond the end of the export, or the backend ran out of space.
    NoSpace,
    /// `EOVERFLOW`: the request is too large to answer in the form asked for.
    Overflow,
    /// `ENOTSUP`: a fast zero was asked for but zeroing is not fast on this backend.
    NotSupported,
    /// `ESHUTDOWN`: the server (or the volume behind it) is shutting down.
    Shutdown,
    /// The peer broke the protocol in a way that ends the connection (bad magic, truncated frame).
    Protocol,
    /// The peer went away (end of stream or a socket error).
    Disconnected,
}

impl ErrorKind {
    /// The NBD error value (an errno number as fixed by the NBD protocol) for this kind.
    /// Kinds that never appear in a reply map to `EIO`.
    pub fn errno(self) -> u32 {
        match self {
            ErrorKind::PermissionDenied => 1,
            ErrorKind::Io => 5,
            ErrorKind::NoMemory => 12,
            ErrorKind::InvalidArgument => 22,
            ErrorKind::NoSpace => 28,
            ErrorKind::Overflow => 75,
            ErrorKind::NotSupported => 95,
            ErrorKind::Shutdown => 108,
            ErrorKind::Protocol | ErrorKind::Disconnected => 5,
        }
    }

    /// The kind for an NBD error value received from a peer (used by tests and tools).
    pub fn from_errno(errno: u32) -> ErrorKind {
        match errno {
            1 => ErrorKind::PermissionDenied,
            12 => ErrorKind::NoMemory,
            22 => ErrorKind::InvalidArgument,
            28 => ErrorKind::NoSpace,
            75 => ErrorKind::Overflow,
            95 => ErrorKind::NotSupported,
            108 => ErrorKind::Shutdown,
            _ => ErrorKind::Io,
        }
    }

    /// Short lower-case name, stable for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::Io => "io",
            ErrorKind::NoMemory => "no-memory",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::Overflow => "overflow",
            ErrorKind::NotSupported => "not-supported",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Disconnected => "disconnected",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of the NBD server and of [`crate::NbdBackend`] implementations.
#[derive(Debug, thiserror::Error)]
#[error("nbd {op}{range}{cookie}: {kind}: {message}", range = RangeCtx(self.range), cookie = CookieCtx(self.cookie))]
pub struct NbdError {
    kind: ErrorKind,
    op: &'static str,
    range: Option<(u64, u64)>,
    cookie: Option<u64>,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

struct RangeCtx(Option<(u64, u64)>);
impl fmt::Display for RangeCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((offset, len)) => write!(f, " offset {offset} length {len}"),
            None => Ok(()),
        }
    }
}

struct CookieCtx(Option<u64>);
impl fmt::Display for CookieCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(cookie) => write!(f, " (cookie {cookie:#x})"),
            None => Ok(()),
        }
    }
}

impl NbdError {
    /// A new error of `kind` during operation `op` (e.g. `"read"`, `"handshake"`).
    pub fn new(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> NbdError {
        NbdError { kind, op, range: None, cookie: None, message: message.into(), source: None }
    }

    /// An I/O error during `op`; the kind is derived from the OS error where it says more than EIO.
    pub fn io(op: &'static str, err: std::io::Error) -> NbdError {
        let kind = match err.raw_os_error() {
            Some(libc_enospc) if libc_enospc == 28 || libc_enospc == 122 || libc_enospc == 27 => {
                ErrorKind::NoSpace
            }
            Some(1) | Some(13) | Some(30) => ErrorKind::PermissionDenied,
            Some(22) => ErrorKind::InvalidArgument,
            Some(95) => ErrorKind::NotSupported,
            _ => match err.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => ErrorKind::Disconnected,
                _ => ErrorKind::Io,
            },
        };
        NbdError {
            kind,
            op,
            range: None,
            cookie: None,
            message: err.to_string(),
            source: Some(Box::new(err)),
        }
    }

    /// Attach the byte range the operation touched.
    pub fn at(mut self, offset: u64, len: u64) -> NbdError {
        self.range = Some((offset, len));
        self
    }

    /// Attach the request cookie (the client's handle).
    pub fn with_cookie(mut self, cookie: u64) -> NbdError {
        self.cookie = Some(cookie);
        self
    }

    /// Attach an underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> NbdError {
        self.source = Some(Box::new(source));
        self
    }

    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The message without context (what a structured error chunk carries to the client).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Result alias of this crate.
pub type Result<T, E = NbdError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_match_the_protocol() {
        assert_eq!(ErrorKind::PermissionDenied.errno(), 1);
        assert_eq!(ErrorKind::Io.errno(), 5);
        assert_eq!(ErrorKind::NoMemory.errno(), 12);
        assert_eq!(ErrorKind::InvalidArgument.errno(), 22);
        assert_eq!(ErrorKind::NoSpace.errno(), 28);
        assert_eq!(ErrorKind::Overflow.errno(), 75);
        assert_eq!(ErrorKind::NotSupported.errno(), 95);
        assert_eq!(ErrorKind::Shutdown.errno(), 108);
        for kind in [ErrorKind::PermissionDenied, ErrorKind::InvalidArgument, ErrorKind::NoSpace] {
            assert_eq!(ErrorKind::from_errno(kind.errno()), kind);
        }
    }

    #[test]
    fn display_carries_context() {
        let err = NbdError::new(ErrorKind::NoSpace, "write", "beyond the end").at(4096, 512).with_cookie(7);
        let text = err.to_string();
        assert!(text.contains("write"), "{text}");
        assert!(text.contains("offset 4096 length 512"), "{text}");
        assert!(text.contains("cookie 0x7"), "{text}");
        assert!(text.contains("no-space"), "{text}");
    }

    #[test]
    fn io_errors_keep_enospc() {
        let err = NbdError::io("write", std::io::Error::from_raw_os_error(28));
        assert_eq!(err.kind(), ErrorKind::NoSpace);
        let err = NbdError::io("read", std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert_eq!(err.kind(), ErrorKind::Disconnected);
    }
}
