//! Journeys we started: created, captured, abandoned or failed.
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::db::*;
use super::events::{record_consent_event, record_session_event};
use super::rows::*;
use super::*;
use crate::domain::consent::Consent;
use crate::domain::event::EventType;
use crate::domain::session::{Session, SessionStatus};
use crate::queue::NewJob;

/// Journeys we started: created, captured, abandoned or failed.
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn insert_session(&self, s: &Session) -> StoreResult<()>;
    async fn get_session(&self, session_id: &str) -> StoreResult<Option<Session>>;
    /// The browser came back approved: moves the session to `capturing` (unless it is already
    /// `completed`) and enqueues `job` in the same transaction, so the capture survives a crash.
    async fn begin_capture(
        &self,
        session_id: &str,
        job: &NewJob,
        now: DateTime<Utc>,
    ) -> StoreResult<Session>;
    /// The browser came back denied: only a `pending` session becomes `abandoned`, so a stale
    /// or replayed denial never undoes an approval.
    async fn abandon_session(&self, session_id: &str, now: DateTime<Utc>) -> StoreResult<Session>;
    /// Stores the consents (existing ones are left as they are) and marks the session
    /// `completed`, in one transaction.
    async fn complete_session(
        &self,
        session_id: &str,
        consents: &[Consent],
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Records why capturing failed; `status` is `capturing` (will be retried) or `failed`.
    async fn record_session_error(
        &self,
        session_id: &str,
        status: SessionStatus,
        code: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// A capture whose job died: a session still `capturing` becomes `failed` with `code`.
    /// A session that already failed keeps the upstream's reason. False if nothing changed.
    async fn fail_capture(
        &self,
        session_id: &str,
        code: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn insert_session(&self, s: &Session) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ))
        .bind(&s.session_id)
        .bind(&s.link_id)
        .bind(s.use_case.as_str())
        .bind(s.journey_mode.as_str())
        .bind(s.tenure_months as i64)
        .bind(s.frequency_unit.as_str())
        .bind(s.frequency_value as i64)
        .bind(s.from_date.map(|d| d.to_string()))
        .bind(s.to_date.map(|d| d.to_string()))
        .bind(s.bank_name.as_deref())
        .bind(s.status.as_str())
        .bind(s.error_code.as_deref())
        .bind(s.error_message.as_deref())
        .bind(to_ms(s.created_at))
        .bind(to_ms(s.updated_at))
        .execute(&mut *self.write_conn().await?)
        .await?;
        Ok(())
    }

    async fn get_session(&self, session_id: &str) -> StoreResult<Option<Session>> {
        let mut conn = self.read().await?;
        match session_in(&mut conn, session_id).await {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn begin_capture(
        &self,
        session_id: &str,
        job: &NewJob,
        now: DateTime<Utc>,
    ) -> StoreResult<Session> {
        let mut tx = self.write_tx().await?;
        let session = session_in(&mut tx, session_id).await?;
        if session.status == SessionStatus::Completed {
            tx.commit().await?;
            return Ok(session);
        }
        sqlx::query(
            "UPDATE sessions SET status = 'capturing', callback_at = COALESCE(callback_at, $1), updated_at = $2,
                    error_code = NULL, error_message = NULL
             WHERE session_id = $3",
        )
        .bind(to_ms(now))
        .bind(to_ms(now))
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        insert_job(&mut tx, job, now).await?;
        let session = session_in(&mut tx, session_id).await?;
        tx.commit().await?;
        Ok(session)
    }

    async fn abandon_session(&self, session_id: &str, now: DateTime<Utc>) -> StoreResult<Session> {
        let mut tx = self.write_tx().await?;
        let abandoned = sqlx::query(
            "UPDATE sessions SET status = 'abandoned', callback_at = COALESCE(callback_at, $1), updated_at = $2
             WHERE session_id = $3 AND status = 'pending'",
        )
        .bind(to_ms(now))
        .bind(to_ms(now))
        .bind(session_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if abandoned {
            record_session_event(&mut tx, EventType::SessionFailed, session_id, now).await?;
        }
        let session = session_in(&mut tx, session_id).await?;
        tx.commit().await?;
        Ok(session)
    }

    async fn complete_session(
        &self,
        session_id: &str,
        consents: &[Consent],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let mut added = vec![];
        for c in consents {
            let inserted = sqlx::query(&format!(
                "INSERT INTO consents ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
                 ON CONFLICT (consent_id) DO NOTHING",
                CONSENT_COLUMNS.trim_start_matches("seq, ")
            ))
            .bind(&c.consent_id)
            .bind(&c.session_id)
            .bind(&c.link_id)
            .bind(c.use_case.as_str())
            .bind(c.journey_mode.as_str())
            .bind(c.bank_name.as_deref())
            .bind(c.masked_account_number.as_deref())
            .bind(c.tenure_months as i64)
            .bind(c.frequency_unit.as_str())
            .bind(c.frequency_value as i64)
            .bind(c.status.as_str())
            .bind(to_ms(c.approved_at))
            .bind(to_ms(c.expires_at))
            .bind(c.next_pull_at.map(to_ms))
            .bind(c.pull_blocked_until.map(to_ms))
            .bind(c.pull_interval_secs)
            .bind(to_ms(c.created_at))
            .bind(to_ms(c.updated_at))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                added.push(c.consent_id.as_str());
            }
        }
        let completed = sqlx::query(
            "UPDATE sessions SET status = 'completed', error_code = NULL, error_message = NULL, updated_at = $1
             WHERE session_id = $2 AND status <> 'completed'",
        )
        .bind(to_ms(now))
        .bind(session_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        for consent_id in added {
            record_consent_event(&mut tx, EventType::ConsentActive, consent_id, now).await?;
        }
        if completed {
            record_session_event(&mut tx, EventType::SessionCompleted, session_id, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_session_error(
        &self,
        session_id: &str,
        status: SessionStatus,
        code: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        // The journey fails once: a failed session that fails again tells nobody anew.
        let newly_failed = status == SessionStatus::Failed
            && sqlx::query_scalar::<_, String>("SELECT status FROM sessions WHERE session_id = $1")
                .bind(session_id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some_and(|s| s != "failed" && s != "completed");
        sqlx::query(
            "UPDATE sessions SET status = $1, error_code = $2, error_message = $3, updated_at = $4
             WHERE session_id = $5 AND status <> 'completed'",
        )
        .bind(status.as_str())
        .bind(code)
        .bind(message)
        .bind(to_ms(now))
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        if newly_failed {
            record_session_event(&mut tx, EventType::SessionFailed, session_id, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn fail_capture(
        &self,
        session_id: &str,
        code: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let failed = sqlx::query(
            "UPDATE sessions SET status = 'failed', error_code = $1, error_message = $2, updated_at = $3
             WHERE session_id = $4 AND status = 'capturing'",
        )
        .bind(code)
        .bind(message)
        .bind(to_ms(now))
        .bind(session_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if failed {
            record_session_event(&mut tx, EventType::SessionFailed, session_id, now).await?;
        }
        tx.commit().await?;
        Ok(failed)
    }
}
