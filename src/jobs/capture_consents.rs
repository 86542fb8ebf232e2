//! Fetch an approved session's consent details and store one consent per account.
//!
//! Runs as a job so that an upstream outage at callback time loses nothing: the callback
//! records the approval and enqueues this; retries are safe because the upstream call only
//! reads and consents are inserted once per `consent_id`.

use chrono::{DateTime, Utc};

use super::{JobError, store_retry};
use crate::bankconnect::ErrorClass;
use crate::bankconnect::wire::ConsentDetail;
use crate::domain::consent::{
    Consent, ConsentStatus, MAX_FREQUENCY_VALUE, expires_at, mask_account_number,
};
use crate::domain::session::{Session, SessionStatus};
use crate::state::AppState;

/// The longest tenure we believe from upstream (FinBox quotes ranges up to 84 months); a
/// larger number is taken as a mistake and the journey's own tenure is used instead.
const MAX_UPSTREAM_TENURE_MONTHS: u32 = 84;

pub async fn run(state: &AppState, session_id: &str) -> Result<(), JobError> {
    let store = &state.store;
    let id = session_id;
    let session = store
        .get_session(id)
        .await
        .map_err(store_retry)?
        .ok_or_else(|| JobError::Fatal(format!("session {id} is not ours")))?;
    if session.status == SessionStatus::Completed {
        return Ok(());
    }

    match state.bankconnect.get_recurring_consent_details(id).await {
        Ok(details) if details.is_empty() => {
            // The upstream may not have registered the approval yet; ask again later.
            let message = "the upstream returned no consent details yet";
            store
                .record_session_error(
                    id,
                    SessionStatus::Capturing,
                    "NO_CONSENTS",
                    message,
                    state.clock.now(),
                )
                .await
                .map_err(store_retry)?;
            Err(JobError::Retry {
                message: message.into(),
                after: None,
            })
        }
        Ok(details) => {
            let now = state.clock.now();
            let global_min = state
                .config
                .pull_interval_min
                .and_then(|d| chrono::Duration::from_std(d).ok());
            let consents: Vec<Consent> = details
                .into_iter()
                .map(|d| consent_from(d, &session, now, global_min))
                .collect();
            store
                .complete_session(id, &consents, now)
                .await
                .map_err(store_retry)?;
            tracing::info!(
                session_id = id,
                consents = consents.len(),
                "consents captured"
            );
            Ok(())
        }
        Err(e) => {
            let class = e.class();
            let status = match class {
                ErrorClass::Transient => SessionStatus::Capturing,
                _ => SessionStatus::Failed,
            };
            store
                .record_session_error(
                    id,
                    status,
                    &e.code_or_kind(),
                    &e.to_string(),
                    state.clock.now(),
                )
                .await
                .map_err(store_retry)?;
            match class {
                ErrorClass::Transient => Err(JobError::Retry {
                    message: e.to_string(),
                    after: e.retry_after(),
                }),
                // Credentials or plan: an operator must act; the job stays visible as dead.
                ErrorClass::Configuration => Err(JobError::Fatal(e.to_string())),
                // The upstream said no for good (e.g. INVALID_SESSION_ID): recorded, done.
                ErrorClass::Permanent => {
                    tracing::warn!(session_id = id, error = %e, "consent capture failed");
                    Ok(())
                }
            }
        }
    }
}

/// One upstream consent entry as a stored consent. The upstream's tenure and frequency win
/// (they are what the user approved); the journey's request fills any gap.
fn consent_from(
    d: ConsentDetail,
    s: &Session,
    now: DateTime<Utc>,
    global_min: Option<chrono::Duration>,
) -> Consent {
    let tenure_months = d
        .tenure_month_count
        .filter(|t| (1..=MAX_UPSTREAM_TENURE_MONTHS).contains(t))
        .unwrap_or(s.tenure_months);
    let frequency_unit = d
        .frequency_unit
        .and_then(|u| u.parse().ok())
        .unwrap_or(s.frequency_unit);
    let frequency_value = d
        .frequency_value
        .filter(|v| (1..=MAX_FREQUENCY_VALUE).contains(v))
        .unwrap_or(s.frequency_value);
    let mut consent = Consent {
        consent_id: d.consent_id,
        session_id: s.session_id.clone(),
        link_id: s.link_id.clone(),
        use_case: s.use_case,
        journey_mode: s.journey_mode,
        bank_name: d.bank_name.or_else(|| s.bank_name.clone()),
        masked_account_number: d.masked_account_number.as_deref().map(mask_account_number),
        tenure_months,
        frequency_unit,
        frequency_value,
        status: ConsentStatus::Active,
        approved_at: now,
        expires_at: expires_at(now, tenure_months),
        next_pull_at: None,
        pull_blocked_until: None,
        pull_interval_secs: None,
        created_at: now,
        updated_at: now,
    };
    // The first scheduled pull comes one interval after approval; the journey's one-time
    // fetch, if any, covers the start.
    consent.next_pull_at = Some(now + consent.interval(global_min));
    consent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::consent::{FrequencyUnit, JourneyMode, UseCase};

    fn session() -> Session {
        let now = Utc::now();
        Session {
            session_id: "s1".into(),
            link_id: "cust".into(),
            use_case: UseCase::Monitoring,
            journey_mode: JourneyMode::OnlyRecurring,
            tenure_months: 12,
            frequency_unit: FrequencyUnit::Month,
            frequency_value: 5,
            from_date: None,
            to_date: None,
            bank_name: Some("sbi".into()),
            status: SessionStatus::Capturing,
            error_code: None,
            error_message: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn upstream_values_win_and_gaps_are_filled() {
        let now = Utc::now();
        let d = ConsentDetail {
            consent_id: "c1".into(),
            bank_name: Some("hdfc".into()),
            masked_account_number: Some("123456782304".into()),
            tenure_month_count: Some(24),
            frequency_unit: Some("day".into()),
            frequency_value: Some(3),
        };
        let c = consent_from(d, &session(), now, None);
        assert_eq!(c.tenure_months, 24);
        assert_eq!(c.frequency_unit, FrequencyUnit::Day);
        assert_eq!(c.frequency_value, 3);
        assert_eq!(c.bank_name.as_deref(), Some("hdfc"));
        assert_eq!(c.masked_account_number.as_deref(), Some("XXXXXXXX2304"));
        assert_eq!(c.expires_at, expires_at(now, 24));

        let sparse = ConsentDetail {
            consent_id: "c2".into(),
            bank_name: None,
            masked_account_number: None,
            tenure_month_count: Some(1000),
            frequency_unit: Some("fortnight".into()),
            frequency_value: Some(9),
        };
        let c = consent_from(sparse, &session(), now, None);
        assert_eq!(c.tenure_months, 12);
        assert_eq!(c.frequency_unit, FrequencyUnit::Month);
        assert_eq!(c.frequency_value, 5);
        assert_eq!(c.bank_name.as_deref(), Some("sbi"));
    }
}
