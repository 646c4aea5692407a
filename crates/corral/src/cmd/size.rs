//! Parsing and printing of byte sizes on the command line (`--size 64MiB`), shared by every subcommand.
//!
//! Accepted: a plain byte count (`67108864`), or a number (integer or decimal) followed by a unit, with
//! optional space, case-insensitive: `K`, `KB`, `KiB`, `M`, `MB`, `MiB`, `G`, `GB`, `GiB`, `T`, `TB`,
//! `TiB`, `P`, `PB`, `PiB`, `B`. **Every unit is binary** (1K = 1024), as in qemu-img and Longhorn's own
//! CLI: volume sizes must be multiples of 4096 bytes, which decimal units would rarely give. A decimal
//! number must come out as a whole number of bytes (`1.5GiB` is fine, `0.1B` is not).

use anyhow::{bail, Context};

/// Parses a size; see the module documentation.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let shift: u32 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        other => bail!("invalid size {text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, PiB)"),
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        bail!("invalid size {text:?}: expected a number, e.g. 64MiB");
    }
    if fraction.contains('.') || fraction.len() > 18 {
        bail!("invalid size {text:?}: malformed number");
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().with_context(|| format!("invalid size {text:?}: malformed number"))?
    };
    let scaled_whole = whole.checked_shl(shift).filter(|v| *v <= u128::from(u64::MAX));
    let Some(scaled_whole) = scaled_whole else {
        bail!("invalid size {text:?}: too large");
    };
    let mut bytes = scaled_whole;
    if !fraction.is_empty() {
        let digits: u128 =
            fraction.parse().with_context(|| format!("invalid size {text:?}: malformed number"))?;
        let denominator = 10u128.pow(fraction.len() as u32);
        let numerator = digits << shift;
        if numerator % denominator != 0 {
            bail!("invalid size {text:?}: not a whole number of bytes");
        }
        bytes += numerator / denominator;
    }
    u64::try_from(bytes).map_err(|_| anyhow::anyhow!("invalid size {text:?}: too large"))
}

/// Prints a size the short way for humans: `64 MiB`, `1.5 GiB`, `4096 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_bytes_and_every_unit_as_binary() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("67108864", 64 << 20),
            ("64MiB", 64 << 20),
            ("64mib", 64 << 20),
            ("64M", 64 << 20),
            ("64MB", 64 << 20),
            ("64 MiB", 64 << 20),
            ("10GiB", 10 << 30),
            ("1G", 1 << 30),
            ("1g", 1 << 30),
            ("512K", 512 << 10),
            ("512KiB", 512 << 10),
            ("2T", 2 << 40),
            ("1PiB", 1 << 50),
            ("100B", 100),
            ("1.5GiB", 3 << 29),
            ("0.5K", 512),
            (".5K", 512),
            ("  8MiB ", 8 << 20),
            ("16383P", 16383 << 50),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text).unwrap(), *want, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_sizes_with_a_message_naming_the_input() {
        for bad in [
            "",
            "MiB",
            "abc",
            "12XB",
            "1.2.3G",
            "-1",
            "1e9",
            "0.1B",
            "16384P",
            "18446744073709551616",
            "1..2M",
            ".",
        ] {
            let err = parse_size(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
    }

    #[test]
    fn formats_sizes_for_humans() {
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
        assert_eq!(format_size(100), "100 B");
    }
}
