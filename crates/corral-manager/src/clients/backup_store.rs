//! The backup store (corral-backup) as the manager reaches it: targets opened from their URL and
//! the store's error kinds mapped to the API's stable codes.
use corral_backup::BackupTarget;

use crate::error::{Code, ManagerError, Result};

/// The API code of a backup-store error kind.
pub fn code_of(kind: corral_backup::ErrorKind) -> Code {
    use corral_backup::ErrorKind as K;
    match kind {
        K::NotFound => Code::NotFound,
        K::AlreadyExists => Code::AlreadyExists,
        K::InvalidArgument => Code::InvalidArgument,
        K::Busy => Code::Conflict,
        K::Unavailable | K::PermissionDenied => Code::Unavailable,
        K::Corrupt | K::Io => Code::Internal,
    }
}

/// A backup-store error as an API error (kind → stable code).
pub fn backup_error(e: corral_backup::BackupError) -> ManagerError {
    ManagerError { code: code_of(e.kind()), message: format!("backup store: {e}"), source: Some(Box::new(e)) }
}

/// Open a target URL through corral-backup.
pub fn open_target(url: &str) -> Result<BackupTarget> {
    BackupTarget::open(url).map_err(backup_error)
}
