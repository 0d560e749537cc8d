//! Per-record checksums (contract §13): CRC-32/ISO-HDLC over the canonical JSON of a row's
//! `row_to_json` text, emitted as a signed 32-bit integer.
//!
//! Numbers are deliberately read as IEEE-754 doubles (so `9007199254740993` and
//! `9007199254740992` collide, and `12.50` equals `12.5`): that precision loss is part of the
//! algorithm the SDKs reproduce. Text that does not parse as a JSON object within double range
//! is hashed as raw bytes.

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::json_text;

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32/ISO-HDLC (zlib's `crc32`): check value `0xCBF43926` for `123456789`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

/// Formats a double the way the canonical form requires: shortest round-trip digits,
/// positional for `1e-6 <= |v| < 1e21` (and zero), exponent form otherwise (`1e+21`, `1e-7`).
pub fn format_number(v: f64) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    if !v.is_finite() {
        // JSON cannot carry these; the parser never produces them.
        return "null".into();
    }
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    let sign = if v < 0.0 { "-" } else { "" };
    let abs = v.abs();
    if (1e-6..1e21).contains(&abs) {
        let body = if exp >= k - 1 {
            format!("{digits}{}", "0".repeat((exp - (k - 1)) as usize))
        } else if exp >= 0 {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{int}.{frac}")
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() { first.to_string() } else { format!("{first}.{rest}") };
        let e = if exp >= 0 { format!("e+{exp}") } else { format!("e-{}", -exp) };
        format!("{sign}{mant}{e}")
    }
}

/// Appends the canonical form of `v`: no whitespace, object keys sorted byte-wise at every
/// depth, numbers via [`format_number`], strings escaped per §13.2.
pub fn push_canonical(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&format_number(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => json_text::push_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_canonical(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // serde_json's default Map is a BTreeMap<String, _>: iteration is already in
            // byte-wise key order, which is what the contract asks for.
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_text::push_string(out, k);
                out.push(':');
                push_canonical(out, item);
            }
            out.push('}');
        }
    }
}

fn within_double_range(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_some_and(f64::is_finite),
        Value::Array(items) => items.iter().all(within_double_range),
        Value::Object(map) => map.values().all(within_double_range),
        _ => true,
    }
}

