//! The one SQL implementation of the store, for SQLite and Postgres alike, through sqlx's
//! `Any` driver: the schema binds only integers, text, bytes and booleans, and placeholders are
//! `$N`, which both read. What differs is a [`Dialect`]: how a write transaction begins, how a
//! consent's budget check is serialised, and how jobs are claimed.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

use super::rows::*;
use super::writer::{FusedTx, Open, WriteConn, WriteTx, Writer};
use super::*;
use crate::domain::fair_use::Budget;
use crate::domain::pull::Pull;
use crate::domain::session::Session;
use crate::queue::NewJob;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The few statements where the two databases differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Embedded: WAL, `synchronous=FULL`, one writer. Every write transaction runs inside a
    /// `BEGIN IMMEDIATE` transaction on the process's writer connection (`store/writer.rs`),
    /// so writers queue instead of deadlocking, and it already holds the only write lock (no
    /// row locks needed).
    Sqlite,
    /// Several instances: budget checks lock the consent's row, and jobs are claimed with
    /// `FOR UPDATE SKIP LOCKED` so instances never wait on each other's jobs.
    Postgres,
}

impl Dialect {
    /// Appended to a `SELECT` that reads a row it is about to change (a no-op on SQLite,
    /// whose write transaction already holds the only write lock).
    pub(super) fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Ends `n` jobs held by an owner as `done`: parameters `updated_at`, the `n` ids, the
    /// owner. The ids are a literal list, so that SQLite looks each up by its key (with a
    /// subquery it walked every running job instead).
    pub(super) fn finish_done(self, n: usize) -> String {
        format!(
            "UPDATE jobs SET status = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = {}
             WHERE id IN {} AND lease_owner = {} AND status = 'running'",
            self.param(1),
            self.values_list_after(1, 1, n),
            self.param(n + 2)
        )
    }

    /// Leases due jobs and jobs whose lease expired, counting an attempt for each.
    pub(super) fn claim_jobs(self) -> &'static str {
        match self {
            // One statement, so it is atomic under SQLite's single writer.
            Dialect::Sqlite => {
                "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2,
                    attempts = attempts + 1, updated_at = $3
                WHERE id IN (
                    SELECT id FROM jobs WHERE status = 'queued' AND run_at <= $3
                    UNION ALL
                    SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at <= $3
                    LIMIT $4)
                RETURNING id, kind, payload, attempts, max_attempts"
            }
            Dialect::Postgres => {
                "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2,
                    attempts = attempts + 1, updated_at = $3
                WHERE id IN (
                    SELECT id FROM jobs
                    WHERE (status = 'queued' AND run_at <= $3) OR (status = 'running' AND lease_expires_at <= $3)
                    ORDER BY run_at
                    LIMIT $4
                    FOR UPDATE SKIP LOCKED)
                RETURNING id, kind, payload, attempts, max_attempts"
            }
        }
    }

    /// Expires open pulls created before `$4`, at most `$5`: parameters error code, message,
    /// `updated_at`, the cutoff and the limit. The sweep runs every 30 s, and the open pulls
    /// are read through `pulls_open` by age, so a sweep that finds none overdue reads one index
    /// entry rather than every open pull (SQLite, which keeps no statistics, chose
    /// `pulls_by_status` and walked them all, on the writer).
    pub(super) fn expire_overdue(self) -> &'static str {
        match self {
            // The single writer runs the read and the update as one, so the update need not
            // check the state again (which SQLite also answered by walking pulls_by_status).
            Dialect::Sqlite => {
                "UPDATE pulls SET status = 'expired', error_code = $1, error_message = $2, updated_at = $3
                WHERE pull_id IN (
                    SELECT pull_id FROM pulls INDEXED BY pulls_open
                    WHERE (status = 'queued' OR status = 'submitted' OR status = 'fetching') AND created_at < $4
                    LIMIT $5)
                RETURNING pull_id"
            }
            // Another instance may end a pull between the read and the update: the update
            // checks the state again on the row it locks.
            Dialect::Postgres => {
                "UPDATE pulls SET status = 'expired', error_code = $1, error_message = $2, updated_at = $3
                WHERE status IN ('queued', 'submitted', 'fetching') AND pull_id IN (
                    SELECT pull_id FROM pulls
                    WHERE status IN ('queued', 'submitted', 'fetching') AND created_at < $4
                    LIMIT $5)
                RETURNING pull_id"
            }
        }
    }
}

/// WAL pages after which a commit copies the log back into the database file (SQLite's
/// default is 1,000). A checkpoint copies each page once however often it changed since the
/// last, and intake changes the same index pages in commit after commit, so checkpointing a
/// tenth as often wrote 15% less to disk and saved ~5% of intake's CPU (docs/benchmarks.md).
/// The log file grows to ~40 MiB and is reused from its start after each checkpoint.
const WAL_CHECKPOINT_PAGES: u32 = 10_000;

/// A log file that grew past this while checkpoints were held back (by a long read, such as
/// a backup) is cut back to it once they catch up, so the disk it took is given back.
const WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// The store: a pool and its dialect.
pub struct SqlStore {
    pub(super) pool: AnyPool,
    pub(super) dialect: Dialect,
    /// SQLite only: the connection every write of this process goes through.
    writer: Option<Arc<Writer>>,
    /// SQLite only: the connections reads go through ([`SqlStore::read`]).
    readers: Option<Readers>,
}

/// SQLite's read connections, opened as reads need them (up to `DATABASE_MAX_CONNECTIONS`) and
/// taken in turn. sqlx's pool pings every connection it takes back, whatever its options, and
/// for SQLite a ping is a round trip to the connection's thread, as dear as the read itself:
/// a pooled point read cost 59 µs of CPU against 29 µs on a connection held (`cargo bench
/// --bench statement`). These go back as they drop. A SQLite connection is a file handle, so
/// there is nothing to test before reuse.
type Readers = deadpool::unmanaged::Pool<AnyConnection>;

/// The readers' failures as sqlx's pool reports its own, so that they are handled alike.
fn readers_failed(e: deadpool::unmanaged::PoolError) -> StoreError {
    StoreError::Database(match e {
        deadpool::unmanaged::PoolError::Closed => sqlx::Error::PoolClosed,
        _ => sqlx::Error::PoolTimedOut,
    })
}

/// A connection to read with: one of SQLite's [`Readers`], or a pooled one on Postgres.
pub(super) enum ReadConn {
    Pooled(sqlx::pool::PoolConnection<sqlx::Any>),
    Sqlite(deadpool::unmanaged::Object<AnyConnection>),
}

impl std::ops::Deref for ReadConn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            ReadConn::Pooled(conn) => conn,
            ReadConn::Sqlite(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            ReadConn::Pooled(conn) => conn,
            ReadConn::Sqlite(conn) => conn,
        }
    }
}

