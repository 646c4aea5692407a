//! The engine's one error type, with a small stable kind for mapping to NBD errno and HTTP status.

use std::sync::Arc;

use corral_wire::{ErrorKind as WireErrorKind, WireError};

/// What class of failure an [`EngineError`] is. Stable: the control API puts it in its JSON errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorKind {
    /// A named replica or snapshot does not exist.
    NotFound,
    /// The thing to create exists already (duplicate replica address, snapshot name).
    AlreadyExists,
    /// A request reached beyond the end of the volume.
    OutOfRange,
    /// Malformed input: bad name, size, address.
    InvalidArgument,
    /// The operation is not allowed in the current state (client connected, rebuild running, …).
    Conflict,
    /// No healthy replica can serve the request: the volume is faulted.
    Unavailable,
    /// A replica or the network failed.
    Io,
    /// A replica ran out of space.
    NoSpace,
}

impl ErrorKind {
    /// The HTTP status the control API answers with for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::NotFound => 404,
            ErrorKind::AlreadyExists | ErrorKind::Conflict => 409,
            ErrorKind::OutOfRange | ErrorKind::InvalidArgument => 400,
            ErrorKind::Unavailable => 503,
            ErrorKind::Io | ErrorKind::NoSpace => 500,
        }
    }
}

/// Why an engine operation failed: a kind, the operation, a message with the context (replica
/// address, offset, snapshot name), and the replica's error it came from, if any (kept whole, so
/// `source()` reaches the socket error or the replica's own answer).
#[derive(Debug, Clone)]
pub struct EngineError {
    /// Stable class of failure.
    pub kind: ErrorKind,
    /// The operation that failed (`write`, `replica add`, `snapshot create`, …).
    pub op: &'static str,
    /// Human-readable detail with context.
    pub message: String,
    /// The data-protocol error behind this one (shared: engine errors are cloned to every waiter).
    pub source: Option<Arc<WireError>>,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.message)
    }
}

impl std::error::Error for EngineError {
    /// The replica's [`WireError`] itself (not the `Arc` around it), so callers can downcast to it.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl EngineError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> Self {
        EngineError { kind, op, message: message.into(), source: None }
    }

    /// An error of `kind` in `op` caused by a replica's `source` error; `context` says which replica (or
    /// side of a copy). The message repeats the source's text so logs that print only the top level
    /// still say what happened.
    pub fn from_replica(
        kind: ErrorKind,
        op: &'static str,
        context: impl std::fmt::Display,
        source: WireError,
    ) -> Self {
        EngineError {
            kind,
            op,
            message: format!("{context}: {}", source.wire_message()),
            source: Some(Arc::new(source)),
        }
    }

    /// The engine kind for a replica error of `kind` (what a client should be told).
    pub fn kind_of_replica_error(kind: WireErrorKind) -> ErrorKind {
        match kind {
            WireErrorKind::NotFound => ErrorKind::NotFound,
            WireErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            WireErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
            WireErrorKind::OutOfRange => ErrorKind::OutOfRange,
            WireErrorKind::NoSpace => ErrorKind::NoSpace,
            _ => ErrorKind::Io,
        }
    }

    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, op, message)
    }

    pub(crate) fn conflict(op: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, op, message)
    }

    pub(crate) fn unavailable(op: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, op, message)
    }
}

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
