//! SQLite's one writer, shared well (docs/architecture.md, where it says "Writing on SQLite").
//!
//! SQLite lets one connection write at a time, so this process writes through one connection
//! of its own, taken in turn:
//! - Writers wait here, in order, rather than in SQLite's busy handler, which sleeps in steps
//!   of up to 100 ms and so leaves the lock idle while waiters sleep. Webhook intake's group
//!   commit is `urgent`: it goes before writers already waiting (each gives way once, so none
//!   is starved), because every delivery in its batch waits for the commit.
//! - The connection's page cache stays valid from one write to the next. SQLite empties a
//!   connection's cache whenever another connection has written since, so writes taken in
//!   turn by the pool's connections each began by re-reading the pages they touched.
//! - **Group commit.** Each write transaction is a savepoint inside one SQLite transaction
//!   that writers share while others are waiting for the turn. A writer that finishes while
//!   others wait passes the turn on; the transaction is committed
//!   (one fsync under `synchronous=FULL`) by the first of its writers to get the turn back,
//!   or at once when nobody waits or [`GROUP_MAX`] writers share it (unhurried work, such as
//!   job outcomes, waits up to [`UNHURRIED`] for a writer to come). `commit` returns only
//!   after the commit that holds its work, with that commit's outcome, so "committed" still
//!   means on disk. A transaction dropped without commit rolls back to its savepoint and
//!   takes nothing of the others' work with it. A finished writer's savepoint is released by
//!   the next writer in the same call that opens its own (`RELEASE member; SAVEPOINT member`),
//!   or by the `COMMIT`: each call is a round trip to the connection's thread, and the
//!   release needs none of its own. (Leaving savepoints open to nest instead was slower:
//!   SQLite keeps an inner savepoint's page copies until the outermost is released.)
//! - **Openings that travel.** A transaction begun with [`Open::WithFirstStatement`] sends
//!   its `BEGIN IMMEDIATE` or savepoint at the start of its first statement's call
//!   ([`WriteTx::opening`]) rather than in a call of its own. Its savepoint is named apart
//!   from the one it releases ([`Savepoint`]), so that undoing it can never reach an earlier
//!   writer's work, even when its first call never reached SQLite.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::any::AnyQueryResult;
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

use super::{StoreError, StoreResult, WriterStats};

/// The most write transactions one SQLite commit holds.
const GROUP_MAX: usize = 64;
/// How long unhurried work ([`WriteTx::commit_unhurried`]) waits for another writer to
/// commit it: about one group commit's cycle under load.
const UNHURRIED: Duration = Duration::from_millis(2);

/// The process's SQLite writer: its connection and the turn to use it.
pub(super) struct Writer {
    turn: Arc<Mutex<WriterConn>>,
    urgent: AtomicUsize,
    /// Writers waiting for the turn. While there are any, a finished transaction leaves its
    /// commit to the group.
    waiting: AtomicUsize,
    groups: AtomicU64,
    commits: AtomicU64,
    transactions: AtomicU64,
    wait_nanos: AtomicU64,
    /// The database's write-ahead log file, whose size the stats report.
    wal: Option<PathBuf>,
}

/// The writer's connection (opened from the pool on first use, and again after it fails),
/// the transaction its writers share, and what the next writer must undo first.
#[derive(Default)]
pub(super) struct WriterConn {
    conn: Option<AnyConnection>,
    group: Option<Group>,
    undo: Undo,
    /// Calls of the writer's own (openings, commits, undos), for the tests that count them.
    controls: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Undo {
    #[default]
    Nothing,
    /// A writer's transaction was dropped without commit: roll back to its savepoint.
    Savepoint(Savepoint),
    /// A [`FusedTx`] in a shared transaction failed or was dropped: roll back to its
    /// savepoint, named apart from the writers' so that it can never be mistaken for the
    /// last writer's, left open below it.
    Fused,
    /// The shared transaction failed: roll all of it back.
    Everything,
    /// A one-statement writer was dropped without commit. Its statement stands or failed
    /// alone, unless its failure made SQLite roll the whole transaction back (a full disk,
    /// say): check that the shared transaction is still open.
    Check,
}

/// How a write transaction opens in the writer's shared transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Open {
    /// In a call of its own, before the transaction is handed out.
    Now,
    /// Joining without a savepoint: the transaction may run one statement ([`Writer::begin`]).
    OneStatement,
    /// At the start of its first statement's call, which must begin with
    /// [`WriteTx::opening`]: a call to the database fewer.
    WithFirstStatement,
}

