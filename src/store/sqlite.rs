//! The embedded SQLite store: WAL, `synchronous=FULL`, a busy timeout, and every write
//! transaction opened with `BEGIN IMMEDIATE` so that writers queue instead of deadlocking.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use super::{
    ConsentFilter, ConsentPage, Store, StoreError, StoreResult, from_ms, parse_enum, to_ms,
};
use crate::domain::consent::Consent;
use crate::domain::session::{Session, SessionStatus};
use crate::jobs::{Job, JobOutcome, NewJob};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
}

const SESSION_COLUMNS: &str = "session_id, link_id, use_case, journey_mode, tenure_months, frequency_unit, \
     frequency_value, from_date, to_date, bank_name, status, error_code, error_message, created_at, updated_at";

const CONSENT_COLUMNS: &str = "seq, consent_id, session_id, link_id, use_case, journey_mode, bank_name, \
     masked_account_number, tenure_months, frequency_unit, frequency_value, status, approved_at, \
     expires_at, next_pull_at, created_at, updated_at";

impl SqliteStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // A relative file path needs its folder; `sqlite://data/x.db` must work on a fresh clone.
        let file = options.get_filename();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
            && !Path::new(dir).exists()
            && file != Path::new(":memory:")
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    async fn write_tx(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

fn opt_date(v: Option<String>) -> StoreResult<Option<NaiveDate>> {
    v.map(|s| {
        NaiveDate::parse_from_str(&s, "%Y-%m-%d")
            .map_err(|_| StoreError::Corrupt(format!("date `{s}`")))
    })
    .transpose()
}

fn session_from_row(r: &SqliteRow) -> StoreResult<Session> {
    Ok(Session {
        session_id: r.try_get("session_id")?,
        link_id: r.try_get("link_id")?,
        use_case: parse_enum("use_case", r.try_get("use_case")?)?,
        journey_mode: parse_enum("journey_mode", r.try_get("journey_mode")?)?,
        tenure_months: r.try_get::<i64, _>("tenure_months")? as u32,
        frequency_unit: parse_enum("frequency_unit", r.try_get("frequency_unit")?)?,
        frequency_value: r.try_get::<i64, _>("frequency_value")? as u32,
        from_date: opt_date(r.try_get("from_date")?)?,
        to_date: opt_date(r.try_get("to_date")?)?,
        bank_name: r.try_get("bank_name")?,
        status: parse_enum("session status", r.try_get("status")?)?,
        error_code: r.try_get("error_code")?,
        error_message: r.try_get("error_message")?,
        created_at: from_ms(r.try_get("created_at")?)?,
        updated_at: from_ms(r.try_get("updated_at")?)?,
    })
}

fn consent_from_row(r: &SqliteRow) -> StoreResult<(i64, Consent)> {
    let consent = Consent {
        consent_id: r.try_get("consent_id")?,
        session_id: r.try_get("session_id")?,
        link_id: r.try_get("link_id")?,
        use_case: parse_enum("use_case", r.try_get("use_case")?)?,
        journey_mode: parse_enum("journey_mode", r.try_get("journey_mode")?)?,
        bank_name: r.try_get("bank_name")?,
        masked_account_number: r.try_get("masked_account_number")?,
        tenure_months: r.try_get::<i64, _>("tenure_months")? as u32,
        frequency_unit: parse_enum("frequency_unit", r.try_get("frequency_unit")?)?,
        frequency_value: r.try_get::<i64, _>("frequency_value")? as u32,
        status: parse_enum("consent status", r.try_get("status")?)?,
        approved_at: from_ms(r.try_get("approved_at")?)?,
        expires_at: from_ms(r.try_get("expires_at")?)?,
        next_pull_at: r
            .try_get::<Option<i64>, _>("next_pull_at")?
            .map(from_ms)
            .transpose()?,
        created_at: from_ms(r.try_get("created_at")?)?,
        updated_at: from_ms(r.try_get("updated_at")?)?,
    };
    Ok((r.try_get("seq")?, consent))
}

async fn session_in(conn: &mut sqlx::SqliteConnection, session_id: &str) -> StoreResult<Session> {
    let row = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?"
    ))
    .bind(session_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound("session"))?;
    session_from_row(&row)
}

