//! Fetch a finished pull's Insights or Transactions and store them, compressed, once.

use std::time::Duration;

use flate2::read::GzDecoder;

use super::{JobError, load_pull, pull_step_failed, store_retry};
use crate::bankconnect::FetchedData;
use crate::bankconnect::wire::for_each_transaction;
use crate::domain::pull::{Pull, PullStatus};
use crate::state::AppState;
use crate::store::{StoredData, TimelineEntry};

/// Transactions go into the timeline this many at a time, each chunk a write transaction of
/// its own, and the last with the pull's completion: a document of 50 MiB holds ~200,000 of
/// them, and parsing them all before one write held ~8× the document in memory and SQLite's
/// writer for seconds (docs/benchmarks.md). A pull with fewer (most) is written in one
/// transaction, as it completes.
const TIMELINE_CHUNK: usize = 1024;

/// Reads the pull's transactions from the compressed payload for the consent's timeline, on a
/// blocking thread that hands over a chunk at a time (parsing a large document is seconds of
/// CPU); this task merges each chunk into the timeline before the parser gets more than one
/// ahead. A payload we cannot read is still stored; it adds what could be read. Gives back
/// the payload and the last chunk, which go in with the completion.
async fn merge_timeline(
    state: &AppState,
    pull: &Pull,
    data: FetchedData,
    fetched_at: chrono::DateTime<chrono::Utc>,
) -> Result<(FetchedData, Vec<TimelineEntry>), JobError> {
    let (send, mut chunks) = tokio::sync::mpsc::channel::<Vec<TimelineEntry>>(1);
    let pull_id = pull.pull_id.clone();
    let parser = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(TIMELINE_CHUNK);
        let read = for_each_transaction(GzDecoder::new(&data.gzip[..]), |t| {
            // A full chunk goes once the next transaction shows it is not the last.
            if chunk.len() == TIMELINE_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(TIMELINE_CHUNK));
                send.blocking_send(full)
                    .map_err(|_| "the timeline's writer stopped".to_string())?;
            }
            chunk.push(TimelineEntry {
                hash: t.hash,
                txn_at: t.date,
                pull_id: pull_id.clone(),
                body: t.body,
            });
            Ok(())
        });
        (data, chunk, read)
    });
    let mut written = Ok(());
    while let Some(chunk) = chunks.recv().await {
        written = state
            .store
            .add_to_timeline(&pull.consent_id, &chunk, fetched_at)
            .await;
        if written.is_err() {
            break;
        }
    }
    // The parser stops at its next chunk once nobody receives.
    drop(chunks);
    let (data, last, read) = parser.await.map_err(|e| JobError::Retry {
        message: format!("reading the payload's transactions: {e}"),
        after: None,
    })?;
    written.map_err(store_retry)?;
    if let Err(e) = read {
        tracing::warn!(pull_id = %pull.pull_id, error = %e, "could not read transactions from the payload");
    }
    Ok((data, last))
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
            let (data, last) = merge_timeline(state, &pull, data, now).await?;
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
                .complete_pull(&pull.consent_id, &stored, &last, now)
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
