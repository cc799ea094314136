//! Japan time (UTC+9, no daylight saving) for what parents and admins read:
//! civil dates from Unix times and back. Pure arithmetic; no time zone
//! database is needed for a fixed offset.

use crate::UnixTime;

/// Japan's offset from UTC, in seconds.
pub const OFFSET: i64 = 9 * 3600;

/// A Japan-time civil date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A civil date to days since 1970-01-01 (the inverse of the above).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The Japan-time date and time of `t`.
pub fn civil(t: UnixTime) -> Civil {
    let local = t + OFFSET;
    let (year, month, day) = civil_from_days(local.div_euclid(86_400));
    let s = local.rem_euclid(86_400);
    Civil { year, month, day, hour: (s / 3600) as u32, minute: (s % 3600 / 60) as u32 }
}

/// The Unix time of a Japan-time date and time; `None` for a date that
/// does not exist (2月30日) or a time out of range.
pub fn unix(year: i64, month: u32, day: u32, hour: u32, minute: u32) -> Option<UnixTime> {
    if !(1..=12).contains(&month) || day == 0 || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // 2月30日 comes back as 3月2日: not a real date.
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    Some(days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 - OFFSET)
}

/// Minutes since Japan-time midnight.
pub fn minute_of_day(t: UnixTime) -> i64 {
    (t + OFFSET).rem_euclid(86_400) / 60
}

/// `12月1日 14:02`.
pub fn month_day_time(t: UnixTime) -> String {
    let c = civil(t);
    format!("{}月{}日 {:02}:{:02}", c.month, c.day, c.hour, c.minute)
}

/// `14:02`.
pub fn time_of_day(t: UnixTime) -> String {
    let c = civil(t);
    format!("{:02}:{:02}", c.hour, c.minute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unreal_dates() {
        // 2026-11-18T11:06:40Z is 20:06 in Japan.
        assert_eq!(civil(1_795_000_000), Civil { year: 2026, month: 11, day: 18, hour: 20, minute: 6 });
        assert_eq!(unix(2026, 11, 18, 20, 6), Some(1_795_000_000 - 40));
        assert_eq!(unix(2024, 2, 29, 0, 0).map(civil), Some(Civil { year: 2024, month: 2, day: 29, hour: 0, minute: 0 }));
        assert_eq!(unix(2026, 2, 29, 0, 0), None);
        assert_eq!(unix(2026, 2, 30, 0, 0), None);
        assert_eq!(unix(2026, 13, 1, 0, 0), None);
        assert_eq!(unix(2026, 1, 1, 24, 0), None);
        assert_eq!(month_day_time(1_795_000_000), "11月18日 20:06");
        assert_eq!(minute_of_day(1_795_000_000), 20 * 60 + 6);
        // Midnight in Japan is 15:00 UTC the day before.
        assert_eq!(minute_of_day(unix(2026, 12, 1, 0, 0).unwrap()), 0);
    }
}
