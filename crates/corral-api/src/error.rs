//! The API's stable error codes, the JSON error body, and the one error type of this crate's
//! clients.
use serde::{Deserialize, Serialize};

/// Stable error code of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The request is malformed or a value is not allowed (400).
    InvalidArgument,
    /// No such resource (404).
    NotFound,
    /// A resource of that name exists (409).
    AlreadyExists,
    /// The resource changed since the version the request was based on (409).
    Conflict,
    /// The request is valid but not in the resource's current state (e.g. delete while attached) (409).
    FailedPrecondition,
    /// A process or store the manager needs does not answer (503).
    Unavailable,
    /// A bug or an unexpected failure (500).
    Internal,
}

impl Code {
    /// The HTTP status the API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Code::InvalidArgument => 400,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Conflict | Code::FailedPrecondition => 409,
            Code::Unavailable => 503,
            Code::Internal => 500,
        }
    }
}

/// The JSON body of every API error.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: Code,
    pub message: String,
}

/// An error of a call through [`crate::ApiClient`] or [`crate::EngineClient`]: the stable code
/// (from the server's answer, or `unavailable` when it could not be reached), a message for
/// humans, and the underlying error when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), source: None }
    }

    pub(crate) fn with_source(
        code: Code,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ApiError { code, message: message.into(), source: Some(Box::new(source)) }
    }
}

impl From<crate::names::InvalidName> for ApiError {
    fn from(e: crate::names::InvalidName) -> Self {
        ApiError::with_source(Code::InvalidArgument, e.to_string(), e)
    }
}

/// Result alias of this crate.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;