/// The canonical JSON of a row, or `None` when the text is not a JSON object within double range.
///
/// Every pulled record's checksum goes through here, so the top level (where a row's columns
/// are) is read without building a tree: keys are borrowed and sorted, and each column value is
/// canonicalised from its own text, scalars directly; only nested arrays and objects (json
/// columns) are parsed into values. The result is that of [`push_canonical`] over the parsed
/// row (duplicate keys: the last one counts, as in a parsed map).
pub fn canonical_json(row_json: &str) -> Option<String> {
    let Columns(mut columns) = serde_json::from_str(row_json).ok()?;
    // Stable: among equal keys the last stays last, and is the one that counts; a value it
    // replaces must still parse.
    columns.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::with_capacity(row_json.len() + 16);
    out.push('{');
    let mut first = true;
    for (i, (key, value)) in columns.iter().enumerate() {
        if columns.get(i + 1).is_some_and(|next| next.0 == *key) {
            parses(value.get())?;
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        json_text::push_string(&mut out, key);
        out.push(':');
        push_canonical_text(&mut out, value.get())?;
    }
    out.push('}');
    Some(out)
}

/// Whether JSON text that passed the syntax check parses as a value (a string escape such as
/// a lone surrogate passes the one and fails the other).
fn parses(text: &str) -> Option<()> {
    match text.as_bytes().first()? {
        b'"' if text.contains('\\') => serde_json::from_str::<String>(text).ok().map(|_| ()),
        b'[' | b'{' => serde_json::from_str::<Value>(text).ok().map(|_| ()),
        _ => Some(()),
    }
}

/// A JSON object's entries in document order, keys borrowed where they have no escapes, values
/// as their (validated) text.
struct Columns<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Columns<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Columns<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Columns<'de>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(entry) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    entries.push((entry.0 .0, entry.1));
                }
                Ok(Columns(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// A key, borrowed from the text unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Appends the canonical form of one JSON value given as valid JSON text; `None` when it holds
/// a number outside double range.
fn push_canonical_text(out: &mut String, text: &str) -> Option<()> {
    match text.as_bytes().first()? {
        b'n' | b't' | b'f' => out.push_str(text),
        // No escapes: the text between the quotes is the string itself.
        b'"' if !text.contains('\\') => json_text::push_string(out, &text[1..text.len() - 1]),
        b'"' => json_text::push_string(out, &serde_json::from_str::<String>(text).ok()?),
        b'[' | b'{' => {
            let value: Value = serde_json::from_str(text).ok()?;
            if !within_double_range(&value) {
                return None;
            }
            push_canonical(out, &value);
        }
        _ if is_small_integer(text) => out.push_str(text),
        _ => {
            let v: f64 = text.parse().ok()?;
            if !v.is_finite() {
                return None;
            }
            out.push_str(&format_number(v));
        }
    }
    Some(())
}

/// Whether a JSON number's text is an integer of at most 15 digits: exact as a double and
/// already in canonical form (JSON has no leading zeros; `-0` stays `-0`).
fn is_small_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The canonical JSON of any JSON value (a `json` or `jsonb` column's text), or `None` when it
/// does not parse or holds a number outside double range.
pub fn canonical_value(json: &str) -> Option<String> {
    let value: Value = serde_json::from_str(json).ok()?;
    if !within_double_range(&value) {
        return None;
    }
    let mut out = String::with_capacity(json.len());
    push_canonical(&mut out, &value);
    Some(out)
}

/// The §13.1 checksum of a row's `row_to_json` text.
///
/// ```
/// // Key order, spacing and number spelling do not matter; the result is a signed int32.
/// let a = synchro::checksum::record_checksum(r#"{"name":"Alice","n":12.50}"#);
/// let b = synchro::checksum::record_checksum(r#"{"n": 12.5, "name": "Alice"}"#);
/// assert_eq!(a, b);
/// assert_eq!(synchro::checksum::record_checksum("{}"), -1549353149);
/// ```
pub fn record_checksum(row_json: &str) -> i32 {
    let crc = match canonical_json(row_json) {
        Some(canonical) => crc32(canonical.as_bytes()),
        None => crc32(row_json.as_bytes()),
    };
    crc as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn contract_test_vectors() {
        let cases: &[(&str, Option<&str>, u32)] = &[
            ("{}", Some("{}"), 2745614147),
            (r#"{"name":"Alice"}"#, Some(r#"{"name":"Alice"}"#), 3860697293),
            (
                r#"{"id":"00000000-0000-0000-0000-000000000001","name":"A & B","qty":3,"price":12.50,"tags":["x"],"meta":{"b": 2, "a": 1},"updated_at":"2026-03-05T11:30:00.123456+00:00","deleted_at":null}"#,
                Some(
                    r#"{"deleted_at":null,"id":"00000000-0000-0000-0000-000000000001","meta":{"a":1,"b":2},"name":"A \u0026 B","price":12.5,"qty":3,"tags":["x"],"updated_at":"2026-03-05T11:30:00.123456+00:00"}"#,
                ),
                3976908636,
            ),
            (r#"{"z":1,"a":2,"B":3,"é":4,"_":5}"#, Some(r#"{"B":3,"_":5,"a":2,"z":1,"é":4}"#), 3685851349),
            (
                r#"{"v":1e21,"w":1e20,"u":0.000001,"t":0.0000001,"s":100,"q":1.0}"#,
                Some(r#"{"q":1,"s":100,"t":1e-7,"u":0.000001,"v":1e+21,"w":100000000000000000000}"#),
                265299739,
            ),
            (r#"{"bad":1e400}"#, None, 305484491),
        ];
        for (input, canonical, crc) in cases {
            assert_eq!(canonical_json(input).as_deref(), *canonical, "{input}");
            assert_eq!(record_checksum(input), *crc as i32, "{input}");
        }
    }

    #[test]
    fn hydration_example_and_aggregate() {
        let row = r#"{"deleted_at":null,"id":"00000000-0000-0000-0000-000000000001","total_cents":0,"updated_at":"2026-03-05T11:30:00.123456+00:00"}"#;
        assert_eq!(record_checksum(row), 341561498);
        let text_map = r#"{"deleted_at":null,"id":"00000000-0000-0000-0000-000000000001","total_cents":"0","updated_at":"2026-03-05 11:30:00.123456+00"}"#;
        assert_eq!(record_checksum(text_map), 774251526);
        assert_eq!(record_checksum("{}") ^ record_checksum(r#"{"name":"Alice"}"#), 1169895310);
    }

    #[test]
    fn numbers_follow_the_canonical_rules() {
        for (v, want) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (100.0, "100"),
            (12.5, "12.5"),
            (-1.5, "-1.5"),
            (0.000001, "0.000001"),
            (0.0000001, "1e-7"),
            (1.5e-10, "1.5e-10"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (9007199254740993.0, "9007199254740992"),
            (1.2345678901234568e17, "123456789012345680"),
            (-2.5e300, "-2.5e+300"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(format_number(v), want, "{v:e}");
        }
    }

    /// The tree-building form [`canonical_json`] must equal: parse, check the range, render.
    fn reference(row_json: &str) -> Option<String> {
        let value: Value = serde_json::from_str(row_json).ok()?;
        if !value.is_object() || !within_double_range(&value) {
            return None;
        }
        let mut out = String::new();
        push_canonical(&mut out, &value);
        Some(out)
    }

    #[test]
    fn rows_are_canonicalised_like_the_parsed_tree() {
        let values = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "7",
            "-12",
            "123456789012345",
            "1234567890123456",
            "9007199254740993",
            "12.50",
            "1e21",
            "1E-7",
            "-2.5e300",
            "1e400",
            "-1e400",
            "0.1",
            "\"\"",
            "\"plain\"",
            "\"A & B <c>\"",
            "\"q\\\"b\\\\s\"",
            "\"\\u0041\\n\\t\\u2028\"",
            "\"é 日本\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud83d\"",
            "[]",
            "[1,2.50,\"x\",null]",
            "{\"b\":2,\"a\":[1e400]}",
            "{\"b\": 2, \"a\": {\"d\": 1.0}}",
            "[1e400]",
            "\"\\u0000\"",
        ];
        let keys = ["a", "B", "_", "é", "a\\u0000b", "z", "\\\"q", "a"];
        let mut checked = 0;
        for (i, v) in values.iter().enumerate() {
            for (j, w) in values.iter().enumerate().step_by(3) {
                let k1 = keys[i % keys.len()];
                let k2 = keys[(i + j + 1) % keys.len()];
                for row in [format!("{{\"{k1}\":{v}}}"), format!("{{ \"{k1}\" : {v} , \"{k2}\":{w} }}")] {
                    assert_eq!(canonical_json(&row), reference(&row), "{row}");
                    checked += 1;
                }
            }
        }
        for text in ["{}", "{\"a\":1,}", "{\"a\":01}", "{\"a\":1}x", "[1]", "{\"a\":\"\u{1}\"}", " {\"a\":2} "] {
            assert_eq!(canonical_json(text), reference(text), "{text}");
        }
        assert!(checked > 300);
    }

    #[test]
    fn non_objects_hash_raw_bytes() {
        for text in ["[1,2]", "\"s\"", "not json", "{\"a\":", ""] {
            assert_eq!(record_checksum(text), crc32(text.as_bytes()) as i32, "{text}");
        }
    }
}
