//! A replicated row's §13.1 checksum computed from its pgoutput text values, without reading
//! the row back from PostgreSQL.
//!
//! The edge checksum must equal the checksum a pull emits when it hydrates the row, which is
//! computed over `row_to_json(t.*)` without the excluded columns (PROTOCOL §9.4 C6; an
//! excluded column is rendered as [`OMITTED`]: left out). For the column types below, the text a
//! replication session receives determines that JSON exactly, so the canonical form (§13.2) can
//! be built from the tuple. Both sessions start with the same settings
//! (`pg::SESSION_OPTIONS`: `TimeZone=UTC`, `DateStyle=ISO`, `IntervalStyle=postgres`,
//! `bytea_output=hex`), which the timestamp, interval and bytea rules rely on.
//!
//! | Type | `row_to_json` value | From the text |
//! |---|---|---|
//! | `bool` | `true` / `false` | `t` / `f` |
//! | `int2`, `int4`, `int8`, `float4`, `float8`, `numeric` | the text as a number when it is a valid JSON number, else a string (`NaN`, `Infinity`) | same rule |
//! | `text`, `varchar`, `bpchar`, `name`, `uuid`, `time`, `timetz`, `interval`, `bytea` | a string | the text |
//! | an enum (without a cast to JSON) | its label | the text |
//! | a domain over a built-in type | as its base type | as its base type |
//! | `date` | `"YYYY-MM-DD"` | the text, when it has that shape |
//! | `timestamp` | `"YYYY-MM-DDTHH:MM:SS[.f]"` | the text with `T` for the space |
//! | `timestamptz` | `"…T…+00:00"` | the text (`… +00`) with `T` and `:00` |
//! | `json`, `jsonb` | the value itself | the text, parsed |
//! | arrays of the types above | nested JSON arrays of the elements, bounds dropped | the array text, parsed |
//!
//! Anything else gives `None` and the writer reads the row instead: other types (composites,
//! ranges, geometric and network types, money, arrays of domains, user types with a cast to
//! JSON, …), unchanged-TOAST values, infinite or BC dates, years
//! past 9999, JSON with numbers outside double range (the contract then hashes the raw
//! `row_to_json` text), and tuples whose columns are not the table's full column list (stored
//! generated columns are in `row_to_json` but not in pgoutput).

use crate::capture::events::{ColumnValue, RelColumn};
use crate::checksum::{canonical_value, crc32, format_number};
use crate::json_text;

/// The rendering type of a column that is not part of the row's JSON at all: an excluded
/// column (`EXCLUDE_COLUMNS`), which clients never receive and checksums never cover.
pub const OMITTED: u32 = u32::MAX;

const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const NAME: u32 = 19;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const BPCHAR: u32 = 1042;
const VARCHAR: u32 = 1043;
const DATE: u32 = 1082;
const TIME: u32 = 1083;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const TIMETZ: u32 = 1266;
const INTERVAL: u32 = 1186;
const NUMERIC: u32 = 1700;
const UUID: u32 = 2950;
const JSONB: u32 = 3802;

/// The element type of an array type whose elements are rendered.
fn array_element(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        1000 => BOOL,
        1001 => BYTEA,
        1187 => INTERVAL,
        1003 => NAME,
        1005 => INT2,
        1007 => INT4,
        1016 => INT8,
        1009 => TEXT,
        199 => JSON,
        1021 => FLOAT4,
        1022 => FLOAT8,
        1014 => BPCHAR,
        1015 => VARCHAR,
        1182 => DATE,
        1183 => TIME,
        1115 => TIMESTAMP,
        1185 => TIMESTAMPTZ,
        1270 => TIMETZ,
        1231 => NUMERIC,
        2951 => UUID,
        3807 => JSONB,
        _ => return None,
    })
}

/// The §13.1 checksum of the row `values` (one per column of `columns`), each rendered as the
/// type in `render` (the column's type, or what `row_to_json` treats it as: a domain's base
/// type, `text` for an enum; 0 for none; [`OMITTED`] to leave the column out), or `None` when
/// the text does not determine `row_to_json` (see the module documentation). The caller checks
/// that `columns` are all of the table's columns.
pub fn row_checksum(columns: &[RelColumn], render: &[u32], values: &[ColumnValue]) -> Option<i32> {
    canonical_row(columns, render, values).map(|c| crc32(c.as_bytes()) as i32)
}

