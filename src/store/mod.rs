//! Persistence behind one trait, so SQLite (embedded) and Postgres (scale-out) are two
//! implementations of the same contract. All SQL lives under this module.

mod consents;
mod console;
mod data;
mod db;
mod events;
pub mod group_commit;
mod housekeeping;
mod jobs;
mod ledger;
mod notify;
mod pulls;
mod rows;
mod schedule;
mod sessions;
mod webhooks;
mod writer;

pub use consents::ConsentStore;
pub use console::{ConsoleSession, ConsoleStore};
pub use data::DataStore;
pub use db::{Dialect, SqlStore};
pub use events::{EventFilter, EventStore};
pub use housekeeping::HousekeepingStore;
pub use jobs::{JobFilter, JobStore};
pub use ledger::LedgerStore;
pub use notify::{AttemptRecord, Delivery, DeliveryAttempt, DeliverySummary, NotifyStore};
pub use pulls::PullStore;
pub use schedule::ScheduleStore;
pub use sessions::SessionStore;
pub use webhooks::WebhookStore;

/// Every part of the store, for `use crate::store::prelude::*` where the store is called.
pub mod prelude {
    pub use super::{
        ConsentStore, ConsoleStore, DataStore, EventStore, HousekeepingStore, JobStore,
        LedgerStore, NotifyStore, PullStore, ScheduleStore, SessionStore, Store, WebhookStore,
    };
}

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use crate::config::PoolSettings;
use crate::domain::consent::{Consent, ConsentStatus};
use crate::domain::fair_use::{Budget, Limit};
use crate::domain::pull::{Pull, PullKind, PullStatus};
use crate::queue::NewJob;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value this version cannot read (a bad enum string, say).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Unsupported(&'static str),
    /// The batch this write was committed with failed (the error is shared by the batch).
    #[error("{message}")]
    Batch { unavailable: bool, message: String },
}

impl StoreError {
    /// True when the database itself is out of reach (as opposed to a bad query or row), so
    /// the caller may answer 503 and expect a retry to work.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Batch { unavailable, .. } => *unavailable,
            StoreError::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_),
            ) => true,
            // Postgres: connection exceptions (08…), too many connections or no resources
            // (53…), operator intervention such as a shutdown or restart (57…), and a
            // database that is not accepting connections (55000).
            // SQLite: the database is busy or locked past the busy timeout (SQLITE_BUSY,
            // SQLITE_LOCKED and their extended codes).
            StoreError::Database(sqlx::Error::Database(e)) => {
                let code = e.code();
                if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    code.and_then(|c| c.parse::<i32>().ok())
                        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
                } else {
                    code.is_some_and(|c| {
                        c.starts_with("08")
                            || c.starts_with("53")
                            || c.starts_with("57")
                            || c == "55000"
                    })
                }
            }
            _ => false,
        }
    }

    /// True when the database refused a value rather than failed (Postgres class 22, "data
    /// exception": a NUL byte in text, a number out of range), so the caller's input is at
    /// fault.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => e
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some_and(|e| e.code().starts_with("22")),
            _ => false,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which consents to list; results are ordered by insertion and paged by `after_seq`.
#[derive(Debug, Clone, Default)]
pub struct ConsentFilter {
    pub link_id: Option<String>,
    pub status: Option<ConsentStatus>,
    /// Only consents changed after this instant.
    pub updated_after: Option<DateTime<Utc>>,
    pub after_seq: Option<i64>,
    pub limit: u32,
}

/// A page of consents with the position of each, for cursors.
pub type ConsentPage = Vec<(i64, Consent)>;

#[derive(Debug, Clone, Default)]
pub struct PullFilter {
    pub consent_id: Option<String>,
    pub status: Option<PullStatus>,
    /// Only pulls changed after this instant.
    pub updated_after: Option<DateTime<Utc>>,
    /// The position to continue from: rows after it, or before it when `newest_first`.
    pub after_seq: Option<i64>,
    pub limit: u32,
    /// Newest first (the console) rather than oldest first (the API).
    pub newest_first: bool,
}

