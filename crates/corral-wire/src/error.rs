//! The one error type of `corral-wire`, with a small stable [`ErrorKind`].
//!
//! Errors that travel over the wire (a service's answer) carry a kind code and a message; errors that
//! happen locally (I/O on the socket, a timeout, a closed connection) never travel and have their own kinds.

use std::time::Duration;

/// Stable classification of a failure, for control flow and for mapping to NBD errno / HTTP / gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// A snapshot, layer or file does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// An offset or length lies beyond the volume end.
    OutOfRange,
    /// A malformed argument (bad name, unaligned size, …).
    InvalidArgument,
    /// The on-disk state is inconsistent.
    Corrupt,
    /// The replica is held by another engine, or an operation conflicts with one in progress.
    Busy,
    /// The storage failed.
    Io,
    /// The storage is full (ENOSPC).
    NoSpace,
    /// The peer broke the protocol (bad frame, unexpected message, request before Hello).
    Protocol,
    /// No answer arrived within the request timeout (local only: never sent on the wire).
    Timeout,
    /// The connection is closed or failed (local only: never sent on the wire).
    Closed,
}

impl ErrorKind {
    /// The code carried in a response frame's `status` field (0 means success, so codes start at 1).
    pub fn code(self) -> u16 {
        match self {
            ErrorKind::NotFound => 1,
            ErrorKind::AlreadyExists => 2,
            ErrorKind::OutOfRange => 3,
            ErrorKind::InvalidArgument => 4,
            ErrorKind::Corrupt => 5,
            ErrorKind::Busy => 6,
            ErrorKind::Io => 7,
            ErrorKind::NoSpace => 8,
            ErrorKind::Protocol => 9,
            // Local kinds never travel; if a service returns one, the peer sees an I/O error.
            ErrorKind::Timeout | ErrorKind::Closed => 7,
        }
    }

    /// The kind for a status code; unknown codes (from a newer peer) map to `Io`.
    pub fn from_code(code: u16) -> ErrorKind {
        match code {
            1 => ErrorKind::NotFound,
            2 => ErrorKind::AlreadyExists,
            3 => ErrorKind::OutOfRange,
            4 => ErrorKind::InvalidArgument,
            5 => ErrorKind::Corrupt,
            6 => ErrorKind::Busy,
            8 => ErrorKind::NoSpace,
            9 => ErrorKind::Protocol,
            _ => ErrorKind::Io,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Every failure of the data protocol: decoding, connecting, a remote error, a timeout.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A frame or message body that cannot be decoded.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The remote service answered request `request_id` (`op`) with an error.
    #[error("{op} (request {request_id}) failed on the replica: {kind}: {message}")]
    Remote {
        /// Operation name.
        op: &'static str,
        /// Request id of the failed request.
        request_id: u64,
        /// Error kind reported by the replica.
        kind: ErrorKind,
        /// Error text reported by the replica.
        message: String,
    },
    /// A service implementation's failure, to be sent to the client (server side).
    #[error("{kind}: {message}")]
    Service {
        /// Kind sent on the wire.
        kind: ErrorKind,
        /// Text sent on the wire.
        message: String,
    },
    /// No answer within the request timeout.
    #[error("{op} (request {request_id}) to {addr}: no answer within {after:?}")]
    Timeout {
        /// Operation name.
        op: &'static str,
        /// Request id.
        request_id: u64,
        /// Replica address.
        addr: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection to `addr` is closed (dropped by the peer, failed, or closed locally).
    #[error("connection to {addr} closed: {reason}")]
    Closed {
        /// Replica address.
        addr: String,
        /// Why (the first failure seen on the connection).
        reason: String,
    },
    /// Socket I/O failed.
    #[error("{op} {addr}: {source}")]
    Io {
        /// What was being done (`connect`, `bind`, `accept`, …).
        op: &'static str,
        /// The address concerned.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An address that is neither `tcp://host:port` nor `unix:///path`.
    #[error("invalid address {0:?}: expected tcp://HOST:PORT, HOST:PORT, unix:///PATH or unix:PATH")]
    InvalidAddress(String),
}

impl WireError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            WireError::Protocol(_) => ErrorKind::Protocol,
            WireError::Remote { kind, .. } | WireError::Service { kind, .. } => *kind,
            WireError::Timeout { .. } => ErrorKind::Timeout,
            WireError::Closed { .. } => ErrorKind::Closed,
            WireError::Io { .. } => ErrorKind::Io,
            WireError::InvalidAddress(_) => ErrorKind::InvalidArgument,
        }
    }

    /// A service error of `kind` with `message` (what [`crate::ReplicaService`] implementations return).
    pub fn service(kind: ErrorKind, message: impl Into<String>) -> WireError {
        WireError::Service { kind, message: message.into() }
    }

    /// The text sent on the wire for this error (without the kind, which travels as a code).
    pub fn wire_message(&self) -> String {
        match self {
            WireError::Service { message, .. } | WireError::Remote { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// Result with [`WireError`].
pub type Result<T, E = WireError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_round_trip_for_every_wire_kind() {
        let kinds = [
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::OutOfRange,
            ErrorKind::InvalidArgument,
            ErrorKind::Corrupt,
            ErrorKind::Busy,
            ErrorKind::Io,
            ErrorKind::NoSpace,
            ErrorKind::Protocol,
        ];
        for kind in kinds {
            assert_ne!(kind.code(), 0);
            assert_eq!(ErrorKind::from_code(kind.code()), kind);
        }
        assert_eq!(ErrorKind::from_code(999), ErrorKind::Io);
        assert_eq!(ErrorKind::Timeout.code(), ErrorKind::Io.code());
    }
}