impl SqlStore {
    /// Opens `sqlite:…` (the file and its folder are created if missing) or `postgres:…`.
    pub async fn connect(url: &str, settings: &PoolSettings) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout);
        if url.starts_with("sqlite:") {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
            let file = options.get_filename();
            let on_disk = file != Path::new(":memory:");
            // A relative file path needs its folder; `sqlite://data/x.db` must work on a
            // fresh clone.
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
                && !Path::new(dir).exists()
                && on_disk
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
            }
            // SQLite's write-ahead log sits beside the database, its name suffixed `-wal`.
            let wal = on_disk.then(|| {
                let mut name = file.as_os_str().to_owned();
                name.push("-wal");
                std::path::PathBuf::from(name)
            });
            let url = if url.contains('?') {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            let busy = Duration::from_secs(10).as_millis();
            // `temp_store = MEMORY`: every writer of a shared transaction after the first is a
            // savepoint (`store/writer.rs`), and SQLite keeps the pages it changes in a
            // sub-journal that otherwise spills to a new temporary file past 64 KiB. Creating
            // and writing that file was 7% of intake's CPU and 40% of its disk writes
            // (docs/benchmarks.md). In memory, a sub-journal holds at most the pages one
            // writer's transaction changed, and is freed when the savepoint is released.
            // Temporary tables a query builds move to memory too; the service's are small (the
            // job claim's `IN` list, bounded by its `LIMIT`), and sorts still spill to files.
            // No memory map (`mmap_size` stays 0): a reader's map is torn down (`munmap`) and
            // its pages faulted in again whenever it begins a read after another connection's
            // commit, which the one writer makes hundreds of times a second. With a 64 MiB
            // map that was ~5% of the CPU end to end, and reads by `pread` cost 8% less a pull
            // (docs/benchmarks.md, "eighth session").
            // The pool only opens connections (for the readers, the writer, and migrations),
            // so it need not ping them before handing them out.
            let pool = pool
                .test_before_acquire(false)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            format!(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                 PRAGMA busy_timeout = {busy}; PRAGMA foreign_keys = ON; \
                                 PRAGMA temp_store = MEMORY; \
                                 PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}; \
                                 PRAGMA journal_size_limit = {WAL_LIMIT_BYTES};"
                            )
                            .as_str(),
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await?;
            let readers = Readers::from_config(&deadpool::unmanaged::PoolConfig {
                max_size: settings.max_connections as usize,
                timeout: Some(settings.acquire_timeout),
                runtime: Some(deadpool::Runtime::Tokio1),
            });
            Ok(Self {
                pool,
                dialect: Dialect::Sqlite,
                writer: Some(Arc::new(Writer::new(wal))),
                readers: Some(readers),
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self {
                pool: pool.connect(url).await?,
                dialect: Dialect::Postgres,
                writer: None,
                readers: None,
            })
        } else {
            Err(StoreError::Unsupported(
                "DATABASE_URL must start with sqlite: or postgres:",
            ))
        }
    }

    /// A write transaction. On SQLite it runs in this process's turn to write and may share
    /// its commit with the writers queued behind it ([`Writer`]).
    pub(super) async fn write_tx(&self) -> StoreResult<WriteTx> {
        self.begin_write(Open::Now).await
    }

    /// [`SqlStore::write_tx`] whose opening (on SQLite: `BEGIN IMMEDIATE` or a savepoint)
    /// travels with its first statement, a call to the database fewer: that statement's SQL
    /// must start with [`WriteTx::opening`] (a debug assertion stops one that does not).
    pub(super) async fn lazy_write_tx(&self) -> StoreResult<WriteTx> {
        self.begin_write(Open::WithFirstStatement).await
    }

    /// [`SqlStore::write_tx`] for one call whose only write is one statement (on SQLite;
    /// Postgres may lock rows first; reads may follow it in the call), which shares the commit
    /// without a savepoint of its own ([`Writer::begin`]): a call to the database fewer. A
    /// second call fails a debug assertion.
    pub(super) async fn one_statement_tx(&self) -> StoreResult<WriteTx> {
        self.begin_write(Open::OneStatement).await
    }

    async fn begin_write(&self, open: Open) -> StoreResult<WriteTx> {
        match &self.writer {
            Some(writer) => writer.begin(&self.pool, open).await,
            None => Ok(WriteTx::pooled(self.pool.begin().await?)),
        }
    }

    /// SQLite: a write transaction ahead of the writers waiting, whose opening and commit
    /// travel with its statements ([`FusedTx`]). `None` on Postgres, whose protocol takes
    /// statements with parameters one at a time.
    pub(super) async fn urgent_fused_tx(&self) -> StoreResult<Option<FusedTx>> {
        match &self.writer {
            Some(writer) => Ok(Some(writer.fused(&self.pool).await?)),
            None => Ok(None),
        }
    }

    /// A connection to read with. Waits up to the pool's acquire timeout, then fails as an
    /// exhausted pool does (503 on the API, a retry in a job).
    pub(super) async fn read(&self) -> StoreResult<ReadConn> {
        let Some(readers) = &self.readers else {
            return Ok(ReadConn::Pooled(self.pool.acquire().await?));
        };
        // Another reader is opened when none is free and there is room for one.
        let status = readers.status();
        if status.available == 0 && status.size < status.max_size {
            // Detached, the connection is the readers' and no longer the pool's.
            let conn = self.pool.acquire().await?.detach();
            // Full meanwhile (another read opened one too): this one closes as it drops.
            let _ = readers.try_add(conn);
        }
        Ok(ReadConn::Sqlite(
            readers.get().await.map_err(readers_failed)?,
        ))
    }

    /// A connection for write statements that commit on their own, in this process's turn
    /// to write ([`Writer`]) on SQLite.
    pub(super) async fn write_conn(&self) -> StoreResult<WriteConn> {
        Ok(match &self.writer {
            Some(writer) => writer.single(&self.pool).await?,
            None => WriteConn::Pooled(self.pool.acquire().await?),
        })
    }
}

#[async_trait]
impl Store for SqlStore {
    fn writer_stats(&self) -> Option<WriterStats> {
        self.writer.as_ref().map(|w| w.stats())
    }

    async fn migrate(&self) -> StoreResult<()> {
        match self.dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.read().await?)
            .await?;
        Ok(())
    }

    async fn pending_migrations(&self) -> StoreResult<Vec<i64>> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        let exists: i64 = sqlx::query_scalar(match self.dialect {
            Dialect::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
            Dialect::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '_sqlx_migrations' AND table_schema = current_schema()"
            }
        })
        .fetch_one(&mut *self.read().await?)
        .await?;
        let applied: Vec<i64> = if exists > 0 {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_all(&mut *self.read().await?)
                .await?
        } else {
            vec![]
        };
        Ok(migrator
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect())
    }
}

pub(super) async fn session_in(conn: &mut AnyConnection, session_id: &str) -> StoreResult<Session> {
    let row = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"
    ))
    .bind(session_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound("session"))?;
    session_from_row(&row)
}

pub(super) async fn insert_job(
    conn: &mut AnyConnection,
    job: &NewJob,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    insert_jobs(conn, std::iter::once(job), now).await
}

/// [`insert_job`] for many jobs, in one statement.
pub(super) async fn insert_jobs<'a>(
    conn: &mut AnyConnection,
    jobs: impl ExactSizeIterator<Item = &'a NewJob>,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    if jobs.len() == 0 {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO jobs ({NEW_JOB_COLUMNS}) VALUES {} ON CONFLICT DO NOTHING",
        Dialect::of(conn).values_list(jobs.len(), NEW_JOB_COLUMNS.split(',').count())
    );
    let mut insert = sqlx::query(&sql);
    for job in jobs {
        insert = bind_new_job(insert, job, now);
    }
    insert.execute(&mut *conn).await?;
    Ok(())
}

/// The columns a new job is written with, in the order [`bind_new_job`] binds them.
const NEW_JOB_COLUMNS: &str = "kind, payload, status, run_at, attempts, max_attempts, dedupe_key, pull_id, created_at, updated_at";

fn bind_new_job<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    job: &NewJob,
    now: DateTime<Utc>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(job.task.kind())
        .bind(job.task.payload())
        .bind("queued")
        .bind(to_ms(job.run_at))
        .bind(0i32)
        .bind(job.task.max_attempts())
        .bind(job.task.dedupe_key())
        .bind(job.task.pull_id().map(str::to_string))
        .bind(to_ms(now))
        .bind(to_ms(now))
}

