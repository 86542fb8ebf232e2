//! Consents: read, listed, and their status and spacing changed.
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use sqlx::Row;

use super::db::*;
use super::events::record_consent_event;
use super::rows::*;
use super::*;
use crate::domain::consent::{Consent, ConsentStatus};
use crate::domain::event::EventType;

/// Consents: read, listed, and their status and spacing changed.
#[async_trait]
pub trait ConsentStore: Send + Sync {
    async fn get_consent(&self, consent_id: &str) -> StoreResult<Option<Consent>>;
    async fn list_consents(&self, filter: &ConsentFilter) -> StoreResult<ConsentPage>;
    async fn consents_for_session(&self, session_id: &str) -> StoreResult<Vec<Consent>>;
    async fn set_consent_status(
        &self,
        consent_id: &str,
        status: ConsentStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// No pull is sent for the consent before `until` (the upstream said it was overused).
    async fn block_consent_until(
        &self,
        consent_id: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// `active` → `paused`. `None` if the consent does not exist; unchanged if not active.
    async fn pause_consent(
        &self,
        consent_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Consent>>;
    /// `paused` → `active` with the schedule restarting at `next_pull_at`.
    async fn resume_consent(
        &self,
        consent_id: &str,
        next_pull_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Consent>>;
    /// Sets the consent's own pull spacing and reschedules its next pull.
    async fn set_pull_interval(
        &self,
        consent_id: &str,
        secs: Option<i64>,
        next_pull_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Consent>>;
    /// Consents by status, from the counts the triggers keep (no scan of the consents).
    async fn consent_status_counts(&self) -> StoreResult<Vec<(String, i64)>>;
}

#[async_trait]
impl ConsentStore for SqlStore {
    async fn get_consent(&self, consent_id: &str) -> StoreResult<Option<Consent>> {
        let row = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE consent_id = $1"
        ))
        .bind(consent_id)
        .fetch_optional(&mut *self.read().await?)
        .await?;
        row.map(|r| consent_from_row(&r).map(|(_, c)| c))
            .transpose()
    }

    async fn list_consents(&self, f: &ConsentFilter) -> StoreResult<ConsentPage> {
        let rows = sqlx::query(&list_consents_sql(f))
            .bind(f.link_id.as_deref())
            .bind(f.status.map(|s| s.as_str()))
            .bind(f.after_seq.unwrap_or(0))
            .bind(f.limit as i64)
            .bind(f.updated_after.map_or(i64::MIN, to_ms))
            .fetch_all(&mut *self.read().await?)
            .await?;
        rows.iter().map(consent_from_row).collect()
    }

    async fn consents_for_session(&self, session_id: &str) -> StoreResult<Vec<Consent>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE session_id = $1 ORDER BY seq"
        ))
        .bind(session_id)
        .fetch_all(&mut *self.read().await?)
        .await?;
        rows.iter()
            .map(|r| consent_from_row(r).map(|(_, c)| c))
            .collect()
    }

    async fn set_consent_status(
        &self,
        consent_id: &str,
        status: ConsentStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let ended = matches!(
            status,
            ConsentStatus::Revoked | ConsentStatus::Expired | ConsentStatus::Invalid
        );
        let mut tx = self.write_tx().await?;
        let changed = sqlx::query(
            "UPDATE consents SET status = $1, ended_at = CASE WHEN $2 THEN COALESCE(ended_at, $3) END, updated_at = $4
             WHERE consent_id = $5 AND status <> $1",
        )
        .bind(status.as_str())
        .bind(ended)
        .bind(to_ms(now))
        .bind(to_ms(now))
        .bind(consent_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if changed {
            record_consent_event(&mut tx, consent_event(status), consent_id, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn block_consent_until(
        &self,
        consent_id: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE consents SET pull_blocked_until = CASE WHEN COALESCE(pull_blocked_until, 0) > $1 THEN pull_blocked_until ELSE $1 END, updated_at = $2
             WHERE consent_id = $3",
        )
        .bind(to_ms(until))
        .bind(to_ms(now))
        .bind(consent_id)
        .execute(&mut *self.write_conn().await?)
        .await?;
        Ok(())
    }

    async fn pause_consent(
        &self,
        consent_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Consent>> {
        let mut tx = self.write_tx().await?;
        let paused = sqlx::query(
            "UPDATE consents SET status = 'paused', updated_at = $1 WHERE consent_id = $2 AND status = 'active'",
        )
        .bind(to_ms(now))
        .bind(consent_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if paused {
            record_consent_event(&mut tx, EventType::ConsentPaused, consent_id, now).await?;
        }
        tx.commit().await?;
        self.get_consent(consent_id).await
    }

    async fn resume_consent(
        &self,
        consent_id: &str,
        next_pull_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Consent>> {
        let mut tx = self.write_tx().await?;
        let resumed = sqlx::query(
            "UPDATE consents SET status = 'active', next_pull_at = $1, updated_at = $2
             WHERE consent_id = $3 AND status = 'paused'",
        )
        .bind(to_ms(next_pull_at))
        .bind(to_ms(now))
        .bind(consent_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if resumed {
            record_consent_event(&mut tx, EventType::ConsentResumed, consent_id, now).await?;
        }
        tx.commit().await?;
        self.get_consent(consent_id).await
    }

    async fn set_pull_interval(
        &self,
        consent_id: &str,
        secs: Option<i64>,
        next_pull_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Consent>> {
        sqlx::query(
            "UPDATE consents SET pull_interval_secs = $1, next_pull_at = $2, updated_at = $3 WHERE consent_id = $4",
        )
        .bind(secs)
        .bind(to_ms(next_pull_at))
        .bind(to_ms(now))
        .bind(consent_id)
        .execute(&mut *self.write_conn().await?)
        .await?;
        self.get_consent(consent_id).await
    }
    async fn consent_status_counts(&self) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, n FROM consent_status_counts ORDER BY status")
            .fetch_all(&mut *self.read().await?)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }
}

/// The event a consent's new status tells.
fn consent_event(status: ConsentStatus) -> EventType {
    match status {
        ConsentStatus::Active => EventType::ConsentActive,
        ConsentStatus::Paused => EventType::ConsentPaused,
        ConsentStatus::Revoked => EventType::ConsentRevoked,
        ConsentStatus::Expired => EventType::ConsentExpired,
        ConsentStatus::Invalid => EventType::ConsentInvalid,
    }
}

/// A page of consents: through `consents_by_link` when a borrower is asked for (the most
/// selective filter), else `consents_by_status` when a status is, else in key order.
pub(super) fn list_consents_sql(f: &ConsentFilter) -> String {
    let (link, status) = (f.link_id.is_some(), f.status.is_some());
    format!(
        "SELECT {CONSENT_COLUMNS} FROM consents
         WHERE {} AND {} AND seq > $3 AND updated_at > $5
         ORDER BY seq LIMIT $4",
        filter_eq("link_id", 1, link),
        filter_eq("status", 2, status && !link)
    )
}
