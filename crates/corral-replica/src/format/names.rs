//! File names of layers.
//!
//! ```text
//! volume-head-NNN.img        the head; NNN is zero-padded to 3 digits (more when the number grows)
//! volume-head-NNN.img.meta   its record
//! volume-snap-<name>.img     a snapshot layer; <name> = user name, UUID, or expand-<size>
//! volume-snap-<name>.img.meta
//! ```
//!
//! Head numbering quirk (Longhorn's `nextFile`): the new head number is 1 + the **last digit** of the
//! old one (`volume-head-(\d)+.img` captures only the last repetition), so the sequence is
//! 000, 001, …, 009, 010, 001, 002, … . Only one head exists at a time, so cycling is harmless.

/// Prefix of head files.
pub const HEAD_PREFIX: &str = "volume-head-";
/// Prefix of snapshot files.
pub const SNAP_PREFIX: &str = "volume-snap-";
/// Suffix of layer data files.
pub const IMG_SUFFIX: &str = ".img";

/// The number of a head file name (`volume-head-002.img` → 2), if it is one.
pub fn head_number(file: &str) -> Option<u64> {
    let digits = file.strip_prefix(HEAD_PREFIX)?.strip_suffix(IMG_SUFFIX)?;
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The head file name for number `n`.
pub fn head_file(n: u64) -> String {
    format!("{HEAD_PREFIX}{n:03}{IMG_SUFFIX}")
}

/// The head file that follows `current`, with Longhorn's last-digit quirk.
pub fn next_head_file(current: &str) -> String {
    let last_digit = current
        .strip_suffix(IMG_SUFFIX)
        .and_then(|s| s.bytes().last())
        .filter(u8::is_ascii_digit)
        .map_or(0, |b| u64::from(b - b'0'));
    head_file(last_digit + 1)
}

/// The snapshot name in a snapshot file name (`volume-snap-a.img` → `a`), if it is a safe one.
pub fn snapshot_name_of_file(file: &str) -> Option<&str> {
    let name = file.strip_prefix(SNAP_PREFIX)?.strip_suffix(IMG_SUFFIX)?;
    is_safe_existing_name(name).then_some(name)
}

/// The snapshot file name for `name`.
pub fn snapshot_file(name: &str) -> String {
    format!("{SNAP_PREFIX}{name}{IMG_SUFFIX}")
}

/// The metadata file name of a layer file.
pub fn meta_file(img_file: &str) -> String {
    format!("{img_file}{}", super::disk_meta::SUFFIX)
}

/// A name found on disk (possibly written by Longhorn) is usable if it cannot escape the directory.
pub fn is_safe_existing_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && !name.contains("..")
        && !name.contains('/')
        && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_numbers_follow_longhorns_last_digit_quirk() {
        assert_eq!(next_head_file("volume-head-000.img"), "volume-head-001.img");
        assert_eq!(next_head_file("volume-head-002.img"), "volume-head-003.img");
        assert_eq!(next_head_file("volume-head-009.img"), "volume-head-010.img");
        assert_eq!(next_head_file("volume-head-010.img"), "volume-head-001.img");
        assert_eq!(next_head_file("volume-head-019.img"), "volume-head-010.img");
        assert_eq!(head_number("volume-head-010.img"), Some(10));
        assert_eq!(head_number("volume-head-.img"), None);
        assert_eq!(head_number("volume-head-1x.img"), None);
    }

    #[test]
    fn snapshot_names_from_files() {
        assert_eq!(snapshot_name_of_file("volume-snap-snap2.img"), Some("snap2"));
        assert_eq!(snapshot_name_of_file("volume-snap-.img"), None);
        assert_eq!(snapshot_name_of_file("volume-snap-../x.img"), None);
        assert_eq!(snapshot_name_of_file("volume-head-000.img"), None);
        assert_eq!(meta_file(&snapshot_file("a")), "volume-snap-a.img.meta");
    }
}
