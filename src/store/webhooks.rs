//! The inbox of authentic webhooks, stored with their processing jobs.
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::db::*;
use super::writer::FusedTx;
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
        let insert = format!(
            "INSERT INTO webhook_inbox (dedupe_key, event_name, upstream_session_id, body, received_at) VALUES {}
             ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key",
            self.dialect.values_list(batch.len(), 5)
        );
        let (inbox_ids, job) = match self.urgent_fused_tx().await? {
            // SQLite: two calls, the first opening the transaction and the last committing
            // it, instead of four.
            Some(mut tx) => {
                let sql = format!("{}{insert}", FusedTx::OPEN);
                let rows = tx
                    .fetch_all(sqlx::query_with(&sql, webhook_args(batch, now)?))
                    .await?;
                let inbox_ids = new_ids(batch, &rows)?;
                let job = match batch_job(&inbox_ids) {
                    None => {
                        tx.commit(sqlx::query("COMMIT")).await?;
                        None
                    }
                    Some(task) => {
                        let sql = format!("{INSERT_JOB}{}", FusedTx::COMMIT);
                        let rows = tx
                            .commit(bind_job(sqlx::query(&sql), &task, lease, now))
                            .await?;
                        let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
                        Some((row.try_get(0)?, task))
                    }
                };
                (inbox_ids, job)
            }
            None => {
                let mut tx = self.write_tx().await?;
                let rows = sqlx::query_with(&insert, webhook_args(batch, now)?)
                    .fetch_all(&mut *tx)
                    .await?;
                let inbox_ids = new_ids(batch, &rows)?;
                let mut job = None;
                if let Some(task) = batch_job(&inbox_ids) {
                    let row = bind_job(sqlx::query(INSERT_JOB), &task, lease, now)
                        .fetch_one(&mut *tx)
                        .await?;
                    job = Some((row.try_get(0)?, task));
                }
                tx.commit().await?;
                (inbox_ids, job)
            }
        };
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

/// A batch's rows as the arguments of a [`Dialect::values_list`] of five columns.
fn webhook_args<'q>(
    batch: &'q [NewWebhook],
    now: DateTime<Utc>,
) -> Result<sqlx::any::AnyArguments<'q>, sqlx::Error> {
    use sqlx::Arguments;
    let mut args = sqlx::any::AnyArguments::default();
    for w in batch {
        args.add(&w.dedupe_key).map_err(sqlx::Error::Encode)?;
        args.add(w.event_name.as_deref())
            .map_err(sqlx::Error::Encode)?;
        args.add(w.upstream_session_id.as_deref())
            .map_err(sqlx::Error::Encode)?;
        args.add(&w.body[..]).map_err(sqlx::Error::Encode)?;
        args.add(to_ms(now)).map_err(sqlx::Error::Encode)?;
    }
    Ok(args)
}

/// Each delivery's new inbox id, from the `(id, dedupe_key)` rows the insert returned: the
/// first delivery with a key is the new one; a repeat (in the batch, or stored before) is
/// not.
fn new_ids(
    batch: &[NewWebhook],
    rows: &[sqlx::any::AnyRow],
) -> Result<Vec<Option<i64>>, sqlx::Error> {
    let mut fresh = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        fresh.insert(row.try_get::<String, _>(1)?, row.try_get::<i64, _>(0)?);
    }
    Ok(batch.iter().map(|w| fresh.remove(&w.dedupe_key)).collect())
}

/// One processing job for a batch's new deliveries; none for a batch of repeats.
fn batch_job(inbox_ids: &[Option<i64>]) -> Option<Task> {
    let new: Vec<i64> = inbox_ids.iter().flatten().copied().collect();
    (!new.is_empty()).then_some(Task::ProcessWebhook { inbox_ids: new })
}

/// A batch's processing job, stored leased (its first attempt begun, as a claim would count
/// it) or queued.
const INSERT_JOB: &str = "INSERT INTO jobs (kind, payload, status, run_at, attempts, max_attempts, lease_owner, lease_expires_at, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id";

fn bind_job<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    task: &Task,
    lease: Option<Lease<'q>>,
    now: DateTime<Utc>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(task.kind())
        .bind(task.payload())
        .bind(if lease.is_some() { "running" } else { "queued" })
        .bind(to_ms(now))
        .bind(i32::from(lease.is_some()))
        .bind(task.max_attempts())
        .bind(lease.map(|l| l.owner))
        .bind(lease.map(|l| to_ms(l.until)))
        .bind(to_ms(now))
        .bind(to_ms(now))
}