/// The savepoints writers open in a shared transaction. A transaction whose opening travels
/// with its first statement takes a name other than the one its opening releases: if that
/// call never reached SQLite, rolling back to its name fails (and the shared transaction is
/// rolled back, its writers told) instead of undoing the earlier writer's committed work.
/// At most one writer's savepoint is left open at a time, so two such names suffice.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Savepoint {
    Member,
    Lazy,
    Lazy2,
}

impl Savepoint {
    /// A name for a transaction whose opening releases `released`.
    fn apart_from(released: Option<Savepoint>) -> Savepoint {
        match released {
            Some(Savepoint::Lazy) => Savepoint::Lazy2,
            _ => Savepoint::Lazy,
        }
    }

    /// Opens `self`, releasing the savepoint the last writer left open, if any, first.
    fn open(self, release: Option<Savepoint>) -> &'static str {
        use Savepoint::*;
        match (release, self) {
            (None, Member) => "SAVEPOINT member",
            (Some(Member), Member) => "RELEASE member; SAVEPOINT member",
            (Some(Lazy), Member) => "RELEASE lazy; SAVEPOINT member",
            (Some(Lazy2), Member) => "RELEASE lazy2; SAVEPOINT member",
            (None, Lazy) => "SAVEPOINT lazy; ",
            (Some(Member), Lazy) => "RELEASE member; SAVEPOINT lazy; ",
            (Some(Lazy2), Lazy) => "RELEASE lazy2; SAVEPOINT lazy; ",
            (None, Lazy2) => "SAVEPOINT lazy2; ",
            (Some(Member), Lazy2) => "RELEASE member; SAVEPOINT lazy2; ",
            (Some(Lazy), Lazy2) => "RELEASE lazy; SAVEPOINT lazy2; ",
            (Some(Lazy), Lazy) | (Some(Lazy2), Lazy2) => {
                unreachable!("a savepoint is named apart from the one it releases")
            }
        }
    }

    fn undo(self) -> &'static str {
        match self {
            Savepoint::Member => "ROLLBACK TO member; RELEASE member",
            Savepoint::Lazy => "ROLLBACK TO lazy; RELEASE lazy",
            Savepoint::Lazy2 => "ROLLBACK TO lazy2; RELEASE lazy2",
        }
    }
}

/// An open SQLite transaction and the outcome its writers wait for.
struct Group {
    id: u64,
    members: usize,
    outcome: Arc<Outcome>,
    /// The savepoint the last writer to finish left for the next call to release.
    unreleased: Option<Savepoint>,
}

type Turn = OwnedMutexGuard<WriterConn>;

/// How a shared transaction ended, set once, for the writers whose work it holds.
#[derive(Default)]
struct Outcome {
    value: OnceLock<Result<(), String>>,
    settled: Notify,
}

impl Outcome {
    fn set(&self, outcome: Result<(), String>) {
        if self.value.set(outcome).is_ok() {
            self.settled.notify_waiters();
        }
    }

    fn get(&self) -> Option<&Result<(), String>> {
        self.value.get()
    }

    /// Returns once the outcome is set.
    async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `set` between the two is not missed.
            notified.as_mut().enable();
            if self.value.get().is_some() {
                return;
            }
            notified.await;
        }
    }
}

impl Writer {
    pub(super) fn new(wal: Option<PathBuf>) -> Self {
        Self {
            turn: Arc::new(Mutex::new(WriterConn::default())),
            urgent: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            groups: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            wait_nanos: AtomicU64::new(0),
            wal,
        }
    }

