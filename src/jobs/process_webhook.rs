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

/// `body` is the stored delivery's, when the intake handed the job over with it; otherwise it
/// is read from the inbox.
pub async fn run(state: &AppState, inbox_id: i64, body: Option<Bytes>) -> Result<(), JobError> {
    let body = match body {
        Some(body) => body,
        None => match state
            .store
            .get_webhook(inbox_id)
            .await
            .map_err(store_retry)?
        {
            Some(event) => event.body.into(),
            None => {
                return Err(JobError::Fatal(format!(
                    "inbox event {inbox_id} does not exist"
                )));
            }
        },
    };
    let Ok(parsed) = serde_json::from_slice::<WebhookEvent>(&body) else {
        tracing::warn!(
            inbox_id,
            "webhook body is not an event we understand; kept as received"
        );
        return Ok(());
    };
    let name = parsed.event_name.as_deref().unwrap_or_default();
    if name != ENRICHMENT_NOTIFICATION && name != SESSION_EXPIRY_NOTIFICATION {
        return Ok(());
    }
    let Some(session_id) = parsed.session_id.as_deref() else {
        return Ok(());
    };
    let Some(pull) = state
        .store
        .pull_by_upstream_session(session_id)
        .await
        .map_err(store_retry)?
    else {
        // Not a pull of ours, or one whose submission is not committed yet: that commit
        // queues this event again (see `Store::mark_submitted`).
        tracing::info!(
            upstream_session_id = session_id,
            event = name,
            "webhook for a session that is not a pull of ours"
        );
        return Ok(());
    };
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
        return Ok(());
    }
    processing_finished(state, &pull, &parsed.accounts).await
}

/// The upstream has finished processing a pull (said by webhook or by `session_status`):
/// fetch the data if any account completed, else fail the pull with the accounts' codes.
pub(crate) async fn processing_finished(
    state: &AppState,
    pull: &Pull,
    accounts: &[AccountStatus],
) -> Result<(), JobError> {
    if pull.status != PullStatus::Submitted {
        return Ok(());
    }
    let now = state.clock.now();
    if !accounts.is_empty() && !accounts.iter().any(AccountStatus::completed) {
        let (code, message) = failed_accounts(accounts);
        state
            .store
            .end_pull(&pull.pull_id, PullStatus::Failed, &code, &message, now)
            .await
            .map_err(store_retry)?;
        tracing::warn!(pull_id = %pull.pull_id, %code, "every account failed upstream");
        return Ok(());
    }
    let fetch = NewJob::new(
        Task::FetchPullData {
            pull_id: pull.pull_id.clone(),
        },
        now,
    );
    if state
        .store
        .start_fetching(&pull.pull_id, &fetch, now)
        .await
        .map_err(store_retry)?
    {
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
