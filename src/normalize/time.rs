//! Event time: integers (seconds, milliseconds, 17-digit timetokens) and ISO-8601 strings to
//! Unix seconds and milliseconds, exactly, in integer arithmetic (never through f64).
//!
//! Accepted range: 1970-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999Z. No clock, no time zone
//! database: offsets are numeric only.

/// An event time; `ms` is `None` when the source gives whole seconds only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Instant {
    /// Unix seconds.
    pub(super) secs: i64,
    /// Unix milliseconds, when the source carries sub-second precision.
    pub(super) ms: Option<i64>,
}

/// 9999-12-31T23:59:59Z, the last second a 4-digit ISO year can express.
pub(super) const MAX_SECS: i64 = 253_402_300_799;
const MAX_MS: i64 = MAX_SECS * 1000 + 999;
/// Integers in `MS_MIN..MS_END` (13–14 digits: 2001-09-09 ..= 5138) are Unix milliseconds.
const MS_MIN: i128 = 1_000_000_000_000;
const MS_END: i128 = 100_000_000_000_000;
/// Integers in `TT_MIN..TT_END` (17–18 digits) are PubNub timetokens: 100 ns units.
const TT_MIN: i128 = 10_000_000_000_000_000;
const TT_END: i128 = 1_000_000_000_000_000_000;
const TT_PER_SEC: i128 = 10_000_000;
const TT_PER_MS: i128 = 10_000;

/// Interprets an integer timestamp by magnitude.
///
/// - `0 ..= MAX_SECS`: Unix seconds (`ms` is `None`);
/// - 13–14 digits: Unix milliseconds;
/// - 17–18 digits: a timetoken in 100 ns units, truncated to seconds and milliseconds;
/// - anything else (negative, the gaps between, 19+ digits): `None`, out of range.
pub(super) fn from_integer(n: i128) -> Option<Instant> {
    let (secs, ms) = if (0..=i128::from(MAX_SECS)).contains(&n) {
        (n, None)
    } else if (MS_MIN..MS_END).contains(&n) {
        (n / 1000, Some(n))
    } else if (TT_MIN..TT_END).contains(&n) {
        (n / TT_PER_SEC, Some(n / TT_PER_MS))
    } else {
        return None;
    };
    Some(Instant {
        secs: i64::try_from(secs).ok()?,
        ms: match ms {
            Some(ms) => Some(i64::try_from(ms).ok()?),
            None => None,
        },
    })
}

/// Interprets an integer given as milliseconds (E&A `precise_timestamp`); a 17–18 digit value
/// is a timetoken and is truncated to milliseconds.
pub(super) fn millis_from_integer(n: i128) -> Option<i64> {
    let ms = if (0..=i128::from(MAX_MS)).contains(&n) {
        n
    } else if (TT_MIN..TT_END).contains(&n) {
        n / TT_PER_MS
    } else {
        return None;
    };
    i64::try_from(ms).ok()
}

