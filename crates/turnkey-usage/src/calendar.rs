//! Monthly accounting periods in UTC, with no clock and no date library: a period starts at
//! 00:00:00 UTC on `reset_day` (1-28) of a month and ends when the next one starts.

/// Seconds in a day.
const DAY: u64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]): (year, month 1-12, day 1-31).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

fn boundary(y: i64, m: u32, reset_day: u32) -> u64 {
    (days_from_civil(y, m, reset_day).max(0) as u64) * DAY
}

/// The start (Unix seconds) of the period containing `now`.
pub fn period_start(now: u64, reset_day: u32) -> u64 {
    let (y, m, d) = civil_from_days((now / DAY) as i64);
    if d >= reset_day {
        boundary(y, m, reset_day)
    } else if m == 1 {
        boundary(y - 1, 12, reset_day)
    } else {
        boundary(y, m - 1, reset_day)
    }
}

/// The start of the period after the one starting at (or containing) `t`.
pub fn next_period_start(t: u64, reset_day: u32) -> u64 {
    let start = period_start(t, reset_day);
    let (y, m, _) = civil_from_days((start / DAY) as i64);
    if m == 12 {
        boundary(y + 1, 1, reset_day)
    } else {
        boundary(y, m + 1, reset_day)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.000Z` (the shape of JavaScript's `Date.toISOString()`).
pub fn iso8601(t: u64) -> String {
    let (y, m, d) = civil_from_days((t / DAY) as i64);
    let s = t % DAY;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for z in [-1000i64, 0, 1, 59, 365, 10_957, 19_358, 20_000, 100_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn periods() {
        // 2025-01-15T12:00:00Z
        let t = 1_736_942_400;
        assert_eq!(iso8601(t), "2025-01-15T12:00:00.000Z");
        assert_eq!(iso8601(period_start(t, 1)), "2025-01-01T00:00:00.000Z");
        assert_eq!(iso8601(next_period_start(t, 1)), "2025-02-01T00:00:00.000Z");
        assert_eq!(iso8601(period_start(t, 20)), "2024-12-20T00:00:00.000Z");
        assert_eq!(iso8601(next_period_start(t, 20)), "2025-01-20T00:00:00.000Z");
        // December rolls into the next year.
        let dec = 1_734_393_600; // 2024-12-17
        assert_eq!(iso8601(next_period_start(dec, 1)), "2025-01-01T00:00:00.000Z");
        // The boundary itself belongs to the new period.
        let b = period_start(t, 1);
        assert_eq!(period_start(b, 1), b);
        assert_eq!(period_start(b - 1, 1), 1_733_011_200); // 2024-12-01
    }
}
