//! Sahamati fair use: at most `frequency_value` pulls in any calendar `frequency_unit`
//! (hour, day, month or year) on the Indian calendar. Every attempt that was sent counts,
//! including the ones whose outcome we never learned.

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use serde::Serialize;

use super::consent::{FrequencyUnit, UseCase};
use super::ist;

/// The error code of a pull refused because the consent's fair-use budget is spent, by the
/// API (409) or when a queued pull could only be sent after its deadline.
pub const FAIR_USE_LIMIT: &str = "FAIR_USE_LIMIT";

/// One fair-use rule: at most `max` pulls in any calendar `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub unit: FrequencyUnit,
    pub max: u32,
}

/// Sahamati's own cap per use case, whatever the consent says: account monitoring at most 5
/// pulls a month, collections at most 1 a day.
pub fn sahamati_cap(use_case: UseCase) -> Limit {
    match use_case {
        UseCase::Monitoring => Limit {
            unit: FrequencyUnit::Month,
            max: 5,
        },
        UseCase::Collections => Limit {
            unit: FrequencyUnit::Day,
            max: 1,
        },
    }
}

/// Every rule a consent's pulls must keep: its own frequency first, then the Sahamati cap.
pub fn limits(use_case: UseCase, unit: FrequencyUnit, value: u32) -> [Limit; 2] {
    [Limit { unit, max: value }, sahamati_cap(use_case)]
}

/// One limit as it stands at some instant: at most `max` pulls sent since `period_start`.
/// ("Period" is a fair-use calendar unit; a pull's date range is its "window".)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub period_start: DateTime<Utc>,
    pub max: u32,
}

/// The consent's budget at `now`: for each limit, its current calendar period and maximum.
pub fn budget(limits: &[Limit], now: DateTime<Utc>) -> Vec<Budget> {
    limits
        .iter()
        .map(|l| Budget {
            period_start: period_start(l.unit, now),
            max: l.max,
        })
        .collect()
}

/// Whether one more pull may be sent, given how many were sent in each limit's current
/// period (`used[i]` for `limits[i]`). `Err` is the instant every limit allows one again.
pub fn check_all(limits: &[Limit], used: &[u32], now: DateTime<Utc>) -> Result<(), DateTime<Utc>> {
    let mut next: Option<DateTime<Utc>> = None;
    for (l, u) in limits.iter().zip(used) {
        if let Err(at) = check(l.unit, l.max, *u, now) {
            next = Some(next.map_or(at, |n| n.max(at)));
        }
    }
    next.map_or(Ok(()), Err)
}

