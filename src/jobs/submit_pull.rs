//! Send a pull's Fetch Recurring AA Data call.
//!
//! The call is not idempotent and every accepted call spends the consent, so each send is
//! first written to the fair-use ledger (`pull_attempts`) in a transaction that checks the
//! budget. An attempt whose outcome we never learned stays counted; one that certainly never
//! left (a refused connection) is given back. A retry is just another budget-checked send, so
//! no sequence of failures and retries can overspend the consent.

use std::time::Duration;

use super::{JobError, JobKind, NewJob, PullPayload, load_pull, pull_step_failed, store_retry};
use crate::app::AppState;
use crate::bankconnect::{BankConnectError, ConsentVerdict};
use crate::domain::consent::{Consent, ConsentStatus};
use crate::domain::fair_use::{budget_windows, check_all, next_window_start};
use crate::domain::pull::{Pull, PullKind, PullStatus, deadline};
use crate::store::NewPull;

pub async fn run(state: &AppState, payload: PullPayload) -> Result<(), JobError> {
    let store = &state.store;
    let pull = load_pull(state, &payload.pull_id).await?;
    if pull.status != PullStatus::Queued {
        return Ok(());
    }
    let consent = store
        .get_consent(&pull.consent_id)
        .await
        .map_err(store_retry)?
        .ok_or_else(|| JobError::Fatal(format!("consent {} does not exist", pull.consent_id)))?;
    let now = state.clock.now();
    let refusal = if consent.status != ConsentStatus::Active {
        Some((
            "CONSENT_NOT_ACTIVE",
            format!("the consent is {}", consent.status),
        ))
    } else if consent.expires_at <= now {
        Some((
            "CONSENT_EXPIRED",
            format!("the consent expired at {}", consent.expires_at),
        ))
    } else {
        None
    };
    if let Some((code, message)) = refusal {
        store
            .end_pull(&pull.pull_id, PullStatus::Failed, code, &message, now)
            .await
            .map_err(store_retry)?;
        return Ok(());
    }
    if let Some(until) = consent.pull_blocked_until
        && until > now
    {
        return wait_until(
            state,
            &pull,
            until,
            now,
            "the upstream reported the consent overused",
        )
        .await;
    }

    let limits = consent.limits();
    let Some(attempt) = store
        .reserve_attempt(
            &consent.consent_id,
            &pull.pull_id,
            &budget_windows(&limits, now),
            now,
        )
        .await
        .map_err(store_retry)?
    else {
        let used = store
            .attempts_since(&consent.consent_id, &budget_windows(&limits, now))
            .await
            .map_err(store_retry)?;
        let next = check_all(&limits, &used, now)
            .err()
            .unwrap_or(now + chrono::Duration::minutes(1));
        return wait_until(
            state,
            &pull,
            next,
            now,
            "the fair-use budget of this window is spent",
        )
        .await;
    };

    match state
        .bankconnect
        .fetch_recurring_aa_data(&consent.consent_id, pull.from, pull.to)
        .await
    {
        Ok(session_id) => record_submission(state, &pull, &session_id).await,
        Err(BankConnectError::Transport {
            maybe_sent: false,
            message,
        }) => {
            store.cancel_attempt(attempt).await.map_err(store_retry)?;
            Err(JobError::Retry {
                message,
                after: None,
            })
        }
        Err(e) => {
            let now = state.clock.now();
            match e.consent_verdict() {
                Some(ConsentVerdict::Revoked) => {
                    store
                        .set_consent_status(&consent.consent_id, ConsentStatus::Revoked, now)
                        .await
                        .map_err(store_retry)?;
                    tracing::warn!(consent_id = %consent.consent_id, "consent revoked upstream; schedule stopped");
                }
                Some(ConsentVerdict::Invalid) => {
                    store
                        .set_consent_status(&consent.consent_id, ConsentStatus::Invalid, now)
                        .await
                        .map_err(store_retry)?;
                    tracing::warn!(consent_id = %consent.consent_id, "consent unknown upstream; marked invalid");
                }
                Some(ConsentVerdict::Overused) => {
                    store
                        .block_consent_until(
                            &consent.consent_id,
                            next_window_start(consent.frequency_unit, now),
                            now,
                        )
                        .await
                        .map_err(store_retry)?;
                }
                None => {}
            }
            pull_step_failed(state, &pull.pull_id, e).await
        }
    }
}

