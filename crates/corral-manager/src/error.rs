//! The one error type of corral-manager. Its [`Code`] (defined in corral-api, with the body) is
//! stable (clients switch on it) and maps to an HTTP status; API errors are sent as `{"code": "...", "message": "..."}`.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub use corral_api::{Code, ErrorBody};

/// An error of the manager, with its stable code and a message for humans.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ManagerError {
    pub code: Code,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ManagerError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ManagerError { code, message: message.into(), source: None }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }
    pub fn not_found(what: &str, name: &str) -> Self {
        Self::new(Code::NotFound, format!("{what} {name:?} not found"))
    }
}

impl From<corral_store::StoreError> for ManagerError {
    fn from(e: corral_store::StoreError) -> Self {
        use corral_store::ErrorKind as K;
        let code = match e.kind() {
            K::NotFound => Code::NotFound,
            K::AlreadyExists => Code::AlreadyExists,
            K::Conflict => Code::Conflict,
            K::InvalidArgument => Code::InvalidArgument,
            K::Unavailable => Code::Unavailable,
            K::Corrupt | K::Io => Code::Internal,
        };
        let message = match e.kind() {
            K::NotFound => format!("{} {:?} not found", e.kind.trim_end_matches('s'), e.name),
            K::AlreadyExists => format!("{} {:?} already exists", e.kind.trim_end_matches('s'), e.name),
            K::Conflict => format!(
                "{} {:?} was changed by someone else since it was read; read it again and retry",
                e.kind.trim_end_matches('s'),
                e.name
            ),
            _ => e.to_string(),
        };
        ManagerError { code, message, source: Some(Box::new(e)) }
    }
}

impl From<corral_im::ImError> for ManagerError {
    fn from(e: corral_im::ImError) -> Self {
        let code = match e.kind() {
            corral_im::ErrorKind::NotFound => Code::NotFound,
            corral_im::ErrorKind::Unavailable => Code::Unavailable,
            _ => Code::Internal,
        };
        ManagerError { code, message: e.to_string(), source: Some(Box::new(e)) }
    }
}

impl From<corral_api::ApiError> for ManagerError {
    fn from(e: corral_api::ApiError) -> Self {
        ManagerError { code: e.code, message: e.message.clone(), source: Some(Box::new(e)) }
    }
}

impl IntoResponse for ManagerError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        (status, axum::Json(ErrorBody { code: self.code, message: self.message })).into_response()
    }
}

/// Result alias of this crate.
pub type Result<T, E = ManagerError> = std::result::Result<T, E>;
