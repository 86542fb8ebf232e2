//! When a consent's pulls happen.

use chrono::{DateTime, Duration, Utc};

use super::consent::FrequencyUnit;

/// The spacing of a consent's scheduled pulls: `value` pulls per `unit` means one pull every
/// `unit / value`. The unit is taken at its longest calendar length (31-day month, 366-day
/// year), so evenly spaced pulls can never put `value + 1` of them into one calendar unit.
pub fn cadence_interval(unit: FrequencyUnit, value: u32) -> Duration {
    let unit_len = match unit {
        FrequencyUnit::Hour => Duration::hours(1),
        FrequencyUnit::Day => Duration::days(1),
        FrequencyUnit::Month => Duration::days(31),
        FrequencyUnit::Year => Duration::days(366),
    };
    unit_len / value.max(1) as i32
}

/// A new consent's first scheduled pull comes one interval after approval; the journey's own
/// one-time fetch, if any, covers the start.
pub fn first_pull_at(approved_at: DateTime<Utc>, unit: FrequencyUnit, value: u32) -> DateTime<Utc> {
    approved_at + cadence_interval(unit, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_spread_the_allowed_pulls() {
        assert_eq!(cadence_interval(FrequencyUnit::Hour, 1), Duration::hours(1));
        assert_eq!(cadence_interval(FrequencyUnit::Day, 3), Duration::hours(8));
        assert_eq!(cadence_interval(FrequencyUnit::Day, 1), Duration::days(1));
        assert_eq!(
            cadence_interval(FrequencyUnit::Month, 5),
            Duration::seconds(31 * 86_400 / 5)
        );
        assert_eq!(
            cadence_interval(FrequencyUnit::Year, 2),
            Duration::days(183)
        );
    }

    #[test]
    fn five_a_month_never_fit_six_into_a_31_day_month() {
        let i = cadence_interval(FrequencyUnit::Month, 5);
        // Six pulls span five intervals; that must exceed the longest month.
        assert!(i * 5 >= Duration::days(31));
    }

    #[test]
    fn first_pull_is_one_interval_after_approval() {
        let t = DateTime::parse_from_rfc3339("2025-10-10T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            first_pull_at(t, FrequencyUnit::Day, 2),
            DateTime::parse_from_rfc3339("2025-10-10T22:00:00Z")
                .unwrap()
                .with_timezone(&Utc)
        );
    }
}
