//! The timestamp spellings sensors use, turned into the microseconds since the Unix epoch that the
//! adapters compute with (flows carry milliseconds; microseconds keep `start + duration` exact).
//! Written by hand rather than pulling in a date crate: the formats are few and fixed, and every
//! parser here is total (bad input is `None`, never a panic).

/// Microseconds per second.
const MICROS: i64 = 1_000_000;

/// Parses seconds since the epoch written as a decimal ("1591367999.305988", "1418530010"),
/// exactly (no float rounding). Digits past the sixth decimal are dropped.
pub(crate) fn decimal_seconds_to_micros(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (digits, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let seconds = if whole.is_empty() { 0 } else { parse_digits(whole)? };
    let micros = fraction_micros(fraction)?;
    let total = seconds.checked_mul(MICROS)?.checked_add(micros)?;
    Some(if negative { -total } else { total })
}

/// Seconds since the epoch as a JSON float (Zeek's `ts`, `duration`), rounded to the microsecond
/// (Zeek's own resolution). `None` for NaN, infinities and values beyond ±292,000 years.
pub(crate) fn float_seconds_to_micros(seconds: f64) -> Option<i64> {
    let micros = (seconds * 1e6).round();
    // i64::MAX as f64 rounds up to 2^63, so compare strictly below it.
    if micros.is_finite() && micros > -9.2e18 && micros < 9.2e18 {
        Some(micros as i64)
    } else {
        None
    }
}

/// Parses a civil timestamp: `YYYY-MM-DD`, then `T` or a space, `HH:MM:SS`, an optional fraction,
/// and an optional zone (`Z`, `±HH:MM`, `±HHMM`, `±HH`; none means UTC). Covers RFC 3339 (Hubble,
/// Zeek's ISO 8601 option), Suricata's `2023-09-18T06:13:21.216460+0000` and pmacct's
/// `2025-02-27 09:47:26.782032`. pmacct's "unset" spelling (`0000-00-00 00:00:00...`) is `None`.
pub(crate) fn civil_to_micros(text: &str) -> Option<i64> {
    let text = text.trim();
    let bytes = text.as_bytes();
    if bytes.len() < 19 || !text.is_char_boundary(19) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| text.get(range).and_then(parse_digits);
    if bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') || bytes.get(13) != Some(&b':') {
        return None;
    }
    if !matches!(bytes.get(10), Some(b'T' | b't' | b' ')) || bytes.get(16) != Some(&b':') {
        return None;
    }
    let (year, month, day) = (field(0..4)?, field(5..7)?, field(8..10)?);
    let (hour, minute, second) = (field(11..13)?, field(14..16)?, field(17..19)?);
    if year == 0 && month == 0 && day == 0 {
        return None;
    }
    // Leap seconds (second 60) are folded into the next second, as Unix time does.
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut micros = 0;
    if let Some(after_dot) = rest.strip_prefix('.') {
        let end = after_dot.find(|c: char| !c.is_ascii_digit()).unwrap_or(after_dot.len());
        micros = fraction_micros(&after_dot[..end])?;
        rest = &after_dot[end..];
    }
    let offset_seconds = zone_offset_seconds(rest)?;
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_seconds;
    seconds.checked_mul(MICROS)?.checked_add(micros)
}

/// Microseconds → milliseconds, rounding toward negative infinity so that `start <= end` survives.
pub(crate) fn micros_to_millis(micros: i64) -> i64 {
    micros.div_euclid(1_000)
}

fn zone_offset_seconds(zone: &str) -> Option<i64> {
    match zone {
        "" | "Z" | "z" => return Some(0),
        _ => {}
    }
    let (sign, digits) = match zone.split_at_checked(1)? {
        ("+", digits) => (1, digits),
        ("-", digits) => (-1, digits),
        _ => return None,
    };
    let digits: String = match digits.len() {
        2 | 4 => digits.to_owned(),
        5 if digits.as_bytes().get(2) == Some(&b':') => digits.replace(':', ""),
        _ => return None,
    };
    let hours = parse_digits(digits.get(0..2)?)?;
    let minutes = match digits.get(2..4) {
        Some(minutes) => parse_digits(minutes)?,
        None => 0,
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 3_600 + minutes * 60))
}