/// The upstream accepted the pull: its session id must be kept, or the spent use is wasted.
/// The write is retried here rather than by the job, because a job retry would send again.
async fn record_submission(
    state: &AppState,
    pull: &Pull,
    session_id: &str,
) -> Result<(), JobError> {
    let now = state.clock.now();
    let poll = NewJob::for_pull(
        JobKind::PollPull,
        &pull.pull_id,
        now + state.config.poll_fallback_after,
    );
    let mut pause = Duration::from_millis(100);
    for _ in 0..10 {
        match state
            .store
            .mark_submitted(&pull.pull_id, session_id, &poll, now)
            .await
        {
            Ok(()) => {
                tracing::info!(pull_id = %pull.pull_id, upstream_session_id = session_id, "pull submitted");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(pull_id = %pull.pull_id, upstream_session_id = session_id, error = %e, "recording the submission failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!(pull_id = %pull.pull_id, upstream_session_id = session_id, "submission could not be recorded");
    Err(JobError::Retry {
        message: format!("upstream session {session_id} could not be recorded"),
        after: None,
    })
}

/// A pull for `consent` and the job that will send it, budget-checked against the consent's
/// limits at `now`. Used by both the API and the scheduler.
pub fn plan(
    consent: &Consent,
    kind: PullKind,
    (from, to): (chrono::NaiveDate, chrono::NaiveDate),
    now: chrono::DateTime<chrono::Utc>,
    idempotency_key: Option<String>,
    request_hash: String,
) -> (NewPull, NewJob) {
    let pull = Pull::queued(&consent.consent_id, kind, from, to, now);
    let job = NewJob::for_pull(JobKind::SubmitPull, &pull.pull_id, now);
    let new = NewPull {
        pull,
        idempotency_key,
        request_hash,
        budget: budget_windows(&consent.limits(), now),
    };
    (new, job)
}

/// Where a consent's next default window starts: the end of its last completed pull, else
/// the end of the journey's one-time fetch, else the approval date.
pub async fn window_since(
    state: &AppState,
    consent: &Consent,
) -> Result<chrono::NaiveDate, crate::store::StoreError> {
    if let Some(to) = state.store.last_completed_to(&consent.consent_id).await? {
        return Ok(to);
    }
    if consent.journey_mode == crate::domain::consent::JourneyMode::OnceWithRecurring
        && let Some(to) = state
            .store
            .get_session(&consent.session_id)
            .await?
            .and_then(|s| s.to_date)
    {
        return Ok(to);
    }
    Ok(consent
        .approved_at
        .with_timezone(&crate::domain::ist())
        .date_naive())
}

/// The pull may not be sent before `until`: it waits if that is before its deadline, else it
/// fails now with `FAIR_USE_LIMIT` rather than hold its consent's schedule to no end.
async fn wait_until(
    state: &AppState,
    pull: &Pull,
    until: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
    why: &str,
) -> Result<(), JobError> {
    let message = format!("{why}; next pull allowed at {until}");
    if until >= deadline(pull.created_at, state.config.pull_deadline) {
        state
            .store
            .end_pull(
                &pull.pull_id,
                PullStatus::Failed,
                FAIR_USE_LIMIT,
                &message,
                now,
            )
            .await
            .map_err(store_retry)?;
        tracing::warn!(pull_id = %pull.pull_id, %message, "pull failed: it could not be sent before its deadline");
        return Ok(());
    }
    Err(JobError::Retry {
        message,
        after: Some((until - now).to_std().unwrap_or_default()),
    })
}

/// The error code of a pull refused because the consent's fair-use budget is spent.
pub const FAIR_USE_LIMIT: &str = "FAIR_USE_LIMIT";