/// The canonical JSON (§13.2) of the row, as [`row_checksum`] hashes it.
pub fn canonical_row(columns: &[RelColumn], render: &[u32], values: &[ColumnValue]) -> Option<String> {
    if columns.len() != values.len() || render.len() != values.len() {
        return None;
    }
    // Keys sorted byte-wise: the canonical form's order, whatever the column order.
    let mut order: Vec<usize> = (0..columns.len()).filter(|&i| render[i] != OMITTED).collect();
    order.sort_unstable_by(|&a, &b| columns[a].name.as_bytes().cmp(columns[b].name.as_bytes()));
    let mut out = String::with_capacity(16 * columns.len() + values.iter().map(text_len).sum::<usize>());
    out.push('{');
    for (n, &i) in order.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        json_text::push_string(&mut out, &columns[i].name);
        out.push(':');
        match &values[i] {
            ColumnValue::Null => out.push_str("null"),
            ColumnValue::UnchangedToast => return None,
            ColumnValue::Text(t) => push_value(&mut out, render[i], t)?,
        }
    }
    out.push('}');
    Some(out)
}

fn text_len(v: &ColumnValue) -> usize {
    v.text().map_or(4, str::len)
}

/// Appends the canonical form of one non-null value of type `oid` given as text.
fn push_value(out: &mut String, oid: u32, text: &str) -> Option<()> {
    match oid {
        BOOL => out.push_str(match text {
            "t" => "true",
            "f" => "false",
            _ => return None,
        }),
        INT2 | INT4 | INT8 if is_json_number(text) => push_number(out, text)?,
        FLOAT4 | FLOAT8 | NUMERIC => match text {
            // row_to_json quotes what is not a JSON number: NaN and the infinities.
            "NaN" | "Infinity" | "-Infinity" => json_text::push_string(out, text),
            _ if is_json_number(text) => push_number(out, text)?,
            _ => return None,
        },
        // Settings-dependent outputs (bytea_output, IntervalStyle) are pinned alike in both
        // sessions.
        TEXT | VARCHAR | BPCHAR | NAME | UUID | TIME | TIMETZ | INTERVAL | BYTEA => json_text::push_string(out, text),
        DATE => {
            if !is_iso_date(text) {
                return None;
            }
            json_text::push_string(out, text);
        }
        TIMESTAMP => {
            let (date, time) = text.split_once(' ')?;
            if !is_iso_date(date) || !is_iso_time(time) {
                return None;
            }
            push_datetime(out, date, time, "");
        }
        TIMESTAMPTZ => {
            // The session time zone is UTC, so the offset is always `+00`.
            let (date, rest) = text.split_once(' ')?;
            let time = rest.strip_suffix("+00")?;
            if !is_iso_date(date) || !is_iso_time(time) {
                return None;
            }
            push_datetime(out, date, time, "+00:00");
        }
        JSON | JSONB => out.push_str(&canonical_value(text)?),
        _ => {
            let element = array_element(oid)?;
            // `[lower:upper]=` appears when a lower bound is not 1; row_to_json drops it.
            let body = if text.starts_with('[') { &text[text.find('=')? + 1..] } else { text };
            let mut p = ArrayText { b: body.as_bytes(), i: 0 };
            p.array(out, element, 0)?;
            if p.i != p.b.len() {
                return None;
            }
        }
    }
    Some(())
}

/// A reader of PostgreSQL's array output (`{1,2}`, `{{"a b",NULL},{x,"q\"y"}}`), writing the
/// canonical JSON array. Elements are quoted when they are empty, contain `{}",\` or
/// whitespace, or read `NULL`; inside quotes a backslash escapes the next byte. The delimiter
/// is a comma for every element type rendered here.
struct ArrayText<'t> {
    b: &'t [u8],
    i: usize,
}

impl ArrayText<'_> {
    fn array(&mut self, out: &mut String, element: u32, depth: usize) -> Option<()> {
        // PostgreSQL arrays have at most six dimensions (MAXDIM).
        if depth >= 6 || self.b.get(self.i) != Some(&b'{') {
            return None;
        }
        self.i += 1;
        out.push('[');
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            out.push(']');
            return Some(());
        }
        loop {
            match self.b.get(self.i)? {
                b'{' => self.array(out, element, depth + 1)?,
                b'"' => {
                    let value = self.quoted()?;
                    push_value(out, element, &value)?;
                }
                _ => {
                    let start = self.i;
                    while !matches!(self.b.get(self.i)?, b',' | b'}') {
                        self.i += 1;
                    }
                    let raw = std::str::from_utf8(&self.b[start..self.i]).ok()?;
                    if raw == "NULL" {
                        out.push_str("null");
                    } else {
                        push_value(out, element, raw)?;
                    }
                }
            }
            match self.b.get(self.i)? {
                b',' => out.push(','),
                b'}' => {
                    self.i += 1;
                    out.push(']');
                    return Some(());
                }
                _ => return None,
            }
            self.i += 1;
        }
    }

    /// A quoted element, unescaped; `self.i` is on its opening quote.
    fn quoted(&mut self) -> Option<String> {
        self.i += 1;
        let mut value = Vec::new();
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return String::from_utf8(value).ok();
                }
                b'\\' => {
                    value.push(*self.b.get(self.i + 1)?);
                    self.i += 2;
                }
                c => {
                    value.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

fn push_datetime(out: &mut String, date: &str, time: &str, zone: &str) {
    out.push('"');
    out.push_str(date);
    out.push('T');
    out.push_str(time);
    out.push_str(zone);
    out.push('"');
}

/// Appends the canonical spelling of a JSON number: the text itself for an integer short
/// enough to be exact as a double (the common case, no formatting), else the double's.
fn push_number(out: &mut String, text: &str) -> Option<()> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()) {
        out.push_str(text);
        return Some(());
    }
    let v: f64 = text.parse().ok()?;
    if !v.is_finite() {
        // Outside double range: the contract hashes the raw row text then.
        return None;
    }
    out.push_str(&format_number(v));
    Some(())
}