    pub(super) fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.commits.load(SeqCst),
            transactions: self.transactions.load(SeqCst),
            wait_seconds: self.wait_nanos.load(SeqCst) as f64 / 1e9,
            // No file yet (nothing written) is an empty log.
            wal_bytes: self
                .wal
                .as_ref()
                .and_then(|path| std::fs::metadata(path).ok())
                .map_or(0, |m| m.len()),
        }
    }

    /// The turn to write, with the connection open and nothing left to undo on it. A shared
    /// transaction may be open.
    async fn enter(&self, pool: &AnyPool, urgent: bool) -> StoreResult<Turn> {
        let asked = std::time::Instant::now();
        self.waiting.fetch_add(1, SeqCst);
        let turn = if urgent {
            self.urgent.fetch_add(1, SeqCst);
            let turn = self.turn.clone().lock_owned().await;
            self.urgent.fetch_sub(1, SeqCst);
            turn
        } else {
            let turn = self.turn.clone().lock_owned().await;
            if self.urgent.load(SeqCst) == 0 {
                turn
            } else {
                // Give way once: back of the queue, behind the urgent writer.
                drop(turn);
                self.turn.clone().lock_owned().await
            }
        };
        self.waiting.fetch_sub(1, SeqCst);
        self.wait_nanos
            .fetch_add(asked.elapsed().as_nanos() as u64, SeqCst);
        let mut turn = turn;
        if turn.conn.is_none() {
            abandon(&mut turn, "the database connection was lost");
            turn.undo = Undo::Nothing;
            turn.conn = Some(pool.acquire().await?.detach());
        }
        settle(&mut turn).await?;
        Ok(turn)
    }

    /// A write transaction. The first begins the shared transaction (`BEGIN IMMEDIATE`);
    /// one that joins it is a savepoint, so that it can be undone alone, unless it is
    /// [`Open::OneStatement`]: SQLite undoes a statement that fails by itself, and a statement
    /// that succeeded is kept whether or not its caller waits for the commit, so such a
    /// transaction needs no savepoint, and saves the call that opens one.
    pub(super) async fn begin(
        self: &Arc<Self>,
        pool: &AnyPool,
        open: Open,
    ) -> StoreResult<WriteTx> {
        let mut turn = self.enter(pool, false).await?;
        let joins = turn.group.is_some();
        let released = turn.group.as_ref().and_then(|g| g.unreleased);
        let savepoint = match open {
            _ if !joins => None,
            Open::OneStatement => None,
            Open::Now => Some(Savepoint::Member),
            Open::WithFirstStatement => Some(Savepoint::apart_from(released)),
        };
        let begin = match savepoint {
            Some(s) => Some(s.open(released)),
            None if joins => None,
            None if open == Open::WithFirstStatement => Some("BEGIN IMMEDIATE; "),
            None => Some("BEGIN IMMEDIATE"),
        };
        let pending = match begin {
            Some(sql) if open == Open::WithFirstStatement => Some(Pending {
                sql,
                released,
                taken: false,
            }),
            Some(sql) => {
                if let Err(e) = control(&mut turn, sql).await {
                    if joins {
                        turn.undo = Undo::Everything;
                    }
                    return Err(lost(&mut turn, e));
                }
                None
            }
            None => None,
        };
        match &mut turn.group {
            // An earlier writer's savepoint, if left open, stays open around the statement:
            // released (never rolled back, as its writer committed) by the next to open one.
            Some(_) if savepoint.is_none() => {}
            // Released by this opening, sent or to be sent.
            Some(group) => group.unreleased = None,
            None => turn.group = Some(self.new_group()),
        }
        Ok(WriteTx(TxInner::Writer {
            writer: self.clone(),
            pool: pool.clone(),
            joined: joins,
            one_statement: open == Open::OneStatement,
            savepoint,
            pending,
            statements: 0,
            turn: Some(turn),
        }))
    }

    /// The turn for statements that commit on their own: any shared transaction is
    /// committed first.
    pub(super) async fn single(&self, pool: &AnyPool) -> StoreResult<WriteConn> {
        let mut turn = self.enter(pool, false).await?;
        if turn.group.is_some() {
            // Its writers get this outcome; a failure leaves the undo to `settle`.
            let _ = self.commit_group(&mut turn).await;
            settle(&mut turn).await?;
        }
        // Counted when handed out: the statement commits by itself.
        self.commits.fetch_add(1, SeqCst);
        self.transactions.fetch_add(1, SeqCst);
        Ok(WriteConn::Writer(turn))
    }

    /// A [`FusedTx`], ahead of the writers waiting. It joins the shared transaction if one
    /// is open, and commits it.
    pub(super) async fn fused(self: &Arc<Self>, pool: &AnyPool) -> StoreResult<FusedTx> {
        let mut turn = self.enter(pool, true).await?;
        let began = turn.group.is_none();
        if began {
            turn.group = Some(self.new_group());
            // Dropped before its first call, the group it began (with nothing in it) ends.
            turn.undo = Undo::Everything;
        }
        Ok(FusedTx {
            writer: self.clone(),
            turn,
            began,
        })
    }
}

