//! Enriched data as stored, and the consent's merged transaction timeline.
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;

use super::db::*;
use super::*;

/// Enriched data as stored, and the consent's merged transaction timeline.
#[async_trait]
pub trait DataStore: Send + Sync {
    async fn pull_data(&self, pull_id: &str) -> StoreResult<Option<StoredData>>;
    /// Merges transactions fetched at `fetched_at` into the consent's timeline, each hash
    /// once (the first pull to bring a transaction keeps it), in one transaction. A pull with
    /// more transactions than fit one chunk writes the others this way before it completes
    /// (`PullStore::complete_pull` takes the last), so that neither its memory nor its hold
    /// on SQLite's writer grows with the size of its document.
    async fn add_to_timeline(
        &self,
        consent_id: &str,
        entries: &[TimelineEntry],
        fetched_at: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// A consent's merged transactions from `from` to `to` (inclusive dates), oldest first.
    async fn timeline(
        &self,
        consent_id: &str,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
        after: Option<&TimelineCursor>,
        limit: u32,
    ) -> StoreResult<Vec<(TimelineCursor, TimelineEntry)>>;
}

#[async_trait]
impl DataStore for SqlStore {
    async fn pull_data(&self, pull_id: &str) -> StoreResult<Option<StoredData>> {
        let row = sqlx::query(
            "SELECT pull_id, kind, content_encoding, body, raw_size, fetched_at FROM pull_data WHERE pull_id = $1",
        )
        .bind(pull_id)
        .fetch_optional(&mut *self.read().await?)
        .await?;
        row.map(|r| {
            Ok(StoredData {
                pull_id: r.try_get("pull_id")?,
                kind: parse_enum("pull kind", r.try_get("kind")?)?,
                content_encoding: r.try_get("content_encoding")?,
                body: r.try_get("body")?,
                raw_size: r.try_get("raw_size")?,
                fetched_at: from_ms(r.try_get("fetched_at")?)?,
            })
        })
        .transpose()
    }

    async fn add_to_timeline(
        &self,
        consent_id: &str,
        entries: &[TimelineEntry],
        fetched_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        insert_timeline(&mut tx, consent_id, entries, fetched_at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn timeline(
        &self,
        consent_id: &str,
        from: NaiveDate,
        to: NaiveDate,
        after: Option<&TimelineCursor>,
        limit: u32,
    ) -> StoreResult<Vec<(TimelineCursor, TimelineEntry)>> {
        let (after_at, after_seq) = after.cloned().unwrap_or_default();
        let rows = sqlx::query(
            "SELECT seq, hash, txn_at, pull_id, body FROM transactions
             WHERE consent_id = $1 AND txn_at >= $2 AND txn_at < $3 AND (txn_at, seq) > ($4, $5)
             ORDER BY txn_at, seq LIMIT $6",
        )
        .bind(consent_id)
        .bind(from.to_string())
        .bind((to + chrono::Days::new(1)).to_string())
        .bind(after_at)
        .bind(after_seq)
        .bind(limit as i64)
        .fetch_all(&mut *self.read().await?)
        .await?;
        rows.iter()
            .map(|r| {
                let body: String = r.try_get("body")?;
                let entry = TimelineEntry {
                    hash: r.try_get("hash")?,
                    txn_at: r.try_get("txn_at")?,
                    pull_id: r.try_get("pull_id")?,
                    body: serde_json::from_str(&body)
                        .map_err(|e| StoreError::Corrupt(format!("transaction: {e}")))?,
                };
                Ok(((entry.txn_at.clone(), r.try_get("seq")?), entry))
            })
            .collect()
    }
}
