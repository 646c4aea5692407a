//! The one error type of the driver: a CSI error code (the one the spec names for the case), a
//! message a user can act on, and the underlying error when there is one. It becomes a gRPC
//! [`Status`] at the service boundary.
use corral_api::{ApiError, Code as ApiCode};
use tonic::{Code, Status};

/// An error of a CSI call.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CsiError {
    pub code: Code,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Result alias of this crate.
pub type Result<T, E = CsiError> = std::result::Result<T, E>;

impl CsiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        CsiError { code, message: message.into(), source: None }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        CsiError::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        CsiError::new(Code::NotFound, message)
    }

    pub fn already_exists(message: impl Into<String>) -> Self {
        CsiError::new(Code::AlreadyExists, message)
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        CsiError::new(Code::FailedPrecondition, message)
    }

    pub fn out_of_range(message: impl Into<String>) -> Self {
        CsiError::new(Code::OutOfRange, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        CsiError::new(Code::Internal, message)
    }

    /// A local operation on the node (a command, a mount, a file) failed.
    pub fn io(context: impl std::fmt::Display, source: std::io::Error) -> Self {
        CsiError::new(Code::Internal, format!("{context}: {source}")).with_source(source)
    }

    /// A manager call failed; `context` says what the driver was doing.
    pub fn api(context: impl std::fmt::Display, e: ApiError) -> Self {
        let code = match e.code {
            ApiCode::InvalidArgument => Code::InvalidArgument,
            ApiCode::NotFound => Code::NotFound,
            ApiCode::AlreadyExists => Code::AlreadyExists,
            // Another writer changed the resource between our read and our write: the CO retries.
            ApiCode::Conflict => Code::Aborted,
            ApiCode::FailedPrecondition => Code::FailedPrecondition,
            ApiCode::Unavailable => Code::Unavailable,
            ApiCode::Internal => Code::Internal,
        };
        CsiError::new(code, format!("{context}: {}", e.message)).with_source(e)
    }
}

impl From<CsiError> for Status {
    fn from(e: CsiError) -> Status {
        Status::new(e.code, e.message)
    }
}
