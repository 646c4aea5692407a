//! The JSON files of a backup store, written exactly as Longhorn's Go code writes them.
//!
//! Longhorn writes every backupstore file with Go's `json.Marshal`, which gives these rules (reference
//! §6.10), all implemented here so each format module only declares its fields:
//!
//! ```text
//! * keys in struct declaration order; map keys sorted (we use BTreeMap); no spaces; no trailing newline
//! * int64 fields tagged `,string`   -> "Size":"67108864"         (read: string or number)
//! * string fields tagged `,string`  -> "CompressionMethod":"\"lz4\""  (read: double-quoted or plain)
//! * nil maps                        -> null
//! * <, >, &, U+2028, U+2029 inside strings -> \u003c \u003e \u0026 \u2028 \u2029 (Go's HTML-safe escaping)
//! ```
//! Readers ignore unknown keys (newer Longhorn versions add some) and treat missing keys as Go's zero value.

pub mod backup_config;
pub mod lock_file;
pub mod restore_record;
pub mod volume_config;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{BackupError, Result};

/// Serialises `value` the way Go's `json.Marshal` would (the escaping is `corral-replica`'s, shared with
/// the replica metadata files).
pub fn to_go_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    corral_replica::format::go_json(value)
        .map_err(|e| BackupError::InvalidArgument(format!("cannot encode JSON: {e}")))
}

/// Parses a config read from `object`; any syntax or type error is reported as corruption of that object.
pub fn from_json<'a, T: Deserialize<'a>>(object: &str, bytes: &'a [u8]) -> Result<T> {
    // Every backupstore file is a JSON object; serde would also accept an array for a struct.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b != b'{') {
        return Err(BackupError::corrupt(object, "malformed JSON: not an object"));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if bytes.is_empty() { "empty file".to_string() } else { format!("malformed JSON: {e}") };
        BackupError::corrupt(object, what)
    })
}

/// Go `int64` with the `,string` tag: written as a JSON string of decimal digits.
pub(crate) mod int_as_string {
    use super::*;

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Ok(0),
            serde_json::Value::String(s) if s.is_empty() => Ok(0),
            serde_json::Value::String(s) => {
                s.parse::<u64>().map_err(|_| D::Error::custom(format!("{s:?} is not a non-negative integer")))
            }
            serde_json::Value::Number(n) => {
                n.as_u64().ok_or_else(|| D::Error::custom(format!("{n} is not a non-negative integer")))
            }
            other => Err(D::Error::custom(format!("expected an integer string, found {other}"))),
        }
    }
}

/// Go `string` with the `,string` tag: the value is a JSON string holding a JSON-quoted string.
pub(crate) mod quoted_string {
    use super::*;

    pub fn serialize<S: Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let inner = to_go_json(&value).map_err(S::Error::custom)?;
        let inner = String::from_utf8(inner).map_err(S::Error::custom)?;
        s.serialize_str(&inner)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let raw: Option<String> = Option::deserialize(d)?;
        let Some(raw) = raw else { return Ok(String::new()) };
        if raw.starts_with('"') {
            if let Ok(inner) = serde_json::from_str::<String>(&raw) {
                return Ok(inner);
            }
        }
        Ok(raw)
    }
}

/// A Go string that may be `null` in old files: read `null` as "".
pub(crate) mod nullable_string {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
    }
}

/// Current time in Go's `time.RFC3339` with second precision, UTC (`2026-11-26T15:52:39Z`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_escaping_of_html_characters() {
        let json = to_go_json(&"a<b>&c\u{2028}\"\\\n").unwrap();
        assert_eq!(String::from_utf8(json).unwrap(), r#""a\u003cb\u003e\u0026c\u2028\"\\\n""#);
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Sample {
        #[serde(with = "int_as_string")]
        n: u64,
        #[serde(with = "quoted_string")]
        q: String,
    }

    #[test]
    fn string_tagged_fields() {
        let s = Sample { n: 67108864, q: "lz4".into() };
        let json = String::from_utf8(to_go_json(&s).unwrap()).unwrap();
        assert_eq!(json, r#"{"n":"67108864","q":"\"lz4\""}"#);
        assert_eq!(from_json::<Sample>("x", json.as_bytes()).unwrap(), s);
        // The unquoted forms are accepted too.
        let plain: Sample = from_json("x", br#"{"n":67108864,"q":"lz4"}"#).unwrap();
        assert_eq!(plain, s);
        assert!(from_json::<Sample>("x", br#"{"n":"-1","q":""}"#).is_err());
        assert!(from_json::<Sample>("x", br#"{"n":"12"#).unwrap_err().to_string().contains("x: malformed"));
    }
}
