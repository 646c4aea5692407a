//! The engine's one error type, with a small stable kind for mapping to NBD errno and HTTP status.

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

/// Why an engine operation failed: a kind, the operation, and a message with the context (replica
/// address, offset, snapshot name).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op}: {message}")]
pub struct EngineError {
    /// Stable class of failure.
    pub kind: ErrorKind,
    /// The operation that failed (`write`, `replica add`, `snapshot create`, …).
    pub op: &'static str,
    /// Human-readable detail with context.
    pub message: String,
}

impl EngineError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> Self {
        EngineError { kind, op, message: message.into() }
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
