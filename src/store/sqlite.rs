//! The embedded SQLite store: WAL, `synchronous=FULL`, a busy timeout, and every write
//! transaction opened with `BEGIN IMMEDIATE` so that writers queue instead of deadlocking.
//! The SQL itself is shared with Postgres (`sql.rs`).

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
    ConsentFilter, ConsentPage, CreatePull, FireReport, InboxEvent, NewPull, NewWebhook,
    PoolSettings, PullFilter, Purge, PurgeReport, ScheduledPull, Store, StoreError, StoreResult,
    StoredData, TimelineCursor, TimelineEntry, from_ms, parse_enum, to_ms,
};
use crate::domain::consent::{Consent, ConsentStatus};
use crate::domain::pull::{Pull, PullStatus};
use crate::domain::session::{Session, SessionStatus};
use crate::queue::{Job, JobOutcome, NewJob, Task};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// `BEGIN IMMEDIATE` already holds the only write lock: nothing more to lock.
const LOCK_CONSENT: Option<&str> = None;

/// Leases due jobs and jobs whose lease expired. One statement, so it is atomic under
/// SQLite's single writer.
const CLAIM_JOBS: &str =
    "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2,
        attempts = attempts + 1, updated_at = $3
    WHERE id IN (
        SELECT id FROM jobs WHERE status = 'queued' AND run_at <= $3
        UNION ALL
        SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at <= $3
        LIMIT $4)
    RETURNING id, kind, payload, attempts, max_attempts";

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str, settings: &PoolSettings) -> StoreResult<Self> {
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
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    async fn write_tx(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

sql_store!(SqliteStore, SqliteRow, sqlx::SqliteConnection);
