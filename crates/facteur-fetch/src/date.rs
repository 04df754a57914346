//! Calendar dates from UNIX time, for the few dates facteur writes for people (an mbox `From `
//! line, a certificate's validity period in an error message). One copy of the arithmetic, with
//! no time-zone database: every date here is UTC.

/// The UTC calendar date of day `days` counted from 1970-01-01: (year, month 1 to 12, day 1 to
/// 31). Howard Hinnant's `civil_from_days`, for days that are never negative.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(10_956), (1999, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        // The largest day a u64 of seconds can name does not overflow.
        let _ = civil_from_days(u64::MAX / 86_400);
    }
}
