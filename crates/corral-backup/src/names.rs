//! Name rules for backup volumes and backups.
//!
//! Names Corral *creates* follow Corral's one name rule, [`corral_api::names`]
//! (`^[a-z0-9][a-z0-9._-]{0,62}$`): any volume Corral accepts can be backed up under its own name,
//! one-character names included. Longhorn accepts `^[a-zA-Z0-9][a-zA-Z0-9_.-]+$` for every name it
//! stores in a backup target, so a name found in an existing target is accepted for reading if it
//! passes that looser rule, or Corral's (a target Corral wrote may hold a one-character name).

use crate::error::{BackupError, Result};

/// Longhorn's rule for names in a backup target.
fn follows_longhorn_rule(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= 2
        && bytes.len() <= 255
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..].iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a volume or backup name found in (or addressed in) a target: Longhorn's rule, or
/// Corral's (everything Corral writes can be read back).
pub fn validate_existing_name(what: &str, name: &str) -> Result<()> {
    if follows_longhorn_rule(name) || corral_api::names::is_valid_name(name) {
        Ok(())
    } else {
        Err(BackupError::InvalidArgument(format!(
            "{what} name {name:?} is not allowed: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]+$ or {}",
            corral_api::NAME_PATTERN
        )))
    }
}

/// Checks a volume or backup name that Corral is about to write into a target: Corral's one rule.
pub fn validate_new_name(what: &str, name: &str) -> Result<()> {
    corral_api::names::check_name(what, name).map_err(|e| BackupError::InvalidArgument(e.to_string()))
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
        // Longhorn's rule, and Corral's (one character) for what Corral wrote.
        for ok in ["vol1", "pvc-0123abcd-test", "Bk_1.x", "ab", "v", "0"] {
            assert!(validate_existing_name("volume", ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-ab", ".ab", "a/b", "a b", "..", "a\u{e9}"] {
            assert!(validate_existing_name("volume", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_names_follow_corrals_one_rule() {
        assert!(validate_new_name("backup", "backup-0123456789abcdef").is_ok());
        // A volume Corral accepts can be backed up under its name, however short.
        assert!(validate_new_name("volume", "v").is_ok());
        assert!(validate_new_name("volume", &"a".repeat(63)).is_ok());
        assert!(validate_new_name("backup", "Upper").is_err());
        assert!(validate_new_name("backup", "").is_err());
        assert!(validate_new_name("backup", "-a").is_err());
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
