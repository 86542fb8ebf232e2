//! When a consent's pulls happen.

use chrono::{DateTime, Duration, Utc};

use super::consent::FrequencyUnit;
use super::fair_use::Limit;

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

/// The spacing of scheduled pulls: the slowest cadence any limit demands, made slower (never
/// faster) by a global minimum and by the consent's own setting.
pub fn pull_interval(
    limits: &[Limit],
    global_min: Option<Duration>,
    consent: Option<Duration>,
) -> Duration {
    limits
        .iter()
        .map(|l| cadence_interval(l.unit, l.max))
        .chain(global_min)
        .chain(consent)
        .max()
        .unwrap_or_else(|| Duration::days(1))
}

/// Where a resumed schedule's next pull goes: its old slot, or now if that has passed. Missed
/// slots are not made up in a burst; the next pull covers the time missed.
pub fn resumed_next(next_pull_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
    next_pull_at.map_or(now, |n| n.max(now))
}

/// Where the next pull moves when a consent's spacing changes from `old` to `new`: the last
/// pull's slot stays, the next one is `new` after it (never in the past).
pub fn respaced_next(
    next_pull_at: Option<DateTime<Utc>>,
    old: Duration,
    new: Duration,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    next_pull_at.map_or(now + new, |n| (n - old + new).max(now))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rescheduling_keeps_the_last_slot_and_never_goes_back() {
        use chrono::TimeZone;
        let now = Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
        let day = Duration::days(1);
        assert_eq!(resumed_next(None, now), now);
        assert_eq!(resumed_next(Some(now - day), now), now);
        assert_eq!(resumed_next(Some(now + day), now), now + day);
        // Next was due in a day at a daily spacing: the last pull was now; at 3 days the
        // next is in 3 days.
        assert_eq!(
            respaced_next(Some(now + day), day, day * 3, now),
            now + day * 3
        );
        // Shortening past the present moves it to now, not into the past.
        assert_eq!(respaced_next(Some(now + day), day * 5, day, now), now);
        assert_eq!(respaced_next(None, day, day * 2, now), now + day * 2);
    }

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
    fn settings_only_ever_slow_the_schedule() {
        use crate::domain::consent::UseCase;
        use crate::domain::fair_use::limits;
        let l = limits(UseCase::Collections, FrequencyUnit::Day, 1);
        assert_eq!(pull_interval(&l, None, None), Duration::days(1));
        assert_eq!(
            pull_interval(&l, Some(Duration::hours(1)), None),
            Duration::days(1)
        );
        assert_eq!(
            pull_interval(&l, None, Some(Duration::hours(1))),
            Duration::days(1)
        );
        assert_eq!(
            pull_interval(&l, Some(Duration::days(2)), None),
            Duration::days(2)
        );
        assert_eq!(
            pull_interval(&l, None, Some(Duration::days(3))),
            Duration::days(3)
        );
        // A monitoring consent of 3 a day is spread to Sahamati's 5 a month.
        let l = limits(UseCase::Monitoring, FrequencyUnit::Day, 3);
        assert_eq!(
            pull_interval(&l, None, None),
            cadence_interval(FrequencyUnit::Month, 5)
        );
    }
}