/// A pull to create, with what makes its creation idempotent and budget-checked.
#[derive(Debug, Clone)]
pub struct NewPull {
    pub pull: Pull,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    /// Fair use: in each period of the budget, pulls sent since its start plus pulls not yet
    /// sent must stay below its max.
    pub budget: Vec<Budget>,
}

/// A due consent's scheduled pull, fired only if the consent's `next_pull_at` is still
/// `expected` (so that several instances fire each slot once).
#[derive(Debug, Clone)]
pub struct ScheduledPull {
    pub consent_id: String,
    pub expected: DateTime<Utc>,
    /// Where `next_pull_at` moves when the pull is created (or skipped because one is in flight).
    pub next_pull_at: DateTime<Utc>,
    /// The consent's fair-use limits. When the firing transaction finds the budget spent,
    /// `next_pull_at` moves instead to when these allow a pull again: the counts read there
    /// decide, so the planner does not read them too.
    pub limits: [Limit; 2],
    pub pull: NewPull,
    pub job: NewJob,
}

/// What a scheduler batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FireReport {
    pub fired: u32,
    /// The budget was spent: moved to when it allows again.
    pub deferred: u32,
    /// A pull for the consent was still under way: this slot was skipped.
    pub in_flight: u32,
    /// Another instance fired it first.
    pub lost: u32,
}

/// What housekeeping deletes: everything older than its cutoff.
#[derive(Debug, Clone)]
pub struct Purge {
    /// Stored data and timeline entries fetched before this, and those of consents that
    /// ended before it (the data life); also webhooks received (stored, duplicate or
    /// rejected) and jobs finished (done, cancelled or dead) before it. Expired console
    /// sign-ins go on every run.
    pub data_before: DateTime<Utc>,
    /// Sessions never completed, untouched since before this.
    pub sessions_before: DateTime<Utc>,
    /// Fair-use ledger rows sent before this (older than the longest budget window).
    pub ledger_before: DateTime<Utc>,
}

/// How many rows one [`HousekeepingStore::purge_batch`] deleted, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub pulls: u64,
    pub transactions: u64,
    pub webhooks: u64,
    pub jobs: u64,
    pub sessions: u64,
    pub ledger: u64,
}

impl PurgeReport {
    /// The most rows any one kind lost: when it is below the batch size, all is done.
    pub fn most(&self) -> u64 {
        [
            self.pulls,
            self.transactions,
            self.webhooks,
            self.jobs,
            self.sessions,
            self.ledger,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    pub fn add(&mut self, other: PurgeReport) {
        self.pulls += other.pulls;
        self.transactions += other.transactions;
        self.webhooks += other.webhooks;
        self.jobs += other.jobs;
        self.sessions += other.sessions;
        self.ledger += other.ledger;
    }
}

/// One transaction of a consent's merged timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub hash: String,
    /// As the upstream sends it: `YYYY-MM-DD HH:MM:SS`.
    pub txn_at: String,
    pub pull_id: String,
    pub body: serde_json::Value,
}

/// Where a page of a timeline starts: after this entry.
pub type TimelineCursor = (String, i64);

#[derive(Debug, Clone)]
pub enum CreatePull {
    Created(Pull),
    /// The idempotency key was used before; `same_request` says whether with this body.
    Existing {
        pull: Pull,
        same_request: bool,
    },
    /// The consent's budget for the current window is spent (or promised to queued pulls).
    OverBudget,
}

/// Enriched data as stored: gzip-compressed bytes of the upstream's JSON.
#[derive(Debug, Clone)]
pub struct StoredData {
    pub pull_id: String,
    pub kind: PullKind,
    pub content_encoding: String,
    pub body: Vec<u8>,
    pub raw_size: i64,
    pub fetched_at: DateTime<Utc>,
}

/// An authentic webhook to store. `dedupe_key` is the sender's event id, or the body's hash.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub dedupe_key: String,
    pub event_name: Option<String>,
    pub upstream_session_id: Option<String>,
    pub body: bytes::Bytes,
}

