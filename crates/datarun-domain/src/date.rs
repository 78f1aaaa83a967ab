//! Civil (proleptic Gregorian) dates without a time library: enough to check the
//! birth date inside a resident ID number and to turn Avro `date` days into text.

/// A calendar date, already checked to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CivilDate {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

pub fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

impl CivilDate {
    /// Returns `None` when the date does not exist (1990-02-30, month 13, …).
    pub fn new(year: i32, month: u32, day: u32) -> Option<Self> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(Self { year, month, day })
    }

    /// Days since 1970-01-01 (negative before), the Avro `date` logical type.
    pub fn days_since_epoch(self) -> i64 {
        // Howard Hinnant's days_from_civil.
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    pub fn from_days_since_epoch(days: i64) -> Self {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Self { year, month, day }
    }

    /// Today in UTC+8 (China Standard Time) from a Unix time in milliseconds.
    pub fn from_unix_millis_cst(unix_millis: i64) -> Self {
        let cst_millis = unix_millis + 8 * 3_600_000;
        Self::from_days_since_epoch(cst_millis.div_euclid(86_400_000))
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse_iso(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return None;
        }
        let number = |range: std::ops::Range<usize>| -> Option<u32> {
            let part = &text[range];
            part.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse().ok())?
        };
        Self::new(number(0..4)? as i32, number(5..7)?, number(8..10)?)
    }

    /// Whole years from `self` to `on` (an age).
    pub fn years_until(self, on: CivilDate) -> i32 {
        let mut years = on.year - self.year;
        if (on.month, on.day) < (self.month, self.day) {
            years -= 1;
        }
        years
    }
}

impl std::fmt::Display for CivilDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_days_round_trip_across_leap_years() {
        for days in [-800_000, -1, 0, 1, 10_957, 19_000, 20_819, 2_000_000] {
            let date = CivilDate::from_days_since_epoch(days);
            assert_eq!(date.days_since_epoch(), days, "{date}");
        }
        assert_eq!(
            CivilDate::new(2000, 1, 1).unwrap().days_since_epoch(),
            10_957
        );
        assert_eq!(
            CivilDate::from_days_since_epoch(0).to_string(),
            "1970-01-01"
        );
    }

    #[test]
    fn impossible_dates_do_not_exist() {
        assert!(CivilDate::new(1990, 2, 30).is_none());
        assert!(CivilDate::new(1949, 2, 29).is_none());
        assert!(CivilDate::new(2000, 2, 29).is_some());
        assert!(CivilDate::new(1900, 2, 29).is_none());
        assert!(CivilDate::parse_iso("2026-13-01").is_none());
        assert_eq!(
            CivilDate::parse_iso("2024-02-29").unwrap().to_string(),
            "2024-02-29"
        );
    }

    #[test]
    fn age_counts_whole_years() {
        let birth = CivilDate::new(2015, 6, 30).unwrap();
        assert_eq!(birth.years_until(CivilDate::new(2026, 6, 29).unwrap()), 10);
        assert_eq!(birth.years_until(CivilDate::new(2026, 6, 30).unwrap()), 11);
    }
}
