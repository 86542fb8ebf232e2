//! The inbox of authentic webhooks, stored with their processing jobs.
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::db::*;
use super::*;
use crate::queue::Task;

/// The inbox of authentic webhooks, stored with their processing jobs.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a batch of authentic webhooks, each with its processing job, in one
    /// transaction (group commit). Returns, per webhook, false when the same delivery was
    /// stored before (nothing is enqueued for it then).
    async fn record_webhooks(
        &self,
        batch: &[NewWebhook],
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>>;
    async fn get_webhook(&self, id: i64) -> StoreResult<Option<InboxEvent>>;
    /// Stored webhooks, newest first, before `before_id`.
    async fn list_inbox(
        &self,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<InboxSummary>>;
    /// Records a duplicate or rejected delivery (its `id` is ignored).
    async fn record_webhook_receipt(&self, receipt: &WebhookReceipt) -> StoreResult<()>;
    /// Duplicates and rejections, newest first, before `before_id`.
    async fn list_webhook_receipts(
        &self,
        outcome: Option<&str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<WebhookReceipt>>;
    /// How many deliveries with `outcome` were recorded since `since`.
    async fn count_webhook_receipts(&self, outcome: &str, since: DateTime<Utc>)
    -> StoreResult<i64>;
}

#[async_trait]
impl WebhookStore for SqlStore {
    async fn record_webhooks(
        &self,
        batch: &[NewWebhook],
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let mut tx = self.urgent_write_tx().await?;
        // One statement for the inbox rows and one for their jobs, whatever the batch size.
        let sql = format!(
            "INSERT INTO webhook_inbox (dedupe_key, event_name, upstream_session_id, body, received_at) VALUES {}
             ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key",
            self.dialect.values_list(batch.len(), 5)
        );
        let mut inbox = sqlx::query_as::<_, (i64, String)>(&sql);
        for w in batch {
            inbox = inbox
                .bind(&w.dedupe_key)
                .bind(w.event_name.as_deref())
                .bind(w.upstream_session_id.as_deref())
                .bind(&w.body)
                .bind(to_ms(now));
        }
        let stored: Vec<(i64, String)> = inbox.fetch_all(&mut *tx).await?;
        if !stored.is_empty() {
            let sql = format!(
                "INSERT INTO jobs (kind, payload, status, run_at, attempts, max_attempts, dedupe_key, created_at, updated_at)
                 VALUES {}",
                self.dialect.values_list(stored.len(), 9)
            );
            let mut insert = sqlx::query(&sql);
            for (inbox_id, _) in &stored {
                let task = Task::ProcessWebhook {
                    inbox_id: *inbox_id,
                };
                insert = insert
                    .bind(task.kind())
                    .bind(task.payload())
                    .bind("queued")
                    .bind(to_ms(now))
                    .bind(0i32)
                    .bind(task.max_attempts())
                    .bind(task.dedupe_key())
                    .bind(to_ms(now))
                    .bind(to_ms(now));
            }
            insert.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        // The first delivery with a key is the new one; a repeat in the same batch is not.
        let mut fresh_keys: std::collections::HashSet<String> =
            stored.into_iter().map(|(_, k)| k).collect();
        Ok(batch
            .iter()
            .map(|w| fresh_keys.remove(&w.dedupe_key))
            .collect())
    }

    async fn get_webhook(&self, id: i64) -> StoreResult<Option<InboxEvent>> {
        let row = sqlx::query(
            "SELECT id, dedupe_key, event_name, upstream_session_id, body, received_at FROM webhook_inbox WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(InboxEvent {
                id: r.try_get("id")?,
                dedupe_key: r.try_get("dedupe_key")?,
                event_name: r.try_get("event_name")?,
                upstream_session_id: r.try_get("upstream_session_id")?,
                body: r.try_get("body")?,
                received_at: from_ms(r.try_get("received_at")?)?,
            })
        })
        .transpose()
    }

    async fn list_inbox(
        &self,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<InboxSummary>> {
        let rows = sqlx::query(
            "SELECT id, event_name, upstream_session_id, CAST(LENGTH(body) AS BIGINT) AS body_bytes, received_at
             FROM webhook_inbox WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before_id.unwrap_or(i64::MAX))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InboxSummary {
                    id: r.try_get("id")?,
                    event_name: r.try_get("event_name")?,
                    upstream_session_id: r.try_get("upstream_session_id")?,
                    body_bytes: r.try_get::<Option<i64>, _>("body_bytes")?.unwrap_or(0),
                    received_at: from_ms(r.try_get("received_at")?)?,
                })
            })
            .collect()
    }

    async fn record_webhook_receipt(&self, r: &WebhookReceipt) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO webhook_receipts (outcome, reason, dedupe_key, body_bytes, request_id, received_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&r.outcome)
        .bind(r.reason.as_deref())
        .bind(r.dedupe_key.as_deref())
        .bind(r.body_bytes)
        .bind(r.request_id.as_deref())
        .bind(to_ms(r.received_at))
        .execute(&mut *self.write_conn().await?)
        .await?;
        Ok(())
    }

    async fn list_webhook_receipts(
        &self,
        outcome: Option<&str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<WebhookReceipt>> {
        let rows = sqlx::query(
            "SELECT id, outcome, reason, dedupe_key, body_bytes, request_id, received_at
             FROM webhook_receipts WHERE ($1 IS NULL OR outcome = $1) AND id < $2
             ORDER BY id DESC LIMIT $3",
        )
        .bind(outcome)
        .bind(before_id.unwrap_or(i64::MAX))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WebhookReceipt {
                    id: r.try_get("id")?,
                    outcome: r.try_get("outcome")?,
                    reason: r.try_get("reason")?,
                    dedupe_key: r.try_get("dedupe_key")?,
                    body_bytes: r.try_get("body_bytes")?,
                    request_id: r.try_get("request_id")?,
                    received_at: from_ms(r.try_get("received_at")?)?,
                })
            })
            .collect()
    }

    async fn count_webhook_receipts(
        &self,
        outcome: &str,
        since: DateTime<Utc>,
    ) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_receipts WHERE outcome = $1 AND received_at >= $2",
        )
        .bind(outcome)
        .bind(to_ms(since))
        .fetch_one(&self.pool)
        .await?)
    }
}
