//! Timestamps on the wire: envelope formatting (UTC `Z`, at most 6 fraction digits, contract
//! §0.4 and C16) and the lenient parsing of client-sent timestamps (§7.9, C4). No crate: the
//! civil-date arithmetic is a few lines.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// (year, month, day) -> days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Microseconds since the Unix epoch (negative before 1970).
fn to_micros(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i128,
        Err(e) => -(e.duration().as_micros() as i128),
    }
}

fn from_micros(us: i128) -> Option<SystemTime> {
    if us >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_micros(u64::try_from(us).ok()?))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_micros(u64::try_from(-us).ok()?))
    }
}

/// Milliseconds since the Unix epoch (0 for times before it), for counters and metrics.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// [`unix_ms`] of now.
pub fn unix_ms_now() -> u64 {
    unix_ms(SystemTime::now())
}

/// RFC 3339 in UTC with `Z`; the fraction only when non-zero, trailing zeros trimmed, at most
/// microseconds: `2026-03-05T11:30:00Z`, `2026-03-05T11:30:00.123456Z`.
pub fn format_timestamp(t: SystemTime) -> String {
    let us = to_micros(t);
    let secs = us.div_euclid(1_000_000) as i64;
    let frac = us.rem_euclid(1_000_000) as u32;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut out = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if frac != 0 {
        let digits = format!("{frac:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// The HTTP `Date` format (RFC 9110 §5.6.7, IMF-fixdate): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = to_micros(t).div_euclid(1_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let part = self.s.get(self.i..self.i + n)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.i += n;
        Some(part.iter().fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0')))
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn done(&self) -> bool {
        self.i == self.s.len()
    }
}

/// Parses a client timestamp leniently: `YYYY-MM-DD`, optionally followed by `T`/`t`/space and
/// `HH:MM[:SS[.fraction]]`, optionally followed by `Z`/`z`/`±HH`/`±HHMM`/`±HH:MM` (no zone means
/// UTC). Fractions beyond microseconds are truncated. `None` for anything else.
pub fn parse_client_timestamp(text: &str) -> Option<SystemTime> {
    let mut c = Cursor { s: text.trim().as_bytes(), i: 0 };
    let year = i64::from(c.digits(4)?);
    if !c.eat(b'-') {
        return None;
    }
    let month = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let day = c.digits(2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let (mut hour, mut minute, mut second, mut micros) = (0u32, 0u32, 0u32, 0u32);
    let mut offset_secs: i64 = 0;
    if !c.done() {
        if !(c.eat(b'T') || c.eat(b't') || c.eat(b' ')) {
            return None;
        }
        hour = c.digits(2)?;
        if !c.eat(b':') {
            return None;
        }
        minute = c.digits(2)?;
        if c.eat(b':') {
            second = c.digits(2)?;
            if c.eat(b'.') || c.eat(b',') {
                let start = c.i;
                while c.peek().is_some_and(|b| b.is_ascii_digit()) {
                    c.i += 1;
                }
                let frac = &c.s[start..c.i];
                if frac.is_empty() {
                    return None;
                }
                for (k, b) in frac.iter().take(6).enumerate() {
                    micros += u32::from(b - b'0') * 10u32.pow(5 - k as u32);
                }
            }
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        // A leap second is clamped to the last representable instant of the minute.
        if second == 60 {
            second = 59;
            micros = 999_999;
        }
        match c.peek() {
            None => {}
            Some(b'Z') | Some(b'z') => c.i += 1,
            Some(sign @ (b'+' | b'-')) => {
                c.i += 1;
                let oh = c.digits(2)?;
                let om = if c.eat(b':') { c.digits(2)? } else { c.digits(2).unwrap_or(0) };
                if oh > 23 || om > 59 {
                    return None;
                }
                let total = i64::from(oh * 3600 + om * 60);
                offset_secs = if sign == b'+' { total } else { -total };
            }
            Some(_) => return None,
        }
    }
    if !c.done() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    from_micros(i128::from(secs) * 1_000_000 + i128::from(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64, micros: u32) -> SystemTime {
        from_micros(i128::from(secs) * 1_000_000 + i128::from(micros)).unwrap()
    }

    #[test]
    fn formats_envelope_timestamps() {
        for (t, want) in [
            (at(0, 0), "1970-01-01T00:00:00Z"),
            (at(1_772_710_200, 0), "2026-03-05T11:30:00Z"),
            (at(1_772_710_200, 123_456), "2026-03-05T11:30:00.123456Z"),
            (at(1_772_710_200, 100_000), "2026-03-05T11:30:00.1Z"),
            (at(951_782_400, 1), "2000-02-29T00:00:00.000001Z"),
            (at(-1, 500_000), "1969-12-31T23:59:59.5Z"),
        ] {
            assert_eq!(format_timestamp(t), want);
        }
        // Nanoseconds are truncated to microseconds.
        assert_eq!(format_timestamp(UNIX_EPOCH + Duration::from_nanos(1_999)), "1970-01-01T00:00:00.000001Z");
    }

    #[test]
    fn formats_http_dates() {
        assert_eq!(http_date(at(784_111_777, 0)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(at(0, 999_999)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(at(951_825_599, 0)), "Tue, 29 Feb 2000 11:59:59 GMT");
        assert_eq!(http_date(at(-1, 0)), "Wed, 31 Dec 1969 23:59:59 GMT");
    }

    #[test]
    fn parses_every_form_the_sdks_send() {
        let base = at(1_772_708_400, 0); // 2026-03-05T11:00:00Z
        let ms = at(1_772_708_400, 123_000);
        for (text, want) in [
            ("2026-03-05T11:00:00.123Z", ms),
            ("2026-03-05T11:00:00.123000+00:00", ms),
            ("2026-03-05T11:00:00.123456789Z", at(1_772_708_400, 123_456)),
            ("2026-03-05 11:00:00", base),
            ("2026-03-05t11:00:00z", base),
            ("2026-03-05T11:00", base),
            ("2026-03-05T13:00:00+02", base),
            ("2026-03-05T13:30:00+0230", base),
            ("2026-03-05T08:30:00-02:30", base),
            ("2026-03-05T11:00:00.123", ms),
            ("2026-03-05", at(1_772_668_800, 0)),
            ("  2026-03-05T11:00:00Z ", base),
            ("2024-02-29T00:00:00Z", at(1_709_164_800, 0)),
            ("2016-12-31T23:59:60Z", at(1_483_228_799, 999_999)),
            ("0001-01-01T00:00:00Z", at(-62_135_596_800, 0)),
        ] {
            assert_eq!(parse_client_timestamp(text), Some(want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "yesterday",
            "2026-3-05",
            "2026-13-01",
            "2026-02-30",
            "2025-02-29",
            "2026-03-05T24:00:00Z",
            "2026-03-05T11:60:00Z",
            "2026-03-05T11:00:00.Z",
            "2026-03-05T11:00:00+25:00",
            "2026-03-05T11:00:00 UTC",
            "2026-03-05X11:00:00",
            "2026-03-05T11",
            "20260305T110000Z",
            "+2026-03-05",
            "2026-03-05T11:00:00Z trailing",
        ] {
            assert_eq!(parse_client_timestamp(text), None, "{text:?}");
        }
    }

    #[test]
    fn round_trips_through_format() {
        for t in [at(0, 0), at(1_772_710_200, 123_456), at(4_102_444_799, 999_999)] {
            assert_eq!(parse_client_timestamp(&format_timestamp(t)), Some(t));
        }
    }
}