/// Queued jobs of a pull that has moved on no longer run (all of them, or those of `kind`).
pub(super) async fn cancel_pull_jobs(
    conn: &mut AnyConnection,
    pull_id: &str,
    kind: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE jobs SET status = 'cancelled', updated_at = $1
         WHERE pull_id = $2 AND status = 'queued' AND ($3 IS NULL OR kind = $3)",
    )
    .bind(to_ms(now))
    .bind(pull_id)
    .bind(kind)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Serialises the budget-checking transactions of one consent across instances (a no-op
/// where the transaction already holds the database's only write lock).
pub(super) async fn lock_consent(
    dialect: Dialect,
    tx: &mut WriteTx,
    consent_id: &str,
) -> StoreResult<()> {
    // Taken only where it is used: on SQLite a one-statement transaction may hold this.
    if dialect == Dialect::Postgres {
        sqlx::query("SELECT 1 FROM consents WHERE consent_id = $1 FOR UPDATE")
            .bind(consent_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Fetch Recurring AA Data calls sent for a consent in each period of `budget`, in one query.
pub(super) async fn sent_since(
    conn: &mut AnyConnection,
    consent_id: &str,
    budget: &[Budget],
) -> StoreResult<Vec<u32>> {
    let mut counts = sent_since_many(conn, &[(consent_id, budget.to_vec())]).await?;
    Ok(counts.pop().unwrap_or_default())
}

/// Fetch Recurring AA Data calls sent for each consent in each period of its budget, in one
/// query whatever the number of consents; the answer is in the order asked.
pub(super) async fn sent_since_many(
    conn: &mut AnyConnection,
    budgets: &[(&str, Vec<Budget>)],
) -> StoreResult<Vec<Vec<u32>>> {
    let periods: Vec<(usize, usize, &str, i64)> = budgets
        .iter()
        .enumerate()
        .flat_map(|(c, (consent_id, b))| {
            b.iter()
                .enumerate()
                .map(move |(i, b)| (c, i, *consent_id, to_ms(b.period_start)))
        })
        .collect();
    let mut out: Vec<Vec<u32>> = budgets.iter().map(|(_, b)| vec![0; b.len()]).collect();
    if periods.is_empty() {
        return Ok(out);
    }
    // One row per (consent, period) asked; each counts the ledger rows since its start.
    let sql = format!(
        "WITH asked (c, i, consent_id, since) AS (VALUES {})
         SELECT asked.c, asked.i, COUNT(a.id) AS n FROM asked
         LEFT JOIN pull_attempts a ON a.consent_id = asked.consent_id AND a.sent_at >= asked.since
         GROUP BY asked.c, asked.i",
        Dialect::of(conn).values_list(periods.len(), 4)
    );
    let mut query = sqlx::query_as::<_, (i64, i64, i64)>(&sql);
    for (c, i, consent_id, since) in &periods {
        query = query
            .bind(*c as i64)
            .bind(*i as i64)
            .bind(*consent_id)
            .bind(*since);
    }
    for (c, i, n) in query.fetch_all(&mut *conn).await? {
        if let Some(slot) = out.get_mut(c as usize).and_then(|v| v.get_mut(i as usize)) {
            *slot = n as u32;
        }
    }
    Ok(out)
}

/// The SQL condition that one more pull fits every period of a consent's budget: for each,
/// the calls sent since the period began (plus, with `count_queued`, the pulls accepted and
/// not yet sent) stay under its maximum. The statement binds the consent id as `$consent`
/// and each period's start and maximum from `$first` on. One condition, so that a check with
/// what it guards (accepting a pull, reserving a send) is one call to the database, not one
/// to count and one to act.
pub(super) fn fits_budget(
    periods: usize,
    count_queued: bool,
    consent: usize,
    first: usize,
) -> String {
    let queued = if count_queued {
        format!(
            " + (SELECT COUNT(*) FROM pulls WHERE consent_id = ${consent} AND status = 'queued')"
        )
    } else {
        String::new()
    };
    let each: Vec<String> = (0..periods)
        .map(|i| {
            let (since, max) = (first + 2 * i, first + 2 * i + 1);
            format!(
                "(SELECT COUNT(*) FROM pull_attempts WHERE consent_id = ${consent} AND sent_at >= ${since}){queued} < ${max}"
            )
        })
        .collect();
    if each.is_empty() {
        "1 = 1".into()
    } else {
        each.join(" AND ")
    }
}

/// Merges transactions into a consent's timeline, each hash once, many rows a statement:
/// each statement is a round trip to SQLite's thread (docs/benchmarks.md).
pub(super) async fn insert_timeline(
    conn: &mut AnyConnection,
    consent_id: &str,
    entries: &[TimelineEntry],
    fetched_at: DateTime<Utc>,
) -> StoreResult<()> {
    let dialect = Dialect::of(conn);
    let mut rest = entries;
    for rows in batch_sizes(entries.len()) {
        let (batch, tail) = rest.split_at(rows);
        rest = tail;
        let sql = format!(
            "INSERT INTO transactions (consent_id, hash, txn_at, pull_id, body, fetched_at)
             VALUES {} ON CONFLICT (consent_id, hash) DO NOTHING",
            dialect.values_list(rows, 6)
        );
        let mut insert = sqlx::query(&sql);
        for t in batch {
            insert = insert
                .bind(consent_id)
                .bind(&t.hash)
                .bind(&t.txn_at)
                .bind(&t.pull_id)
                .bind(t.body.to_string())
                .bind(to_ms(fetched_at));
        }
        insert.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The columns a new pull is written with, in the order [`bind_new_pull`] binds them.
const NEW_PULL_COLUMNS: &str = "pull_id, consent_id, kind, status, from_date, to_date, \
    idempotency_key, request_hash, created_at, updated_at";

fn bind_new_pull<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    new: &'q NewPull,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let p = &new.pull;
    query
        .bind(&p.pull_id)
        .bind(&p.consent_id)
        .bind(p.kind.as_str())
        .bind(p.status.as_str())
        .bind(p.from.to_string())
        .bind(p.to.to_string())
        .bind(new.idempotency_key.as_deref())
        .bind(&new.request_hash)
        .bind(to_ms(p.created_at))
        .bind(to_ms(p.updated_at))
}

/// Inserts a pull, with its submit `job`, only if one more fits every period of its
/// consent's budget, pulls accepted and not yet sent counted too, since each will send
/// ([`fits_budget`]): the check and the insert are one statement. On SQLite the job's insert,
/// which runs only if the pull's did (`changes()`), goes in the same call: each call is a
/// round trip to the connection's thread. False when the budget is spent.
pub(super) async fn insert_pull_within_budget(
    tx: &mut WriteTx,
    new: &NewPull,
    job: &NewJob,
) -> StoreResult<bool> {
    let columns = NEW_PULL_COLUMNS.split(',').count();
    let params = columns + 2 * new.budget.len();
    // Told by the row it returns, not by `rows_affected`: the call may carry the
    // transaction's opening (`WriteTx::opening`).
    let mut sql = format!(
        "{}INSERT INTO pulls ({NEW_PULL_COLUMNS}) SELECT {} WHERE {} RETURNING seq",
        tx.opening(),
        (1..=columns)
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", "),
        // The consent is the second column.
        fits_budget(new.budget.len(), true, 2, columns + 1)
    );
    let sqlite = Dialect::of(tx) == Dialect::Sqlite;
    if sqlite {
        // Numbered, as the statement before it is: sqlx counts only anonymous parameters
        // across the statements of a call.
        let job_params = (params + 1..=params + NEW_JOB_COLUMNS.split(',').count())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        sql.push_str(&format!(
            "; INSERT INTO jobs ({NEW_JOB_COLUMNS}) SELECT {job_params} WHERE changes() = 1 ON CONFLICT DO NOTHING"
        ));
    }
    let mut insert = bind_new_pull(sqlx::query(&sql), new);
    for b in &new.budget {
        insert = insert.bind(to_ms(b.period_start)).bind(i64::from(b.max));
    }
    if sqlite {
        insert = bind_new_job(insert, job, new.pull.created_at);
    }
    // All of the call's statements run (as `fetch_optional` would not promise).
    if insert.fetch_all(&mut **tx).await?.is_empty() {
        return Ok(false);
    }
    if !sqlite {
        insert_job(tx, job, new.pull.created_at).await?;
    }
    Ok(true)
}

/// Inserts many pulls in one statement (the scheduler's, whose budgets it checked itself).
pub(super) async fn insert_pulls<'a>(
    conn: &mut AnyConnection,
    pulls: impl ExactSizeIterator<Item = &'a NewPull>,
) -> StoreResult<()> {
    if pulls.len() == 0 {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO pulls ({NEW_PULL_COLUMNS}) VALUES {}",
        Dialect::of(conn).values_list(pulls.len(), NEW_PULL_COLUMNS.split(',').count())
    );
    let mut insert = sqlx::query(&sql);
    for new in pulls {
        insert = bind_new_pull(insert, new);
    }
    insert.execute(&mut *conn).await?;
    Ok(())
}

pub(super) async fn pull_where(
    conn: &mut AnyConnection,
    column: &str,
    value: &str,
) -> StoreResult<Option<Pull>> {
    let row = sqlx::query(&format!(
        "SELECT {PULL_COLUMNS} FROM pulls WHERE {column} = $1"
    ))
    .bind(value)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| pull_from_row(&r).map(|(_, p)| p)).transpose()
}

/// Keyset pagination on `column` against placeholder `$param`: the condition, the order, and
/// the value to bind. Oldest first, rows come after `after`; newest first, before it.
/// An optional equality filter on `column`, bound as `$param` (`NULL` when not asked for).
/// SQLite keeps no statistics and cannot seek an index for `($n IS NULL OR column = $n)`, so
/// a list filtered that way walked the whole table in key order. With `seek`, the filter is
/// written as plain equality, so that SQLite seeks the index that leads with `column` (the
/// lists have one such index, `(column, seq)`, per filter); callers ask it of the most
/// selective filter given, since with two plain equalities SQLite picks either index.
pub(super) fn filter_eq(column: &str, param: usize, seek: bool) -> String {
    if seek {
        format!("{column} = ${param}")
    } else {
        format!("(${param} IS NULL OR {column} = ${param})")
    }
}

pub(super) fn keyset(
    column: &str,
    param: usize,
    after: Option<i64>,
    newest_first: bool,
) -> (String, String, i64) {
    if newest_first {
        (
            format!("{column} < ${param}"),
            format!("{column} DESC"),
            after.unwrap_or(i64::MAX),
        )
    } else {
        (
            format!("{column} > ${param}"),
            column.to_string(),
            after.unwrap_or(0),
        )
    }
}

impl Dialect {
    /// The dialect of a connection of the store's pool.
    pub(super) fn of(conn: &AnyConnection) -> Self {
        if conn.backend_name().eq_ignore_ascii_case("sqlite") {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        }
    }

    /// `VALUES` placeholders for `rows` rows of `columns` columns (one row is an `IN` list).
    /// (sqlx's `QueryBuilder` writes `?` for `Any`, which Postgres does not take.) Postgres
    /// numbers them from `$1`. SQLite gets anonymous `?`, bound in the order they appear: sqlx
    /// binds a numbered parameter by asking SQLite its name, which SQLite finds by a linear
    /// search, so binding thousands of `$N` took quadratic time (a 500-row insert, 100 ms;
    /// docs/benchmarks.md). A statement with such a list numbers any later parameter with
    /// [`Dialect::param`].
    pub(super) fn values_list(self, rows: usize, columns: usize) -> String {
        self.values_list_after(0, rows, columns)
    }

    /// [`Dialect::values_list`] in a statement whose first `before` parameters come ahead of
    /// the list (numbered with [`Dialect::param`]).
    ///
    /// Written into one string: intake builds a list for every batch it commits, and a
    /// string a parameter was 1.6% of its CPU (docs/benchmarks.md).
    pub(super) fn values_list_after(self, before: usize, rows: usize, columns: usize) -> String {
        let mut list = String::with_capacity(rows * columns * 6);
        for r in 0..rows {
            list.push_str(if r == 0 { "(" } else { ", (" });
            for c in 1..=columns {
                if c > 1 {
                    list.push_str(", ");
                }
                self.write_param(&mut list, before + r * columns + c);
            }
            list.push(')');
        }
        list
    }

    /// The `n`th parameter of a statement built with [`Dialect::values_list`].
    pub(super) fn param(self, n: usize) -> String {
        let mut param = String::new();
        self.write_param(&mut param, n);
        param
    }

    fn write_param(self, out: &mut String, n: usize) {
        use std::fmt::Write;
        match self {
            Dialect::Sqlite => out.push('?'),
            Dialect::Postgres => {
                let _ = write!(out, "${n}");
            }
        }
    }
}

/// The most rows one statement of a batched insert carries ([`batch_sizes`]).
const MAX_BATCH_ROWS: usize = 256;

/// How many rows each statement of an insert of `rows` rows carries: [`MAX_BATCH_ROWS`] at a
/// time, then the rest in falling powers of two. Each distinct length is a statement of its
/// own in every connection's statement cache (sqlx keeps 100), so an insert of any size uses
/// at most nine texts and never crowds the hot statements out of the cache.
pub(super) fn batch_sizes(rows: usize) -> impl Iterator<Item = usize> {
    let rest = rows % MAX_BATCH_ROWS;
    std::iter::repeat_n(MAX_BATCH_ROWS, rows / MAX_BATCH_ROWS).chain(
        (0..MAX_BATCH_ROWS.trailing_zeros())
            .rev()
            .map(|bit| 1 << bit)
            .filter(move |size| rest & size != 0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ConsoleStore;

    #[test]
    fn values_lists_number_their_parameters_after_those_before() {
        assert_eq!(
            Dialect::Postgres.values_list_after(1, 2, 3),
            "($2, $3, $4), ($5, $6, $7)"
        );
        assert_eq!(Dialect::Postgres.values_list(1, 1), "($1)");
        assert_eq!(Dialect::Sqlite.values_list_after(1, 2, 2), "(?, ?), (?, ?)");
        assert_eq!(Dialect::Sqlite.values_list(0, 4), "");
    }

    #[test]
    fn batched_inserts_use_few_statement_lengths() {
        let sizes = |n| batch_sizes(n).collect::<Vec<_>>();
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(180), [128, 32, 16, 4]);
        assert_eq!(sizes(256), [256]);
        assert_eq!(sizes(600), [256, 256, 64, 16, 8]);
        let mut lengths = std::collections::BTreeSet::new();
        for n in 0..2_000 {
            let s = sizes(n);
            assert_eq!(s.iter().sum::<usize>(), n, "{n} rows");
            assert!(s.len() <= n / MAX_BATCH_ROWS + 8, "{n} rows in {s:?}");
            lengths.extend(s);
        }
        assert_eq!(lengths.len(), 9, "{lengths:?}");
    }

    async fn sqlite() -> (tempfile::TempDir, SqlStore) {
        sqlite_with(PoolSettings::default()).await
    }

    async fn sqlite_with(settings: PoolSettings) -> (tempfile::TempDir, SqlStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = SqlStore::connect(&url, &settings).await.expect("connect");
        store.migrate().await.expect("migrate");
        (dir, store)
    }

    #[tokio::test]
    async fn a_write_dropped_without_commit_is_rolled_back_before_the_next() {
        let (_dir, store) = sqlite().await;
        let mut tx = store.write_tx().await.expect("begin");
        sqlx::query("INSERT INTO console_keys (id, key) VALUES (1, 'dropped')")
            .execute(&mut *tx)
            .await
            .expect("insert");
        drop(tx);
        // The next writer, on the same connection, neither sees nor commits it.
        assert_eq!(store.console_key("kept").await.expect("key"), "kept");
        let mut tx = store.write_tx().await.expect("begin again");
        let key: String = sqlx::query_scalar("SELECT key FROM console_keys WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .expect("read");
        tx.commit().await.expect("commit");
        assert_eq!(key, "kept");
    }

    #[tokio::test]
    async fn a_failed_statement_leaves_the_writer_usable() {
        let (_dir, store) = sqlite().await;
        let mut tx = store.write_tx().await.expect("begin");
        let bad = sqlx::query("INSERT INTO no_such_table VALUES (1)")
            .execute(&mut *tx)
            .await;
        assert!(bad.is_err());
        drop(tx);
        assert_eq!(store.console_key("after").await.expect("key"), "after");
    }

    /// `journal_mode`, `synchronous`, `wal_autocheckpoint`, `journal_size_limit` and
    /// `temp_store` of a connection.
    async fn sqlite_settings(conn: &mut AnyConnection) -> Vec<String> {
        use sqlx::Row;
        let mut out = vec![];
        for pragma in [
            "journal_mode",
            "synchronous",
            "wal_autocheckpoint",
            "journal_size_limit",
            "temp_store",
            "mmap_size",
        ] {
            let row = sqlx::query(&format!("PRAGMA {pragma}"))
                .fetch_one(&mut *conn)
                .await
                .expect("pragma");
            // journal_mode answers text, the others numbers.
            out.push(
                row.try_get::<String, _>(0)
                    .or_else(|_| row.try_get::<i64, _>(0).map(|n| n.to_string()))
                    .expect("value"),
            );
        }
        out
    }

    #[tokio::test]
    async fn every_connection_is_durable_and_checkpoints_as_configured() {
        let (_dir, store) = sqlite().await;
        // synchronous 2 is FULL: a commit, and so a 200, is on disk. temp_store 2 is MEMORY:
        // savepoints' sub-journals never become temporary files. mmap_size 0: no memory map,
        // which every commit would make the readers tear down and fault in again.
        let expected = [
            "wal".to_string(),
            "2".to_string(),
            WAL_CHECKPOINT_PAGES.to_string(),
            WAL_LIMIT_BYTES.to_string(),
            "2".to_string(),
            "0".to_string(),
        ];
        let mut reader = store.read().await.expect("reader");
        assert_eq!(sqlite_settings(&mut reader).await, expected);
        let mut writer = store.write_conn().await.expect("writer");
        assert_eq!(sqlite_settings(&mut writer).await, expected);
    }

    #[tokio::test]
    async fn marking_a_pull_submitted_looks_for_early_webhooks_without_a_reader() {
        use crate::store::{JobFilter, JobStore, NewWebhook, PullStore, WebhookStore};
        let settings = PoolSettings {
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_millis(100),
        };
        let (_dir, store) = sqlite_with(settings).await;
        let now = chrono::Utc::now();
        // A webhook for the session arrives before the pull is marked submitted with it.
        let early = NewWebhook {
            dedupe_key: "early".into(),
            event_name: Some("ENRICHMENT_NOTIFICATION".into()),
            upstream_session_id: Some("up-early".into()),
            body: bytes::Bytes::from_static(b"{}"),
        };
        store
            .record_webhooks(&[early], None, now)
            .await
            .expect("stored");
        // The only reader is busy: the read travels with the update, on the writer.
        let held = store.read().await.expect("the reader");
        store
            .mark_submitted("pull-1", "up-early", now)
            .await
            .expect("marked without a reader");
        drop(held);
        let processing = store
            .list_jobs(&JobFilter {
                kind: Some("process_webhook".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("jobs");
        // The intake's job, and the one that processes the early webhook again.
        assert_eq!(processing.len(), 2, "{processing:?}");
    }

    #[tokio::test]
    async fn reads_take_turns_on_sqlites_readers_and_give_up_as_an_exhausted_pool_does() {
        let settings = PoolSettings {
            max_connections: 2,
            acquire_timeout: std::time::Duration::from_millis(100),
        };
        let (_dir, store) = sqlite_with(settings.clone()).await;
        let first = store.read().await.expect("a reader");
        let mut second = store.read().await.expect("another reader");
        // Both are busy: the next read waits out the timeout and fails as unavailable (503).
        let waited = std::time::Instant::now();
        let Err(e) = store.read().await else {
            panic!("a third reader out of two");
        };
        assert!(waited.elapsed() >= settings.acquire_timeout);
        assert!(e.is_unavailable(), "{e}");
        // One given back (as it drops) is the next read's, at once, still open.
        drop(first);
        let mut again = store.read().await.expect("the reader given back");
        let one: i64 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *again)
            .await
            .expect("read");
        assert_eq!(one, 1);
        // Reads see what the writer committed.
        sqlx::query("CREATE TABLE t (k TEXT)")
            .execute(&mut *store.write_conn().await.expect("writer"))
            .await
            .expect("create");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut *second)
            .await
            .expect("read");
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn a_reader_given_back_in_the_middle_of_a_read_answers_the_next_read_rightly() {
        let (_dir, store) = sqlite_with(PoolSettings {
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_secs(30),
        })
        .await;
        // A long read, abandoned (a request that timed out): its reader goes back mid-read.
        let slow = async {
            let mut conn = store.read().await.expect("the reader");
            sqlx::query_scalar::<_, i64>(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000000)
                 SELECT COUNT(*) FROM n",
            )
            .fetch_one(&mut *conn)
            .await
        };
        let abandoned = tokio::time::timeout(std::time::Duration::from_millis(20), slow).await;
        assert!(abandoned.is_err(), "the long read was still running");
        // The same (only) reader answers the next read with its own rows, once the abandoned
        // statement has run out on its thread (sqlx's pool, which pings it back, waits as long).
        let mut conn = store.read().await.expect("the reader again");
        let rows: Vec<i64> = sqlx::query_scalar("SELECT 7 UNION ALL SELECT 8")
            .fetch_all(&mut *conn)
            .await
            .expect("read");
        assert_eq!(rows, [7, 8]);
        drop(conn);
        // A stream of rows dropped after its first row: the rest are not handed to the next.
        {
            use futures_util::StreamExt;
            let mut conn = store.read().await.expect("the reader");
            let mut stream = sqlx::query_scalar::<_, i64>(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
                 SELECT i FROM n",
            )
            .fetch(&mut *conn);
            assert_eq!(stream.next().await.expect("a row").expect("read"), 1);
        }
        let one: i64 = sqlx::query_scalar("SELECT 9")
            .fetch_one(&mut *store.read().await.expect("the reader"))
            .await
            .expect("read");
        assert_eq!(one, 9);
    }

    /// The text column `column` of each row SQLite gives for `sql` (an `EXPLAIN`), with a
    /// placeholder bound to each parameter.
    async fn explained(store: &SqlStore, sql: &str, column: usize) -> Vec<String> {
        let mut query = sqlx::query(sql);
        for _ in 0..sql.matches(['$', '?']).count() {
            query = query.bind("p");
        }
        let rows = query
            .fetch_all(&mut *store.read().await.expect("reader"))
            .await
            .expect("explain");
        rows.iter()
            .map(|r| sqlx::Row::get::<String, _>(r, column))
            .collect()
    }

    /// SQLite's plan for `sql` (it keeps no statistics, so plans follow the indexes alone).
    async fn plan(store: &SqlStore, sql: &str) -> Vec<String> {
        explained(store, sql, 3).await
    }

    #[tokio::test]
    async fn a_pulls_next_attempt_is_a_seek_not_a_walk_of_the_queue() {
        let (_dir, store) = sqlite().await;
        // A pull by id, and the pulls of a batch of webhooks' sessions.
        let reads = [
            "pull_id = $1".to_string(),
            format!(
                "upstream_session_id IN {}",
                Dialect::Sqlite.values_list(1, 3)
            ),
        ];
        for condition in reads {
            let sql =
                format!("EXPLAIN QUERY PLAN SELECT {PULL_COLUMNS} FROM pulls WHERE {condition}");
            let plan = plan(&store, &sql).await;
            assert!(
                plan.iter()
                    .any(|d| d.contains("jobs_by_pull (pull_id=? AND status=?)")),
                "{condition}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|d| d.contains("SCAN")),
                "{condition}: {plan:?}"
            );
        }
    }

    /// How many temporary b-trees SQLite's program for `sql` can open.
    async fn temporary_btrees(store: &SqlStore, sql: &str) -> usize {
        let opcodes = explained(store, sql, 1).await;
        opcodes.iter().filter(|op| *op == "OpenEphemeral").count()
    }

    #[tokio::test]
    async fn a_pulls_reads_and_state_changes_build_no_temporary_btree_for_a_list_of_states() {
        let (_dir, store) = sqlite().await;
        // Moving a pull runs both outcome triggers and pulls_open's WHERE; a job's insert and
        // update run jobs_finished's; a pull's read asks whether it is open.
        let statements = [
            format!("EXPLAIN SELECT {PULL_COLUMNS} FROM pulls WHERE pull_id = $1"),
            "EXPLAIN UPDATE pulls SET status = $1, completed_at = $2 WHERE pull_id = $3".into(),
            "EXPLAIN INSERT INTO jobs (kind, payload, status, run_at, attempts, max_attempts, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                .into(),
            "EXPLAIN UPDATE jobs SET status = $1, updated_at = $2 WHERE id = $3".into(),
        ];
        for sql in statements {
            assert_eq!(temporary_btrees(&store, &sql).await, 0, "{sql}");
        }
        // The check itself: an IN list of three states does open one.
        let listed = "EXPLAIN SELECT 1 FROM pulls WHERE pull_id = $1 AND status IN ('a', 'b', 'c')";
        assert_eq!(temporary_btrees(&store, listed).await, 1);
    }

    #[tokio::test]
    async fn the_deadline_sweep_reads_open_pulls_by_age_not_every_open_pull() {
        let (_dir, store) = sqlite().await;
        let sql = format!("EXPLAIN QUERY PLAN {}", Dialect::Sqlite.expire_overdue());
        let plan = plan(&store, &sql).await;
        assert!(
            plan.iter().any(|d| d.contains("pulls_open (created_at<?)")),
            "{plan:?}"
        );
        assert!(
            !plan
                .iter()
                .any(|d| d.contains("pulls_by_status") || d.contains("SCAN")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn finished_jobs_are_purged_through_their_partial_index() {
        let (_dir, store) = sqlite().await;
        let sql = format!(
            "EXPLAIN QUERY PLAN {}",
            crate::store::housekeeping::PURGE_JOBS_SQL
        );
        let plan = plan(&store, &sql).await;
        assert!(
            plan.iter()
                .any(|d| d.contains("jobs_finished (status=? AND updated_at<?)")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|d| d.contains("SCAN")), "{plan:?}");
    }

    #[tokio::test]
    async fn a_budget_check_seeks_the_consents_queued_pulls_not_every_queued_pull() {
        let (_dir, store) = sqlite().await;
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT 1 WHERE {}",
            fits_budget(2, true, 1, 2)
        );
        let plan = plan(&store, &sql).await;
        assert!(
            plan.iter()
                .any(|d| d.contains("pulls_queued (consent_id=?)")),
            "{plan:?}"
        );
        assert!(
            plan.iter()
                .any(|d| d.contains("pull_attempts_by_consent (consent_id=? AND sent_at>?)")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|d| d.contains("SCAN pulls")), "{plan:?}");
        assert!(
            !plan.iter().any(|d| d.contains("pulls_by_status")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn purging_stale_journeys_seeks_them_without_walking_completed_ones() {
        let (_dir, store) = sqlite().await;
        let sql = format!(
            "EXPLAIN QUERY PLAN {}",
            crate::store::housekeeping::purge_sessions_sql()
        );
        let plan = plan(&store, &sql).await;
        assert!(
            plan.iter()
                .any(|d| d.contains("sessions_by_age (status=? AND updated_at<?)")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|d| d.contains("SCAN")), "{plan:?}");
    }

    #[tokio::test]
    async fn a_filtered_list_seeks_its_most_selective_index_not_the_whole_table() {
        use crate::domain::consent::ConsentStatus;
        use crate::domain::pull::PullStatus;
        let (_dir, store) = sqlite().await;
        let consents = |link: bool, status: bool| {
            crate::store::consents::list_consents_sql(&ConsentFilter {
                link_id: link.then(|| "l".into()),
                status: status.then_some(ConsentStatus::Active),
                ..Default::default()
            })
        };
        let pulls = |consent: bool, status: bool, newest_first: bool| {
            crate::store::pulls::list_pulls_sql(&PullFilter {
                consent_id: consent.then(|| "c".into()),
                status: status.then_some(PullStatus::Completed),
                newest_first,
                ..Default::default()
            })
            .0
        };
        let cases = [
            (
                consents(true, false),
                "consents_by_link (link_id=? AND seq>?)",
            ),
            // Both: the borrower's few consents, not every active one.
            (
                consents(true, true),
                "consents_by_link (link_id=? AND seq>?)",
            ),
            (
                consents(false, true),
                "consents_by_status (status=? AND seq>?)",
            ),
            (
                pulls(true, false, false),
                "pulls_by_consent (consent_id=? AND seq>?)",
            ),
            (
                pulls(true, true, true),
                "pulls_by_consent (consent_id=? AND seq<?)",
            ),
            (
                pulls(false, true, false),
                "pulls_by_status (status=? AND seq>?)",
            ),
        ];
        for (sql, index) in cases {
            let plan = plan(&store, &format!("EXPLAIN QUERY PLAN {sql}")).await;
            assert!(plan.iter().any(|d| d.contains(index)), "{index}: {plan:?}");
            assert!(!plan.iter().any(|d| d.contains("TEMP B-TREE")), "{plan:?}");
        }
        // Unfiltered, a page is the next rows in key order.
        let plan = plan(
            &store,
            &format!("EXPLAIN QUERY PLAN {}", consents(false, false)),
        )
        .await;
        assert!(
            plan.iter()
                .any(|d| d.contains("INTEGER PRIMARY KEY (rowid>?)")),
            "{plan:?}"
        );
    }

    #[test]
    fn an_optional_filter_is_plain_equality_only_where_it_should_seek() {
        assert_eq!(filter_eq("link_id", 1, true), "link_id = $1");
        assert_eq!(filter_eq("status", 2, false), "($2 IS NULL OR status = $2)");
    }

    #[tokio::test]
    async fn finishing_jobs_seeks_each_by_key() {
        let (_dir, store) = sqlite().await;
        let sql = format!("EXPLAIN QUERY PLAN {}", Dialect::Sqlite.finish_done(3));
        let plan = plan(&store, &sql).await;
        assert!(
            plan.iter()
                .any(|d| d.contains("INTEGER PRIMARY KEY (rowid=?)")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn a_claim_reads_only_due_queued_and_expired_leased_jobs() {
        let (_dir, store) = sqlite().await;
        let sql = format!("EXPLAIN QUERY PLAN {}", Dialect::Sqlite.claim_jobs());
        let plan = plan(&store, &sql).await;
        assert!(
            plan.iter()
                .any(|d| d.contains("jobs_queued (status=? AND run_at<?)")),
            "{plan:?}"
        );
        assert!(
            plan.iter()
                .any(|d| d.contains("jobs_leased (status=? AND lease_expires_at<?)")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|d| d.contains("SCAN")), "{plan:?}");
    }

    /// A store with a scratch table `t (k)`, and its writer.
    async fn scratch() -> (tempfile::TempDir, Arc<SqlStore>, Arc<Writer>) {
        let (dir, store) = sqlite().await;
        sqlx::query("CREATE TABLE t (k TEXT NOT NULL)")
            .execute(&mut *store.write_conn().await.expect("turn"))
            .await
            .expect("table");
        let writer = store.writer.clone().expect("SQLite has a writer");
        (dir, Arc::new(store), writer)
    }

    #[tokio::test]
    async fn writers_that_wait_share_one_commit_and_one_dropped_takes_only_its_own_work() {
        let (_dir, store, writer) = scratch().await;
        let (_, groups_before) = writer.counts();
        let before = writer.stats();

        let mut first = store.write_tx().await.expect("begin");
        insert_key(&mut first, "first").await.expect("insert");
        // Two more writers queue for the turn: one commits, one gives up.
        let committed = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.write_tx().await.expect("join");
                insert_key(&mut tx, "second").await.expect("insert");
                tx.commit().await
            }
        });
        until_waiting(&writer, 1).await;
        let dropped = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.write_tx().await.expect("join");
                insert_key(&mut tx, "dropped").await.expect("insert");
            }
        });
        until_waiting(&writer, 2).await;
        // One more joins after the dropped one. The second's savepoint is left open for the
        // dropped one's first call to release, so undoing the dropped one must keep the
        // second's work, and the last one's savepoint must take nothing of it either.
        let last = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.write_tx().await.expect("join");
                insert_key(&mut tx, "last").await.expect("insert");
                tx.commit().await
            }
        });
        until_waiting(&writer, 3).await;
        first.commit().await.expect("the shared commit");
        committed.await.expect("task").expect("its commit");
        dropped.await.expect("task");
        last.await.expect("task").expect("its commit");

        assert_eq!(keys(&store).await, ["first", "last", "second"]);
        assert_eq!(
            writer.counts().1 - groups_before,
            1,
            "one SQLite transaction"
        );
        let after = writer.stats();
        assert_eq!(after.commits - before.commits, 1, "one commit");
        assert_eq!(after.transactions - before.transactions, 3, "holding three");
        assert!(after.wait_seconds > before.wait_seconds);
    }

    #[tokio::test]
    async fn unhurried_work_rides_on_the_next_writers_commit_or_commits_after_its_wait() {
        let (_dir, store, writer) = scratch().await;
        let before = writer.stats();
        let started = std::time::Instant::now();
        let mut outcome = store.write_tx().await.expect("begin");
        insert_key(&mut outcome, "outcome").await.expect("insert");
        let unhurried = tokio::spawn(outcome.commit_within(Duration::from_secs(30)));
        // Nobody was waiting for the turn, and the work does not commit by itself.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            writer.stats().commits,
            before.commits,
            "no commit of its own"
        );
        let mut next = store.write_tx().await.expect("join");
        insert_key(&mut next, "next").await.expect("insert");
        next.commit().await.expect("commit");
        unhurried
            .await
            .expect("task")
            .expect("committed with the next");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "returned when the next commit held it, not at the end of its wait"
        );
        let after = writer.stats();
        assert_eq!(after.commits - before.commits, 1, "one commit");
        assert_eq!(after.transactions - before.transactions, 2, "holding both");

        // With no other writer, it commits alone once its wait is over.
        let mut alone = store.write_tx().await.expect("begin");
        insert_key(&mut alone, "alone").await.expect("insert");
        let waited = std::time::Instant::now();
        alone
            .commit_within(Duration::from_millis(20))
            .await
            .expect("committed after its wait");
        assert!(waited.elapsed() >= Duration::from_millis(20));
        assert_eq!(writer.stats().commits - after.commits, 1);
        assert_eq!(keys(&store).await, ["alone", "next", "outcome"]);
    }

    #[tokio::test]
    async fn one_statement_writers_share_the_commit_without_a_savepoint_and_keep_the_groups_work() {
        let (_dir, store, writer) = scratch().await;
        sqlx::query("CREATE UNIQUE INDEX t_k ON t (k)")
            .execute(&mut *store.write_conn().await.expect("turn"))
            .await
            .expect("index");
        let (_, groups_before) = writer.counts();
        let before = writer.stats();
        let mut first = store.write_tx().await.expect("begin");
        insert_key(&mut first, "first").await.expect("insert");
        // Queued behind the first, in this order, each joining the shared transaction.
        let mut queued = vec![];
        let mut queue = |task: tokio::task::JoinHandle<Result<(), String>>| queued.push(task);
        // A one-statement writer that commits…
        queue(tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.one_statement_tx().await.expect("join");
                insert_key(&mut tx, "one").await.expect("insert");
                tx.commit().await.map_err(|e| e.to_string())
            }
        }));
        until_waiting(&writer, 1).await;
        // …one whose statement fails (a duplicate): SQLite undoes it alone…
        queue(tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.one_statement_tx().await.expect("join");
                let failed = insert_key(&mut tx, "first").await;
                assert!(failed.is_err(), "a duplicate");
                Ok(())
            }
        }));
        until_waiting(&writer, 2).await;
        // …one that stops waiting after its statement: the statement stands…
        queue(tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.one_statement_tx().await.expect("join");
                insert_key(&mut tx, "stands").await.expect("insert");
                Ok(())
            }
        }));
        until_waiting(&writer, 3).await;
        // …a savepoint writer that is dropped, which takes only its own work back…
        queue(tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.write_tx().await.expect("join");
                insert_key(&mut tx, "dropped").await.expect("insert");
                Ok(())
            }
        }));
        until_waiting(&writer, 4).await;
        // …and one that commits.
        queue(tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.write_tx().await.expect("join");
                insert_key(&mut tx, "last").await.expect("insert");
                tx.commit().await.map_err(|e| e.to_string())
            }
        }));
        until_waiting(&writer, 5).await;
        first.commit().await.expect("the shared commit");
        for task in queued {
            task.await.expect("task").expect("its commit");
        }

        assert_eq!(keys(&store).await, ["first", "last", "one", "stands"]);
        assert_eq!(writer.counts().1 - groups_before, 1, "one transaction");
        let after = writer.stats();
        assert_eq!(after.commits - before.commits, 1, "one commit");
        assert_eq!(
            after.transactions - before.transactions,
            3,
            "three committed"
        );
    }

    #[tokio::test]
    async fn a_one_statement_writer_whose_failure_ended_the_shared_transaction_fails_the_group() {
        let (_dir, store, writer) = scratch().await;
        let mut first = store.write_tx().await.expect("begin");
        insert_key(&mut first, "first").await.expect("insert");
        // A one-statement writer whose statement ends the transaction, as SQLite does itself
        // when a statement fails on a full disk, and which then gives up…
        let failed = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.one_statement_tx().await.expect("join");
                sqlx::query("ROLLBACK")
                    .execute(&mut *tx)
                    .await
                    .expect("rolled back");
            }
        });
        until_waiting(&writer, 1).await;
        // …and one more writer, which commits.
        let last = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.write_tx().await.expect("join");
                insert_key(&mut tx, "last").await.expect("insert");
                tx.commit().await
            }
        });
        until_waiting(&writer, 2).await;
        // The first writer's work went with the transaction: its commit says so, not Ok.
        assert!(first.commit().await.is_err(), "the lost work is reported");
        failed.await.expect("task");
        last.await.expect("task").expect("its own commit");
        assert_eq!(keys(&store).await, ["last"]);
    }

    #[tokio::test]
    async fn lazy_writers_open_with_their_first_statement_and_a_dropped_one_takes_only_its_own_work()
     {
        let (_dir, store, writer) = scratch().await;
        let (_, groups_before) = writer.counts();
        let (before, controls_before) = (writer.stats(), writer.controls().await);

        let mut first = store.write_tx().await.expect("begin");
        insert_key(&mut first, "first").await.expect("insert");
        let mut queued = vec![];
        let mut queue = |task: tokio::task::JoinHandle<Result<(), String>>| queued.push(task);
        // Queued behind the first, in this order: a lazy writer that commits…
        queue(tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.lazy_write_tx().await.expect("join");
                insert_key(&mut tx, "kept").await.expect("insert");
                tx.commit().await.map_err(|e| e.to_string())
            }
        }));
        until_waiting(&writer, 1).await;
        // …one dropped after its statement, whose opening released the last one's savepoint:
        // its undo keeps that writer's work…
        queue(tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.lazy_write_tx().await.expect("join");
                insert_key(&mut tx, "dropped").await.expect("insert");
                Ok(())
            }
        }));
        until_waiting(&writer, 2).await;
        // …one dropped before any statement, which sends nothing and leaves nothing to undo…
        queue(tokio::spawn({
            let store = store.clone();
            async move {
                drop(store.lazy_write_tx().await.expect("join"));
                Ok(())
            }
        }));
        until_waiting(&writer, 3).await;
        // …and a writer that opens in a call of its own.
        queue(tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.write_tx().await.expect("join");
                insert_key(&mut tx, "last").await.expect("insert");
                tx.commit().await.map_err(|e| e.to_string())
            }
        }));
        until_waiting(&writer, 4).await;
        first.commit().await.expect("the shared commit");
        for task in queued {
            task.await.expect("task").expect("its commit");
        }

        assert_eq!(keys(&store).await, ["first", "kept", "last"]);
        assert_eq!(writer.counts().1 - groups_before, 1, "one transaction");
        let after = writer.stats();
        assert_eq!(after.commits - before.commits, 1, "one commit");
        assert_eq!(after.transactions - before.transactions, 3);
        // `BEGIN IMMEDIATE`, the dropped writer's undo, the last writer's savepoint and the
        // `COMMIT`: the lazy writers opened in their statements' calls.
        assert_eq!(writer.controls().await - controls_before, 4);
    }

    #[tokio::test]
    async fn a_lazy_writer_alone_begins_the_transaction_in_its_first_call() {
        let (_dir, store, writer) = scratch().await;
        let (before, controls_before) = (writer.stats(), writer.controls().await);
        let mut tx = store.lazy_write_tx().await.expect("begin");
        insert_key(&mut tx, "alone").await.expect("insert");
        tx.commit().await.expect("commit");
        assert_eq!(writer.stats().commits - before.commits, 1);
        assert_eq!(
            writer.controls().await - controls_before,
            1,
            "the COMMIT alone"
        );
        // Committed without a statement: nothing is sent, and nothing was to commit.
        let tx = store.lazy_write_tx().await.expect("begin");
        tx.commit().await.expect("nothing to commit");
        assert_eq!(writer.stats().commits - before.commits, 1);
        assert_eq!(writer.controls().await - controls_before, 1);
        // Dropped after its first call: all of it is rolled back.
        let mut tx = store.lazy_write_tx().await.expect("begin");
        insert_key(&mut tx, "dropped").await.expect("insert");
        drop(tx);
        assert_eq!(store.console_key("after").await.expect("key"), "after");
        assert_eq!(keys(&store).await, ["alone"]);
    }

    #[tokio::test]
    async fn a_lazy_writer_whose_first_call_may_not_have_run_never_undoes_an_earlier_writers_work()
    {
        let (_dir, store, writer) = scratch().await;
        let mut first = store.write_tx().await.expect("begin");
        insert_key(&mut first, "first").await.expect("insert");
        // A writer that commits, leaving its savepoint for the next to release…
        let earlier = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.write_tx().await.expect("join");
                insert_key(&mut tx, "earlier").await.expect("insert");
                tx.commit().await
            }
        });
        until_waiting(&writer, 1).await;
        // …then a lazy writer that took its opening and the connection, and was dropped
        // before its call reached SQLite (as a cancelled future is)…
        let cancelled = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.lazy_write_tx().await.expect("join");
                assert!(tx.opening().starts_with("RELEASE member; SAVEPOINT lazy"));
                let _ = &mut *tx;
            }
        });
        until_waiting(&writer, 2).await;
        let next = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.write_tx().await.expect("join");
                insert_key(&mut tx, "next").await.expect("insert");
                tx.commit().await
            }
        });
        until_waiting(&writer, 3).await;
        // Its undo cannot tell whether its savepoint exists: rolling back to its own name
        // fails, and the shared transaction is rolled back with its writers told, rather than
        // the earlier writer's work undone under a commit that says it is kept.
        let first_outcome = first.commit().await;
        let earlier_outcome = earlier.await.expect("task");
        cancelled.await.expect("task");
        next.await.expect("task").expect("its own commit");
        assert!(first_outcome.is_err() && earlier_outcome.is_err());
        assert_eq!(keys(&store).await, ["next"]);
    }

    #[cfg(debug_assertions)]
    #[tokio::test]
    #[should_panic(expected = "a statement ran before the transaction's opening")]
    async fn a_lazy_writers_first_statement_must_carry_its_opening() {
        let (_dir, store, _writer) = scratch().await;
        let mut tx = store.lazy_write_tx().await.expect("begin");
        sqlx::query("INSERT INTO t (k) VALUES ('no opening')")
            .execute(&mut *tx)
            .await
            .expect("insert");
    }

    #[cfg(debug_assertions)]
    #[tokio::test]
    #[should_panic(expected = "a one-statement write transaction ran a second statement")]
    async fn a_one_statement_transaction_may_not_run_a_second() {
        let (_dir, store, _writer) = scratch().await;
        let mut tx = store.one_statement_tx().await.expect("begin");
        for k in ["a", "b"] {
            insert_key(&mut tx, k).await.expect("insert");
        }
    }

    #[tokio::test]
    async fn work_handed_to_the_group_is_committed_even_if_its_caller_stops_waiting() {
        let (_dir, store, writer) = scratch().await;
        let mut first = store.write_tx().await.expect("begin");
        insert_key(&mut first, "first").await.expect("insert");
        // The next writer joins, then holds the turn until told, and gives up.
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let joiner = tokio::spawn({
            let store = store.clone();
            async move {
                let tx = store.write_tx().await.expect("join");
                let _ = wait.await;
                drop(tx);
            }
        });
        until_waiting(&writer, 1).await;
        // The caller stops waiting while its work waits for the group's commit.
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(50), first.commit()).await;
        assert!(gave_up.is_err(), "the commit waits for the joiner");
        go.send(()).expect("joiner waiting");
        joiner.await.expect("joiner");
        let mut seen = vec![];
        for _ in 0..200 {
            seen = sqlx::query_scalar::<_, String>("SELECT k FROM t")
                .fetch_all(&mut *store.read().await.expect("reader"))
                .await
                .expect("read");
            if !seen.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(seen, ["first"]);
    }

    /// The keys in the scratch table, sorted.
    /// Returns once `n` writers wait for the turn.
    async fn until_waiting(writer: &Writer, n: usize) {
        while writer.counts().0 < n {
            tokio::task::yield_now().await;
        }
    }

    /// Inserts `k` into the scratch table in `tx`, carrying its opening if it has one.
    async fn insert_key(tx: &mut WriteTx, k: &str) -> Result<(), sqlx::Error> {
        let sql = format!("{}INSERT INTO t (k) VALUES ($1)", tx.opening());
        sqlx::query(&sql).bind(k).execute(&mut **tx).await.map(drop)
    }

    async fn keys(store: &SqlStore) -> Vec<String> {
        let mut keys: Vec<String> = sqlx::query_scalar("SELECT k FROM t")
            .fetch_all(&mut *store.read().await.expect("reader"))
            .await
            .expect("read");
        keys.sort();
        keys
    }

    /// A fused transaction that inserts `keys` (at least one), a call each, and how many
    /// rows its calls returned.
    async fn run_fused(store: &SqlStore, keys: &[&str]) -> Result<usize, sqlx::Error> {
        let mut tx = store
            .urgent_fused_tx()
            .await
            .expect("turn")
            .expect("SQLite");
        let sql = |i: usize| {
            let open = if i == 0 { FusedTx::OPEN } else { "" };
            let commit = if i == keys.len() - 1 {
                FusedTx::COMMIT
            } else {
                ""
            };
            format!(
                "{open}INSERT INTO t (k) VALUES ('{}') RETURNING k{commit}",
                keys[i]
            )
        };
        let mut rows = 0;
        for i in 0..keys.len() - 1 {
            rows += tx.fetch_all(sqlx::query(&sql(i))).await?.len();
        }
        let last = sql(keys.len() - 1);
        Ok(rows + tx.commit(sqlx::query(&last)).await?.len())
    }

    #[tokio::test]
    async fn a_fused_transaction_commits_with_the_shared_transaction_it_joins() {
        let (_dir, store, writer) = scratch().await;
        sqlx::query("CREATE UNIQUE INDEX t_k ON t (k)")
            .execute(&mut *store.write_conn().await.expect("turn"))
            .await
            .expect("index");
        // Alone: its rows come back, and it is a transaction and a commit of its own.
        let before = writer.stats();
        assert_eq!(run_fused(&store, &["a", "b"]).await.expect("fused"), 2);
        let after = writer.stats();
        assert_eq!(
            (
                after.commits - before.commits,
                after.transactions - before.transactions
            ),
            (1, 1)
        );
        // Alone and failing partway: nothing of it stays, and the writer goes on.
        assert!(run_fused(&store, &["c", "a"]).await.is_err());
        assert_eq!(store.console_key("after").await.expect("key"), "after");
        assert_eq!(keys(&store).await, ["a", "b"]);

        // A writer holds the turn while a fused transaction waits, so the writer leaves its
        // work to be committed by the next in the group: the fused one commits it with its
        // own.
        let before = writer.stats();
        let mut first = store.write_tx().await.expect("begin");
        insert_key(&mut first, "first").await.expect("insert");
        let fused = tokio::spawn({
            let store = store.clone();
            async move {
                run_fused(&store, &["fused"])
                    .await
                    .map_err(|e| e.to_string())
            }
        });
        until_waiting(&writer, 1).await;
        first.commit().await.expect("committed by the fused one");
        assert_eq!(fused.await.expect("task"), Ok(1));
        let after = writer.stats();
        assert_eq!(
            (
                after.commits - before.commits,
                after.transactions - before.transactions
            ),
            (1, 2),
            "one commit holding both"
        );
        assert_eq!(keys(&store).await, ["a", "b", "first", "fused"]);

        // A fused transaction that fails in a shared one takes back only its own work; the
        // writer before it is committed by the group as usual.
        let mut second = store.write_tx().await.expect("begin");
        insert_key(&mut second, "second").await.expect("insert");
        let fused = tokio::spawn({
            let store = store.clone();
            async move { run_fused(&store, &["mine", "a"]).await.is_err() }
        });
        until_waiting(&writer, 1).await;
        second.commit().await.expect("the group's commit");
        assert!(fused.await.expect("task"), "a duplicate fails it");
        assert_eq!(keys(&store).await, ["a", "b", "first", "fused", "second"]);

        // Dropped between its calls (its caller gave up), alone and in a shared transaction:
        // the next writer takes back its work and nothing else.
        let mut tx = store
            .urgent_fused_tx()
            .await
            .expect("turn")
            .expect("SQLite");
        let sql = format!("{}INSERT INTO t (k) VALUES ('gone')", FusedTx::OPEN);
        tx.fetch_all(sqlx::query(&sql)).await.expect("insert");
        drop(tx);
        let mut third = store.write_tx().await.expect("begin");
        insert_key(&mut third, "third").await.expect("insert");
        let dropped = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store
                    .urgent_fused_tx()
                    .await
                    .expect("turn")
                    .expect("SQLite");
                let sql = format!("{}INSERT INTO t (k) VALUES ('gone too')", FusedTx::OPEN);
                tx.fetch_all(sqlx::query(&sql)).await.expect("insert");
            }
        });
        until_waiting(&writer, 1).await;
        third.commit().await.expect("the group's commit");
        dropped.await.expect("task");
        assert_eq!(
            keys(&store).await,
            ["a", "b", "first", "fused", "second", "third"]
        );
    }
}