/// The start of the calendar period (in IST) that contains `t`.
pub fn period_start(unit: FrequencyUnit, t: DateTime<Utc>) -> DateTime<Utc> {
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

/// The start of the next calendar period after the one that contains `t`.
pub fn next_period_start(unit: FrequencyUnit, t: DateTime<Utc>) -> DateTime<Utc> {
    let start = period_start(unit, t);
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

/// Whether one more pull may be sent now, given how many were sent in the current period.
/// `Err` carries the instant from which the next pull is allowed.
pub fn check(
    unit: FrequencyUnit,
    value: u32,
    sent_in_period: u32,
    now: DateTime<Utc>,
) -> Result<(), DateTime<Utc>> {
    if sent_in_period < value {
        Ok(())
    } else {
        Err(next_period_start(unit, now))
    }
}

/// A consent's fair-use position, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub window: FrequencyUnit,
    pub pulls_allowed: u32,
    /// Sent in the current calendar period, ambiguous failures included. (The API names the
    /// period `window`, as it always has.)
    pub pulls_used: u32,
    pub window_resets_at: DateTime<Utc>,
    /// The earliest instant another pull may be sent.
    pub next_pull_allowed_at: DateTime<Utc>,
}

/// The usage of `limits[0]` (the consent's own frequency), and when the next pull is allowed
/// under every limit and any upstream block.
pub fn usage(
    limits: &[Limit],
    used: &[u32],
    blocked_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Usage {
    let own = limits[0];
    let allowed = check_all(limits, used, now).err().unwrap_or(now);
    Usage {
        window: own.unit,
        pulls_allowed: own.max,
        pulls_used: used[0],
        window_resets_at: next_period_start(own.unit, now),
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
            period_start(FrequencyUnit::Day, ist_at(2025, 3, 9, 23, 59)),
            ist_at(2025, 3, 9, 0, 0)
        );
        assert_eq!(
            period_start(FrequencyUnit::Day, ist_at(2025, 3, 10, 0, 1)),
            ist_at(2025, 3, 10, 0, 0)
        );
        // ...even though both fall on the same UTC day (18:29 and 18:31 UTC on 9 March).
        assert_eq!(
            ist_at(2025, 3, 10, 0, 1).date_naive(),
            ist_at(2025, 3, 9, 23, 59).date_naive()
        );
        assert_eq!(
            next_period_start(FrequencyUnit::Day, ist_at(2025, 3, 9, 23, 59)),
            ist_at(2025, 3, 10, 0, 0)
        );
    }

    #[test]
    fn month_and_year_windows_handle_ends() {
        assert_eq!(
            period_start(FrequencyUnit::Month, ist_at(2024, 2, 29, 23, 59)),
            ist_at(2024, 2, 1, 0, 0)
        );
        assert_eq!(
            next_period_start(FrequencyUnit::Month, ist_at(2024, 2, 29, 23, 59)),
            ist_at(2024, 3, 1, 0, 0)
        );
        assert_eq!(
            next_period_start(FrequencyUnit::Month, ist_at(2025, 12, 31, 12, 0)),
            ist_at(2026, 1, 1, 0, 0)
        );
        assert_eq!(
            period_start(FrequencyUnit::Year, ist_at(2025, 12, 31, 23, 59)),
            ist_at(2025, 1, 1, 0, 0)
        );
        assert_eq!(
            next_period_start(FrequencyUnit::Year, ist_at(2025, 6, 1, 0, 0)),
            ist_at(2026, 1, 1, 0, 0)
        );
    }

    #[test]
    fn hour_windows_are_clock_hours_in_ist() {
        assert_eq!(
            period_start(FrequencyUnit::Hour, ist_at(2025, 3, 9, 10, 59)),
            ist_at(2025, 3, 9, 10, 0)
        );
        assert_eq!(
            next_period_start(FrequencyUnit::Hour, ist_at(2025, 3, 9, 23, 30)),
            ist_at(2025, 3, 10, 0, 0)
        );
    }

    #[test]
    fn usage_says_when_the_next_pull_is_allowed() {
        let now = ist_at(2025, 3, 9, 12, 0);
        let two_a_day = limits(UseCase::Monitoring, FrequencyUnit::Day, 2);
        let u = usage(&two_a_day, &[1, 1], None, now);
        assert_eq!(u.next_pull_allowed_at, now);
        assert_eq!(u.window_resets_at, ist_at(2025, 3, 10, 0, 0));
        let spent = usage(&two_a_day, &[2, 2], None, now);
        assert_eq!(spent.next_pull_allowed_at, ist_at(2025, 3, 10, 0, 0));
        // The monthly Sahamati cap outlasts the daily window.
        let capped = usage(&two_a_day, &[0, 5], None, now);
        assert_eq!(capped.next_pull_allowed_at, ist_at(2025, 4, 1, 0, 0));
        let blocked = usage(&two_a_day, &[0, 0], Some(ist_at(2025, 3, 9, 18, 0)), now);
        assert_eq!(blocked.next_pull_allowed_at, ist_at(2025, 3, 9, 18, 0));
        let stale_block = usage(&two_a_day, &[0, 0], Some(ist_at(2025, 3, 1, 0, 0)), now);
        assert_eq!(stale_block.next_pull_allowed_at, now);
    }

    #[test]
    fn sahamati_caps_bound_generous_consents() {
        let now = ist_at(2025, 3, 31, 23, 59);
        // A monitoring consent that says 3 a day still gets at most 5 a month.
        let l = limits(UseCase::Monitoring, FrequencyUnit::Day, 3);
        assert!(check_all(&l, &[2, 4], now).is_ok());
        assert_eq!(check_all(&l, &[0, 5], now), Err(ist_at(2025, 4, 1, 0, 0)));
        // Collections: 1 a day even if the consent says 5 an hour.
        let l = limits(UseCase::Collections, FrequencyUnit::Hour, 5);
        assert_eq!(check_all(&l, &[1, 1], now), Err(ist_at(2025, 4, 1, 0, 0)));
        assert!(check_all(&l, &[0, 0], now).is_ok());
        // 00:01 IST on 1 April is a new day and a new month.
        let after = ist_at(2025, 4, 1, 0, 1);
        assert_eq!(
            budget(&l, after)[1],
            Budget {
                period_start: ist_at(2025, 4, 1, 0, 0),
                max: 1
            }
        );
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
