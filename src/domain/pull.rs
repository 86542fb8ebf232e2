//! Pulls: one Fetch Recurring AA Data call and everything that follows from it.

use chrono::{DateTime, Days, Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::consent::UseCase;
use super::input::{ValidationError, invalid, parse_api_date};
use super::string_enum;

/// Which enriched data a pull fetches when the upstream has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullKind {
    Insights,
    Transactions,
}

string_enum!(PullKind { Insights => "insights", Transactions => "transactions" });

impl PullKind {
    /// Monitoring reads Insights; collections reads Transactions.
    pub fn default_for(use_case: UseCase) -> Self {
        match use_case {
            UseCase::Monitoring => PullKind::Insights,
            UseCase::Collections => PullKind::Transactions,
        }
    }
}

/// `queued` → `submitted` → `fetching` → `completed`; or `failed` / `expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullStatus {
    Queued,
    Submitted,
    Fetching,
    Completed,
    Failed,
    Expired,
}

string_enum!(PullStatus {
    Queued => "queued",
    Submitted => "submitted",
    Fetching => "fetching",
    Completed => "completed",
    Failed => "failed",
    Expired => "expired",
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Pull {
    pub pull_id: String,
    pub consent_id: String,
    pub status: PullStatus,
    pub kind: PullKind,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub upstream_session_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When the pull's data was deleted at the end of its data life.
    pub data_purged_at: Option<DateTime<Utc>>,
    /// How many times a step of this pull (send, poll, fetch) has been tried.
    pub attempts: i64,
    /// Why the latest failed try failed; kept after the pull ends, for the record.
    pub last_error: Option<String>,
    /// When the next try is planned; `None` when none is (the pull ended, a try runs now, or it
    /// was sent and waits for its webhook: polling is planned only once that is late).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl Pull {
    /// A new pull, accepted and waiting to be sent.
    pub fn queued(
        consent_id: &str,
        kind: PullKind,
        from: NaiveDate,
        to: NaiveDate,
        now: DateTime<Utc>,
    ) -> Self {
        Pull {
            pull_id: super::new_id("pull"),
            consent_id: consent_id.to_string(),
            status: PullStatus::Queued,
            kind,
            from,
            to,
            upstream_session_id: None,
            error_code: None,
            error_message: None,
            created_at: now,
            updated_at: now,
            submitted_at: None,
            completed_at: None,
            data_purged_at: None,
            attempts: 0,
            last_error: None,
            next_attempt_at: Some(now),
        }
    }
}

/// The error code of a pull given up at its deadline.
pub const PULL_DEADLINE: &str = "PULL_DEADLINE";

/// Why a pull was given up at its deadline, for its `error_message`.
pub fn deadline_message(pull_deadline: std::time::Duration) -> String {
    format!(
        "no result within {} s of the pull being accepted (PULL_DEADLINE_SECS)",
        pull_deadline.as_secs()
    )
}

/// The instant an open pull is given up: `PULL_DEADLINE_SECS` after it was accepted, whatever
/// step it is at, so that no pull holds its consent's schedule for longer.
pub fn deadline(created_at: DateTime<Utc>, pull_deadline: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(pull_deadline)
        .ok()
        .and_then(|d| created_at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The body of `POST /api/v1/consents/{id}/pulls` as received.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    pub from: Option<String>,
    pub to: Option<String>,
    pub kind: Option<String>,
}

/// The longest window one pull may cover (Sahamati): 6 months of data for monitoring, 1 day
/// for collections.
pub fn earliest_from(use_case: UseCase, to: NaiveDate) -> NaiveDate {
    match use_case {
        UseCase::Monitoring => to - Months::new(6),
        UseCase::Collections => to - Days::new(1),
    }
}

/// The next window. Monitoring is gap-free: from where the data we hold ends, as far as one
/// pull may reach (six months, up to today), so a consent that fell behind catches up window
/// by window as the budget allows. Collections may pull one day a day, so a collections
/// consent that fell behind could never catch up; it takes the latest day, which is what
/// collections needs. A window always spans at least one day, so a pull on the day of the
/// last one overlaps it (the overlap's transactions are deduplicated by hash).
pub fn next_window(
    since: NaiveDate,
    use_case: UseCase,
    today: NaiveDate,
) -> (NaiveDate, NaiveDate) {
    let yesterday = today - Days::new(1);
    match use_case {
        UseCase::Monitoring => {
            let to = (since + Months::new(6)).min(today);
            (since.min(yesterday).min(to - Days::new(1)), to)
        }
        UseCase::Collections => (yesterday, today),
    }
}

/// Resolves a pull's window. With no bounds it is [`next_window`]; given bounds must be
/// ordered, not in the future and within the Sahamati maximum.
pub fn resolve_window(
    from: Option<&str>,
    to: Option<&str>,
    since: NaiveDate,
    use_case: UseCase,
    today: NaiveDate,
) -> Result<(NaiveDate, NaiveDate), ValidationError> {
    if from.is_none() && to.is_none() {
        return Ok(next_window(since, use_case, today));
    }
    let to_date = to
        .map(|v| parse_api_date("to", v))
        .transpose()?
        .unwrap_or(today);
    if to_date > today {
        return Err(invalid("INVALID_WINDOW", "to must not be in the future"));
    }
    let earliest = earliest_from(use_case, to_date);
    let from_date = match from {
        Some(v) => {
            let f = parse_api_date("from", v)?;
            if f >= to_date {
                return Err(invalid("INVALID_WINDOW", "from must be before to"));
            }
            if f < earliest {
                let max = match use_case {
                    UseCase::Monitoring => "6 months",
                    UseCase::Collections => "1 day",
                };
                return Err(invalid(
                    "WINDOW_TOO_LONG",
                    format!(
                        "a {use_case} pull covers at most {max} of data ({earliest} or later for to={to_date})"
                    ),
                ));
            }
            f
        }
        None => since.max(earliest).min(to_date - Days::new(1)),
    };
    Ok((from_date, to_date))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn defaults_run_gap_free_from_the_last_pull() {
        let today = d("2025-11-10");
        assert_eq!(
            resolve_window(None, None, d("2025-10-01"), UseCase::Monitoring, today).unwrap(),
            (d("2025-10-01"), today)
        );
        // Behind by more than six months: catch up from where the data ends.
        assert_eq!(
            resolve_window(None, None, d("2024-01-01"), UseCase::Monitoring, today).unwrap(),
            (d("2024-01-01"), d("2024-07-01"))
        );
        // Collections always take the latest day.
        assert_eq!(
            resolve_window(None, None, d("2025-10-01"), UseCase::Collections, today).unwrap(),
            (d("2025-11-09"), today)
        );
        // A pull earlier today still leaves a one-day window.
        assert_eq!(
            resolve_window(None, None, today, UseCase::Monitoring, today).unwrap(),
            (d("2025-11-09"), today)
        );
        // Only `to` given: as far back as allowed, but not before the last pull.
        assert_eq!(
            resolve_window(
                None,
                Some("2025-11-10"),
                d("2024-01-01"),
                UseCase::Monitoring,
                today
            )
            .unwrap(),
            (d("2025-05-10"), today)
        );
    }

    #[test]
    fn catch_up_windows_tile_without_gaps() {
        let today = d("2025-11-10");
        let mut since = d("2023-12-25");
        let mut windows = vec![];
        while since < today {
            let (from, to) = next_window(since, UseCase::Monitoring, today);
            assert_eq!(from, since, "no gap");
            assert!(to - from <= chrono::Duration::days(184));
            windows.push((from, to));
            since = to;
        }
        assert_eq!(windows.last().unwrap().1, today);
        assert_eq!(windows.len(), 4);
    }

    #[test]
    fn given_windows_are_checked() {
        let today = d("2025-11-10");
        let since = d("2025-01-01");
        let err = |f: Option<&str>, t: Option<&str>, u| {
            resolve_window(f, t, since, u, today).unwrap_err().code
        };
        assert_eq!(
            err(Some("2025-11-10"), None, UseCase::Monitoring),
            "INVALID_WINDOW"
        );
        assert_eq!(
            err(None, Some("2025-11-11"), UseCase::Monitoring),
            "INVALID_WINDOW"
        );
        assert_eq!(
            err(Some("2025-05-09"), None, UseCase::Monitoring),
            "WINDOW_TOO_LONG"
        );
        assert_eq!(
            err(Some("2025-11-08"), None, UseCase::Collections),
            "WINDOW_TOO_LONG"
        );
        assert_eq!(
            err(Some("10/10/2025"), None, UseCase::Monitoring),
            "INVALID_DATE_FORMAT"
        );
        assert!(
            resolve_window(Some("2025-05-10"), None, since, UseCase::Monitoring, today).is_ok()
        );
        assert!(
            resolve_window(Some("2025-11-09"), None, since, UseCase::Collections, today).is_ok()
        );
    }

    #[test]
    fn kinds_follow_the_use_case() {
        assert_eq!(
            PullKind::default_for(UseCase::Monitoring),
            PullKind::Insights
        );
        assert_eq!(
            PullKind::default_for(UseCase::Collections),
            PullKind::Transactions
        );
    }
}
