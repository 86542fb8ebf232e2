//! The inbox of authentic webhooks, stored with their processing jobs.
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::db::*;
use super::*;
use crate::queue::{Job, Task};

/// The inbox of authentic webhooks, stored with their processing jobs.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a batch of authentic webhooks and one processing job for those that are new,
    /// in one transaction (group commit). With a `lease`, the job is stored already leased
    /// under it.
    async fn record_webhooks(
        &self,
        batch: &[NewWebhook],
        lease: Option<Lease<'_>>,
        now: DateTime<Utc>,
    ) -> StoreResult<RecordedBatch>;
    /// The stored webhooks among `ids`, in the order of `ids`.
    async fn get_webhooks(&self, ids: &[i64]) -> StoreResult<Vec<InboxEvent>>;
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
        lease: Option<Lease<'_>>,
        now: DateTime<Utc>,
    ) -> StoreResult<RecordedBatch> {
        if batch.is_empty() {
            return Ok(RecordedBatch {
                each: vec![],
                leased: None,
            });
        }
        let mut tx = self.urgent_write_tx().await?;
        // One statement for the inbox rows and one for their job, whatever the batch size.
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
                .bind(&w.body[..])
                .bind(to_ms(now));
        }
        let stored: Vec<(i64, String)> = inbox.fetch_all(&mut *tx).await?;
        // The first delivery with a key is the new one; a repeat in the same batch is not.
        let mut fresh: std::collections::HashMap<&str, i64> =
            stored.iter().map(|(id, k)| (k.as_str(), *id)).collect();
        let inbox_ids: Vec<Option<i64>> = batch
            .iter()
            .map(|w| fresh.remove(w.dedupe_key.as_str()))
            .collect();
        let new: Vec<i64> = inbox_ids.iter().flatten().copied().collect();
        // One processing job for the batch's new deliveries.
        let mut job = None;
        if !new.is_empty() {
            let task = Task::ProcessWebhook { inbox_ids: new };
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO jobs (kind, payload, status, run_at, attempts, max_attempts, lease_owner, lease_expires_at, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            )
            .bind(task.kind())
            .bind(task.payload())
            .bind(if lease.is_some() { "running" } else { "queued" })
            .bind(to_ms(now))
            // A leased job's first attempt has begun, as a claim would count it.
            .bind(i32::from(lease.is_some()))
            .bind(task.max_attempts())
            .bind(lease.map(|l| l.owner))
            .bind(lease.map(|l| to_ms(l.until)))
            .bind(to_ms(now))
            .bind(to_ms(now))
            .fetch_one(&mut *tx)
            .await?;
            job = Some((id, task));
        }
        tx.commit().await?;
        Ok(RecordedBatch {
            each: inbox_ids
                .into_iter()
                .map(|id| match (id, lease) {
                    (None, _) => Recorded::Duplicate,
                    (Some(inbox_id), None) => Recorded::Queued { inbox_id },
                    (Some(inbox_id), Some(_)) => Recorded::Leased { inbox_id },
                })
                .collect(),
            leased: lease.and(job).map(|(id, task)| Job {
                id,
                kind: task.kind().into(),
                attempts: 1,
                max_attempts: task.max_attempts(),
                task: Ok(task),
            }),
        })
    }

    async fn get_webhooks(&self, ids: &[i64]) -> StoreResult<Vec<InboxEvent>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "SELECT id, dedupe_key, event_name, upstream_session_id, body, received_at FROM webhook_inbox WHERE id IN {}",
            self.dialect.values_list(1, ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id);
        }
        let mut events = query
            .fetch_all(&mut *self.read().await?)
            .await?
            .iter()
            .map(|r| {
                Ok(InboxEvent {
                    id: r.try_get("id")?,
                    dedupe_key: r.try_get("dedupe_key")?,
                    event_name: r.try_get("event_name")?,
                    upstream_session_id: r.try_get("upstream_session_id")?,
                    body: r.try_get("body")?,
                    received_at: from_ms(r.try_get("received_at")?)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        events.sort_by_key(|e| ids.iter().position(|id| *id == e.id));
        Ok(events)
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
        .fetch_all(&mut *self.read().await?)
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
        .fetch_all(&mut *self.read().await?)
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
        .fetch_one(&mut *self.read().await?)
        .await?)
    }
}
