//! The safety net for lost webhooks: a submitted pull that heard nothing after
//! `POLL_FALLBACK_AFTER_SECS` asks `session_status`, backing off, until `PULL_DEADLINE_SECS`.
//! Its job is queued by the poll sweep (`housekeeping::start_polling`), only for such pulls.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{
    JobError, load_pull,
    process_webhook::{processing_finished, start_fetching},
    pull_step_failed, store_retry,
};
use crate::domain::pull::{PULL_DEADLINE, PullStatus, deadline, deadline_message};
use crate::state::AppState;

pub async fn run(state: &AppState, pull_id: &str) -> Result<(), JobError> {
    let pull = load_pull(state, pull_id).await?;
    // A webhook got there first, or the pull ended otherwise.
    if pull.status != PullStatus::Submitted {
        return Ok(());
    }
    let (Some(session_id), Some(submitted_at)) =
        (pull.upstream_session_id.as_deref(), pull.submitted_at)
    else {
        return Err(JobError::Fatal(format!(
            "pull {} is submitted without a session",
            pull.pull_id
        )));
    };
    let now = state.clock.now();
    let deadline = deadline(pull.created_at, state.config.pull_deadline);
    if now >= deadline {
        state
            .store
            .end_pull(
                &pull.pull_id,
                PullStatus::Expired,
                PULL_DEADLINE,
                &deadline_message(state.config.pull_deadline),
                now,
            )
            .await
            .map_err(store_retry)?;
        tracing::warn!(pull_id = %pull.pull_id, "pull expired: deadline passed");
        return Ok(());
    }
    match state.bankconnect.session_status(session_id).await {
        Ok(Some(status)) => match processing_finished(state, &pull, &status.accounts).await? {
            Some(pull_id) => start_fetching(state, &[pull_id]).await,
            None => Ok(()),
        },
        Ok(None) => Err(JobError::Retry {
            message: "processing not completed".into(),
            after: Some(poll_interval(
                submitted_at + state.config.poll_fallback_after,
                now,
                deadline,
            )),
        }),
        Err(e) => pull_step_failed(state, &pull.pull_id, e).await,
    }
}

/// Polls start every 2 s (FinBox's suggestion) and slow down as the wait grows, to at most a
/// minute apart; the last poll lands on the deadline.
pub fn poll_interval(
    polling_since: DateTime<Utc>,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> Duration {
    let waited = (now - polling_since).to_std().unwrap_or_default();
    let interval = (waited / 10).clamp(Duration::from_secs(2), Duration::from_secs(60));
    let left = (deadline - now).to_std().unwrap_or_default();
    interval.min(left.max(Duration::from_millis(100)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_slows_down_and_respects_the_deadline() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let far = t0 + chrono::Duration::days(1);
        assert_eq!(poll_interval(t0, t0, far), Duration::from_secs(2));
        assert_eq!(
            poll_interval(t0, t0 + chrono::Duration::seconds(100), far),
            Duration::from_secs(10)
        );
        assert_eq!(
            poll_interval(t0, t0 + chrono::Duration::hours(5), far),
            Duration::from_secs(60)
        );
        let soon = t0 + chrono::Duration::seconds(1);
        assert_eq!(poll_interval(t0, t0, soon), Duration::from_secs(1));
    }
}
