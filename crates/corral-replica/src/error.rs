//! The one error type of this crate: a stable [`ErrorKind`] for control flow plus context (operation,
//! file, offset) and the underlying OS error when there is one.

use std::fmt;
use std::path::{Path, PathBuf};

/// Small, stable classification of a [`ReplicaError`], for mapping onto wire, HTTP, gRPC or NBD codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// A replica directory, snapshot or layer does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// I/O outside the volume.
    OutOfRange,
    /// The request itself is wrong (bad name, bad size, not allowed in this state).
    InvalidArgument,
    /// On-disk state is damaged or inconsistent (bad JSON, chain loop, missing layer file, …).
    Corrupt,
    /// Another operation holds what this one needs (purge running, rebuild in progress, …).
    Busy,
    /// The operating system reported an error.
    Io,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::OutOfRange => "out of range",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Busy => "busy",
            ErrorKind::Io => "I/O error",
        };
        f.write_str(s)
    }
}

/// An error from the replica store, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
#[error("{op}{}{}: {message}{}", path_part(.path), offset_part(.offset), source_part(.source))]
pub struct ReplicaError {
    kind: ErrorKind,
    op: &'static str,
    path: Option<PathBuf>,
    offset: Option<u64>,
    message: String,
    #[source]
    source: Option<std::io::Error>,
}

fn path_part(path: &Option<PathBuf>) -> String {
    path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default()
}

fn offset_part(offset: &Option<u64>) -> String {
    offset.map(|o| format!(" at offset {o}")).unwrap_or_default()
}

fn source_part(source: &Option<std::io::Error>) -> String {
    source.as_ref().map(|s| format!(": {s}")).unwrap_or_default()
}

impl ReplicaError {
    /// A new error of `kind` raised by operation `op`.
    pub fn new(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> Self {
        ReplicaError { kind, op, path: None, offset: None, message: message.into(), source: None }
    }

    /// An OS error from `op` on `path`. `NotFound`/`AlreadyExists`/`ENOSPC`… keep a matching kind.
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        let kind = match source.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            _ => ErrorKind::Io,
        };
        ReplicaError {
            kind,
            op,
            path: Some(path.to_path_buf()),
            offset: None,
            message: "I/O failed".into(),
            source: Some(source),
        }
    }

    /// The on-disk file `path` is damaged: `message` says how.
    pub fn corrupt(op: &'static str, path: &Path, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, op, message).with_path(path)
    }

    /// Attaches the file the error concerns.
    pub fn with_path(mut self, path: &Path) -> Self {
        self.path = Some(path.to_path_buf());
        self
    }

    /// Attaches the byte offset the error concerns.
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// The stable classification.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed (`"open"`, `"write"`, `"snapshot"`, …).
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The file concerned, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The byte offset concerned, if any.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The human-readable detail.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The OS error number, if this came from the OS (used to map ENOSPC to NBD's ENOSPC).
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.as_ref().and_then(|s| s.raw_os_error())
    }
}

/// Result alias of this crate.
pub type Result<T, E = ReplicaError> = std::result::Result<T, E>;

impl From<ReplicaError> for corral_block::BlockError {
    fn from(e: ReplicaError) -> Self {
        match e.kind {
            ErrorKind::OutOfRange => corral_block::BlockError::OutOfRange {
                op: e.op,
                offset: e.offset.unwrap_or(0),
                len: 0,
                size: 0,
            },
            ErrorKind::Io => {
                let offset = e.offset.unwrap_or(0);
                let op = e.op;
                let source = match e.source {
                    Some(s) => s,
                    None => std::io::Error::other(e.message),
                };
                corral_block::BlockError::Io { op, offset, source }
            }
            _ => corral_block::BlockError::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_file_and_offset() {
        let e = ReplicaError::corrupt("open", Path::new("/x/volume.meta"), "bad JSON").with_offset(7);
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(e.to_string(), "open /x/volume.meta at offset 7: bad JSON");
        let e = ReplicaError::io("read", Path::new("/f"), std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }
}
