//! Fetch a finished pull's Insights or Transactions and store them, compressed, once.

use std::time::Duration;

use super::{JobError, load_pull, pull_step_failed, store_retry};
use crate::bankconnect::wire::transactions_in;
use crate::domain::pull::PullStatus;
use crate::state::AppState;
use crate::store::{StoredData, TimelineEntry};

/// The pull's transactions for the consent's merged timeline, read straight from the
/// compressed bytes. A payload we cannot read is still stored; it just adds nothing.
fn timeline_of(stored: &StoredData, pull_id: &str) -> Vec<TimelineEntry> {
    match transactions_in(flate2::read::GzDecoder::new(&stored.body[..])) {
        Ok(txns) => txns
            .into_iter()
            .map(|t| TimelineEntry {
                hash: t.hash,
                txn_at: t.date,
                pull_id: pull_id.to_string(),
                body: t.body,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(pull_id, error = %e, "could not read transactions from the payload");
            vec![]
        }
    }
}

pub async fn run(state: &AppState, pull_id: &str) -> Result<(), JobError> {
    let pull = load_pull(state, pull_id).await?;
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
            let timeline = timeline_of(&stored, &pull.pull_id);
            state
                .store
                .complete_pull(&pull.consent_id, &stored, &timeline, now)
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
