//! The scheduler's reads and its compare-and-set firing.
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::db::*;
use super::rows::*;
use super::*;
use crate::domain::consent::Consent;
use crate::domain::fair_use::check_all;

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
        .fetch_all(&mut *self.read().await?)
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
        if batch.is_empty() {
            return Ok(report);
        }
        let ids: Vec<&str> = batch.iter().map(|i| i.consent_id.as_str()).collect();
        let mut tx = self.write_tx().await?;
        // The whole batch is decided with a few statements, whatever its size: a catch-up
        // after an outage fires thousands of consents in one tick.
        if self.dialect == Dialect::Postgres {
            // Locked in one order, so two instances firing overlapping batches cannot deadlock.
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            let sql = format!(
                "SELECT consent_id FROM consents WHERE consent_id IN {} ORDER BY consent_id FOR UPDATE",
                self.dialect.values_list(1, sorted.len())
            );
            let mut lock = sqlx::query(&sql);
            for id in &sorted {
                lock = lock.bind(*id);
            }
            lock.execute(&mut *tx).await?;
        }
        let sql = format!(
            "SELECT DISTINCT consent_id FROM pulls
             WHERE consent_id IN {} AND status IN ('queued', 'submitted', 'fetching')",
            self.dialect.values_list(1, ids.len())
        );
        let mut open = sqlx::query_scalar::<_, String>(&sql);
        for id in &ids {
            open = open.bind(*id);
        }
        let in_flight: std::collections::HashSet<String> =
            open.fetch_all(&mut *tx).await?.into_iter().collect();
        // With no pull under way none is queued either, so the budget is what was sent.
        let budgets: Vec<(&str, Vec<_>)> = batch
            .iter()
            .map(|i| (i.consent_id.as_str(), i.pull.budget.clone()))
            .collect();
        let sent = sent_since_many(&mut tx, &budgets).await?;
        // Each consent is busy (a pull under way), or over budget until some time, or fires.
        let plans: Vec<(bool, Option<DateTime<Utc>>)> = batch
            .iter()
            .zip(&sent)
            .map(|(item, sent)| {
                let busy = in_flight.contains(&item.consent_id);
                let over = if busy {
                    None
                } else {
                    check_all(&item.limits, sent, now).err()
                };
                (busy, over)
            })
            .collect();

        // Move every slot that is still the one the plan saw (compare and set).
        let sql = format!(
            "WITH planned (consent_id, next_pull_at, expected) AS (VALUES {})
             UPDATE consents SET next_pull_at = planned.next_pull_at, updated_at = {}
             FROM planned
             WHERE consents.consent_id = planned.consent_id
               AND consents.next_pull_at = planned.expected AND consents.status = 'active'
             RETURNING consents.consent_id",
            self.dialect.values_list(batch.len(), 3),
            self.dialect.param(batch.len() * 3 + 1)
        );
        let mut moved = sqlx::query_scalar::<_, String>(&sql);
        for (item, (_, over)) in batch.iter().zip(&plans) {
            let next = over.unwrap_or(item.next_pull_at);
            moved = moved
                .bind(&item.consent_id)
                .bind(to_ms(next))
                .bind(to_ms(item.expected));
        }
        let moved: std::collections::HashSet<String> = moved
            .bind(to_ms(now))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();

        let mut fire = Vec::new();
        for (item, (busy, over)) in batch.iter().zip(plans) {
            if !moved.contains(&item.consent_id) {
                report.lost += 1;
            } else if busy {
                report.in_flight += 1;
            } else if over.is_some() {
                report.deferred += 1;
            } else {
                fire.push(item);
                report.fired += 1;
            }
        }
        insert_pulls(&mut tx, fire.iter().map(|i| &i.pull)).await?;
        insert_jobs(&mut tx, fire.iter().map(|i| &i.job), now).await?;
        tx.commit().await?;
        Ok(report)
    }
}
