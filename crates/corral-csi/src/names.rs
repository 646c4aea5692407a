//! From CSI names and IDs to Corral's names, and back.
//!
//! - A CSI volume or snapshot name (up to 128 characters of almost any kind) becomes a Corral name
//!   (`^[a-z0-9][a-z0-9._-]{0,62}$`): itself when it already is one, else a readable, stable
//!   stand-in: its lower-cased alphanumerics (at most 40) plus `-` plus 16 hex digits of its
//!   SHA-256. The CSI name is kept in the label [`CSI_NAME_LABEL`], so the same CSI name always
//!   finds the same volume and a hash collision is detected rather than served.
//! - A volume ID is the Corral volume's name.
//! - A snapshot ID says what it is: `snap/<volume>/<snapshot>` (a Corral snapshot, in the volume's
//!   replicas) or `bak/<volume>/<backup>` (a backup in the backup target).
use sha2::{Digest, Sha256};

use crate::error::{CsiError, Result};

/// Label holding the CSI name of a volume, snapshot or backup the driver created.
pub const CSI_NAME_LABEL: &str = "csi.corral.io/name";

/// Longest CSI name the driver accepts (the sanity suite's "maximum-length" names are 128).
pub const MAX_CSI_NAME: usize = 128;

/// The Corral name of a CSI name; see the module doc.
pub fn corral_name(csi_name: &str) -> String {
    if corral_api::check_name("volume", csi_name).is_ok() {
        return csi_name.to_string();
    }
    let mut readable = String::new();
    for c in csi_name.chars().flat_map(char::to_lowercase) {
        if readable.len() >= 40 {
            break;
        }
        if c.is_ascii_alphanumeric() {
            readable.push(c);
        } else if !readable.is_empty() && !readable.ends_with('-') {
            readable.push('-');
        }
    }
    let digest = hex::encode(Sha256::digest(csi_name.as_bytes()));
    let hash = digest.get(..16).unwrap_or(&digest);
    let readable = readable.trim_end_matches('-');
    if readable.is_empty() {
        format!("csi-{hash}")
    } else {
        format!("{readable}-{hash}")
    }
}

/// Check a CSI name the CO sent (a volume or snapshot name).
pub fn check_csi_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(CsiError::invalid(format!("{what} name is missing")));
    }
    if name.chars().count() > MAX_CSI_NAME {
        return Err(CsiError::invalid(format!(
            "{what} name is {} characters long; at most {MAX_CSI_NAME} are allowed",
            name.chars().count()
        )));
    }
    if name.chars().any(|c| c.is_control() && c != '\t' && c != '\n' && c != '\r') {
        return Err(CsiError::invalid(format!("{what} name {name:?} contains control characters")));
    }
    Ok(())
}

/// What a snapshot ID names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotId {
    /// A Corral snapshot of `volume`.
    Snap { volume: String, snapshot: String },
    /// A backup of `volume` in the backup target.
    Bak { volume: String, backup: String },
}

impl SnapshotId {
    /// Parse a snapshot ID; `None` when it is not one this driver made.
    pub fn parse(id: &str) -> Option<SnapshotId> {
        let mut parts = id.splitn(3, '/');
        let (kind, volume, name) = (parts.next()?, parts.next()?, parts.next()?);
        if corral_api::check_name("volume", volume).is_err()
            || corral_api::check_name("snapshot", name).is_err()
        {
            return None;
        }
        let (volume, name) = (volume.to_string(), name.to_string());
        match kind {
            "snap" => Some(SnapshotId::Snap { volume, snapshot: name }),
            "bak" => Some(SnapshotId::Bak { volume, backup: name }),
            _ => None,
        }
    }

    /// The source volume.
    pub fn volume(&self) -> &str {
        match self {
            SnapshotId::Snap { volume, .. } | SnapshotId::Bak { volume, .. } => volume,
        }
    }
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotId::Snap { volume, snapshot } => write!(f, "snap/{volume}/{snapshot}"),
            SnapshotId::Bak { volume, backup } => write!(f, "bak/{volume}/{backup}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_stay_and_others_map_to_a_stable_valid_name() {
        assert_eq!(corral_name("pvc-1234"), "pvc-1234");
        let long = "X".repeat(128);
        let mapped = corral_name(&long);
        assert!(corral_api::check_name("volume", &mapped).is_ok(), "{mapped}");
        assert_eq!(mapped, corral_name(&long));
        assert_ne!(mapped, corral_name(&"X".repeat(127)));
        let odd = corral_name("Äh / what?");
        assert!(odd.starts_with("h-what-"), "{odd}");
        assert!(corral_api::check_name("volume", &corral_name("////")).is_ok());
    }

    #[test]
    fn snapshot_ids_round_trip_and_reject_foreign_ones() {
        let id = SnapshotId::Bak { volume: "v1".into(), backup: "backup-1".into() };
        assert_eq!(SnapshotId::parse(&id.to_string()), Some(id));
        assert_eq!(SnapshotId::parse("snap/v1/s1").map(|s| s.volume().to_string()), Some("v1".into()));
        for bad in ["", "snap", "snap/v1", "x/v1/s1", "snap/V1/s1", "snap/v1/s1/extra"] {
            assert_eq!(SnapshotId::parse(bad), None, "{bad}");
        }
    }
}
