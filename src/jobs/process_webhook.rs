//! Act on a stored webhook: a finished pull moves on to fetching its data (or fails), an
//! expired session expires its pull, anything else is kept and left alone.

use bytes::Bytes;

use super::{JobError, store_retry};
use crate::bankconnect::wire::{
    AccountStatus, ENRICHMENT_NOTIFICATION, SESSION_EXPIRY_NOTIFICATION, WebhookEvent,
};
use crate::domain::pull::{Pull, PullStatus};
use crate::queue::{NewJob, Task};
use crate::state::AppState;

/// A claimed job: reads its stored deliveries and acts on them together.
pub async fn run(state: &AppState, inbox_ids: &[i64]) -> Result<(), JobError> {
    let events = state
        .store
        .get_webhooks(inbox_ids)
        .await
        .map_err(store_retry)?;
    let deliveries: Vec<(i64, Bytes)> = events.into_iter().map(|e| (e.id, e.body.into())).collect();
    outcome(run_batch(state, &deliveries).await)?;
    // Deliveries leave the inbox only at the end of their data life: one that is gone cannot
    // be acted on, so the job is dead, naming it.
    if deliveries.len() < inbox_ids.len() {
        let missing: Vec<i64> = inbox_ids
            .iter()
            .filter(|id| !deliveries.iter().any(|(found, _)| found == *id))
            .copied()
            .collect();
        return Err(JobError::Fatal(format!(
            "inbox events {missing:?} do not exist"
        )));
    }
    Ok(())
}

/// The job's result from its deliveries' results: done when all are, else the first failure
/// (the next attempt acts on every delivery again, which changes nothing for those done).
pub fn outcome(results: Vec<Result<(), JobError>>) -> Result<(), JobError> {
    results.into_iter().collect()
}

/// Acts on stored deliveries `(inbox id, body)` together: the intake hands over each
/// committed batch with its bodies (`queue::Handoff`), and one query finds the pulls of all
/// of them. Returns each delivery's result, in order.
pub async fn run_batch(state: &AppState, deliveries: &[(i64, Bytes)]) -> Vec<Result<(), JobError>> {
    let events: Vec<Option<WebhookEvent>> = deliveries
        .iter()
        .map(|(inbox_id, body)| understood(*inbox_id, body))
        .collect();
    let mut sessions: Vec<&str> = events
        .iter()
        .flatten()
        .filter_map(|e| e.session_id.as_deref())
        .collect();
    sessions.sort_unstable();
    sessions.dedup();
    let pulls = match state.store.pulls_by_upstream_sessions(&sessions).await {
        Ok(pulls) => pulls,
        Err(e) => {
            let e = store_retry(e);
            return deliveries.iter().map(|_| Err(e.clone())).collect();
        }
    };
    // Each acts on its own pull; their writes meet in SQLite's group commit. The pulls that
    // move on to fetching do so together, in one transaction.
    let acted: Vec<Result<Option<&str>, JobError>> =
        futures_util::future::join_all(events.iter().map(|event| async {
            let Some(event) = event else { return Ok(None) };
            let session_id = event.session_id.as_deref().unwrap_or_default();
            let name = event.event_name.as_deref().unwrap_or_default();
            match pulls
                .iter()
                .find(|p| p.upstream_session_id.as_deref() == Some(session_id))
            {
                Some(pull) => act(state, name, pull, &event.accounts).await,
                None => {
                    // Not a pull of ours, or one whose submission is not committed yet: that
                    // commit queues this event again (see `Store::mark_submitted`).
                    tracing::info!(
                        upstream_session_id = session_id,
                        event = name,
                        "webhook for a session that is not a pull of ours"
                    );
                    Ok(None)
                }
            }
        }))
        .await;
    let fetch: Vec<&str> = acted.iter().flatten().flatten().copied().collect();
    let started = start_fetching(state, &fetch).await;
    acted
        .into_iter()
        .map(|r| match r? {
            Some(_) => started.clone(),
            None => Ok(()),
        })
        .collect()
}

