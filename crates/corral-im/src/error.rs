//! The one error type of corral-im, with a stable kind that maps to a gRPC code.
/// Stable classification of an instance-manager error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    /// No free port left in the configured range.
    Exhausted,
    /// The instance manager cannot be reached (client side).
    Unavailable,
    Io,
}

/// An error from the instance manager or its client.
#[derive(Debug, thiserror::Error)]
#[error("instance manager {op} {instance}: {message}")]
pub struct ImError {
    pub kind: ErrorKind,
    /// Operation: start, stop, delete, get, logs, spawn, connect, ...
    pub op: &'static str,
    /// Instance name (empty when not about one instance).
    pub instance: String,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ImError {
    pub fn new(kind: ErrorKind, op: &'static str, instance: &str, message: impl Into<String>) -> Self {
        ImError { kind, op, instance: instance.to_string(), message: message.into(), source: None }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<ImError> for tonic::Status {
    fn from(e: ImError) -> Self {
        let code = match e.kind {
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::Exhausted => tonic::Code::ResourceExhausted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Io => tonic::Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// Map a gRPC status received by the client back to an error with a kind.
pub(crate) fn from_status(op: &'static str, instance: &str, s: tonic::Status) -> ImError {
    let kind = match s.code() {
        tonic::Code::NotFound => ErrorKind::NotFound,
        tonic::Code::AlreadyExists => ErrorKind::AlreadyExists,
        tonic::Code::InvalidArgument => ErrorKind::InvalidArgument,
        tonic::Code::ResourceExhausted => ErrorKind::Exhausted,
        tonic::Code::Unavailable => ErrorKind::Unavailable,
        _ => ErrorKind::Io,
    };
    ImError::new(kind, op, instance, s.message().to_string())
}

/// Result alias of this crate.
pub type Result<T, E = ImError> = std::result::Result<T, E>;
