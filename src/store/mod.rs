//! Persistence behind one trait, so SQLite (embedded) and Postgres (scale-out) are two
//! implementations of the same contract. All SQL lives under this module.

#[macro_use]
mod sql;
pub mod group_commit;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use crate::config::PoolSettings;
use crate::domain::consent::{Consent, ConsentStatus};
use crate::domain::pull::{Pull, PullKind, PullStatus};
use crate::domain::session::{Session, SessionStatus};
use crate::queue::{Job, JobOutcome, NewJob};

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
    pub after_seq: Option<i64>,
    pub limit: u32,
}

/// A page of consents with the position of each, for cursors.
pub type ConsentPage = Vec<(i64, Consent)>;

#[derive(Debug, Clone, Default)]
pub struct PullFilter {
    pub consent_id: Option<String>,
    pub status: Option<PullStatus>,
    pub after_seq: Option<i64>,
    pub limit: u32,
}

/// A pull to create, with what makes its creation idempotent and budget-checked.
#[derive(Debug, Clone)]
pub struct NewPull {
    pub pull: Pull,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    /// Fair use: for each `(window start, max)`, pulls sent since the start plus pulls not yet
    /// sent must stay below the max.
    pub budget: Vec<(DateTime<Utc>, u32)>,
}

/// A due consent's scheduled pull, fired only if the consent's `next_pull_at` is still
/// `expected` (so that several instances fire each slot once).
#[derive(Debug, Clone)]
pub struct ScheduledPull {
    pub consent_id: String,
    pub expected: DateTime<Utc>,
    /// Where `next_pull_at` moves when the pull is created (or skipped because one is in flight).
    pub next_pull_at: DateTime<Utc>,
    /// Where it moves instead when the budget is spent: when the budget allows again.
    pub next_when_over_budget: DateTime<Utc>,
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
    /// ended before it (the data life); also webhooks received and jobs finished (done,
    /// cancelled or dead) before it.
    pub data_before: DateTime<Utc>,
    /// Sessions never completed, untouched since before this.
    pub sessions_before: DateTime<Utc>,
    /// Fair-use ledger rows sent before this (older than the longest budget window).
    pub ledger_before: DateTime<Utc>,
}

