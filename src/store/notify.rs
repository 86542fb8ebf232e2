//! The lender's webhook endpoints, and the deliveries of events to them. Deliveries are made
//! by `events::insert_event` in the transaction of the event (the outbox fans out), each with
//! a durable job.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::db::*;
use super::*;
use crate::domain::event::{Event, EventType};
use crate::domain::notify::{Endpoint, EndpointStatus};
use crate::queue::{NewJob, Task};

const ENDPOINT_COLUMNS: &str = "seq, endpoint_id, url, description, event_types, status, disabled_reason, \
     secret, old_secret, old_secret_until, failing_since, created_at, updated_at";

/// A delivery as the console lists it.
#[derive(Debug, Clone)]
pub struct DeliverySummary {
    pub seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A delivery with everything its job needs.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub seq: i64,
    pub event_seq: i64,
    pub status: String,
    pub attempts: i64,
    pub event: Event,
    pub endpoint: Endpoint,
}

/// One attempt to deliver an event, as `GET /api/v1/events/{id}/deliveries` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    pub endpoint_id: String,
    pub attempted_at: DateTime<Utc>,
    /// The endpoint's answer, or `null` when none came (timeout, refused connection).
    pub http_status: Option<i64>,
    pub latency_ms: i64,
    /// The first 1 KiB of the answer.
    pub response: Option<String>,
    pub error: Option<String>,
    /// Where the delivery stands after this attempt: `pending`, `delivered` or `failed`.
    pub delivery_status: String,
}

/// What an attempt does to its delivery and endpoint.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub http_status: Option<u16>,
    pub latency_ms: i64,
    pub response: Option<String>,
    pub error: Option<String>,
    /// `pending` (to be retried), `delivered` or `failed`.
    pub delivery_status: &'static str,
    /// Disable the endpoint, with this reason.
    pub disable: Option<String>,
}

