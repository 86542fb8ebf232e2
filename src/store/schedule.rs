//! The scheduler's reads and its compare-and-set firing.
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::db::*;
use super::rows::*;
use super::*;
use crate::domain::consent::Consent;

/// The scheduler's reads and its compare-and-set firing.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Active consents whose `next_pull_at` has come, soonest first, through an index.
    async fn due_consents(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Consent>>;
    /// Fires a batch of scheduled pulls in one transaction.
    async fn fire_scheduled(
        &self,
        batch: &[ScheduledPull],
        now: DateTime<Utc>,
    ) -> StoreResult<FireReport>;
}

#[async_trait]
impl ScheduleStore for SqlStore {
    async fn due_consents(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Consent>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents
             WHERE status = 'active' AND next_pull_at <= $1 ORDER BY next_pull_at LIMIT $2"
        ))
        .bind(to_ms(now))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| consent_from_row(r).map(|(_, c)| c))
            .collect()
    }

    async fn fire_scheduled(
        &self,
        batch: &[ScheduledPull],
        now: DateTime<Utc>,
    ) -> StoreResult<FireReport> {
        let mut report = FireReport::default();
        let mut tx = self.write_tx().await?;
        for item in batch {
            lock_consent(self.dialect, &mut tx, &item.consent_id).await?;
            let in_flight: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pulls WHERE consent_id = $1 AND status IN ('queued', 'submitted', 'fetching')",
            )
            .bind(&item.consent_id)
            .fetch_one(&mut *tx)
            .await?;
            let in_flight = in_flight > 0;
            let over = !in_flight
                && !budget_allows(&mut tx, &item.consent_id, &item.pull.budget, true).await?;
            let next = if over {
                item.next_when_over_budget
            } else {
                item.next_pull_at
            };
            let moved = sqlx::query(
                "UPDATE consents SET next_pull_at = $1, updated_at = $2
                 WHERE consent_id = $3 AND next_pull_at = $4 AND status = 'active'",
            )
            .bind(to_ms(next))
            .bind(to_ms(now))
            .bind(&item.consent_id)
            .bind(to_ms(item.expected))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !moved {
                report.lost += 1;
            } else if in_flight {
                report.in_flight += 1;
            } else if over {
                report.deferred += 1;
            } else {
                insert_pull(&mut tx, &item.pull).await?;
                insert_job(&mut tx, &item.job, now).await?;
                report.fired += 1;
            }
        }
        tx.commit().await?;
        Ok(report)
    }
}
