//! RFC 3339 timestamps as microseconds since the Unix epoch (UTC), without
//! a date-time dependency.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0i64, |acc, &c| {
        acc.checked_mul(10)?.checked_add((c - b'0') as i64)
    })
}

/// Parses `2026-11-23T10:00:00Z`, `…T10:00:00.123456+01:00`, and the
/// space-separated form. `None` for anything else.
pub fn parse_rfc3339_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, sec) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..6 {
            micros *= 10;
        }
    }
    let offset_secs = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2])?;
            let om = digits(&[*m1, *m2])?;
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// `2026-11-23T10:00:00.123456Z`.
pub fn format_rfc3339_micros(us: i64) -> String {
    let mut out = Vec::with_capacity(27);
    write_rfc3339_micros(us, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends [`format_rfc3339_micros`]'s text to `out` without formatting
/// machinery (the hot path of JSON-lines sinks: a timestamp per row).
pub fn write_rfc3339_micros(us: i64, out: &mut Vec<u8>) {
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        // Years without four digits: rare enough for `format!`.
        use std::io::Write;
        let _ = write!(out, "{y:04}");
    } else {
        push_digits(out, y, 4);
    }
    let parts = [
        (b'-', m, 2),
        (b'-', d, 2),
        (b'T', rem / 3600, 2),
        (b':', rem % 3600 / 60, 2),
        (b':', rem % 60, 2),
        (b'.', frac, 6),
    ];
    for (sep, n, width) in parts {
        out.push(sep);
        push_digits(out, n, width);
    }
    out.push(b'Z');
}

/// `n` (0 ≤ n < 10^width) as `width` decimal digits.
fn push_digits(out: &mut Vec<u8>, mut n: i64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for c in out[start..].iter_mut().rev() {
        *c = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(parse_rfc3339_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_micros("2026-11-23T01:00:00.25+01:00"),
            Some(1_795_392_000_250_000)
        );
        assert_eq!(
            parse_rfc3339_micros("2000-02-29 00:00:00z"),
            Some(951_782_400_000_000)
        );
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-23T00:00:00",
            "2026-11-23T00:00:00.Z",
            "x".repeat(25).as_str(),
        ] {
            assert_eq!(parse_rfc3339_micros(bad), None, "{bad}");
        }
        assert_eq!(
            format_rfc3339_micros(1_795_392_000_250_000),
            "2026-11-23T00:00:00.250000Z"
        );
    }

    proptest! {
        #[test]
        fn roundtrip(us in -62_135_596_800_000_000i64..253_402_300_799_999_999i64) {
            prop_assert_eq!(parse_rfc3339_micros(&format_rfc3339_micros(us)), Some(us));
        }

        #[test]
        fn written_as_formatted(us in any::<i64>()) {
            let secs = us.div_euclid(1_000_000);
            let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
            let (y, m, d) = civil_from_days(days);
            let want = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60,
                us.rem_euclid(1_000_000)
            );
            prop_assert_eq!(format_rfc3339_micros(us), want);
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339_micros(&s);
        }
    }
}
