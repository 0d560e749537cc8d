//! JSON string escaping exactly as the contract's canonical form requires (§13.2, and the
//! schema hash of §4.6): `<`, `>`, `&`, U+2028 and U+2029 escaped, control characters as
//! `\b \f \n \r \t` or lower-case `\u00xx`, everything else raw UTF-8.

/// Appends `s` as a quoted, escaped JSON string.
pub fn push_string(out: &mut String, s: &str) {
    out.push('"');
    // Most strings need no escape at all: copy them whole. 0xE2 leads U+2028 and U+2029.
    let plain = |b: &u8| *b >= 0x20 && !matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&' | 0xE2);
    if s.as_bytes().iter().all(plain) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `s` as a quoted, escaped JSON string.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_string(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_the_reference_encoder() {
        for (input, want) in [
            ("plain é 日本", r#""plain é 日本""#),
            ("A & B <c>", r#""A \u0026 B \u003cc\u003e""#),
            ("q\"b\\s", r#""q\"b\\s""#),
            ("\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}", "\"\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}\""),
            ("\u{2028}\u{2029}", r#""\u2028\u2029""#),
        ] {
            assert_eq!(string(input), want, "{input:?}");
        }
    }
}