impl Writer {
    /// A shared transaction just begun, with no writer in it yet.
    fn new_group(&self) -> Group {
        Group {
            id: self.groups.fetch_add(1, SeqCst),
            members: 0,
            outcome: Arc::default(),
            unreleased: None,
        }
    }

    /// Counts a shared transaction that committed, and tells its writers.
    fn committed(&self, group: Group) {
        self.commits.fetch_add(1, SeqCst);
        self.transactions.fetch_add(group.members as u64, SeqCst);
        group.outcome.set(Ok(()));
    }

    /// Commits the shared transaction and tells its writers how it went.
    async fn commit_group(&self, turn: &mut Turn) -> Result<(), sqlx::Error> {
        let Some(group) = turn.group.take() else {
            return Ok(());
        };
        match control(turn, "COMMIT").await {
            Ok(_) => {
                self.committed(group);
                Ok(())
            }
            Err(e) => {
                group.outcome.set(Err(e.to_string()));
                turn.undo = Undo::Everything;
                close_if_broken(turn, &e);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
impl Writer {
    /// Writers waiting for the turn, and shared transactions begun so far.
    pub(super) fn counts(&self) -> (usize, u64) {
        (self.waiting.load(SeqCst), self.groups.load(SeqCst))
    }

    /// Calls the writer made of its own (openings, commits, undos) so far.
    pub(super) async fn controls(&self) -> u64 {
        self.turn.lock().await.controls
    }
}

/// Undoes what a failed or dropped writer left.
async fn settle(turn: &mut Turn) -> StoreResult<()> {
    match turn.undo {
        Undo::Nothing => {}
        Undo::Savepoint(_) | Undo::Fused if turn.group.is_none() => turn.undo = Undo::Nothing,
        Undo::Savepoint(_) | Undo::Fused => {
            let undo = match turn.undo {
                Undo::Savepoint(s) => s.undo(),
                _ => "ROLLBACK TO fused; RELEASE fused",
            };
            let undone = control(turn, undo).await;
            match undone {
                Ok(_) => turn.undo = Undo::Nothing,
                // The savepoint is gone: SQLite rolled the whole transaction back.
                Err(sqlx::Error::Database(_)) => turn.undo = Undo::Everything,
                Err(e) => return Err(lost(turn, e)),
            }
        }
        Undo::Check if turn.group.is_none() => turn.undo = Undo::Nothing,
        Undo::Check => match control(turn, "BEGIN").await {
            // Refused inside a transaction: the shared one is still open.
            Err(sqlx::Error::Database(_)) => turn.undo = Undo::Nothing,
            // Nothing was open: its writers' work is gone, and they must hear so. The
            // transaction just begun is rolled back with the rest.
            Ok(_) => turn.undo = Undo::Everything,
            Err(e) => return Err(lost(turn, e)),
        },
        Undo::Everything => {}
    }
    if turn.undo == Undo::Everything {
        abandon(turn, "the shared transaction was rolled back");
        match control(turn, "ROLLBACK").await {
            // A database error here says no transaction was open any more.
            Ok(_) | Err(sqlx::Error::Database(_)) => turn.undo = Undo::Nothing,
            Err(e) => return Err(lost(turn, e)),
        }
    }
    Ok(())
}

/// Ends the shared transaction without committing it; its writers get `why`.
fn abandon(turn: &mut Turn, why: &str) {
    if let Some(group) = turn.group.take() {
        group.outcome.set(Err(why.to_string()));
    }
}

fn conn(turn: &mut Turn) -> &mut AnyConnection {
    turn.conn.as_mut().expect("a turn holds an open connection")
}

/// A transaction-control statement, sent as a query rather than a bare string so that the
/// connection keeps it prepared: sqlx prepares a string without parameters anew at every
/// call, and these run several times a pull (300 pulls prepared 2,022 statements before,
/// 263 after; docs/benchmarks.md, "seventh session").
async fn control(turn: &mut Turn, sql: &'static str) -> Result<AnyQueryResult, sqlx::Error> {
    turn.controls += 1;
    sqlx::query(sql).execute(conn(turn)).await
}

/// An error on the writer's connection. Unless the database itself answered, the connection
/// is in an unknown state: it is closed, and the next turn opens another.
fn lost(turn: &mut Turn, e: sqlx::Error) -> StoreError {
    close_if_broken(turn, &e);
    e.into()
}

fn close_if_broken(turn: &mut Turn, e: &sqlx::Error) {
    if !matches!(e, sqlx::Error::Database(_)) {
        abandon(turn, "the database connection was lost");
        turn.conn = None;
    }
}

/// A write transaction: a savepoint in the writer's shared transaction (SQLite), or a pooled
/// transaction (Postgres).
pub(super) struct WriteTx(TxInner);

enum TxInner {
    Pooled(Option<sqlx::Transaction<'static, sqlx::Any>>),
    Writer {
        writer: Arc<Writer>,
        pool: AnyPool,
        /// Whether it joined an open transaction rather than began it.
        joined: bool,
        /// Whether it may run only one statement, and so joins without a savepoint.
        one_statement: bool,
        /// The savepoint it opened (or will open) in the shared transaction.
        savepoint: Option<Savepoint>,
        /// Its opening, when it travels with the first statement.
        pending: Option<Pending>,
        /// Statements run so far, for the check that a one-statement transaction runs one.
        statements: u32,
        /// Held until commit; a transaction dropped holding it is undone by the next writer.
        turn: Option<Turn>,
    },
}

/// An opening that travels with the first statement ([`Open::WithFirstStatement`]).
struct Pending {
    sql: &'static str,
    /// The savepoint the opening releases, left open again if the opening is never sent.
    released: Option<Savepoint>,
    /// Whether [`WriteTx::opening`] has handed it out.
    taken: bool,
}

impl Pending {
    /// Whether the opening surely never reached SQLite: it was not handed out, or no
    /// statement took the connection after it.
    fn unsent(&self, statements: u32) -> bool {
        !self.taken || statements == 0
    }
}

/// Ends a transaction whose opening never reached SQLite, so that nothing of it did. A group
/// it began (holding no one) ends; the savepoint its opening would have released stays for
/// the next writer.
fn unopened(turn: &mut Turn, joined: bool, pending: &Pending) {
    if joined {
        if let Some(group) = turn.group.as_mut() {
            group.unreleased = pending.released;
        }
    } else {
        abandon(turn, "the transaction never began");
    }
}

impl WriteTx {
    pub(super) fn pooled(tx: sqlx::Transaction<'static, sqlx::Any>) -> Self {
        WriteTx(TxInner::Pooled(Some(tx)))
    }

    /// What the first statement's SQL must start with, once: the transaction's opening when
    /// it travels with the first statement ([`Open::WithFirstStatement`]), and `""` after
    /// that, otherwise, and on Postgres. Take it in the expression that runs the statement.
    /// Read such a call's rows with `fetch_all`: the `Any` driver's `fetch_optional` looks
    /// only at the first statement's result, which is then the opening's. And its
    /// `rows_affected` also counts the connection's previous change (SQLite reports it again
    /// for a control statement): read what the statement changed through `RETURNING`.
    pub(super) fn opening(&mut self) -> &'static str {
        match &mut self.0 {
            TxInner::Writer {
                pending: Some(p), ..
            } if !p.taken => {
                p.taken = true;
                p.sql
            }
            TxInner::Writer { .. } => "",
            TxInner::Pooled(_) => "",
        }
    }

    /// Sends the opening, if it is still waiting, in a call of its own: for a transaction
    /// whose first statement cannot carry it.
    pub(super) async fn open_now(&mut self) -> Result<(), sqlx::Error> {
        let sql = self.opening();
        if !sql.is_empty() {
            sqlx::query(sql).execute(&mut **self).await?;
        }
        Ok(())
    }

    /// Returns once the work is committed to disk, with the outcome of the commit that
    /// holds it.
    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        self.commit_after(None).await
    }

    /// [`WriteTx::commit`] for work whose caller can wait a little, such as job outcomes: on
    /// SQLite it rides on the next writer's commit, or is committed after [`UNHURRIED`] if
    /// none comes first, so that it does not take a commit (an fsync) of its own from a busy
    /// writer. It returns as soon as the commit that holds it is done.
    pub(super) async fn commit_unhurried(self) -> Result<(), sqlx::Error> {
        self.commit_after(Some(UNHURRIED)).await
    }

    async fn commit_after(mut self, wait: Option<Duration>) -> Result<(), sqlx::Error> {
        let (writer, pool, savepoint, mut turn) = match &mut self.0 {
            TxInner::Pooled(tx) => return tx.take().expect("committed once").commit().await,
            TxInner::Writer {
                writer,
                pool,
                joined,
                savepoint,
                pending,
                statements,
                turn,
                ..
            } => {
                let mut turn = turn.take().expect("committed once");
                if let Some(pending) = pending.as_ref().filter(|p| p.unsent(*statements)) {
                    // Nothing was written: nothing to commit.
                    unopened(&mut turn, *joined, pending);
                    return Ok(());
                }
                (writer.clone(), pool.clone(), *savepoint, turn)
            }
        };
        let group = turn.group.as_mut().expect("a member is in a group");
        group.members += 1;
        if savepoint.is_some() {
            // Released by the next writer's first call, or by the commit.
            group.unreleased = savepoint;
        }
        let (id, outcome) = (group.id, group.outcome.clone());
        let waiting = writer.waiting.load(SeqCst) > 0;
        if (!waiting && wait.is_none()) || group.members >= GROUP_MAX {
            return writer.commit_group(&mut turn).await;
        }
        // Others are waiting (or the work can wait for others): let them add their work, then
        // commit it all with theirs. In a task of its own, so that a caller that stops waiting
        // cannot leave the shared transaction without anyone to commit it.
        drop(turn);
        let finish = tokio::spawn(async move {
            if let Some(wait) = wait.filter(|_| !waiting) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = outcome.settled() => {}
                }
            }
            // Unless a writer that came meanwhile has committed it (or failed to).
            if outcome.get().is_none()
                && let Ok(mut turn) = writer.enter(&pool, false).await
                && turn.group.as_ref().is_some_and(|g| g.id == id)
            {
                return writer.commit_group(&mut turn).await;
            }
            match outcome.get() {
                Some(Ok(())) => Ok(()),
                // Unavailable rather than a bug: the caller may try again.
                Some(Err(e)) => Err(sqlx::Error::Io(std::io::Error::other(format!(
                    "the commit holding this transaction failed: {e}"
                )))),
                None => Err(sqlx::Error::Io(std::io::Error::other(
                    "the writer's connection could not be opened to commit",
                ))),
            }
        });
        finish
            .await
            .unwrap_or_else(|e| Err(sqlx::Error::Io(std::io::Error::other(e.to_string()))))
    }
}

#[cfg(test)]
impl WriteTx {
    /// [`WriteTx::commit_unhurried`], waiting `wait` for another writer.
    pub(super) async fn commit_within(self, wait: Duration) -> Result<(), sqlx::Error> {
        self.commit_after(Some(wait)).await
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let TxInner::Writer {
            turn: Some(turn),
            joined,
            savepoint,
            pending,
            statements,
            ..
        } = &mut self.0
        {
            if let Some(pending) = pending.as_ref().filter(|p| p.unsent(*statements)) {
                unopened(turn, *joined, pending);
                return;
            }
            turn.undo = match (*joined, *savepoint) {
                // The first writer's work is all the shared transaction holds yet.
                (false, _) => Undo::Everything,
                (true, Some(savepoint)) => Undo::Savepoint(savepoint),
                // Its one statement failed, undone by SQLite, or stands and is committed with
                // the others: as with any write whose caller stopped waiting, it may be either.
                (true, None) => Undo::Check,
            };
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match &self.0 {
            TxInner::Pooled(tx) => tx.as_ref().expect("open"),
            TxInner::Writer { turn, .. } => {
                turn.as_ref().and_then(|t| t.conn.as_ref()).expect("open")
            }
        }
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.0 {
            TxInner::Pooled(tx) => tx.as_mut().expect("open"),
            TxInner::Writer {
                turn,
                one_statement,
                pending,
                statements,
                ..
            } => {
                // Each statement takes the connection once (`&mut *tx`).
                *statements += 1;
                debug_assert!(
                    !*one_statement || *statements == 1,
                    "a one-statement write transaction ran a second statement"
                );
                debug_assert!(
                    pending.as_ref().is_none_or(|p| p.taken),
                    "a statement ran before the transaction's opening (WriteTx::opening)"
                );
                conn(turn.as_mut().expect("open"))
            }
        }
    }
}

/// A connection for write statements that commit on their own.
pub(super) enum WriteConn {
    Pooled(sqlx::pool::PoolConnection<sqlx::Any>),
    Writer(Turn),
}

impl std::ops::Deref for WriteConn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            WriteConn::Pooled(conn) => conn,
            WriteConn::Writer(turn) => turn.conn.as_ref().expect("open"),
        }
    }
}

