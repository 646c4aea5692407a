//! The one error type of this crate: a stable [`ErrorKind`] for control flow and exit codes, plus the
//! object (store key, file, replica directory) and operation that failed.

use std::path::PathBuf;

/// Small, stable classification of a [`BackupError`] (maps to HTTP status / exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A volume, backup, block or file does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// Bad name, URL, option or size.
    InvalidArgument,
    /// Stored data or metadata is damaged: checksum mismatch, malformed config, bad compression frame.
    Corrupt,
    /// Another operation holds a conflicting lock on the backup volume.
    Busy,
    /// The target cannot be reached (network, DNS, TLS, server errors).
    Unavailable,
    /// The target refused the credentials or the operation.
    PermissionDenied,
    /// Local I/O failed.
    Io,
}

/// Why a backup-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A request to the backup target failed.
    #[error("{op} {object}{reason}")]
    Store {
        /// Operation (get, put, list, delete, head).
        op: &'static str,
        /// Full key of the object in the target.
        object: String,
        /// Classification of the failure.
        kind: ErrorKind,
        /// A short reason for the common failures (": ..."), so that the message alone says what to fix;
        /// empty otherwise (the source has the details).
        reason: &'static str,
        /// The store's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// Stored data or metadata is damaged.
    #[error("{object}: {reason}")]
    Corrupt {
        /// Key or path of the damaged object.
        object: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Something named does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for (with its name).
        what: String,
    },
    /// Something to be created exists already.
    #[error("{what} exists already")]
    AlreadyExists {
        /// What exists (with its name).
        what: String,
    },
    /// Bad input from the caller.
    #[error("{0}")]
    InvalidArgument(String),
    /// A conflicting operation holds the backup volume.
    #[error("{0}")]
    Busy(String),
    /// Local file I/O failed.
    #[error("{op} {}", path.display())]
    Io {
        /// Operation.
        op: &'static str,
        /// File or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The replica library failed.
    #[error("replica {}: {op}", dir.display())]
    Replica {
        /// Operation.
        op: &'static str,
        /// Replica directory.
        dir: PathBuf,
        /// The replica's error.
        #[source]
        source: Box<corral_replica::ReplicaError>,
    },
    /// A background worker failed to run to completion.
    #[error("worker task failed: {0}")]
    Worker(String),
}

impl BackupError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackupError::Store { kind, .. } => *kind,
            BackupError::Corrupt { .. } => ErrorKind::Corrupt,
            BackupError::NotFound { .. } => ErrorKind::NotFound,
            BackupError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            BackupError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            BackupError::Busy(_) => ErrorKind::Busy,
            BackupError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
                std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                _ => ErrorKind::Io,
            },
            BackupError::Replica { source, .. } => replica_kind(source),
            BackupError::Worker(_) => ErrorKind::Io,
        }
    }

    pub(crate) fn store(op: &'static str, object: impl Into<String>, source: object_store::Error) -> Self {
        let kind = match &source {
            object_store::Error::NotFound { .. } => ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                ErrorKind::PermissionDenied
            }
            object_store::Error::InvalidPath { .. } => ErrorKind::InvalidArgument,
            object_store::Error::Generic { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Io,
        };
        // object_store reports some refusals (e.g. of a list request) only as a generic error carrying the
        // HTTP status; the whole chain is searched so the kind and the reason are right regardless.
        let mut chain = String::new();
        let mut next: Option<&dyn std::error::Error> = Some(&source);
        while let Some(e) = next {
            chain.push_str(&e.to_string());
            chain.push('\n');
            next = e.source();
        }
        let refused = kind == ErrorKind::PermissionDenied
            || chain.contains("403 Forbidden")
            || chain.contains("401 Unauthorized");
        let (kind, reason) = if refused {
            (
                ErrorKind::PermissionDenied,
                ": the server refused the credentials or access (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
            )
        } else if chain.contains("certificate") || chain.contains("UnknownIssuer") {
            (
                ErrorKind::Unavailable,
                ": the server's TLS certificate is not trusted (set AWS_CERT to its CA certificate)",
            )
        } else if kind == ErrorKind::NotFound {
            (kind, ": not found")
        } else {
            (kind, "")
        };
        BackupError::Store { op, object: object.into(), kind, reason, source: Box::new(source) }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BackupError::Io { op, path: path.into(), source }
    }

    pub(crate) fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        BackupError::Corrupt { object: object.into(), reason: reason.into() }
    }

    pub(crate) fn replica(
        op: &'static str,
        dir: &std::path::Path,
        source: corral_replica::ReplicaError,
    ) -> Self {
        BackupError::Replica { op, dir: dir.to_path_buf(), source: Box::new(source) }
    }

    pub(crate) fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }
}

fn replica_kind(err: &corral_replica::ReplicaError) -> ErrorKind {
    use corral_replica::ErrorKind as R;
    match err.kind() {
        R::NotFound => ErrorKind::NotFound,
        R::AlreadyExists => ErrorKind::AlreadyExists,
        R::OutOfRange | R::InvalidArgument => ErrorKind::InvalidArgument,
        R::Corrupt => ErrorKind::Corrupt,
        R::Busy => ErrorKind::Busy,
        _ => ErrorKind::Io,
    }
}

/// Result alias of this crate.
pub type Result<T, E = BackupError> = std::result::Result<T, E>;
