//! The one name rule of Corral: volumes, snapshots and backups (and the manager's other named
//! things: recurring jobs, disks, tags) are named `^[a-z0-9][a-z0-9._-]{0,62}$`: 1 to 63
//! characters, lowercase ASCII letters, digits, `.`, `_` and `-`, starting with a letter or a
//! digit. A name the rule accepts fits a URL path segment, a file name and a Kubernetes label
//! value unchanged, which is why it is this strict.
//!
//! The manager's API, the engine's control API and the backup store all check names with
//! [`check_name`]; a name one of them accepts is accepted by all.

/// The rule, as the API documents it.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,62}$";

/// Longest name, in bytes (= characters: the rule allows ASCII only).
pub const MAX_NAME_LEN: usize = 63;

/// A name that breaks [`NAME_PATTERN`]; says what was named and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} name {name:?}: use 1-63 characters a-z, 0-9, '.', '_', '-', starting with a letter or digit ({NAME_PATTERN})"
)]
pub struct InvalidName {
    /// What the name is of: `volume`, `snapshot`, `backup`, …
    pub what: String,
    /// The name as given.
    pub name: String,
}

/// Whether `name` follows [`NAME_PATTERN`].
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else { return false };
    bytes.len() <= MAX_NAME_LEN
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// Check `name`, a name of a `what` (`volume`, `snapshot`, `backup`, …), against [`NAME_PATTERN`].
pub fn check_name(what: &str, name: &str) -> Result<(), InvalidName> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(InvalidName { what: what.to_string(), name: name.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_the_rule_allows() {
        let longest = "a".repeat(63);
        for ok in ["v", "0", "a.b_c-d", "vol-1", "9lives", longest.as_str()] {
            assert!(check_name("volume", ok).is_ok(), "{ok:?} rejected");
        }
    }

    #[test]
    fn rejects_what_the_rule_does_not() {
        let too_long = "a".repeat(64);
        for bad in ["", too_long.as_str(), "A", "Vol", "-a", ".a", "_a", "a/b", "a b", "é", "a\n"] {
            let err = check_name("snapshot", bad).unwrap_err();
            assert_eq!((err.what.as_str(), err.name.as_str()), ("snapshot", bad));
            assert!(err.to_string().contains("invalid snapshot name"), "{err}");
        }
    }
}
