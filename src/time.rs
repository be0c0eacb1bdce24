//! Time, in one place: the wall clock in ns since the Unix epoch, RFC 3339 formatting and
//! parsing (with real `±hh:mm` offsets), civil dates, and the reconnect back-off.
//!
//! Every component stamps, stores and publishes times as `i64` ns since the Unix epoch (UTC);
//! text only appears at the edges (MQTT payloads, CSV export, the command line). Having one
//! parser matters: humantime's `parse_rfc3339_weak` reads `10:00:00.5+01:00` as UTC (it checks
//! only the *position* of an offset after a fraction), which once put `store export --since`
//! an hour off while the MQTT inputs, with their own parser, were right.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds per second.
pub const NS_PER_S: i64 = 1_000_000_000;

/// Wall clock now, ns since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn system_time(t_ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(t_ns.max(0) as u64)
}

/// RFC 3339 UTC with milliseconds: `2026-11-25T10:00:00.000Z` (MQTT payloads).
pub fn rfc3339_ms(t_ns: i64) -> String {
    humantime::format_rfc3339_millis(system_time(t_ns)).to_string()
}

/// RFC 3339 UTC to the second: `2026-11-25T10:00:00Z` (files, model cards, registry).
pub fn rfc3339_s(t_ns: i64) -> String {
    humantime::format_rfc3339_seconds(system_time(t_ns)).to_string()
}

/// `2026-11-25 10:00:00` (UTC, for people: store statistics, tables).
pub fn utc_seconds(t_ns: i64) -> String {
    let secs = t_ns.div_euclid(NS_PER_S);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// `2026-11-25` (UTC) of a time.
pub fn utc_date(t_ns: i64) -> String {
    let (y, m, d) = civil_from_days(t_ns.div_euclid(NS_PER_S).div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Today's date, UTC.
pub fn today() -> String {
    utc_date(now_ns())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: `(year, month, day)`.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Unix time in ns of a civil date/time (UTC), or `None` if any field is out of range.
/// Leap seconds (`second == 60`) are accepted and folded into the next second, as POSIX
/// time does.
pub fn civil_to_unix_ns(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
) -> Option<i64> {
    const DAYS: [u32; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || !(1583..=9999).contains(&year) {
        return None;
    }
    let mut max_day = DAYS[(month - 1) as usize];
    if month == 2 && is_leap(year) {
        max_day = 29;
    }
    if day == 0 || day > max_day || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if nanos >= 1_000_000_000 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second);
    secs.checked_mul(NS_PER_S)?.checked_add(i64::from(nanos))
}

/// RFC 3339 → ns since the Unix epoch: `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±hh:mm]`; no zone
/// means UTC.
///
/// `humantime::parse_rfc3339_weak` does the calendar work, but it knows no offsets other than
/// `+00:00` and after a fraction checks only the position of a `+hh:mm`, not its digits — so
/// the zone is split off and applied here, and humantime only ever sees a strictly shaped
/// zone-less `YYYY-MM-DD?HH:MM:SS[.digits]`. Home Assistant's `now().isoformat()` sends exactly
/// such offsets.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    if !s.is_ascii() {
        return Err("contains non-ASCII characters".into());
    }
    let b = s.as_bytes();
    let n = b.len();
    let (base, offset_s): (&str, i64) = if s.ends_with(['Z', 'z']) {
        (&s[..n - 1], 0)
    } else if n >= 25
        && (b[n - 6] == b'+' || b[n - 6] == b'-')
        && b[n - 3] == b':'
        && [n - 5, n - 4, n - 2, n - 1]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
    {
        let digits = |i: usize| i64::from(b[i] - b'0') * 10 + i64::from(b[i + 1] - b'0');
        let (hh, mm) = (digits(n - 5), digits(n - 2));
        if hh > 23 || mm > 59 {
            return Err(format!("offset {:?} is out of range", &s[n - 6..]));
        }
        let sign = if b[n - 6] == b'-' { -1 } else { 1 };
        (&s[..n - 6], sign * (hh * 3600 + mm * 60))
    } else {
        (s, 0)
    };
    let bb = base.as_bytes();
    let shaped = bb.len() >= 19
        && (bb.len() == 19
            || (bb[19] == b'.' && bb.len() > 20 && bb[20..].iter().all(u8::is_ascii_digit)));
    if !shaped {
        return Err("not of the form YYYY-MM-DDTHH:MM:SS[.fraction][Z|+hh:mm]".into());
    }
    let t = humantime::parse_rfc3339_weak(base).map_err(|e| e.to_string())?;
    let since_epoch = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "before 1970".to_string())?;
    let ns = since_epoch.as_nanos() as i128 - i128::from(offset_s) * i128::from(NS_PER_S);
    i64::try_from(ns).map_err(|_| "outside the supported years 1970-2262".to_string())
}

/// A command-line time: RFC 3339 ([`parse_rfc3339`]) or a duration before `now_ns`
/// (`2h`, `30min`, `1day`).
pub fn parse_time_or_ago(s: &str, now_ns: i64) -> Result<i64, String> {
    match parse_rfc3339(s) {
        Ok(t) => Ok(t),
        Err(rfc) => match humantime::parse_duration(s) {
            Ok(d) => Ok(now_ns - d.as_nanos() as i64),
            Err(_) => Err(format!(
                "{s:?} is neither an RFC 3339 time like 2026-11-25T10:00:00Z ({rfc}) nor a \
                 duration ago like 2h or 30min"
            )),
        },
    }
}

/// Reconnect delays (BLE sessions, the MQTT link): `initial × 2^failures` capped at `max`, times a uniform jitter factor in
/// [0.5, 1.5) so a fleet of gateways (or several straps) does not reconnect in lock step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    /// The delay is scaled by a factor in [1 − jitter, 1 + jitter).
    jitter: f64,
}

