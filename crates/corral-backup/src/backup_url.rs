//! Backup URLs: `<target URL>?backup=<name>&volume=<volume>` (Longhorn's `EncodeBackupURL`: Go's
//! `url.Values.Encode`, keys sorted, values query-escaped).

use crate::error::{BackupError, Result};

/// A parsed backup URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupUrl {
    /// The target URL (no query).
    pub target: String,
    /// Backup volume name.
    pub volume: String,
    /// Backup name.
    pub backup: String,
}

impl BackupUrl {
    /// Builds the URL text.
    pub fn encode(&self) -> String {
        format!("{}?backup={}&volume={}", self.target, query_escape(&self.backup), query_escape(&self.volume))
    }

    /// Parses `<target>?backup=<name>&volume=<volume>` (parameters in any order).
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| BackupError::InvalidArgument(format!("backup URL {url:?}: {why}"));
        let (target, query) =
            url.split_once('?').ok_or_else(|| bad("missing ?backup=<name>&volume=<volume>"))?;
        let (mut backup, mut volume) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = query_unescape(value).ok_or_else(|| bad("bad percent-encoding"))?;
            match key {
                "backup" => backup = Some(value),
                "volume" => volume = Some(value),
                _ => {}
            }
        }
        let backup = backup.filter(|b| !b.is_empty()).ok_or_else(|| bad("no backup= parameter"))?;
        let volume = volume.filter(|v| !v.is_empty()).ok_or_else(|| bad("no volume= parameter"))?;
        crate::names::validate_existing_name("backup", &backup)?;
        crate::names::validate_existing_name("volume", &volume)?;
        Ok(BackupUrl { target: target.to_string(), volume, backup })
    }
}

impl std::fmt::Display for BackupUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Go's `url.QueryEscape`.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn query_unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let url = BackupUrl {
            target: "s3://b@us-east-1/p".into(),
            volume: "vol1".into(),
            backup: "bk-snap2".into(),
        };
        assert_eq!(url.encode(), "s3://b@us-east-1/p?backup=bk-snap2&volume=vol1");
        assert_eq!(BackupUrl::parse(&url.encode()).unwrap(), url);
        assert_eq!(BackupUrl::parse("vfs:///x?volume=vol1&backup=bk-snap2").unwrap().backup, "bk-snap2");
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "vfs:///x",
            "vfs:///x?backup=a1",
            "vfs:///x?backup=a1&volume=",
            "vfs:///x?backup=a%2Fb&volume=v1",
            "vfs:///x?backup=%zz&volume=v1",
        ] {
            assert!(BackupUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn escaping_matches_go() {
        assert_eq!(query_escape("a b/c~"), "a+b%2Fc~");
        assert_eq!(query_unescape("a+b%2Fc").unwrap(), "a b/c");
    }
}
