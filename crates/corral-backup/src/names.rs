//! Name rules for backup volumes and backups.
//!
//! Longhorn accepts `^[a-zA-Z0-9][a-zA-Z0-9_.-]+$` for every name it stores in a backup target, so a
//! name that appears in an existing target is accepted for reading if it passes that rule. Names that
//! Corral *creates* must additionally pass Corral's rule `^[a-z0-9][a-z0-9._-]{0,62}$`, and Longhorn's
//! (so at least two characters), so that Longhorn can read what Corral writes.

use crate::error::{BackupError, Result};

/// Checks a volume or backup name found in (or addressed in) a target, with Longhorn's rule.
pub fn validate_existing_name(what: &str, name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let ok = bytes.len() >= 2
        && bytes.len() <= 255
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..].iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BackupError::InvalidArgument(format!(
            "{what} name {name:?} is not allowed: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]+$"
        )))
    }
}

/// Checks a volume or backup name that Corral is about to write into a target.
pub fn validate_new_name(what: &str, name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let ok = (2..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BackupError::InvalidArgument(format!(
            "{what} name {name:?} is not allowed: it must be 2 to 63 characters of a-z, 0-9, '.', '_' and '-', \
             starting with a letter or digit"
        )))
    }
}

/// Longhorn's `GenerateName`: `<prefix>-<16 lowercase hex digits>`.
pub fn generate_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_names_follow_longhorn() {
        for ok in ["vol1", "pvc-0123abcd-test", "Bk_1.x", "ab"] {
            assert!(validate_existing_name("volume", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "-ab", ".ab", "a/b", "a b", "..", "a\u{e9}"] {
            assert!(validate_existing_name("volume", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_names_follow_corral_and_longhorn() {
        assert!(validate_new_name("backup", "backup-0123456789abcdef").is_ok());
        assert!(validate_new_name("backup", "Upper").is_err());
        assert!(validate_new_name("backup", "a").is_err());
        assert!(validate_new_name("backup", &"a".repeat(64)).is_err());
        let err = validate_new_name("volume", "bad/name").unwrap_err();
        assert!(err.to_string().contains("bad/name"));
    }

    #[test]
    fn generated_names_are_valid() {
        let name = generate_name("backup");
        assert_eq!(name.len(), "backup-".len() + 16);
        validate_new_name("backup", &name).unwrap();
    }
}
