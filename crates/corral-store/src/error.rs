//! The one error type of corral-store: a small stable kind for control flow plus the context
//! (operation, resource kind and name) and the backend's source error.
use crate::Kind;

/// Stable classification of a store error; maps 1:1 to HTTP (404, 409, 409, 400, 503, 500, 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No resource of that kind and name.
    NotFound,
    /// `create` of a name that exists.
    AlreadyExists,
    /// `update`/`delete` with a resource version that is no longer current (someone else wrote first).
    Conflict,
    /// The request itself is malformed (empty name, missing version, value that does not decode).
    InvalidArgument,
    /// The backend cannot be reached or was closed.
    Unavailable,
    /// Stored bytes do not decode.
    Corrupt,
    /// The backend failed to read or write.
    Io,
}

/// An error from a [`crate::Store`] operation.
#[derive(Debug, thiserror::Error)]
#[error("store {op} {kind}/{name}: {message}")]
pub struct StoreError {
    /// Stable class of the error.
    pub error_kind: ErrorKind,
    /// Operation that failed (`get`, `list`, `create`, `update`, `delete`, `watch`, `open`).
    pub op: &'static str,
    /// Resource kind involved, as its plural name; `*` when not specific.
    pub kind: String,
    /// Resource name involved; empty for list/watch.
    pub name: String,
    /// Human-readable detail.
    pub message: String,
    /// Backend error, when there is one.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A new error without a source.
    pub fn new(
        error_kind: ErrorKind,
        op: &'static str,
        kind: Option<Kind>,
        name: &str,
        message: impl Into<String>,
    ) -> Self {
        StoreError {
            error_kind,
            op,
            kind: kind.map_or_else(|| "*".to_string(), |k| k.as_str().to_string()),
            name: name.to_string(),
            message: message.into(),
            source: None,
        }
    }

    /// Attach the backend's error as the source.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The stable kind, for control flow.
    pub fn kind(&self) -> ErrorKind {
        self.error_kind
    }

    /// Shorthand for `self.kind() == ErrorKind::NotFound`.
    pub fn is_not_found(&self) -> bool {
        self.error_kind == ErrorKind::NotFound
    }

    /// Shorthand for `self.kind() == ErrorKind::Conflict`.
    pub fn is_conflict(&self) -> bool {
        self.error_kind == ErrorKind::Conflict
    }
}

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
