//! time: syslog timestamps to Unix milliseconds, and back out as RFC 3339.
//!
//! No calendar crate: the civil/day conversions are Howard Hinnant's
//! `days_from_civil` / `civil_from_days`, exact for the proleptic Gregorian
//! calendar. Every time this module accepts lies in years 0000..=9999, so the
//! writer always has four year digits.

use super::ParseError;

pub(crate) const DAY_MS: i64 = 86_400_000;
/// 0000-01-01T00:00:00.000Z
pub(crate) const MIN_MS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z
pub(crate) const MAX_MS: i64 = 253_402_300_799_999;

pub(crate) fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

pub(crate) fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (`m` 1..=12).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn in_range(ms: i64) -> Result<i64, ParseError> {
    if (MIN_MS..=MAX_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(ParseError::Timestamp)
    }
}

/// The value of `s` if it is all ASCII digits (at most 4).
fn num(s: Option<&[u8]>) -> Option<u32> {
    let s = s?;
    if s.is_empty() {
        return None;
    }
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// An RFC 3339 timestamp (`2026-01-27T14:12:23.9558Z`, `...+01:00`): fraction of any
/// length (truncated to milliseconds), offset `Z` or `±hh:mm` (also `±hhmm`).
/// A leap second (`:60`) counts as the first second of the next minute.
pub(crate) fn parse_rfc3339(s: &[u8]) -> Result<i64, ParseError> {
    parse_rfc3339_opt(s)
        .ok_or(ParseError::Timestamp)
        .and_then(in_range)
}

fn parse_rfc3339_opt(s: &[u8]) -> Option<i64> {
    let y = num(s.get(0..4))?;
    let mo = num(s.get(5..7))?;
    let d = num(s.get(8..10))?;
    let h = num(s.get(11..13))?;
    let mi = num(s.get(14..16))?;
    let sec = num(s.get(17..19))?;
    let seps = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| s.get(i) != Some(&c)) || !matches!(s.get(10), Some(b'T' | b't')) {
        return None;
    }
    let y = i64::from(y);
    if !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut frac = 0i64;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(&c) = s.get(i) {
            if !c.is_ascii_digit() {
                break;
            }
            if i - start < 3 {
                frac = frac * 10 + i64::from(c - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            frac *= 10;
        }
    }
    let offset_s = match s.get(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = num(s.get(i + 1..i + 3))?;
            i += 3;
            if s.get(i) == Some(&b':') {
                i += 1;
            }
            let om = num(s.get(i..i + 2))?;
            i += 2;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    if i != s.len() {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + sec) - offset_s;
    Some(secs * 1000 + frac)
}

/// An RFC 3164 timestamp's fields, already range-checked (`day` fits the month in a
/// leap year, `sod` is the second of the day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bsd {
    pub mon: u32,
    pub day: u32,
    pub sod: u32,
}

/// The month of a three-letter English abbreviation (`Jan` = 1).
pub(crate) fn month(s: &[u8]) -> Option<u32> {
    const NAMES: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    NAMES
        .iter()
        .position(|n| n.as_slice() == s)
        .map(|i| i as u32 + 1)
}

/// `hh:mm:ss` to the second of the day (`:60` allowed, see [`parse_rfc3339`]).
pub(crate) fn clock(s: &[u8]) -> Option<u32> {
    let h = num(s.get(0..2))?;
    let m = num(s.get(3..5))?;
    let sec = num(s.get(6..8))?;
    if s.len() != 8 || s[2] != b':' || s[5] != b':' || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(h * 3600 + m * 60 + sec)
}

impl Bsd {
    /// The year is not on the wire: take the latest year that puts the timestamp no more
    /// than 31 days after `received_ms` (a December event received in January belongs
    /// to the previous year; a 29 February goes back to the last leap year). UTC.
    pub(crate) fn resolve(self, received_ms: i64) -> Result<i64, ParseError> {
        let received_ms = in_range(received_ms)?;
        let (ry, _, _) = civil_from_days(received_ms.div_euclid(DAY_MS));
        let limit = received_ms.saturating_add(31 * DAY_MS);
        for y in (ry - 8..=ry + 1).rev() {
            if self.day > days_in_month(y, self.mon) {
                continue;
            }
            let ms = (days_from_civil(y, self.mon, self.day) * 86_400 + i64::from(self.sod)) * 1000;
            if ms <= limit {
                return in_range(ms);
            }
        }
        Err(ParseError::Timestamp)
    }
}

/// The time to use when the header has none.
pub(crate) fn received(received_ms: i64) -> Result<i64, ParseError> {
    in_range(received_ms)
}

/// `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`. `ms` must lie in `MIN_MS..=MAX_MS`.
pub(crate) fn write_rfc3339_ms(out: &mut Vec<u8>, ms: i64) {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS) as u32;
    let (y, m, d) = civil_from_days(days);
    let y = y.clamp(0, 9999) as u32;
    let (sec, milli) = (rem / 1000, rem % 1000);
    let (h, mi, s) = (sec / 3600, sec / 60 % 60, sec % 60);
    let dg = |v: u32| b'0' + (v % 10) as u8;
    out.extend_from_slice(&[
        dg(y / 1000),
        dg(y / 100),
        dg(y / 10),
        dg(y),
        b'-',
        dg(m / 10),
        dg(m),
        b'-',
        dg(d / 10),
        dg(d),
        b'T',
        dg(h / 10),
        dg(h),
        b':',
        dg(mi / 10),
        dg(mi),
        b':',
        dg(s / 10),
        dg(s),
        b'.',
        dg(milli / 100),
        dg(milli / 10),
        dg(milli),
        b'Z',
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(s: &str) -> Result<String, ParseError> {
        parse_rfc3339(s.as_bytes()).map(fmt)
    }

    fn fmt(ms: i64) -> String {
        let mut out = Vec::new();
        write_rfc3339_ms(&mut out, ms);
        String::from_utf8(out).unwrap()
    }

    fn ms_of(s: &str) -> i64 {
        parse_rfc3339(s.as_bytes()).unwrap()
    }

    #[test]
    fn civil_round_trip() {
        for z in (-800_000i64..3_000_000).step_by(97) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(0, 1, 1) * DAY_MS, MIN_MS);
        assert_eq!(days_from_civil(10000, 1, 1) * DAY_MS - 1, MAX_MS);
    }

    #[test]
    fn fractions_of_any_length_truncate() {
        assert_eq!(
            iso("2026-01-27T14:12:23Z").unwrap(),
            "2026-01-27T14:12:23.000Z"
        );
        assert_eq!(
            iso("2026-01-27T14:12:23.9Z").unwrap(),
            "2026-01-27T14:12:23.900Z"
        );
        assert_eq!(
            iso("2026-01-27T14:12:23.95Z").unwrap(),
            "2026-01-27T14:12:23.950Z"
        );
        assert_eq!(
            iso("2026-01-27T14:12:23.955Z").unwrap(),
            "2026-01-27T14:12:23.955Z"
        );
        assert_eq!(
            iso("2026-01-27T14:12:23.9558Z").unwrap(),
            "2026-01-27T14:12:23.955Z"
        );
        assert_eq!(
            iso("2021-12-08T21:14:32.063248Z").unwrap(),
            "2021-12-08T21:14:32.063Z"
        );
        assert_eq!(
            iso("2021-12-08T21:14:32.999999999Z").unwrap(),
            "2021-12-08T21:14:32.999Z"
        );
        assert_eq!(
            iso("2021-12-08T21:14:32.12345678901234567890Z").unwrap(),
            "2021-12-08T21:14:32.123Z"
        );
        assert_eq!(
            iso("2021-12-08t21:14:32.5z").unwrap(),
            "2021-12-08T21:14:32.500Z"
        );
    }

    #[test]
    fn offsets_convert_to_utc() {
        assert_eq!(
            iso("2023-03-03T14:08:51.058379+00:00").unwrap(),
            "2023-03-03T14:08:51.058Z"
        );
        assert_eq!(
            iso("2023-03-03T14:08:51+02:00").unwrap(),
            "2023-03-03T12:08:51.000Z"
        );
        assert_eq!(
            iso("2023-03-03T14:08:51-05:30").unwrap(),
            "2023-03-03T19:38:51.000Z"
        );
        assert_eq!(
            iso("2023-03-03T14:08:51-0530").unwrap(),
            "2023-03-03T19:38:51.000Z"
        );
        // crossing midnight, month end, year end, leap day
        assert_eq!(
            iso("2023-12-31T23:30:00-01:00").unwrap(),
            "2024-01-01T00:30:00.000Z"
        );
        assert_eq!(
            iso("2024-01-01T00:30:00+01:00").unwrap(),
            "2023-12-31T23:30:00.000Z"
        );
        assert_eq!(
            iso("2024-03-01T00:10:00.5+00:20").unwrap(),
            "2024-02-29T23:50:00.500Z"
        );
        assert_eq!(
            iso("2023-03-01T00:10:00+00:20").unwrap(),
            "2023-02-28T23:50:00.000Z"
        );
        assert_eq!(
            iso("2024-04-30T22:00:00-03:00").unwrap(),
            "2024-05-01T01:00:00.000Z"
        );
    }

    #[test]
    fn leap_years() {
        assert!(iso("2024-02-29T00:00:00Z").is_ok());
        assert!(iso("2000-02-29T00:00:00Z").is_ok());
        assert_eq!(iso("2023-02-29T00:00:00Z"), Err(ParseError::Timestamp));
        assert_eq!(iso("1900-02-29T00:00:00Z"), Err(ParseError::Timestamp));
        assert_eq!(iso("2100-02-29T00:00:00Z"), Err(ParseError::Timestamp));
    }

    #[test]
    fn bad_timestamps() {
        for s in [
            "",
            "2026-01-27",
            "2026-01-27T14:12:23",
            "2026-01-27T14:12:23.Z",
            "2026-13-27T14:12:23Z",
            "2026-00-27T14:12:23Z",
            "2026-01-32T14:12:23Z",
            "2026-01-00T14:12:23Z",
            "2026-01-27T24:12:23Z",
            "2026-01-27T14:60:23Z",
            "2026-01-27T14:12:61Z",
            "2026-01-27 14:12:23Z",
            "2026-01-27T14:12:23+2:00",
            "2026-01-27T14:12:23+24:00",
            "2026-01-27T14:12:23+01:60",
            "2026-01-27T14:12:23Zjunk",
            "2026-01-27T14:12:23.5+01:00x",
            "+026-01-27T14:12:23Z",
            "0000-01-01T00:00:00+00:01",
            "9999-12-31T23:59:59-00:01",
        ] {
            assert_eq!(iso(s), Err(ParseError::Timestamp), "{s}");
        }
        assert_eq!(
            iso("0000-01-01T00:00:00Z").unwrap(),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            iso("9999-12-31T23:59:59.9999Z").unwrap(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            iso("1969-12-31T23:59:59.999Z").unwrap(),
            "1969-12-31T23:59:59.999Z"
        );
        assert_eq!(
            iso("2016-12-31T23:59:60Z").unwrap(),
            "2017-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn bsd_year_choice() {
        let recv = ms_of("2026-01-27T14:13:00Z");
        let jan = Bsd {
            mon: 1,
            day: 27,
            sod: 14 * 3600 + 12 * 60 + 23,
        };
        assert_eq!(fmt(jan.resolve(recv).unwrap()), "2026-01-27T14:12:23.000Z");
        // December events received in January belong to the previous year.
        let dec = Bsd {
            mon: 12,
            day: 31,
            sod: 23 * 3600,
        };
        assert_eq!(
            fmt(dec.resolve(ms_of("2026-01-01T00:05:00Z")).unwrap()),
            "2025-12-31T23:00:00.000Z"
        );
        // A sender clock slightly ahead across New Year: the next year.
        let jan1 = Bsd {
            mon: 1,
            day: 1,
            sod: 60,
        };
        assert_eq!(
            fmt(jan1.resolve(ms_of("2025-12-31T23:59:00Z")).unwrap()),
            "2026-01-01T00:01:00.000Z"
        );
        // Up to a month in the future stays in the current year.
        let feb = Bsd {
            mon: 2,
            day: 20,
            sod: 0,
        };
        assert_eq!(fmt(feb.resolve(recv).unwrap()), "2026-02-20T00:00:00.000Z");
        let mar = Bsd {
            mon: 3,
            day: 20,
            sod: 0,
        };
        assert_eq!(fmt(mar.resolve(recv).unwrap()), "2025-03-20T00:00:00.000Z");
        // 29 February goes back to the last leap year.
        let leap = Bsd {
            mon: 2,
            day: 29,
            sod: 0,
        };
        assert_eq!(
            fmt(leap.resolve(ms_of("2026-03-01T00:00:00Z")).unwrap()),
            "2024-02-29T00:00:00.000Z"
        );
        assert_eq!(
            fmt(leap.resolve(ms_of("2024-03-01T00:00:00Z")).unwrap()),
            "2024-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn clock_and_month() {
        assert_eq!(clock(b"14:12:23"), Some(51_143));
        assert_eq!(clock(b"24:00:00"), None);
        assert_eq!(clock(b"14:12:2"), None);
        assert_eq!(clock(b"14:12:234"), None);
        assert_eq!(month(b"Jan"), Some(1));
        assert_eq!(month(b"Dec"), Some(12));
        assert_eq!(month(b"jan"), None);
    }

    proptest::proptest! {
        #[test]
        fn rfc3339_round_trip(
            ms in (MIN_MS + DAY_MS)..(MAX_MS - DAY_MS),
            off_min in -1439i64..=1439,
            digits in 0u32..13,
            extra in 0u64..1_000_000_000,
        ) {
            // Write the local time for a random offset, with a fraction of `digits` digits.
            let mut local = Vec::new();
            write_rfc3339_ms(&mut local, ms + off_min * 60_000);
            let millis = ms.rem_euclid(1000);
            let mut s = String::from_utf8(local[..19].to_vec()).unwrap();
            if digits > 0 {
                let frac = format!("{millis:03}{extra:09}");
                s.push('.');
                s.push_str(&frac[..digits as usize]);
            }
            let (sign, a) = if off_min < 0 { ('-', -off_min) } else { ('+', off_min) };
            s.push_str(&format!("{sign}{:02}:{:02}", a / 60, a % 60));
            let kept = 10i64.pow(3 - digits.min(3));
            let want = ms - millis + millis / kept * kept;
            proptest::prop_assert_eq!(parse_rfc3339(s.as_bytes()), Ok(want), "{}", s);
        }
    }

    #[test]
    fn received_range() {
        assert_eq!(fmt(received(0).unwrap()), "1970-01-01T00:00:00.000Z");
        assert_eq!(received(i64::MAX), Err(ParseError::Timestamp));
        assert_eq!(received(i64::MIN), Err(ParseError::Timestamp));
    }
}
