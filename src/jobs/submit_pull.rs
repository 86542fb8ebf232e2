//! Send a pull's Fetch Recurring AA Data call.
//!
//! The call is not idempotent and every accepted call spends the consent, so each send is
//! first written to the fair-use ledger (`pull_attempts`) in a transaction that checks the
//! budget. An attempt whose outcome we never learned stays counted; one that certainly never
//! left (a refused connection) is given back. A retry is just another budget-checked send, so
//! no sequence of failures and retries can overspend the consent.

use std::time::Duration;

use super::{JobError, pull_step_failed, store_retry};
use crate::bankconnect::{BankConnectError, ConsentVerdict};
use crate::domain::consent::ConsentStatus;
use crate::domain::fair_use::{FAIR_USE_LIMIT, budget, check_all, next_period_start};
use crate::domain::pull::{Pull, PullStatus, deadline};
use crate::state::AppState;

pub async fn run(state: &AppState, pull_id: &str) -> Result<(), JobError> {
    let store = &state.store;
    let (pull, consent) = store
        .pull_with_consent(pull_id)
        .await
        .map_err(store_retry)?
        .ok_or_else(|| JobError::Fatal(format!("pull {pull_id} does not exist")))?;
    if pull.status != PullStatus::Queued {
        return Ok(());
    }
    let consent = consent
        .ok_or_else(|| JobError::Fatal(format!("consent {} does not exist", pull.consent_id)))?;
    let now = state.clock.now();
    if let Err(refusal) = consent.pullable(now) {
        store
            .end_pull(
                &pull.pull_id,
                PullStatus::Failed,
                refusal.code,
                &refusal.message,
                now,
            )
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
            &budget(&limits, now),
            now,
        )
        .await
        .map_err(store_retry)?
    else {
        let used = store
            .attempts_since(&consent.consent_id, &budget(&limits, now))
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
                            next_period_start(consent.frequency_unit, now),
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
    let mut pause = Duration::from_millis(100);
    for _ in 0..10 {
        match state
            .store
            .mark_submitted(&pull.pull_id, session_id, now)
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

/// The pull may not be sent before `until`: it waits if that is before its deadline, else it
/// fails now with `FAIR_USE_LIMIT` rather than hold its consent's schedule to no end.
async fn wait_until(
    state: &AppState,
    pull: &Pull,
    until: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
    why: &str,
) -> Result<(), JobError> {
    state.metrics.fair_use_refusals.inc();
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
