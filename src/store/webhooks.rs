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
        let mut tx = self.write_tx().await?;
        // One statement for the inbox rows and one for their jobs, whatever the batch size.
        let sql = format!(
            "INSERT INTO webhook_inbox (dedupe_key, event_name, upstream_session_id, body, received_at) VALUES {}
             ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key",
            values_list(batch.len(), 5)
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
                values_list(stored.len(), 9)
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
}
