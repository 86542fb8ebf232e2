//! The fair-use ledger: every Fetch Recurring AA Data call that may have reached the upstream.
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::db::*;
use super::*;
use crate::domain::fair_use::Budget;

/// The fair-use ledger: every Fetch Recurring AA Data call that may have reached the upstream.
#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Records, before sending, that a Fetch Recurring AA Data call is about to go out, if
    /// every period of the consent's budget allows one more. Returns the
    /// attempt's id, or `None` when the budget is spent. Atomic, so concurrent submitters
    /// cannot overspend.
    async fn reserve_attempt(
        &self,
        consent_id: &str,
        pull_id: &str,
        budget: &[Budget],
        now: DateTime<Utc>,
    ) -> StoreResult<Option<i64>>;
    /// Fetch Recurring AA Data calls sent for the consent in each current window of `budget`
    /// (as `fair_use::budget` gives them).
    async fn attempts_since(&self, consent_id: &str, budget: &[Budget]) -> StoreResult<Vec<u32>>;
    /// [`LedgerStore::attempts_since`] for many consents in one query, so a list page costs
    /// the same however many consents it shows. The answer is in the order asked.
    async fn attempts_since_many(
        &self,
        budgets: &[(&str, Vec<Budget>)],
    ) -> StoreResult<Vec<Vec<u32>>>;
    /// Gives a reservation back: the call certainly never reached the upstream.
    async fn cancel_attempt(&self, attempt_id: i64) -> StoreResult<()>;
}

#[async_trait]
impl LedgerStore for SqlStore {
    async fn reserve_attempt(
        &self,
        consent_id: &str,
        pull_id: &str,
        budget: &[Budget],
        now: DateTime<Utc>,
    ) -> StoreResult<Option<i64>> {
        let mut tx = self.one_statement_tx().await?;
        lock_consent(self.dialect, &mut tx, consent_id).await?;
        // Checked and reserved in one statement: the row goes in only if the budget allows.
        let sql = format!(
            "INSERT INTO pull_attempts (consent_id, pull_id, sent_at) SELECT $1, $2, $3 WHERE {} RETURNING id",
            fits_budget(budget.len(), false, 1, 4)
        );
        let mut reserve = sqlx::query_scalar(&sql)
            .bind(consent_id)
            .bind(pull_id)
            .bind(to_ms(now));
        for b in budget {
            reserve = reserve.bind(to_ms(b.period_start)).bind(i64::from(b.max));
        }
        let id: Option<i64> = reserve.fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn attempts_since(&self, consent_id: &str, budget: &[Budget]) -> StoreResult<Vec<u32>> {
        let mut conn = self.read().await?;
        sent_since(&mut conn, consent_id, budget).await
    }

    async fn attempts_since_many(
        &self,
        budgets: &[(&str, Vec<Budget>)],
    ) -> StoreResult<Vec<Vec<u32>>> {
        let mut conn = self.read().await?;
        sent_since_many(&mut conn, budgets).await
    }

    async fn cancel_attempt(&self, attempt_id: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM pull_attempts WHERE id = $1")
            .bind(attempt_id)
            .execute(&mut *self.write_conn().await?)
            .await?;
        Ok(())
    }
}
