use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, UTC.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Formats microseconds since the Unix epoch as RFC 3339 in UTC with microsecond
/// precision: `2026-11-24T05:31:30.123456Z`.
pub fn format_rfc3339_micros(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Parses an RFC 3339 timestamp (`2026-11-24T05:31:30.123456Z`, or with an offset such
/// as `+02:00`) into microseconds since the Unix epoch: the inverse of
/// [`format_rfc3339_micros`]. Digits of the fraction past microseconds must be zeros,
/// so that nothing is silently rounded.
pub fn parse_rfc3339_micros(text: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("{text:?} is not an RFC 3339 timestamp: {why}");
    let bytes = text.as_bytes();
    if bytes.len() < 20 {
        return Err(bad("too short; write e.g. 2026-11-24T05:31:30.123456Z"));
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = &text[range];
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse::<i64>()
                .map_err(|_| bad("a number is out of range"))
        } else {
            Err(bad("expected digits"))
        }
    };
    let separators_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok || !text.is_char_boundary(19) {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(bad("a field is out of range"));
    }
    let mut rest = &text[19..];
    let mut micros = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("a fraction needs digits"));
        }
        let (kept, dropped) = fraction[..digits].split_at(digits.min(6));
        if dropped.bytes().any(|b| b != b'0') {
            return Err(bad("more precise than a microsecond"));
        }
        micros = format!("{kept:0<6}")
            .parse::<i64>()
            .map_err(|_| bad("bad fraction"))?;
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return Err(bad("expected Z or an offset such as +02:00")),
            };
            let offset = &rest[1..];
            if offset.len() != 5 || offset.as_bytes()[2] != b':' {
                return Err(bad("expected an offset such as +02:00"));
            }
            let hours = offset[..2].parse::<i64>().map_err(|_| bad("bad offset"))?;
            let minutes = offset[3..].parse::<i64>().map_err(|_| bad("bad offset"))?;
            if hours > 23 || minutes > 59 {
                return Err(bad("bad offset"));
            }
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    seconds
        .checked_mul(1_000_000)
        .and_then(|value| value.checked_add(micros))
        .ok_or_else(|| bad("out of range"))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A proleptic Gregorian date to days since 1970-01-01 (the inverse of
/// `civil_from_days`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Days since 1970-01-01 to a proleptic Gregorian date (the well-known era algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_rfc3339_micros(1_795_498_290_123_456),
            "2026-11-24T05:31:30.123456Z"
        );
        assert_eq!(
            format_rfc3339_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(format_rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn parses_what_it_formats_and_refuses_the_rest() {
        for micros in [
            0,
            1,
            -1,
            951_782_400_000_000,
            1_795_498_290_123_456,
            253_402_300_799_999_999,
        ] {
            let text = format_rfc3339_micros(micros);
            assert_eq!(parse_rfc3339_micros(&text), Ok(micros), "{text}");
        }
        assert_eq!(
            parse_rfc3339_micros("2026-11-24T07:31:30.5+02:00"),
            Ok(1_795_498_290_500_000)
        );
        assert_eq!(
            parse_rfc3339_micros("2026-11-24T05:31:30Z"),
            Ok(1_795_498_290_000_000)
        );
        assert_eq!(
            parse_rfc3339_micros("2026-11-24T05:31:30.123456000Z"),
            Ok(1_795_498_290_123_456)
        );
        for bad in [
            "",
            "2026-11-24",
            "2026-11-24T05:31:30",
            "2026-02-30T00:00:00Z",
            "2026-11-24T05:31:30.1234567Z",
            "2026-11-24T25:00:00Z",
            "2026-11-24T05:31:30.Z",
            "2026-11-24T05:31:30+0200",
            "２０２６-11-24T05:31:30Z",
        ] {
            assert!(parse_rfc3339_micros(bad).is_err(), "{bad}");
        }
    }
}