async fn insert_job(
    conn: &mut sqlx::SqliteConnection,
    job: &NewJob,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO jobs (kind, payload, status, run_at, attempts, max_attempts, dedupe_key, created_at, updated_at)
         VALUES (?, ?, 'queued', ?, 0, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(job.kind.as_str())
    .bind(job.payload.to_string())
    .bind(to_ms(job.run_at))
    .bind(job.kind.max_attempts())
    .bind(job.dedupe_key.as_deref())
    .bind(to_ms(now))
    .bind(to_ms(now))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_session(&self, s: &Session) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_session(&self, session_id: &str) -> StoreResult<Option<Session>> {
        let mut conn = self.pool.acquire().await?;
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
            "UPDATE sessions SET status = 'capturing', callback_at = COALESCE(callback_at, ?), updated_at = ?
             WHERE session_id = ?",
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
        sqlx::query(
            "UPDATE sessions SET status = 'abandoned', callback_at = COALESCE(callback_at, ?), updated_at = ?
             WHERE session_id = ? AND status = 'pending'",
        )
        .bind(to_ms(now))
        .bind(to_ms(now))
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
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
        for c in consents {
            sqlx::query(&format!(
                "INSERT INTO consents ({}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
            .bind(to_ms(c.created_at))
            .bind(to_ms(c.updated_at))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE sessions SET status = 'completed', error_code = NULL, error_message = NULL, updated_at = ?
             WHERE session_id = ?",
        )
        .bind(to_ms(now))
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
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
        sqlx::query(
            "UPDATE sessions SET status = ?, error_code = ?, error_message = ?, updated_at = ?
             WHERE session_id = ? AND status <> 'completed'",
        )
        .bind(status.as_str())
        .bind(code)
        .bind(message)
        .bind(to_ms(now))
        .bind(session_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_consent(&self, consent_id: &str) -> StoreResult<Option<Consent>> {
        let row = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE consent_id = ?"
        ))
        .bind(consent_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| consent_from_row(&r).map(|(_, c)| c))
            .transpose()
    }

    async fn list_consents(&self, f: &ConsentFilter) -> StoreResult<ConsentPage> {
        let rows = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents
             WHERE (?1 IS NULL OR link_id = ?1) AND (?2 IS NULL OR status = ?2) AND seq > ?3
             ORDER BY seq LIMIT ?4"
        ))
        .bind(f.link_id.as_deref())
        .bind(f.status.map(|s| s.as_str()))
        .bind(f.after_seq.unwrap_or(0))
        .bind(f.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(consent_from_row).collect()
    }

    async fn consents_for_session(&self, session_id: &str) -> StoreResult<Vec<Consent>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE session_id = ? ORDER BY seq"
        ))
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| consent_from_row(r).map(|(_, c)| c))
            .collect()
    }

    async fn enqueue_job(&self, job: &NewJob) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        insert_job(&mut tx, job, Utc::now()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_jobs(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Job>> {
        let rows = sqlx::query(
            "UPDATE jobs SET status = 'running', lease_owner = ?1, lease_expires_at = ?2,
                    attempts = attempts + 1, updated_at = ?3
             WHERE id IN (
                SELECT id FROM jobs WHERE status = 'queued' AND run_at <= ?3
                UNION ALL
                SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at <= ?3
                LIMIT ?4)
             RETURNING id, kind, payload, attempts, max_attempts",
        )
        .bind(owner)
        .bind(to_ms(lease_until))
        .bind(to_ms(now))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let payload: String = r.try_get("payload")?;
                Ok(Job {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    payload: serde_json::from_str(&payload)
                        .map_err(|e| StoreError::Corrupt(format!("job payload: {e}")))?,
                    attempts: r.try_get("attempts")?,
                    max_attempts: r.try_get("max_attempts")?,
                })
            })
            .collect()
    }

    async fn extend_lease(
        &self,
        job_id: i64,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_owner = ? AND status = 'running'",
        )
        .bind(to_ms(lease_until))
        .bind(job_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn finish_job(
        &self,
        job_id: i64,
        owner: &str,
        outcome: &JobOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (status, run_at, error, attempts_delta) = match outcome {
            JobOutcome::Done => ("done", None, None, 0),
            JobOutcome::Retry { run_at, error } => {
                ("queued", Some(to_ms(*run_at)), Some(error.as_str()), 0)
            }
            JobOutcome::Dead { error } => ("dead", None, Some(error.as_str()), 0),
            JobOutcome::Release => ("queued", Some(to_ms(now)), None, -1),
        };
        sqlx::query(
            "UPDATE jobs SET status = ?, run_at = COALESCE(?, run_at), last_error = COALESCE(?, last_error),
                    attempts = attempts + ?, lease_owner = NULL, lease_expires_at = NULL, updated_at = ?
             WHERE id = ? AND lease_owner = ? AND status = 'running'",
        )
        .bind(status)
        .bind(run_at)
        .bind(error)
        .bind(attempts_delta)
        .bind(to_ms(now))
        .bind(job_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn job_counts(&self) -> StoreResult<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }
}