impl std::ops::DerefMut for WriteConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            WriteConn::Pooled(conn) => conn,
            WriteConn::Writer(turn) => conn(turn),
        }
    }
}

/// A write transaction whose opening and commit travel with its first and last statements
/// ([`FusedTx::OPEN`], [`FusedTx::COMMIT`]), which commits the shared transaction with it.
/// Each call to SQLite is a round trip to its connection's thread, and under load each
/// round trip waits for both threads to be scheduled; webhook intake's deliveries wait for
/// every one of them, and this takes two calls off its four (docs/benchmarks.md). The
/// savepoint starts the transaction when none is open, and nests in the last writer's when
/// that was left open; `COMMIT` ends them all. It is named `fused`, not `member`, so that
/// undoing it (`Undo::Fused`) cannot reach the writer's below it, even if it never opened.
pub(super) struct FusedTx {
    writer: Arc<Writer>,
    turn: Turn,
    /// Whether the transaction is its own (no shared one was open).
    began: bool,
}

impl FusedTx {
    /// What the first statement's call starts with.
    pub(super) const OPEN: &'static str = "SAVEPOINT fused; ";
    /// What the last statement's call ends with (alone, if there is no last statement).
    pub(super) const COMMIT: &'static str = "; COMMIT";

    /// Runs a call, the first starting with [`FusedTx::OPEN`], and returns the rows of all
    /// its statements. If one fails, or the transaction is dropped before its commit, the
    /// next writer undoes it as a dropped transaction: to its savepoint, or all of it when it
    /// was alone.
    pub(super) async fn fetch_all<'q>(
        &mut self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
        let turn = &mut self.turn;
        turn.undo = if self.began {
            Undo::Everything
        } else {
            Undo::Fused
        };
        query.fetch_all(conn(turn)).await.inspect_err(|e| {
            close_if_broken(turn, e);
        })
    }

    /// The last call, which ends with [`FusedTx::COMMIT`]. (Whether its `COMMIT` ran
    /// cannot be told from an error: when it did, the savepoint is gone, and the undo finds
    /// nothing to take back.)
    pub(super) async fn commit<'q>(
        mut self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
        let rows = self.fetch_all(query).await?;
        let turn = &mut self.turn;
        turn.undo = Undo::Nothing;
        let mut group = turn
            .group
            .take()
            .expect("a fused transaction is in a group");
        group.members += 1;
        self.writer.committed(group);
        Ok(rows)
    }
}