/// The accepted shape, quoted in error messages.
const SHAPE: &str = "not an ISO-8601 time (YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM))";

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM|±HHMM|±HH)`.
///
/// `T` may be `t` or a space, `Z` may be `z`, the fraction (`.` or `,`) has 1 or more digits
/// and is truncated to milliseconds; a leap second (`:60`) counts as the next second. A time
/// zone is required: a local time is ambiguous. `ms` is always `Some`.
pub(super) fn parse_iso8601(s: &str) -> Result<Instant, &'static str> {
    let mut c = Cursor {
        bytes: s.trim_ascii().as_bytes(),
        pos: 0,
    };
    let year = c.digits(4).ok_or(SHAPE)?;
    c.literal(b"-")?;
    let month = c.digits(2).ok_or(SHAPE)?;
    c.literal(b"-")?;
    let day = c.digits(2).ok_or(SHAPE)?;
    c.literal(b"Tt ")?;
    let hour = c.digits(2).ok_or(SHAPE)?;
    c.literal(b":")?;
    let minute = c.digits(2).ok_or(SHAPE)?;
    c.literal(b":")?;
    let second = c.digits(2).ok_or(SHAPE)?;

    let mut millis = 0;
    if c.eat(b".,") {
        let mut count = 0;
        while let Some(d) = c.digit() {
            if count < 3 {
                millis = millis * 10 + d;
            }
            count += 1;
        }
        if count == 0 {
            return Err(SHAPE);
        }
        for _ in count..3 {
            millis *= 10;
        }
    }

    let offset_secs = match c.next() {
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hours = c.digits(2).ok_or(SHAPE)?;
            let minutes = if c.eat(b":") {
                c.digits(2).ok_or(SHAPE)?
            } else {
                c.digits(2).unwrap_or(0)
            };
            if hours > 23 || minutes > 59 {
                return Err("time zone offset out of range");
            }
            let magnitude = hours * 3600 + minutes * 60;
            if sign == b'-' { -magnitude } else { magnitude }
        }
        None => return Err("missing time zone (Z or ±HH:MM)"),
        Some(_) => return Err(SHAPE),
    };
    if !c.at_end() {
        return Err(SHAPE);
    }

    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day out of range");
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err("time of day out of range");
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    if secs < 0 {
        return Err("before 1970-01-01T00:00:00Z");
    }
    if secs > MAX_SECS {
        return Err("after 9999-12-31T23:59:59Z");
    }
    Ok(Instant {
        secs,
        ms: Some(secs * 1000 + millis),
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub(super) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// Year, month, day of the `days`-th day after 1970-01-01 (the inverse of
/// [`days_from_civil`], Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// RFC 3339 UTC time of Unix milliseconds `ms`: `2024-06-10T16:00:00.123Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        ms.rem_euclid(1000)
    )
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A bounds-checked reader over ASCII bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Option<u8> {
        let b = self.bytes.get(self.pos).copied()?;
        self.pos += 1;
        Some(b)
    }

    fn digit(&mut self) -> Option<i64> {
        let b = self
            .bytes
            .get(self.pos)
            .copied()
            .filter(u8::is_ascii_digit)?;
        self.pos += 1;
        Some(i64::from(b - b'0'))
    }

    /// Exactly `n` decimal digits.
    fn digits(&mut self, n: usize) -> Option<i64> {
        let start = self.pos;
        let mut value = 0;
        for _ in 0..n {
            match self.digit() {
                Some(d) => value = value * 10 + d,
                None => {
                    self.pos = start;
                    return None;
                }
            }
        }
        Some(value)
    }

    /// Consumes one byte if it is one of `any`.
    fn eat(&mut self, any: &[u8]) -> bool {
        let hit = self.bytes.get(self.pos).is_some_and(|b| any.contains(b));
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn literal(&mut self, any: &[u8]) -> Result<(), &'static str> {
        if self.eat(any) { Ok(()) } else { Err(SHAPE) }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Days since the epoch by counting, independent of `days_from_civil`.
    fn naive_days(year: i64, month: i64, day: i64) -> i64 {
        let leap = |y: i64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let mut days: i64 = (1970..year).map(|y| if leap(y) { 366 } else { 365 }).sum();
        days += (1..month).map(|m| days_in_month(year, m)).sum::<i64>();
        days + day - 1
    }

    #[test]
    fn known_instants() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0, 0),
            ("2000-02-29T12:00:00Z", 951_825_600, 951_825_600_000),
            ("2024-06-10T16:00:00.123Z", 1_718_035_200, 1_718_035_200_123),
            (
                "2024-06-10T16:00:00.999999999Z",
                1_718_035_200,
                1_718_035_200_999,
            ),
            (
                "2024-06-11T01:00:00+09:00",
                1_718_035_200,
                1_718_035_200_000,
            ),
            ("2016-12-31T23:59:60Z", 1_483_228_800, 1_483_228_800_000),
            ("9999-12-31T23:59:59.999Z", MAX_SECS, MAX_MS),
        ];
        for (iso, secs, ms) in cases {
            assert_eq!(
                parse_iso8601(iso),
                Ok(Instant { secs, ms: Some(ms) }),
                "{iso}"
            );
        }
        for bad in [
            "2024-06-10",
            "2024-06-10T16:00Z",
            "2024-6-10T16:00:00Z",
            "2024-06-10T16:00:00.Z",
            "2024-06-10T16:00:00+2:00",
            "2024-06-10T16:00:00+24:00",
            "2024-06-10T24:00:00Z",
            "2024-06-10T16:00:00Zjunk",
            "2024-04-31T00:00:00Z",
            "1970-01-01T00:30:00+01:00",
            "9999-12-31T23:59:59-00:01",
            "２０２４-06-10T16:00:00Z",
        ] {
            assert!(parse_iso8601(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_round_trips_through_the_parser() {
        for ms in [0_i64, 1_718_035_200_123, 951_782_400_000, 4_102_444_799_999] {
            let text = rfc3339_ms(ms);
            let back = parse_iso8601(&text).unwrap();
            assert_eq!(back.ms, Some(ms), "{text}");
        }
        assert_eq!(rfc3339_ms(1_718_035_200_123), "2024-06-10T16:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn integer_forms() {
        let at = |secs, ms| Some(Instant { secs, ms });
        assert_eq!(from_integer(0), at(0, None));
        assert_eq!(from_integer(1_718_035_200), at(1_718_035_200, None));
        assert_eq!(from_integer(i128::from(MAX_SECS)), at(MAX_SECS, None));
        assert_eq!(from_integer(i128::from(MAX_SECS) + 1), None);
        assert_eq!(
            from_integer(1_718_035_200_123),
            at(1_718_035_200, Some(1_718_035_200_123))
        );
        assert_eq!(from_integer(171_803_520_012_345), None);
        assert_eq!(
            from_integer(17_180_352_001_239_999),
            at(1_718_035_200, Some(1_718_035_200_123))
        );
        assert_eq!(from_integer(TT_END), None);
        assert_eq!(from_integer(-1), None);
        assert_eq!(
            millis_from_integer(1_718_035_200_123),
            Some(1_718_035_200_123)
        );
        assert_eq!(
            millis_from_integer(17_180_352_001_239_999),
            Some(1_718_035_200_123)
        );
        assert_eq!(millis_from_integer(-1), None);
    }

    proptest! {
        #[test]
        fn iso_matches_a_naive_calendar(
            year in 1970i64..=9999, month in 1i64..=12, day_seed in 0i64..31,
            hour in 0i64..24, minute in 0i64..60, second in 0i64..60,
            fraction in "[0-9]{0,9}",
        ) {
            let day = day_seed % days_in_month(year, month) + 1;
            let dot = if fraction.is_empty() { "" } else { "." };
            let iso = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{dot}{fraction}Z");
            let secs = naive_days(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
            let millis: i64 = format!("{fraction:0<3}")[..3].parse().unwrap();
            prop_assert_eq!(parse_iso8601(&iso), Ok(Instant { secs, ms: Some(secs * 1000 + millis) }));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,40}") {
            let _ = parse_iso8601(&s);
        }
    }
}