/// Only ASCII digits (no sign, no blanks), at most 18 of them so the value fits an i64.
fn parse_digits(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The microseconds a decimal fraction's digits stand for ("305988" → 305988, "5" → 500000).
fn fraction_micros(fraction: &str) -> Option<i64> {
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut micros = 0;
    let mut scale = 100_000;
    for digit in fraction.bytes().take(6) {
        micros += i64::from(digit - b'0') * scale;
        scale /= 10;
    }
    Some(micros)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn decimal_seconds_are_exact() {
        assert_eq!(decimal_seconds_to_micros("1591367999.305988"), Some(1_591_367_999_305_988));
        assert_eq!(decimal_seconds_to_micros("1418530010"), Some(1_418_530_010_000_000));
        assert_eq!(decimal_seconds_to_micros("0.5"), Some(500_000));
        assert_eq!(decimal_seconds_to_micros("7.2464619999"), Some(7_246_461));
        assert_eq!(decimal_seconds_to_micros("XXXXXXXXXX.XXXXXX"), None);
        assert_eq!(decimal_seconds_to_micros("."), None);
        assert_eq!(decimal_seconds_to_micros("-"), None);
        assert_eq!(decimal_seconds_to_micros("1e9"), None);
    }

    #[test]
    fn civil_timestamps_in_every_sensor_spelling() {
        // 2020-06-05T14:39:59Z is 1591367999 (the Zeek documentation's `date -d` output).
        assert_eq!(civil_to_micros("2020-06-05T14:39:59.305988Z"), Some(1_591_367_999_305_988));
        assert_eq!(civil_to_micros("2020-06-05T16:39:59.305988+02:00"), Some(1_591_367_999_305_988));
        assert_eq!(civil_to_micros("2020-06-05T16:39:59.305988+0200"), Some(1_591_367_999_305_988));
        assert_eq!(civil_to_micros("2020-06-05 14:39:59.305988"), Some(1_591_367_999_305_988));
        assert_eq!(civil_to_micros("2023-08-21T12:12:13.517394084Z"), Some(1_692_619_933_517_394));
        assert_eq!(civil_to_micros("1969-12-31T23:59:59Z"), Some(-1_000_000));
        assert_eq!(civil_to_micros("2024-02-29T00:00:00Z"), Some(1_709_164_800_000_000));
        assert_eq!(civil_to_micros("2023-02-29T00:00:00Z"), None);
        assert_eq!(civil_to_micros("0000-00-00 00:00:00.000000"), None);
        assert_eq!(civil_to_micros("2020-06-05T14:39:59+25:00"), None);
        assert_eq!(civil_to_micros("2020-06-05T14:39"), None);
    }

    proptest! {
        #[test]
        fn timestamp_parsers_never_panic(text in ".{0,40}") {
            let _ = civil_to_micros(&text);
            let _ = decimal_seconds_to_micros(&text);
        }

        #[test]
        fn float_seconds_never_panic(seconds in proptest::num::f64::ANY) {
            let _ = float_seconds_to_micros(seconds);
        }

        #[test]
        fn civil_round_trips_through_the_day_count(days in -100_000i64..100_000, second in 0i64..86_400) {
            // Compare against a naive day-by-day walk from 1970 for a sample of dates.
            let micros = (days * 86_400 + second) * MICROS;
            let (mut year, mut month, mut day) = (1970, 1, 1);
            let mut remaining = days;
            while remaining > 0 {
                let left_in_month = days_in_month(year, month) - day + 1;
                if remaining >= left_in_month {
                    remaining -= left_in_month;
                    day = 1;
                    month += 1;
                    if month > 12 { month = 1; year += 1; }
                } else {
                    day += remaining;
                    remaining = 0;
                }
            }
            while remaining < 0 {
                if day > -remaining {
                    day += remaining;
                    remaining = 0;
                } else {
                    remaining += day;
                    month -= 1;
                    if month < 1 { month = 12; year -= 1; }
                    day = days_in_month(year, month);
                }
            }
            prop_assume!((1..=9999).contains(&year));
            let text = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", second / 3600, second / 60 % 60, second % 60);
            prop_assert_eq!(civil_to_micros(&text), Some(micros), "{}", text);
        }
    }
}
