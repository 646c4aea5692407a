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
//! byte so that a directory written by Corral is what Longhorn itself would have written.

pub mod corral_state;
pub mod disk_meta;
pub mod names;
pub mod revision_counter;
pub mod volume_meta;

use std::io;

/// A `serde_json` formatter that escapes strings the way Go's `encoding/json` does by default
/// (`SetEscapeHTML(true)`): `<` `>` `&` and the line/paragraph separators become `\u00XX`/`\u20XX`.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
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

/// Serialises `value` as Go's `json.NewEncoder(w).Encode(value)` would: compact, Go escaping, `\n` at
/// the end.
pub fn go_json_line<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    value.serialize(&mut ser)?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
