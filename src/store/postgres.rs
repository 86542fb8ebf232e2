//! The Postgres store, for several instances sharing one database. The SQL is shared with
//! SQLite (`sql.rs`); what differs is here: budget checks lock the consent's row, and jobs
//! are claimed with `FOR UPDATE SKIP LOCKED` so instances never wait on each other's jobs.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};

use super::{
    ConsentFilter, ConsentPage, CreatePull, FireReport, InboxEvent, NewPull, NewWebhook,
    PoolSettings, PullFilter, Purge, PurgeReport, ScheduledPull, Store, StoreError, StoreResult,
    StoredData, TimelineCursor, TimelineEntry, from_ms, parse_enum, to_ms,
};
use crate::domain::consent::{Consent, ConsentStatus};
use crate::domain::pull::{Pull, PullStatus};
use crate::domain::session::{Session, SessionStatus};
use crate::queue::{Job, JobOutcome, NewJob, Task};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Budget checks of one consent run one at a time across instances.
const LOCK_CONSENT: Option<&str> = Some("SELECT 1 FROM consents WHERE consent_id = $1 FOR UPDATE");

/// Leases due jobs and jobs whose lease expired, skipping rows another instance is claiming.
const CLAIM_JOBS: &str = "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2,
        attempts = attempts + 1, updated_at = $3
    WHERE id IN (
        SELECT id FROM jobs
        WHERE (status = 'queued' AND run_at <= $3) OR (status = 'running' AND lease_expires_at <= $3)
        ORDER BY run_at
        LIMIT $4
        FOR UPDATE SKIP LOCKED)
    RETURNING id, kind, payload, attempts, max_attempts";

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, settings: &PoolSettings) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    async fn write_tx(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

sql_store!(PgStore, PgRow, sqlx::PgConnection);
