//! Sahamati fair use: at most `frequency_value` pulls in any calendar `frequency_unit`
//! (hour, day, month or year) on the Indian calendar. Every attempt that was sent counts,
//! including the ones whose outcome we never learned.

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use serde::Serialize;

use super::consent::FrequencyUnit;
use super::ist;

/// The start of the calendar window (in IST) that contains `t`.
pub fn window_start(unit: FrequencyUnit, t: DateTime<Utc>) -> DateTime<Utc> {
    let local = t.with_timezone(&ist());
    let date = local.date_naive();
    let start = match unit {
        FrequencyUnit::Hour => {
            date.and_time(NaiveTime::from_hms_opt(local.hour(), 0, 0).expect("valid hour"))
        }
        FrequencyUnit::Day => date.and_time(NaiveTime::MIN),
        FrequencyUnit::Month => first_of_month(date.year(), date.month()).and_time(NaiveTime::MIN),
        FrequencyUnit::Year => first_of_month(date.year(), 1).and_time(NaiveTime::MIN),
    };
    ist()
        .from_local_datetime(&start)
        .single()
        .expect("IST has no gaps")
        .with_timezone(&Utc)
}

/// The start of the next calendar window after the one that contains `t`.
pub fn next_window_start(unit: FrequencyUnit, t: DateTime<Utc>) -> DateTime<Utc> {
    let start = window_start(unit, t);
    match unit {
        FrequencyUnit::Hour => start + chrono::Duration::hours(1),
        FrequencyUnit::Day => start + chrono::Duration::days(1),
        FrequencyUnit::Month => (start.with_timezone(&ist()) + Months::new(1)).with_timezone(&Utc),
        FrequencyUnit::Year => (start.with_timezone(&ist()) + Months::new(12)).with_timezone(&Utc),
    }
}

fn first_of_month(year: i32, month: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, 1).expect("first of month exists")
}

/// Whether one more pull may be sent now, given how many were sent in the current window.
/// `Err` carries the instant from which the next pull is allowed.
pub fn check(
    unit: FrequencyUnit,
    value: u32,
    sent_in_window: u32,
    now: DateTime<Utc>,
) -> Result<(), DateTime<Utc>> {
    if sent_in_window < value {
        Ok(())
    } else {
        Err(next_window_start(unit, now))
    }
}

/// A consent's fair-use position, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub window: FrequencyUnit,
    pub pulls_allowed: u32,
    /// Sent in the current calendar window, ambiguous failures included.
    pub pulls_used: u32,
    pub window_resets_at: DateTime<Utc>,
    /// The earliest instant another pull may be sent.
    pub next_pull_allowed_at: DateTime<Utc>,
}

pub fn usage(
    unit: FrequencyUnit,
    value: u32,
    used: u32,
    blocked_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Usage {
    let window_resets_at = next_window_start(unit, now);
    let allowed = check(unit, value, used, now).err().unwrap_or(now);
    Usage {
        window: unit,
        pulls_allowed: value,
        pulls_used: used,
        window_resets_at,
        next_pull_allowed_at: blocked_until.map_or(allowed, |b| b.max(allowed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ist_at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        ist()
            .with_ymd_and_hms(y, m, d, h, min, 0)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn day_windows_follow_the_indian_calendar() {
        // 23:59 IST and 00:01 IST the next day are different days...
        assert_eq!(
            window_start(FrequencyUnit::Day, ist_at(2025, 3, 9, 23, 59)),
            ist_at(2025, 3, 9, 0, 0)
        );
        assert_eq!(
            window_start(FrequencyUnit::Day, ist_at(2025, 3, 10, 0, 1)),
            ist_at(2025, 3, 10, 0, 0)
        );
        // ...even though both fall on the same UTC day (18:29 and 18:31 UTC on 9 March).
        assert_eq!(
            ist_at(2025, 3, 10, 0, 1).date_naive(),
            ist_at(2025, 3, 9, 23, 59).date_naive()
        );
        assert_eq!(
            next_window_start(FrequencyUnit::Day, ist_at(2025, 3, 9, 23, 59)),
            ist_at(2025, 3, 10, 0, 0)
        );
    }

    #[test]
    fn month_and_year_windows_handle_ends() {
        assert_eq!(
            window_start(FrequencyUnit::Month, ist_at(2024, 2, 29, 23, 59)),
            ist_at(2024, 2, 1, 0, 0)
        );
        assert_eq!(
            next_window_start(FrequencyUnit::Month, ist_at(2024, 2, 29, 23, 59)),
            ist_at(2024, 3, 1, 0, 0)
        );
        assert_eq!(
            next_window_start(FrequencyUnit::Month, ist_at(2025, 12, 31, 12, 0)),
            ist_at(2026, 1, 1, 0, 0)
        );
        assert_eq!(
            window_start(FrequencyUnit::Year, ist_at(2025, 12, 31, 23, 59)),
            ist_at(2025, 1, 1, 0, 0)
        );
        assert_eq!(
            next_window_start(FrequencyUnit::Year, ist_at(2025, 6, 1, 0, 0)),
            ist_at(2026, 1, 1, 0, 0)
        );
    }

    #[test]
    fn hour_windows_are_clock_hours_in_ist() {
        assert_eq!(
            window_start(FrequencyUnit::Hour, ist_at(2025, 3, 9, 10, 59)),
            ist_at(2025, 3, 9, 10, 0)
        );
        assert_eq!(
            next_window_start(FrequencyUnit::Hour, ist_at(2025, 3, 9, 23, 30)),
            ist_at(2025, 3, 10, 0, 0)
        );
    }

    #[test]
    fn usage_says_when_the_next_pull_is_allowed() {
        let now = ist_at(2025, 3, 9, 12, 0);
        let u = usage(FrequencyUnit::Day, 2, 1, None, now);
        assert_eq!(u.next_pull_allowed_at, now);
        assert_eq!(u.window_resets_at, ist_at(2025, 3, 10, 0, 0));
        let spent = usage(FrequencyUnit::Day, 2, 2, None, now);
        assert_eq!(spent.next_pull_allowed_at, ist_at(2025, 3, 10, 0, 0));
        let blocked = usage(
            FrequencyUnit::Day,
            2,
            0,
            Some(ist_at(2025, 3, 9, 18, 0)),
            now,
        );
        assert_eq!(blocked.next_pull_allowed_at, ist_at(2025, 3, 9, 18, 0));
        let stale_block = usage(
            FrequencyUnit::Day,
            2,
            0,
            Some(ist_at(2025, 3, 1, 0, 0)),
            now,
        );
        assert_eq!(stale_block.next_pull_allowed_at, now);
    }

    #[test]
    fn sahamati_examples() {
        let now = ist_at(2025, 3, 9, 12, 0);
        // Monitoring: 5 a month.
        assert!(check(FrequencyUnit::Month, 5, 4, now).is_ok());
        assert_eq!(
            check(FrequencyUnit::Month, 5, 5, now),
            Err(ist_at(2025, 4, 1, 0, 0))
        );
        // Collections: 1 a day.
        assert!(check(FrequencyUnit::Day, 1, 0, now).is_ok());
        assert_eq!(
            check(FrequencyUnit::Day, 1, 1, now),
            Err(ist_at(2025, 3, 10, 0, 0))
        );
        // 3 a day, 1 an hour.
        assert!(check(FrequencyUnit::Day, 3, 2, now).is_ok());
        assert!(check(FrequencyUnit::Day, 3, 3, now).is_err());
        assert_eq!(
            check(FrequencyUnit::Hour, 1, 1, now),
            Err(ist_at(2025, 3, 9, 13, 0))
        );
    }
}