#[async_trait]
pub trait NotifyStore: Send + Sync {
    async fn create_endpoint(&self, e: &Endpoint) -> StoreResult<()>;
    async fn list_endpoints(&self, after_seq: i64, limit: u32)
    -> StoreResult<Vec<(i64, Endpoint)>>;
    async fn get_endpoint(&self, endpoint_id: &str) -> StoreResult<Option<Endpoint>>;
    /// Replaces the endpoint's URL, description and event types.
    async fn update_endpoint(&self, e: &Endpoint, now: DateTime<Utc>) -> StoreResult<()>;
    async fn delete_endpoint(&self, endpoint_id: &str) -> StoreResult<bool>;
    async fn set_endpoint_status(
        &self,
        endpoint_id: &str,
        status: EndpointStatus,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// A new secret; the old one still signs until `old_until`.
    async fn rotate_secret(
        &self,
        endpoint_id: &str,
        secret: &str,
        old_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    async fn get_delivery(&self, seq: i64) -> StoreResult<Option<Delivery>>;
    /// Whether an earlier delivery to the same endpoint is still pending (order is kept).
    async fn earlier_pending(&self, endpoint_id: &str, event_seq: i64) -> StoreResult<bool>;
    /// Records an attempt and its consequences in one transaction.
    async fn record_attempt(
        &self,
        delivery: &Delivery,
        attempt: &AttemptRecord,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    async fn delivery_attempts(&self, event_id: &str) -> StoreResult<Vec<DeliveryAttempt>>;
    /// For each endpoint with a pending delivery, when its oldest one was made.
    async fn oldest_pending(&self) -> StoreResult<Vec<(String, DateTime<Utc>)>>;
    /// Deliveries to every endpoint, newest first, before `before_seq`.
    async fn list_deliveries(
        &self,
        status: Option<&str>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<DeliverySummary>>;
    /// How many deliveries are in `status` (read through `deliveries_by_status`).
    async fn count_deliveries(&self, status: &str) -> StoreResult<i64>;
    /// Sends the event again to every enabled endpoint that wants it. Returns how many.
    async fn redeliver(
        &self,
        event: &Event,
        event_seq: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<u64>;
}

fn endpoint_from_row(r: &sqlx::any::AnyRow) -> StoreResult<(i64, Endpoint)> {
    let types: Option<String> = r.try_get("event_types")?;
    let event_types = types
        .map(|t| {
            serde_json::from_str::<Vec<String>>(&t)
                .map_err(|e| StoreError::Corrupt(format!("event types: {e}")))?
                .iter()
                .map(|t| parse_enum::<EventType>("event type", t))
                .collect::<StoreResult<Vec<_>>>()
        })
        .transpose()?;
    let opt = |v: Option<i64>| v.map(from_ms).transpose();
    Ok((
        r.try_get("seq")?,
        Endpoint {
            endpoint_id: r.try_get("endpoint_id")?,
            url: r.try_get("url")?,
            description: r.try_get("description")?,
            event_types,
            status: parse_enum("endpoint status", &r.try_get::<String, _>("status")?)?,
            disabled_reason: r.try_get("disabled_reason")?,
            secret: r.try_get("secret")?,
            old_secret: r.try_get("old_secret")?,
            old_secret_until: opt(r.try_get("old_secret_until")?)?,
            failing_since: opt(r.try_get("failing_since")?)?,
            created_at: from_ms(r.try_get("created_at")?)?,
            updated_at: from_ms(r.try_get("updated_at")?)?,
        },
    ))
}

fn types_column(e: &Endpoint) -> Option<String> {
    e.event_types.as_ref().map(|ts| {
        serde_json::to_string(&ts.iter().map(|t| t.as_str()).collect::<Vec<_>>())
            .expect("strings serialise")
    })
}

/// Whether a delivery to the endpoint of an event before `event_seq` is still pending.
async fn pending_before(
    conn: &mut AnyConnection,
    endpoint_id: &str,
    event_seq: i64,
) -> StoreResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deliveries WHERE endpoint_id = $1 AND status = 'pending' AND event_seq < $2",
    )
    .bind(endpoint_id)
    .bind(event_seq)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

/// Serialises the fan-out and the settling of one endpoint's deliveries, so that a new
/// delivery and the settling of the one before it always see each other (else, on Postgres,
/// each could miss the other and leave the new one without a job). A no-op update takes the
/// row lock on Postgres; on SQLite the write transaction already holds the only lock.
async fn lock_endpoint(conn: &mut AnyConnection, endpoint_id: &str) -> StoreResult<()> {
    sqlx::query("UPDATE webhook_endpoints SET updated_at = updated_at WHERE endpoint_id = $1")
        .bind(endpoint_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Fans an event out: a pending delivery and its job for every enabled endpoint that wants it.
pub(super) async fn fan_out(
    conn: &mut AnyConnection,
    event_seq: i64,
    event_id: &str,
    event_type: EventType,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    let rows = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE status = 'enabled' ORDER BY seq"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let mut n = 0;
    for row in &rows {
        let (_, endpoint) = endpoint_from_row(row)?;
        if !endpoint.wants(event_type) {
            continue;
        }
        let seq: Option<i64> = sqlx::query_scalar(
            "INSERT INTO deliveries (event_seq, event_id, endpoint_id, status, attempts, created_at, updated_at)
             VALUES ($1, $2, $3, 'pending', 0, $4, $4)
             ON CONFLICT (event_id, endpoint_id) DO UPDATE SET status = 'pending', attempts = 0, updated_at = $4
             RETURNING seq",
        )
        .bind(event_seq)
        .bind(event_id)
        .bind(&endpoint.endpoint_id)
        .bind(to_ms(now))
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(delivery_seq) = seq {
            // Only the endpoint's oldest pending delivery has a job; settling it gives the next
            // one its job (see `record_attempt`), so one endpoint's events go out in order.
            lock_endpoint(conn, &endpoint.endpoint_id).await?;
            if !pending_before(conn, &endpoint.endpoint_id, event_seq).await? {
                insert_job(
                    conn,
                    &NewJob::new(Task::DeliverEvent { delivery_seq }, now),
                    now,
                )
                .await?;
            }
            n += 1;
        }
    }
    Ok(n)
}

#[async_trait]
impl NotifyStore for SqlStore {
    async fn create_endpoint(&self, e: &Endpoint) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO webhook_endpoints (endpoint_id, url, description, event_types, status, secret, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&e.endpoint_id)
        .bind(&e.url)
        .bind(e.description.as_deref())
        .bind(types_column(e))
        .bind(e.status.as_str())
        .bind(&e.secret)
        .bind(to_ms(e.created_at))
        .bind(to_ms(e.updated_at))
        .execute(&mut *self.write_conn().await?)
        .await?;
        Ok(())
    }

    async fn list_endpoints(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<(i64, Endpoint)>> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after_seq)
        .bind(limit as i64)
        .fetch_all(&mut *self.read().await?)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    async fn get_endpoint(&self, endpoint_id: &str) -> StoreResult<Option<Endpoint>> {
        let row = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE endpoint_id = $1"
        ))
        .bind(endpoint_id)
        .fetch_optional(&mut *self.read().await?)
        .await?;
        Ok(row
            .as_ref()
            .map(endpoint_from_row)
            .transpose()?
            .map(|(_, e)| e))
    }

    async fn update_endpoint(&self, e: &Endpoint, now: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_endpoints SET url = $1, description = $2, event_types = $3, updated_at = $4
             WHERE endpoint_id = $5",
        )
        .bind(&e.url)
        .bind(e.description.as_deref())
        .bind(types_column(e))
        .bind(to_ms(now))
        .bind(&e.endpoint_id)
        .execute(&mut *self.write_conn().await?)
        .await?;
        Ok(())
    }

    async fn delete_endpoint(&self, endpoint_id: &str) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let deleted = sqlx::query("DELETE FROM webhook_endpoints WHERE endpoint_id = $1")
            .bind(endpoint_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        // Its pending deliveries end with it.
        sqlx::query(
            "UPDATE deliveries SET status = 'failed', last_error = 'endpoint deleted' WHERE endpoint_id = $1 AND status = 'pending'",
        )
        .bind(endpoint_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn set_endpoint_status(
        &self,
        endpoint_id: &str,
        status: EndpointStatus,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE webhook_endpoints SET status = $1, disabled_reason = $2, failing_since = NULL, updated_at = $3
             WHERE endpoint_id = $4",
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(to_ms(now))
        .bind(endpoint_id)
        .execute(&mut *self.write_conn().await?)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn rotate_secret(
        &self,
        endpoint_id: &str,
        secret: &str,
        old_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE webhook_endpoints SET old_secret = secret, old_secret_until = $1, secret = $2, updated_at = $3
             WHERE endpoint_id = $4",
        )
        .bind(to_ms(old_until))
        .bind(secret)
        .bind(to_ms(now))
        .bind(endpoint_id)
        .execute(&mut *self.write_conn().await?)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn get_delivery(&self, seq: i64) -> StoreResult<Option<Delivery>> {
        let Some(row) = sqlx::query(
            "SELECT seq, event_seq, event_id, endpoint_id, status, attempts FROM deliveries WHERE seq = $1",
        )
        .bind(seq)
        .fetch_optional(&mut *self.read().await?)
        .await?
        else {
            return Ok(None);
        };
        let event_id: String = row.try_get("event_id")?;
        let endpoint_id: String = row.try_get("endpoint_id")?;
        let (Some((_, event)), Some(endpoint)) = (
            self.get_event(&event_id).await?,
            self.get_endpoint(&endpoint_id).await?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Delivery {
            seq: row.try_get("seq")?,
            event_seq: row.try_get("event_seq")?,
            status: row.try_get("status")?,
            attempts: row.try_get("attempts")?,
            event,
            endpoint,
        }))
    }

    async fn earlier_pending(&self, endpoint_id: &str, event_seq: i64) -> StoreResult<bool> {
        let mut conn = self.read().await?;
        pending_before(&mut conn, endpoint_id, event_seq).await
    }

    async fn record_attempt(
        &self,
        d: &Delivery,
        a: &AttemptRecord,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_seq, event_id, endpoint_id, attempted_at, http_status, latency_ms, response, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(d.seq)
        .bind(&d.event.id)
        .bind(&d.endpoint.endpoint_id)
        .bind(to_ms(now))
        .bind(a.http_status.map(i64::from))
        .bind(a.latency_ms)
        .bind(a.response.as_deref())
        .bind(a.error.as_deref())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE deliveries SET status = $1, attempts = attempts + 1, last_error = $2, updated_at = $3 WHERE seq = $4",
        )
        .bind(a.delivery_status)
        .bind(a.error.as_deref())
        .bind(to_ms(now))
        .bind(d.seq)
        .execute(&mut *tx)
        .await?;
        // An endpoint that answers is healthy again; one that does not is failing since its
        // first failure.
        let healthy = a.delivery_status == "delivered";
        sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = CASE WHEN $1 THEN NULL ELSE COALESCE(failing_since, $2) END
             WHERE endpoint_id = $3",
        )
        .bind(healthy)
        .bind(to_ms(now))
        .bind(&d.endpoint.endpoint_id)
        .execute(&mut *tx)
        .await?;
        // The next delivery to this endpoint waited on this one: once this one is settled, it
        // gets its job, due at once (or, if it has one, that job runs now).
        if a.delivery_status != "pending" {
            lock_endpoint(&mut tx, &d.endpoint.endpoint_id).await?;
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT seq FROM deliveries WHERE endpoint_id = $1 AND status = 'pending'
                 ORDER BY event_seq LIMIT 1",
            )
            .bind(&d.endpoint.endpoint_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(delivery_seq) = next {
                let job = NewJob::new(Task::DeliverEvent { delivery_seq }, now);
                insert_job(&mut tx, &job, now).await?;
                sqlx::query(
                    "UPDATE jobs SET run_at = $1 WHERE dedupe_key = $2 AND status = 'queued'",
                )
                .bind(to_ms(now))
                .bind(job.task.dedupe_key())
                .execute(&mut *tx)
                .await?;
            }
        }
        if let Some(reason) = &a.disable {
            sqlx::query(
                "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $1, updated_at = $2 WHERE endpoint_id = $3",
            )
            .bind(reason)
            .bind(to_ms(now))
            .bind(&d.endpoint.endpoint_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delivery_attempts(&self, event_id: &str) -> StoreResult<Vec<DeliveryAttempt>> {
        let rows = sqlx::query(
            "SELECT a.endpoint_id, a.attempted_at, a.http_status, a.latency_ms, a.response, a.error, d.status
             FROM delivery_attempts a JOIN deliveries d ON d.seq = a.delivery_seq
             WHERE a.event_id = $1 ORDER BY a.seq",
        )
        .bind(event_id)
        .fetch_all(&mut *self.read().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryAttempt {
                    endpoint_id: r.try_get("endpoint_id")?,
                    attempted_at: from_ms(r.try_get("attempted_at")?)?,
                    http_status: r.try_get("http_status")?,
                    latency_ms: r.try_get("latency_ms")?,
                    response: r.try_get("response")?,
                    error: r.try_get("error")?,
                    delivery_status: r.try_get("status")?,
                })
            })
            .collect()
    }

    async fn list_deliveries(
        &self,
        status: Option<&str>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<DeliverySummary>> {
        // Through `deliveries_by_status` when a status is asked for.
        let rows = sqlx::query(&format!(
            "SELECT d.seq, d.event_id, e.type, d.endpoint_id, d.status, d.attempts, d.last_error, d.updated_at
             FROM deliveries d JOIN events e ON e.seq = d.event_seq
             WHERE {} AND d.seq < $2
             ORDER BY d.seq DESC LIMIT $3",
            filter_eq("d.status", 1, status.is_some())
        ))
        .bind(status)
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(limit as i64)
        .fetch_all(&mut *self.read().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeliverySummary {
                    seq: r.try_get("seq")?,
                    event_id: r.try_get("event_id")?,
                    event_type: r.try_get("type")?,
                    endpoint_id: r.try_get("endpoint_id")?,
                    status: r.try_get("status")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    updated_at: from_ms(r.try_get("updated_at")?)?,
                })
            })
            .collect()
    }

    async fn count_deliveries(&self, status: &str) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = $1")
                .bind(status)
                .fetch_one(&mut *self.read().await?)
                .await?,
        )
    }

    async fn oldest_pending(&self) -> StoreResult<Vec<(String, DateTime<Utc>)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT endpoint_id, MIN(created_at) FROM deliveries WHERE status = 'pending' GROUP BY endpoint_id",
        )
        .fetch_all(&mut *self.read().await?)
        .await?;
        rows.into_iter()
            .map(|(e, at)| Ok((e, from_ms(at)?)))
            .collect()
    }

    async fn redeliver(
        &self,
        event: &Event,
        event_seq: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let n = fan_out(&mut tx, event_seq, &event.id, event.event_type, now).await?;
        tx.commit().await?;
        Ok(n)
    }
}
