//! Per-record checksums (contract §13): CRC-32/ISO-HDLC over the canonical JSON of a row's
//! `row_to_json` text, emitted as a signed 32-bit integer.
//!
//! Numbers are deliberately read as IEEE-754 doubles (so `9007199254740993` and
//! `9007199254740992` collide, and `12.50` equals `12.5`): that precision loss is part of the
//! algorithm the SDKs reproduce. Text that does not parse as a JSON object within double range
//! is hashed as raw bytes.

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
pub fn canonical_json(row_json: &str) -> Option<String> {
    let value: Value = serde_json::from_str(row_json).ok()?;
    // Numbers keep their text when parsed (serde_json's arbitrary_precision, for exact pushes):
    // refuse here what a double cannot hold, as a double parser would.
    if !value.is_object() || !within_double_range(&value) {
        return None;
    }
    let mut out = String::with_capacity(row_json.len());
    push_canonical(&mut out, &value);
    Some(out)
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

    #[test]
    fn non_objects_hash_raw_bytes() {
        for text in ["[1,2]", "\"s\"", "not json", "{\"a\":", ""] {
            assert_eq!(record_checksum(text), crc32(text.as_bytes()) as i32, "{text}");
        }
    }
}
