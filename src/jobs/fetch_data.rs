//! Fetch a finished pull's Insights or Transactions and store them, compressed, once.

use std::time::Duration;

use super::{JobError, PullPayload, pull_step_failed, store_retry};
use crate::app::AppState;
use crate::domain::pull::PullStatus;
use crate::store::StoredData;

pub async fn run(state: &AppState, payload: PullPayload) -> Result<(), JobError> {
    let Some(pull) = state
        .store
        .get_pull(&payload.pull_id)
        .await
        .map_err(store_retry)?
    else {
        return Err(JobError::Fatal(format!(
            "pull {} does not exist",
            payload.pull_id
        )));
    };
    if pull.status != PullStatus::Fetching {
        return Ok(());
    }
    let Some(session_id) = pull.upstream_session_id.as_deref() else {
        return Err(JobError::Fatal(format!(
            "pull {} is fetching without a session",
            pull.pull_id
        )));
    };
    match state.bankconnect.fetch_data(session_id, pull.kind).await {
        Ok(data) => {
            let now = state.clock.now();
            let stored = StoredData {
                pull_id: pull.pull_id.clone(),
                kind: pull.kind,
                content_encoding: "gzip".into(),
                raw_size: data.raw_size as i64,
                body: data.gzip,
                fetched_at: now,
            };
            state
                .store
                .complete_pull(&stored, now)
                .await
                .map_err(store_retry)?;
            tracing::info!(pull_id = %pull.pull_id, kind = %pull.kind, bytes = data.raw_size, "pull completed");
            Ok(())
        }
        Err(e) if e.is_not_ready() => Err(JobError::Retry {
            message: "processing not completed".into(),
            after: Some(Duration::from_secs(2)),
        }),
        Err(e) => pull_step_failed(state, &pull.pull_id, e).await,
    }
}
