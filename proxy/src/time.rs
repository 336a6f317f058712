//! Time conversions between Unix seconds, `SystemTime` and text, without panics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (negative before it), saturating.
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            // Round towards the past: 0.5 s before the epoch is second -1.
            let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
            i64::try_from(secs).map_or(i64::MIN, |s| -s)
        }
    }
}

/// The `SystemTime` of `secs` seconds since the Unix epoch, clamped to what `SystemTime` can hold.
pub(crate) fn system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is in 1..=31 and month in 1..=12 by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// `2026-11-03T12:00:00Z`, for messages.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    // Keep the arithmetic far away from overflow; such times only come from hostile input.
    let secs = secs.clamp(-(1 << 45), 1 << 45);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses a DER GeneralizedTime (`YYYYMMDDHHMMSSZ`, optionally with a fraction of a second,
/// which is dropped) into Unix seconds.
pub(crate) fn parse_generalized_time(content: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(content).ok()?;
    let s = s.strip_suffix('Z')?;
    let s = match s.split_once('.') {
        Some((whole, frac)) if !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit()) => {
            whole
        }
        Some(_) => return None,
        None => s,
    };
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> { s.get(range)?.parse().ok() };
    let year = num(0..4)?;
    let month = num(4..6)?;
    let day = num(6..8)?;
    let hour = num(8..10)?;
    let minute = num(10..12)?;
    let second = num(12..14)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    Some(
        days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second.min(59)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(system_time(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(system_time(-1)), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(system_time(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(unix_seconds(system_time(-86_401)), -86_401);
        assert_eq!(unix_seconds(system_time(4_102_444_800)), 4_102_444_800);
    }

    #[test]
    fn generalized_time() {
        assert_eq!(
            parse_generalized_time(b"20231114221320Z"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_generalized_time(b"20231114221320.5Z"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_generalized_time(b"20000229000000Z"),
            Some(951_782_400)
        );
        for bad in [
            &b""[..],
            b"20231114221320",
            b"2023111422132Z",
            b"20231314221320Z",
            b"20231100221320Z",
            b"20231114241320Z",
            b"2023111422132xZ",
            b"20231114221320.Z",
            b"+0231114221320Z",
            b"\xff",
        ] {
            assert_eq!(parse_generalized_time(bad), None, "{bad:?}");
        }
    }
}