/// How many rows one [`Store::purge_batch`] deleted, by kind.
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
    pub body: Vec<u8>,
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// Answers only when the database does.
    async fn ping(&self) -> StoreResult<()>;

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

    /// Creates a pull and its submit job in one transaction, honouring the idempotency key
    /// and the fair-use budget.
    async fn create_pull(&self, new: &NewPull, job: &NewJob) -> StoreResult<CreatePull>;
    async fn get_pull(&self, pull_id: &str) -> StoreResult<Option<Pull>>;
    async fn pull_by_upstream_session(
        &self,
        upstream_session_id: &str,
    ) -> StoreResult<Option<Pull>>;
    async fn list_pulls(&self, filter: &PullFilter) -> StoreResult<Vec<(i64, Pull)>>;
    /// The end of the newest completed pull's window: where the next default window starts.
    async fn last_completed_to(&self, consent_id: &str) -> StoreResult<Option<chrono::NaiveDate>>;
    /// Records, before sending, that a Fetch Recurring AA Data call is about to go out, if
    /// every `(window start, max)` of the consent's budget allows one more. Returns the
    /// attempt's id, or `None` when the budget is spent. Atomic, so concurrent submitters
    /// cannot overspend.
    async fn reserve_attempt(
        &self,
        consent_id: &str,
        pull_id: &str,
        budget: &[(DateTime<Utc>, u32)],
        now: DateTime<Utc>,
    ) -> StoreResult<Option<i64>>;
    /// Fetch Recurring AA Data calls sent for the consent in each current window of `budget`
    /// (`(window start, max)`, as `fair_use::budget_windows` gives them).
    async fn attempts_since(
        &self,
        consent_id: &str,
        budget: &[(DateTime<Utc>, u32)],
    ) -> StoreResult<Vec<u32>>;
    /// Gives a reservation back: the call certainly never reached the upstream.
    async fn cancel_attempt(&self, attempt_id: i64) -> StoreResult<()>;
    /// `queued` → `submitted` with the upstream's session id, and the fallback poll job. Any
    /// webhook for that session that arrived first is queued for processing again.
    async fn mark_submitted(
        &self,
        pull_id: &str,
        upstream_session_id: &str,
        poll: &NewJob,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// `submitted` → `fetching`, and the fetch job, in one transaction. False if the pull was
    /// not `submitted` (already handled by another event).
    async fn start_fetching(
        &self,
        pull_id: &str,
        fetch: &NewJob,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Ends a pull that is not yet terminal as `failed` or `expired`, and cancels its queued
    /// jobs. False if it already ended.
    async fn end_pull(
        &self,
        pull_id: &str,
        status: PullStatus,
        code: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Stores the data once, merges its transactions into the consent's timeline (each hash
    /// once) and marks the pull `completed`, in one transaction.
    async fn complete_pull(
        &self,
        consent_id: &str,
        data: &StoredData,
        timeline: &[TimelineEntry],
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    async fn pull_data(&self, pull_id: &str) -> StoreResult<Option<StoredData>>;
    /// The deadline sweep: up to `limit` pulls still open that were accepted before
    /// `created_before` become `expired` with `code` and `message`, and their queued jobs are
    /// cancelled. Returns their ids.
    async fn expire_overdue_pulls(
        &self,
        created_before: DateTime<Utc>,
        code: &str,
        message: &str,
        limit: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<String>>;
    /// A consent's merged transactions from `from` to `to` (inclusive dates), oldest first.
    async fn timeline(
        &self,
        consent_id: &str,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
        after: Option<&TimelineCursor>,
        limit: u32,
    ) -> StoreResult<Vec<(TimelineCursor, TimelineEntry)>>;

    /// Active consents whose `next_pull_at` has come, soonest first, through an index.
    async fn due_consents(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Consent>>;
    /// Fires a batch of scheduled pulls in one transaction.
    async fn fire_scheduled(
        &self,
        batch: &[ScheduledPull],
        now: DateTime<Utc>,
    ) -> StoreResult<FireReport>;
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

    /// Stores a batch of authentic webhooks, each with its processing job, in one
    /// transaction (group commit). Returns, per webhook, false when the same delivery was
    /// stored before (nothing is enqueued for it then).
    async fn record_webhooks(
        &self,
        batch: &[NewWebhook],
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>>;
    async fn get_webhook(&self, id: i64) -> StoreResult<Option<InboxEvent>>;

    /// Inserts a job; a no-op while a live job has the same dedupe key.
    async fn enqueue_job(&self, job: &NewJob, now: DateTime<Utc>) -> StoreResult<()>;
    /// Leases up to `limit` due jobs (or jobs whose lease expired) to `owner` until
    /// `lease_until`, counting an attempt for each.
    async fn claim_jobs(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Job>>;
    /// Extends a lease this owner still holds; false when it was lost.
    async fn extend_lease(
        &self,
        job_id: i64,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Ends this owner's attempt at a job. Does nothing if the lease was lost meanwhile.
    async fn finish_job(
        &self,
        job_id: i64,
        owner: &str,
        outcome: &JobOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Counts jobs by status, for tests and operators.
    async fn job_counts(&self) -> StoreResult<Vec<(String, i64)>>;
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store that `database_url` names: `sqlite:…` or `postgres:…`.
pub async fn connect(database_url: &str, settings: &PoolSettings) -> StoreResult<DynStore> {
    if database_url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::connect(database_url, settings).await?,
        ))
    } else if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
        Ok(Arc::new(
            postgres::PgStore::connect(database_url, settings).await?,
        ))
    } else {
        Err(StoreError::Unsupported(
            "DATABASE_URL must start with sqlite: or postgres:",
        ))
    }
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
