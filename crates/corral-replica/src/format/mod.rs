//! On-disk formats of a replica directory, one module each.
//!
//! | file | module |
//! |---|---|
//! | `volume.meta` | [`volume_meta`] |
//! | `volume-head-NNN.img.meta`, `volume-snap-<name>.img.meta` | [`disk_meta`] |
//! | `revision.counter` | [`revision_counter`] |
//! | `corral-state.json` (Corral only) | [`corral_state`] |
//! | file names (`volume-head-NNN.img`, `volume-snap-<name>.img`) | [`names`] |
//!
//! Longhorn writes its JSON with Go's `json.Encoder`: one line, keys in struct order, a trailing `\n`,
//! and `<`, `>`, `&`, U+2028, U+2029 escaped as `\u003c` … . [`go_json_line`] reproduces that byte for
//! byte so that a directory written by Corral is what Longhorn itself would have written. [`go_json`] is
//! the same without the newline (Go's `json.Marshal`); the backup store's configs use it, so Go's escaping
//! is written once, here.

pub mod corral_state;
pub mod disk_meta;
pub mod names;
pub mod revision_counter;
pub mod volume_meta;

use std::io;

/// A `serde_json` formatter that escapes strings the way Go's `encoding/json` does by default
/// (`SetEscapeHTML(true)`): `<` `>` `&` and the line/paragraph separators become `\u00XX`/`\u20XX`.
pub struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escaped = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escaped.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serialises `value` as Go's `json.Marshal(value)` would: compact, keys in declaration order, Go's
/// HTML-safe escaping, no trailing newline.
pub fn go_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// Serialises `value` as Go's `json.NewEncoder(w).Encode(value)` would: [`go_json`] and a `\n` at the end.
pub fn go_json_line<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = go_json(value)?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    proptest! {
        // Every metadata parser on garbage: no panic, and anything accepted re-encodes to itself.
        #[test]
        fn parsers_survive_garbage(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let p = Path::new("f");
            if let Ok(m) = volume_meta::VolumeMeta::parse(&data, p) {
                prop_assert_eq!(volume_meta::VolumeMeta::parse(&m.to_bytes(), p).ok(), Some(m));
            }
            if let Ok(m) = disk_meta::DiskMeta::parse(&data, p) {
                prop_assert_eq!(disk_meta::DiskMeta::parse(&m.to_bytes(), p).ok(), Some(m));
            }
            if let Ok(v) = revision_counter::parse(&data, p) {
                prop_assert_eq!(revision_counter::parse(&revision_counter::encode(v), p).ok(), Some(v));
            }
            if let Ok(s) = corral_state::CorralState::parse(&data, p) {
                prop_assert_eq!(corral_state::CorralState::parse(&s.to_bytes(), p).ok(), Some(s));
            }
        }

        // Garbage shaped like JSON objects with the right keys exercises the type checks.
        #[test]
        fn parsers_survive_json_shaped_garbage(
            size in prop_oneof![Just("4096".to_string()), Just("-1".to_string()), Just("\"x\"".to_string()), Just("1e99".to_string()), Just("null".to_string())],
            head in "[a-z0-9./-]{0,24}",
            parent in "[a-z0-9./-]{0,24}",
            labels in prop_oneof![Just("null".to_string()), Just("{}".to_string()), Just("{\"a\":\"b\"}".to_string()), Just("[1]".to_string())],
        ) {
            let p = Path::new("f");
            let vm = format!("{{\"Size\":{size},\"Head\":\"{head}\",\"Parent\":\"{parent}\"}}");
            if let Ok(m) = volume_meta::VolumeMeta::parse(vm.as_bytes(), p) {
                prop_assert!(m.size >= 0 && crate::format::names::head_number(&m.head).is_some());
            }
            let dm = format!("{{\"Parent\":\"{parent}\",\"Labels\":{labels}}}");
            if let Ok(m) = disk_meta::DiskMeta::parse(dm.as_bytes(), p) {
                prop_assert!(m.parent.is_empty() || crate::format::names::snapshot_name_of_file(&m.parent).is_some());
            }
        }
    }

    #[test]
    fn go_json_is_marshal_without_newline() {
        let v = serde_json::json!({"b": "<&>", "a": 1});
        let json = go_json(&v).unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&json), "{\"b\":\"\\u003c\\u0026\\u003e\",\"a\":1}");
        assert_eq!(go_json_line(&v).unwrap_or_default(), [json, b"\n".to_vec()].concat());
    }

    #[test]
    fn go_escaping_matches_encoding_json() {
        let v = serde_json::json!({"a": "x<y>&z\u{2028}\n\"\u{1}"});
        let line = go_json_line(&v).unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&line),
            "{\"a\":\"x\\u003cy\\u003e\\u0026z\\u2028\\n\\\"\\u0001\"}\n"
        );
    }
}
