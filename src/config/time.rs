//! Points in time as operators write them: RFC 3339 (`2026-12-03T14:00:00Z`,
//! `2026-12-03T15:00:00+01:00`, fractions of a second ignored) or, for
//! `ctl`, an offset from now (`+30m`). Held as Unix seconds.

/// The last second RFC 3339 can write: 9999-12-31T23:59:59Z.
pub const LATEST: u64 = 253_402_300_799;

/// Unix seconds of an RFC 3339 date-time (up to [`LATEST`]).
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid time {text:?}: expected RFC 3339, e.g. 2026-12-03T14:00:00Z or 2026-12-03T15:00:00+01:00")
    };
    let s = text.trim().as_bytes();
    if s.len() < 20 || !matches!(s[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(range).ok_or_else(bad)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        std::str::from_utf8(part)
            .ok()
            .and_then(|p| p.parse().ok())
            .ok_or_else(bad)
    };
    if s[4] != b'-' || s[7] != b'-' || s[13] != b':' || s[16] != b':' {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let h = i64::from(h1 - b'0') * 10 + i64::from(h2 - b'0');
            let m = i64::from(m1 - b'0') * 10 + i64::from(m2 - b'0');
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return Err(bad()),
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let valid = (1970..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=month_days[(month.clamp(1, 12) - 1) as usize]).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 60;
    if !valid {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset;
    u64::try_from(secs)
        .ok()
        .filter(|s| *s <= LATEST)
        .ok_or_else(bad)
}

/// `2026-12-03T14:00:00Z` (times past [`LATEST`] are written as it).
pub fn format_rfc3339(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.min(LATEST));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A time as `ctl` takes it: RFC 3339, or `+DURATION` from `now` (Unix
/// seconds), e.g. `+30m`, `+2h`.
pub fn parse_when(text: &str, now: u64) -> Result<u64, String> {
    match text.trim().strip_prefix('+') {
        Some(d) => humantime::parse_duration(d.trim())
            .ok()
            .map(|d| now.saturating_add(d.as_secs()))
            .filter(|t| *t <= LATEST)
            .ok_or_else(|| format!("invalid offset {text:?}: expected e.g. +30m or +2h")),
        None => parse_rfc3339(text),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Serde for an optional time kept as RFC 3339 text (the state file).
pub mod opt_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(secs) => s.serialize_str(&super::format_rfc3339(*secs)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse_rfc3339(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_honours_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2026-12-03T14:00:00Z"), Ok(1_796_306_400));
        assert_eq!(
            parse_rfc3339("2026-12-03T15:00:00+01:00"),
            parse_rfc3339("2026-12-03T14:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2026-12-03T09:30:00-04:30"),
            parse_rfc3339("2026-12-03T14:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2026-12-03T14:00:00.123Z"),
            parse_rfc3339("2026-12-03T14:00:00Z")
        );
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Ok(1_709_208_000));
        for secs in [0, 951_782_400, 1_709_208_000, 1_796_306_400, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Ok(secs));
        }
    }

    #[test]
    fn rfc3339_refuses_garbage() {
        for bad in [
            "",
            "tomorrow",
            "2026-12-03",
            "2026-12-03T14:00:00",
            "2026-13-03T14:00:00Z",
            "2026-02-30T14:00:00Z",
            "2025-02-29T14:00:00Z",
            "2026-12-03T24:00:00Z",
            "2026-12-03T14:00:00+25:00",
            "2026-12-03T14:00:00.Z",
            "2026-12-03T1a:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-12-03T14:00:00Zjunk",
            "２０２６-12-03T14:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn when_takes_offsets_from_now() {
        assert_eq!(parse_when("+30m", 1000), Ok(2800));
        assert_eq!(parse_when("+2h", 0), Ok(7200));
        assert_eq!(parse_when("1970-01-01T00:01:00Z", 5), Ok(60));
        assert!(parse_when("+soon", 0).is_err());
        assert!(
            parse_when("+10000y", 0).is_err(),
            "past what RFC 3339 can write"
        );
    }

    #[test]
    fn the_last_writable_second_is_the_limit() {
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59Z"), Ok(LATEST));
        assert!(parse_rfc3339("9999-12-31T23:59:59-23:59").is_err());
        assert_eq!(format_rfc3339(LATEST), "9999-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }
}