/// A lease to store jobs under (`queue::Handoff`): running, held by `owner` until `until`.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub owner: &'a str,
    pub until: DateTime<Utc>,
}

/// What storing a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The same delivery was stored before; nothing was enqueued.
    Duplicate,
    /// Stored; its batch's processing job is queued for any worker.
    Queued { inbox_id: i64 },
    /// Stored; its batch's processing job is leased to this process's pool.
    Leased { inbox_id: i64 },
}

/// What storing a batch of webhooks did: each delivery's fate, in order, and the batch's one
/// processing job when it was stored leased (to hand over).
#[derive(Debug, Clone)]
pub struct RecordedBatch {
    pub each: Vec<Recorded>,
    pub leased: Option<crate::queue::Job>,
}

/// A webhook delivery that was not stored as new: a duplicate of one stored before, or one
/// refused (a rejected delivery's body is never kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReceipt {
    pub id: i64,
    /// `duplicate` or `rejected`.
    pub outcome: String,
    /// Why it was rejected (`webhook_auth`'s reasons).
    pub reason: Option<String>,
    /// The stored delivery it repeated.
    pub dedupe_key: Option<String>,
    pub body_bytes: i64,
    pub request_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// A stored webhook without its body, for listing.
#[derive(Debug, Clone)]
pub struct InboxSummary {
    pub id: i64,
    pub event_name: Option<String>,
    pub upstream_session_id: Option<String>,
    pub body_bytes: i64,
    pub received_at: DateTime<Utc>,
}

/// A webhook as received, verified.
#[derive(Debug, Clone)]
pub struct InboxEvent {
    pub id: i64,
    pub dedupe_key: String,
    pub event_name: Option<String>,
    pub upstream_session_id: Option<String>,
    pub body: Vec<u8>,
    pub received_at: DateTime<Utc>,
}

/// Persistence, grouped by concern: one trait per aggregate, each in its own file with its
/// SQL. One implementation ([`SqlStore`]) serves SQLite and Postgres.
#[async_trait]
pub trait Store:
    SessionStore
    + ConsentStore
    + ConsoleStore
    + PullStore
    + LedgerStore
    + DataStore
    + EventStore
    + NotifyStore
    + ScheduleStore
    + WebhookStore
    + JobStore
    + HousekeepingStore
    + Send
    + Sync
    + 'static
{
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// Answers only when the database does.
    async fn ping(&self) -> StoreResult<()>;
    /// The versions of this build's migrations that the database has not applied (all of
    /// them on a database never migrated).
    async fn pending_migrations(&self) -> StoreResult<Vec<i64>>;
    /// How this process's SQLite writer is doing, so an operator can see it saturate
    /// (none on Postgres).
    fn writer_stats(&self) -> Option<WriterStats>;
}

/// Totals since start for SQLite's writer (`store/writer.rs`). Write transactions per commit
/// is how many share a commit; wait time growing as fast as the clock means writers queue.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriterStats {
    /// Commits (each one fsync).
    pub commits: u64,
    /// Write transactions and single write statements those commits held.
    pub transactions: u64,
    /// Time writers spent waiting for their turn, summed over writers.
    pub wait_seconds: f64,
    /// The size of the write-ahead log file now: about 40 MiB at most under steady load
    /// (`store/db.rs`); more means checkpoints are held back and the disk it takes grows.
    pub wal_bytes: u64,
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store that `database_url` names: `sqlite:…` or `postgres:…`.
pub async fn connect(database_url: &str, settings: &PoolSettings) -> StoreResult<DynStore> {
    Ok(Arc::new(SqlStore::connect(database_url, settings).await?))
}

pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms}")))
}

pub(crate) fn parse_enum<T: std::str::FromStr>(what: &str, v: &str) -> StoreResult<T> {
    v.parse()
        .map_err(|_| StoreError::Corrupt(format!("{what} `{v}`")))
}
