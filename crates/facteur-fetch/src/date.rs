//! Calendar dates from UNIX time, for the few dates facteur writes for people (an mbox `From `
//! line, a certificate's validity period in an error message). One copy of the arithmetic, with
//! no time-zone database: every date here is UTC.

/// The UTC calendar date of a day counted from 1970-01-01 (the store's copy, shared with its
/// mbox `From ` lines).
pub use facteur_store::mbox_format::civil_from_days;

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