impl Backoff {
    /// Jitter ±50 %: many straps (or gateways) must not reconnect in lock step.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
            jitter: 0.5,
        }
    }

    /// Another jitter fraction (0–1): a client that must catch a broker's short up-time
    /// (the MQTT link) keeps its retries closer to the doubling schedule.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Delay before the next attempt, given a jitter draw `u` in [0, 1).
    pub fn next_with(&mut self, u: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        base.mul_f64(1.0 - self.jitter + 2.0 * self.jitter * u.clamp(0.0, 1.0))
    }

    /// Delay before the next attempt (random jitter).
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// A session delivered data: start over from `initial`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for days in [-1, 0, 59, 60, 11_016, 11_017, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(utc_seconds(1_795_600_800 * NS_PER_S), "2026-11-25 10:00:00");
        assert_eq!(utc_date(1_795_600_800 * NS_PER_S), "2026-11-25");
        assert_eq!(civil_to_unix_ns(2026, 2, 29, 0, 0, 0, 0), None);
        assert_eq!(
            civil_to_unix_ns(2026, 11, 25, 10, 0, 0, 5),
            Some(1_795_600_800 * NS_PER_S + 5)
        );
    }

    #[test]
    fn rfc3339_offsets_are_applied() {
        let utc = 1_795_600_800 * NS_PER_S; // 2026-11-25T10:00:00Z
        assert_eq!(parse_rfc3339("2026-11-25T10:00:00Z"), Ok(utc));
        assert_eq!(parse_rfc3339("2026-11-25 10:00:00"), Ok(utc));
        assert_eq!(parse_rfc3339("2026-11-25T11:00:00+01:00"), Ok(utc));
        assert_eq!(
            parse_rfc3339("2026-11-25T11:00:00.5+01:00"),
            Ok(utc + NS_PER_S / 2)
        );
        assert_eq!(parse_rfc3339("2026-11-25T08:30:00-01:30"), Ok(utc));
        assert!(parse_rfc3339("2026-11-25T10:00:00+25:00").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
        assert_eq!(rfc3339_ms(utc), "2026-11-25T10:00:00.000Z");
        assert_eq!(rfc3339_s(utc), "2026-11-25T10:00:00Z");
    }

    /// `store export --since` used humantime's weak parser, which read a fractional time
    /// with `+01:00` as UTC: an hour off. The command line now goes through the same parser as
    /// the MQTT inputs.
    #[test]
    fn command_line_times_keep_their_offset() {
        let now = 1_795_700_000 * NS_PER_S;
        let utc = 1_795_600_800 * NS_PER_S;
        assert_eq!(
            parse_time_or_ago("2026-11-25T11:00:00.250+01:00", now),
            Ok(utc + NS_PER_S / 4)
        );
        assert_eq!(parse_time_or_ago("2h", now), Ok(now - 7200 * NS_PER_S));
        let e = parse_time_or_ago("soon", now).unwrap_err();
        assert!(e.contains("\"soon\"") && e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn backoff_doubles_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let mid: Vec<u64> = (0..6)
            .map(|_| b.next_with(0.5).as_millis() as u64)
            .collect();
        assert_eq!(mid, vec![1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(b.next_with(0.0), Duration::from_secs(5));
        assert_eq!(b.next_with(1.0), Duration::from_secs(15));
        b.reset();
        assert_eq!(b.next_with(0.5), Duration::from_secs(1));
        for _ in 0..100 {
            b.next_delay(); // no overflow after many failures
        }
        let d = b.next_delay();
        assert!(
            d >= Duration::from_secs(5) && d < Duration::from_secs(15),
            "{d:?}"
        );
        let mut m =
            Backoff::new(Duration::from_millis(250), Duration::from_secs(30)).with_jitter(0.2);
        assert_eq!(m.next_with(0.0), Duration::from_millis(200));
        assert_eq!(m.next_with(1.0), Duration::from_millis(600));
    }
}