/// The JSON number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// `YYYY-MM-DD` with a four-digit year (ISO `DateStyle`, AD, before 10000).
fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10 && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() })
}

/// `HH:MM:SS` with an optional fraction of one to six digits.
fn is_iso_time(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 8
        || !b[..8].iter().enumerate().all(|(i, c)| if i == 2 || i == 5 { *c == b':' } else { c.is_ascii_digit() })
    {
        return false;
    }
    match &b[8..] {
        [] => true,
        [b'.', frac @ ..] => (1..=6).contains(&frac.len()) && frac.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::record_checksum;
    use crate::types::Oid;

    fn cols(spec: &[(&str, u32)]) -> Vec<RelColumn> {
        spec.iter().map(|(n, t)| RelColumn { name: n.to_string(), type_oid: Oid(*t) }).collect()
    }

    fn oids(columns: &[RelColumn]) -> Vec<u32> {
        columns.iter().map(|c| c.type_oid.0).collect()
    }

    fn text(v: &str) -> ColumnValue {
        ColumnValue::Text(v.to_string())
    }

    /// Rendered from text, the checksum equals the one of the `row_to_json` text PostgreSQL
    /// gives for the same row (written out by hand here; the integration tests compare with
    /// PostgreSQL itself for every contract type).
    #[test]
    fn matches_the_row_to_json_checksum() {
        let columns = cols(&[
            ("id", UUID),
            ("qty", INT4),
            ("price", NUMERIC),
            ("ratio", FLOAT8),
            ("odd", FLOAT8),
            ("done", BOOL),
            ("name", TEXT),
            ("meta", JSONB),
            ("day", DATE),
            ("at", TIMESTAMPTZ),
            ("local", TIMESTAMP),
            ("gone", TIMESTAMPTZ),
            ("big", INT8),
        ]);
        let values = vec![
            text("00000000-0000-0000-0000-000000000001"),
            text("3"),
            text("12.50"),
            text("1e+30"),
            text("NaN"),
            text("t"),
            text("A & B <\"q\">\n"),
            text(r#"{"b": 2, "a": [1, 2.0, null]}"#),
            text("2026-03-05"),
            text("2026-03-05 11:30:00.123456+00"),
            text("2026-03-05 11:30:00"),
            ColumnValue::Null,
            text("9007199254740993"),
        ];
        let pg = r#"{"id":"00000000-0000-0000-0000-000000000001","qty":3,"price":12.50,"ratio":1e+30,"odd":"NaN","done":true,"name":"A & B <\"q\">\n","meta":{"a": [1, 2.0, null], "b": 2},"day":"2026-03-05","at":"2026-03-05T11:30:00.123456+00:00","local":"2026-03-05T11:30:00","gone":null,"big":9007199254740993}"#;
        assert_eq!(row_checksum(&columns, &oids(&columns), &values), Some(record_checksum(pg)));
    }

    #[test]
    fn omitted_columns_are_left_out_even_when_unreadable() {
        let columns = cols(&[("id", INT4), ("secret", TEXT), ("title", TEXT), ("blob", 0)]);
        let values = [text("1"), ColumnValue::UnchangedToast, text("t"), text("(1,2)")];
        assert_eq!(
            canonical_row(&columns, &[INT4, OMITTED, TEXT, OMITTED], &values).as_deref(),
            Some(r#"{"id":1,"title":"t"}"#),
            "an excluded column is neither rendered nor a reason to read the row back"
        );
        assert_eq!(canonical_row(&columns, &[INT4, TEXT, TEXT, OMITTED], &values), None, "unchanged TOAST");
    }

    #[test]
    fn arrays_become_json_arrays() {
        let one = |oid: u32, v: &str| canonical_row(&cols(&[("c", oid)]), &[oid], &[text(v)]);
        let want = |json: &str| Some(format!("{{\"c\":{json}}}"));
        assert_eq!(one(1007, "{}"), want("[]"));
        assert_eq!(one(1007, "[0:1]={1,2}"), want("[1,2]"));
        assert_eq!(one(1007, "{{1,NULL},{3,4}}"), want("[[1,null],[3,4]]"));
        assert_eq!(
            one(1009, r#"{"","NULL","a b","q\"x","b\\s",NULL,"{}","é,",plain}"#),
            want(r#"["","NULL","a b","q\"x","b\\s",null,"{}","é,","plain"]"#)
        );
        assert_eq!(one(1185, r#"{"2026-01-01 10:00:00+00",NULL}"#), want(r#"["2026-01-01T10:00:00+00:00",null]"#));
        assert_eq!(one(3807, r#"{"{\"b\": 1, \"a\": 2}","[1, 2.50]"}"#), want(r#"[{"a":2,"b":1},[1,2.5]]"#));
        assert_eq!(one(1231, "{1.50,NaN}"), want(r#"[1.5,"NaN"]"#));
        assert_eq!(one(1000, "{t,f}"), want("[true,false]"));
        for bad in ["{1,2", "{1,2}}", "1,2", "{\"x}", "{{1},2", "[0:1]{1}", "{1,x}"] {
            assert_eq!(one(1007, bad), None, "{bad}");
        }
        assert_eq!(one(1017, "{\"(1,2)\"}"), None, "point[]");
        assert_eq!(one(1007, "{{{{{{1}}}}}}"), want("[[[[[[1]]]]]]"));
        assert_eq!(one(1007, &format!("{}{}", "{".repeat(100_000), "}".repeat(100_000))), None, "deeper than MAXDIM");
    }

    /// Arbitrary text for every rendered kind: an answer or `None`, never a panic (the fuzz
    /// target `text_inputs` covers the same from its corpus).
    #[test]
    fn any_text_is_answered_without_panicking() {
        const ALPHABET: &[char] = &[
            '{', '}', '"', '\\', ',', ' ', 'N', 'U', 'L', 'a', 'é', '1', '0', '-', ':', '.', 'e', 'T', '+', '[', ']',
            '=',
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]).collect();
            for oid in [INT4, FLOAT8, NUMERIC, TEXT, JSONB, DATE, TIMESTAMPTZ, 1007, 1009, 1185, 3807] {
                let _ = canonical_row(&cols(&[("c", oid)]), &[oid], &[ColumnValue::Text(text.clone())]);
            }
        }
    }

    #[test]
    fn refuses_what_the_text_does_not_determine() {
        let one = |oid: u32, v: ColumnValue| row_checksum(&cols(&[("c", oid)]), &[oid], &[v]);
        assert_eq!(one(TEXT, ColumnValue::UnchangedToast), None);
        assert_eq!(one(1017, text("{\"(1,2)\"}")), None, "point[]");
        assert_eq!(one(TIMESTAMPTZ, text("infinity")), None);
        assert_eq!(one(TIMESTAMPTZ, text("0099-01-01 00:00:00+00 BC")), None);
        assert_eq!(one(TIMESTAMPTZ, text("12026-01-01 00:00:00+00")), None);
        assert_eq!(one(TIMESTAMPTZ, text("2026-01-01 00:00:00+01")), None);
        assert_eq!(one(DATE, text("infinity")), None);
        assert_eq!(one(JSONB, text(r#"{"x": 1e400}"#)), None);
        assert_eq!(one(NUMERIC, text(&format!("1{}", "0".repeat(400)))), None);
        assert_eq!(one(BOOL, text("yes")), None);
        assert_eq!(row_checksum(&cols(&[("a", INT4), ("b", INT4)]), &[INT4, INT4], &[text("1")]), None);
        assert_eq!(one(0, text("x")), None, "no rendering type");
    }

    #[test]
    fn numbers_keep_the_canonical_spelling() {
        for (input, want) in [
            ("0", "0"),
            ("-0", "-0"),
            ("42", "42"),
            ("-17", "-17"),
            ("12.50", "12.5"),
            ("1e+30", "1e+30"),
            ("0.0000001", "1e-7"),
            ("123456789012345678", "123456789012345680"),
            ("9007199254740993", "9007199254740992"),
        ] {
            let mut out = String::new();
            push_number(&mut out, input).unwrap();
            assert_eq!(out, want, "{input}");
        }
        for bad in ["", "-", "01", "1.", ".5", "1e", "+1", "NaN", "Infinity", "1 "] {
            assert!(!is_json_number(bad), "{bad:?}");
        }
        for good in ["0", "-0", "0.5", "10", "1e5", "1E-5", "-2.5e+300"] {
            assert!(is_json_number(good), "{good:?}");
        }
    }
}
