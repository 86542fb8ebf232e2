//! Rows as the database holds them (instants as unix milliseconds, dates as `YYYY-MM-DD`
//! text, enums by name), mapped with `FromRow`, and their conversion into domain types. A
//! value this version cannot read is a `Corrupt` error, never a panic.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::FromRow;
use sqlx::any::AnyRow;

use super::{StoreError, StoreResult, from_ms, parse_enum};
use crate::domain::consent::Consent;
use crate::domain::pull::Pull;
use crate::domain::session::Session;

pub(super) const SESSION_COLUMNS: &str = "session_id, link_id, use_case, journey_mode, tenure_months, frequency_unit, \
     frequency_value, from_date, to_date, bank_name, status, error_code, error_message, created_at, updated_at";

pub(super) const CONSENT_COLUMNS: &str = "seq, consent_id, session_id, link_id, use_case, journey_mode, bank_name, \
     masked_account_number, tenure_months, frequency_unit, frequency_value, status, approved_at, \
     expires_at, next_pull_at, pull_blocked_until, pull_interval_secs, created_at, updated_at";

/// A pull's own columns, and when its next step is planned: the soonest queued job that
/// works on it, while it is open (a poll queued before a late webhook stays queued until it
/// runs and finds the pull moved on). The open states are ORs, not an `IN` list, for which
/// SQLite would build a temporary b-tree at every read (migration 0011).
pub(super) const PULL_COLUMNS: &str = "seq, pull_id, consent_id, kind, status, from_date, to_date, upstream_session_id, \
     error_code, error_message, submitted_at, completed_at, data_purged_at, created_at, updated_at, attempts, \
     last_error, CASE WHEN status = 'queued' OR status = 'submitted' OR status = 'fetching' THEN \
     (SELECT MIN(j.run_at) FROM jobs j WHERE j.pull_id = pulls.pull_id AND j.status = 'queued') END \
     AS next_attempt_at";

pub(super) fn opt_date(v: Option<String>) -> StoreResult<Option<NaiveDate>> {
    v.map(|s| date(&s)).transpose()
}

pub(super) fn date(s: &str) -> StoreResult<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| StoreError::Corrupt(format!("date `{s}`")))
}

pub(super) fn opt_ms(v: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    v.map(from_ms).transpose()
}

#[derive(FromRow)]
struct SessionRow {
    session_id: String,
    link_id: String,
    use_case: String,
    journey_mode: String,
    tenure_months: i64,
    frequency_unit: String,
    frequency_value: i64,
    from_date: Option<String>,
    to_date: Option<String>,
    bank_name: Option<String>,
    status: String,
    error_code: Option<String>,
    error_message: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;

    fn try_from(r: SessionRow) -> StoreResult<Session> {
        Ok(Session {
            session_id: r.session_id,
            link_id: r.link_id,
            use_case: parse_enum("use_case", &r.use_case)?,
            journey_mode: parse_enum("journey_mode", &r.journey_mode)?,
            tenure_months: r.tenure_months as u32,
            frequency_unit: parse_enum("frequency_unit", &r.frequency_unit)?,
            frequency_value: r.frequency_value as u32,
            from_date: opt_date(r.from_date)?,
            to_date: opt_date(r.to_date)?,
            bank_name: r.bank_name,
            status: parse_enum("session status", &r.status)?,
            error_code: r.error_code,
            error_message: r.error_message,
            created_at: from_ms(r.created_at)?,
            updated_at: from_ms(r.updated_at)?,
        })
    }
}

#[derive(FromRow)]
struct ConsentRow {
    seq: i64,
    consent_id: String,
    session_id: String,
    link_id: String,
    use_case: String,
    journey_mode: String,
    bank_name: Option<String>,
    masked_account_number: Option<String>,
    tenure_months: i64,
    frequency_unit: String,
    frequency_value: i64,
    status: String,
    approved_at: i64,
    expires_at: i64,
    next_pull_at: Option<i64>,
    pull_blocked_until: Option<i64>,
    pull_interval_secs: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<ConsentRow> for (i64, Consent) {
    type Error = StoreError;

    fn try_from(r: ConsentRow) -> StoreResult<(i64, Consent)> {
        let consent = Consent {
            consent_id: r.consent_id,
            session_id: r.session_id,
            link_id: r.link_id,
            use_case: parse_enum("use_case", &r.use_case)?,
            journey_mode: parse_enum("journey_mode", &r.journey_mode)?,
            bank_name: r.bank_name,
            masked_account_number: r.masked_account_number,
            tenure_months: r.tenure_months as u32,
            frequency_unit: parse_enum("frequency_unit", &r.frequency_unit)?,
            frequency_value: r.frequency_value as u32,
            status: parse_enum("consent status", &r.status)?,
            approved_at: from_ms(r.approved_at)?,
            expires_at: from_ms(r.expires_at)?,
            next_pull_at: opt_ms(r.next_pull_at)?,
            pull_blocked_until: opt_ms(r.pull_blocked_until)?,
            pull_interval_secs: r.pull_interval_secs,
            created_at: from_ms(r.created_at)?,
            updated_at: from_ms(r.updated_at)?,
        };
        Ok((r.seq, consent))
    }
}

#[derive(FromRow)]
struct PullRow {
    seq: i64,
    pull_id: String,
    consent_id: String,
    kind: String,
    status: String,
    from_date: String,
    to_date: String,
    upstream_session_id: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    submitted_at: Option<i64>,
    completed_at: Option<i64>,
    data_purged_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    attempts: i64,
    last_error: Option<String>,
    next_attempt_at: Option<i64>,
}

impl TryFrom<PullRow> for (i64, Pull) {
    type Error = StoreError;

    fn try_from(r: PullRow) -> StoreResult<(i64, Pull)> {
        let pull = Pull {
            pull_id: r.pull_id,
            consent_id: r.consent_id,
            status: parse_enum("pull status", &r.status)?,
            kind: parse_enum("pull kind", &r.kind)?,
            from: date(&r.from_date)?,
            to: date(&r.to_date)?,
            upstream_session_id: r.upstream_session_id,
            error_code: r.error_code,
            error_message: r.error_message,
            created_at: from_ms(r.created_at)?,
            updated_at: from_ms(r.updated_at)?,
            submitted_at: opt_ms(r.submitted_at)?,
            completed_at: opt_ms(r.completed_at)?,
            data_purged_at: opt_ms(r.data_purged_at)?,
            attempts: r.attempts,
            last_error: r.last_error,
            next_attempt_at: opt_ms(r.next_attempt_at)?,
        };
        Ok((r.seq, pull))
    }
}

pub(super) fn session_from_row(r: &AnyRow) -> StoreResult<Session> {
    SessionRow::from_row(r)?.try_into()
}

pub(super) fn consent_from_row(r: &AnyRow) -> StoreResult<(i64, Consent)> {
    ConsentRow::from_row(r)?.try_into()
}

pub(super) fn pull_from_row(r: &AnyRow) -> StoreResult<(i64, Pull)> {
    PullRow::from_row(r)?.try_into()
}