/// The event, when it is one we act on: a finished or expired session, with its id.
fn understood(inbox_id: i64, body: &[u8]) -> Option<WebhookEvent> {
    let Ok(event) = serde_json::from_slice::<WebhookEvent>(body) else {
        tracing::warn!(
            inbox_id,
            "webhook body is not an event we understand; kept as received"
        );
        return None;
    };
    let name = event.event_name.as_deref().unwrap_or_default();
    let acted_on = name == ENRICHMENT_NOTIFICATION || name == SESSION_EXPIRY_NOTIFICATION;
    (acted_on && event.session_id.is_some()).then_some(event)
}

/// Acts on one event for its pull; returns the pull when its data is to be fetched.
async fn act<'p>(
    state: &AppState,
    name: &str,
    pull: &'p Pull,
    accounts: &[AccountStatus],
) -> Result<Option<&'p str>, JobError> {
    if name == SESSION_EXPIRY_NOTIFICATION {
        let ended = state
            .store
            .end_pull(
                &pull.pull_id,
                PullStatus::Expired,
                "SESSION_EXPIRED",
                "the upstream session expired before completion",
                state.clock.now(),
            )
            .await
            .map_err(store_retry)?;
        if ended {
            tracing::warn!(pull_id = %pull.pull_id, "pull expired upstream");
        }
        return Ok(None);
    }
    processing_finished(state, pull, accounts).await
}

/// The upstream has finished processing a pull (said by webhook or by `session_status`):
/// returns the pull when its data is to be fetched (an account completed), else fails the
/// pull with the accounts' codes. A pull no longer `submitted` was handled already.
pub(crate) async fn processing_finished<'p>(
    state: &AppState,
    pull: &'p Pull,
    accounts: &[AccountStatus],
) -> Result<Option<&'p str>, JobError> {
    if pull.status != PullStatus::Submitted {
        return Ok(None);
    }
    if !accounts.is_empty() && !accounts.iter().any(AccountStatus::completed) {
        let (code, message) = failed_accounts(accounts);
        state
            .store
            .end_pull(
                &pull.pull_id,
                PullStatus::Failed,
                &code,
                &message,
                state.clock.now(),
            )
            .await
            .map_err(store_retry)?;
        tracing::warn!(pull_id = %pull.pull_id, %code, "every account failed upstream");
        return Ok(None);
    }
    Ok(Some(&pull.pull_id))
}

/// Moves finished pulls on to fetching, each with its fetch job, in one transaction.
pub(crate) async fn start_fetching(state: &AppState, pull_ids: &[&str]) -> Result<(), JobError> {
    if pull_ids.is_empty() {
        return Ok(());
    }
    let now = state.clock.now();
    let fetches: Vec<NewJob> = pull_ids
        .iter()
        .map(|pull_id| {
            NewJob::new(
                Task::FetchPullData {
                    pull_id: (*pull_id).to_string(),
                },
                now,
            )
        })
        .collect();
    let moved = state
        .store
        .start_fetching(&fetches, now)
        .await
        .map_err(store_retry)?;
    if !moved.is_empty() {
        state.jobs_wakeup.notify_one();
    }
    Ok(())
}

/// The distinct error codes of failed accounts, and a message naming each account's failure.
fn failed_accounts(accounts: &[AccountStatus]) -> (String, String) {
    let mut codes: Vec<&str> = accounts
        .iter()
        .map(|a| a.error_code.as_deref().unwrap_or("ACCOUNT_FAILED"))
        .collect();
    codes.dedup();
    let message = accounts
        .iter()
        .map(|a| {
            format!(
                "{}: {}",
                a.account_id.as_deref().unwrap_or("account"),
                a.error_message
                    .as_deref()
                    .or(a.error_code.as_deref())
                    .unwrap_or("failed")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    (codes.join(","), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_accounts_report_their_codes() {
        let a = |id: &str, code: Option<&str>| AccountStatus {
            account_id: Some(id.into()),
            account_status: Some("failed".into()),
            error_code: code.map(String::from),
            error_message: Some(format!("{id} broke")),
            ..Default::default()
        };
        let (code, message) = failed_accounts(&[
            a("a1", Some("FIP_DOWN")),
            a("a2", Some("FIP_DOWN")),
            a("a3", None),
        ]);
        assert_eq!(code, "FIP_DOWN,ACCOUNT_FAILED");
        assert_eq!(message, "a1: a1 broke; a2: a2 broke; a3: a3 broke");
    }
}
