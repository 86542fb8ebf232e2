//! Housekeeping: tenure ends and the data life.
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::db::*;
use super::events::record_consent_event;
use super::*;
use crate::domain::event::EventType;

/// Deletes up to `$2` journeys that never completed, last changed before `$1`. The statuses
/// are listed rather than written `<> 'completed'`, which SQLite answered by scanning every
/// session (the completed ones are most of them) while holding the writer; listed, it seeks
/// `sessions_by_age` once a status.
pub(super) fn purge_sessions_sql() -> String {
    let unfinished: Vec<String> = crate::domain::session::SessionStatus::ALL
        .iter()
        .filter(|s| **s != "completed")
        .map(|s| format!("'{s}'"))
        .collect();
    format!(
        "DELETE FROM sessions WHERE session_id IN (
            SELECT session_id FROM sessions WHERE status IN ({}) AND updated_at < $1 LIMIT $2)",
        unfinished.join(", ")
    )
}

/// Finished jobs by age. The status test is `jobs_finished`'s WHERE as written (migration
/// 0011): SQLite uses a partial index only for a query that has that term.
pub(super) const PURGE_JOBS_SQL: &str = "DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE (status = 'done' OR status = 'cancelled' OR status = 'dead')
    AND updated_at < $1 LIMIT $2)";

/// Housekeeping: tenure ends and the data life.
#[async_trait]
pub trait HousekeepingStore: Send + Sync {
    /// Active or paused consents past their tenure become `expired`. Returns how many.
    async fn expire_consents(&self, now: DateTime<Utc>) -> StoreResult<u64>;
    /// One batch of housekeeping: at most `limit` rows of each kind in [`Purge`], each kind in
    /// its own short transaction so that intake never waits long for the writer. Purged pulls
    /// stay, marked purged. Call again while any count reaches `limit`.
    async fn purge_batch(
        &self,
        purge: &Purge,
        limit: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<PurgeReport>;
}

#[async_trait]
impl HousekeepingStore for SqlStore {
    async fn expire_consents(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let expired: Vec<String> = sqlx::query_scalar(
            "UPDATE consents SET status = 'expired', ended_at = COALESCE(ended_at, expires_at), updated_at = $1
             WHERE status IN ('active', 'paused') AND expires_at <= $2
             RETURNING consent_id",
        )
        .bind(to_ms(now))
        .bind(to_ms(now))
        .fetch_all(&mut *tx)
        .await?;
        for consent_id in &expired {
            record_consent_event(&mut tx, EventType::ConsentExpired, consent_id, now).await?;
        }
        tx.commit().await?;
        Ok(expired.len() as u64)
    }

    async fn purge_batch(
        &self,
        purge: &Purge,
        limit: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<PurgeReport> {
        let data_before = to_ms(purge.data_before);
        let limit = limit as i64;
        let mut report = PurgeReport::default();

        // Stored payloads past their data life, or of consents that ended long ago.
        // The pull rows stay, marked purged.
        let mut tx = self.write_tx().await?;
        let pulls: Vec<String> = sqlx::query_scalar(
            "SELECT d.pull_id FROM pull_data d
             WHERE d.fetched_at < $1
                OR d.pull_id IN (SELECT p.pull_id FROM pulls p JOIN consents c ON c.consent_id = p.consent_id
                                 WHERE c.ended_at < $1)
             LIMIT $2",
        )
        .bind(data_before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        for pull_id in &pulls {
            sqlx::query("UPDATE pulls SET data_purged_at = $1, updated_at = $1 WHERE pull_id = $2")
                .bind(to_ms(now))
                .bind(pull_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM pull_data WHERE pull_id = $1")
                .bind(pull_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        report.pulls = pulls.len() as u64;

        report.transactions = sqlx::query(
            "DELETE FROM transactions WHERE seq IN (
                SELECT seq FROM transactions
                WHERE fetched_at < $1 OR consent_id IN (SELECT consent_id FROM consents WHERE ended_at < $1)
                LIMIT $2)",
        )
        .bind(data_before)
        .bind(limit)
        .execute(&mut *self.write_conn().await?)
        .await?
        .rows_affected();
        report.webhooks = sqlx::query(
            "DELETE FROM webhook_inbox WHERE id IN (SELECT id FROM webhook_inbox WHERE received_at < $1 LIMIT $2)",
        )
        .bind(data_before)
        .bind(limit)
        .execute(&mut *self.write_conn().await?)
        .await?
        .rows_affected();
        // Duplicate and rejected deliveries are kept as long as stored ones.
        report.webhooks += sqlx::query(
            "DELETE FROM webhook_receipts WHERE id IN (SELECT id FROM webhook_receipts WHERE received_at < $1 LIMIT $2)",
        )
        .bind(data_before)
        .bind(limit)
        .execute(&mut *self.write_conn().await?)
        .await?
        .rows_affected();
        report.jobs = sqlx::query(PURGE_JOBS_SQL)
            .bind(data_before)
            .bind(limit)
            .execute(&mut *self.write_conn().await?)
            .await?
            .rows_affected();
        report.sessions = sqlx::query(&purge_sessions_sql())
            .bind(to_ms(purge.sessions_before))
            .bind(limit)
            .execute(&mut *self.write_conn().await?)
            .await?
            .rows_affected();
        // Console sign-ins that expired.
        report.sessions += sqlx::query(
            "DELETE FROM console_sessions WHERE session_hash IN (
                SELECT session_hash FROM console_sessions WHERE expires_at <= $1 LIMIT $2)",
        )
        .bind(to_ms(now))
        .bind(limit)
        .execute(&mut *self.write_conn().await?)
        .await?
        .rows_affected();
        report.ledger = sqlx::query(
            "DELETE FROM pull_attempts WHERE id IN (SELECT id FROM pull_attempts WHERE sent_at < $1 LIMIT $2)",
        )
        .bind(to_ms(purge.ledger_before))
        .bind(limit)
        .execute(&mut *self.write_conn().await?)
        .await?
        .rows_affected();
        Ok(report)
    }
}
