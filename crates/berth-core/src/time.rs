//! Timestamps as values: UTC calendar fields and RFC 3339 text, computed without a clock.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A point in time: nanoseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

/// UTC calendar fields of a timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    /// Year.
    pub year: i64,
    /// Month, 1-12.
    pub month: u32,
    /// Day of month, 1-31.
    pub day: u32,
    /// Hour, 0-23.
    pub hour: u32,
    /// Minute, 0-59.
    pub minute: u32,
    /// Second, 0-59.
    pub second: u32,
}

const NS: i64 = 1_000_000_000;

impl Timestamp {
    /// Returns whole seconds since the epoch.
    pub fn secs(&self) -> i64 {
        self.0.div_euclid(NS)
    }

    /// Returns days since the epoch.
    pub fn days(&self) -> i64 {
        self.secs().div_euclid(86_400)
    }

    /// Returns the UTC calendar fields.
    pub fn civil(&self) -> Civil {
        let secs = self.secs();
        let (year, month, day) = civil_from_days(self.days());
        let sod = secs.rem_euclid(86_400);
        Civil {
            year,
            month,
            day,
            hour: (sod / 3600) as u32,
            minute: (sod % 3600 / 60) as u32,
            second: (sod % 60) as u32,
        }
    }

    /// Returns the ISO week number as (year, week), weeks starting on Monday.
    pub fn iso_week(&self) -> (i64, i64) {
        let days = self.days();
        // 1970-01-01 was a Thursday; weekday 0 = Monday.
        let weekday = (days + 3).rem_euclid(7);
        let thursday = days - weekday + 3;
        let (year, _, _) = civil_from_days(thursday);
        let jan1 = days_from_civil(year, 1, 1);
        (year, (thursday - jan1) / 7 + 1)
    }

    /// Returns the timestamp `secs` seconds later (or earlier, when negative).
    pub fn plus_secs(&self, secs: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs.saturating_mul(NS)))
    }
}

impl fmt::Display for Timestamp {
    /// Formats as RFC 3339 in UTC with second precision.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.civil();
        write!(f, "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
    }
}

/// Converts days since 1970-01-01 into (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Converts (year, month, day) into days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        // 2026-11-22T21:57:12Z
        let t = Timestamp(1_795_384_632 * NS);
        assert_eq!(t.to_string(), "2026-11-22T21:57:12Z");
        assert_eq!(t.iso_week(), (2026, 47));
        // 2021-01-03 is in ISO week 53 of 2020.
        assert_eq!(Timestamp(days_from_civil(2021, 1, 3) * 86_400 * NS).iso_week(), (2020, 53));
        for d in [-1000, 0, 59, 60, 10_000, 20_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
