//! Pulls through their life: created within budget, sent, fetched and ended.
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;

use super::db::*;
use super::events::{PULL_LINK_ID, record_pull_event, record_pull_event_from};
use super::rows::*;
use super::*;
use crate::domain::event::EventType;
use crate::domain::pull::{Pull, PullStatus};
use crate::queue::{NewJob, Task};

/// Pulls through their life: created within budget, sent, fetched and ended.
#[async_trait]
pub trait PullStore: Send + Sync {
    /// Creates a pull and its submit job in one transaction, honouring the idempotency key
    /// and the fair-use budget.
    async fn create_pull(&self, new: &NewPull, job: &NewJob) -> StoreResult<CreatePull>;
    async fn get_pull(&self, pull_id: &str) -> StoreResult<Option<Pull>>;
    /// A pull and its consent (`None` if the consent is gone), in one call on SQLite: the
    /// submit job needs both, and each call is a round trip to a connection's thread.
    async fn pull_with_consent(
        &self,
        pull_id: &str,
    ) -> StoreResult<Option<(Pull, Option<Consent>)>>;
    /// The pulls of these upstream sessions (those that are pulls of ours), in one query:
    /// webhook processing looks up a whole committed batch at once.
    async fn pulls_by_upstream_sessions(
        &self,
        upstream_session_ids: &[&str],
    ) -> StoreResult<Vec<Pull>>;
    async fn list_pulls(&self, filter: &PullFilter) -> StoreResult<Vec<(i64, Pull)>>;
    /// The consent a new pull is for, and the end of its newest completed pull's window (where
    /// the next default window starts), in one read: the API accepts a pull with both.
    async fn consent_for_pull(
        &self,
        consent_id: &str,
    ) -> StoreResult<Option<(Consent, Option<NaiveDate>)>>;
    /// The end of each consent's newest completed pull's window (where its next default
    /// window starts), for many consents in one query (the scheduler plans a batch of due
    /// consents at once); consents without a completed pull are absent.
    async fn last_completed_to_many(
        &self,
        consent_ids: &[&str],
    ) -> StoreResult<std::collections::HashMap<String, chrono::NaiveDate>>;
    /// `queued` → `submitted` with the upstream's session id. Any webhook for that session
    /// that arrived first is then queued for processing again. No poll job is written yet:
    /// most pulls hear their webhook first ([`PullStore::start_polling`]).
    async fn mark_submitted(
        &self,
        pull_id: &str,
        upstream_session_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Queues a `poll_pull` job, due now, for up to `limit` pulls still `submitted` since
    /// `submitted_before` that have none live: the safety net for lost webhooks, written only
    /// for the pulls that need it rather than at every send and cancelled at every webhook
    /// (docs/architecture.md, "The flow of one pull"). Gives the pulls it queued a poll for.
    async fn start_polling(
        &self,
        submitted_before: DateTime<Utc>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<String>>;
    /// `submitted` → `fetching` for the pulls of `fetches` (their fetch jobs), with the jobs of
    /// those that moved, in one transaction whatever their number: a batch of webhooks starts
    /// its pulls' fetches together. Returns the pulls that moved; one that was not
    /// `submitted` (already handled by another event) gets no job. A poll job queued for a
    /// pull already (its webhook came late) is left to find the pull moved on, and ends `done`.
    async fn start_fetching(
        &self,
        fetches: &[NewJob],
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<String>>;
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
    /// Stores the data once, merges the last of its transactions into the consent's
    /// timeline (each hash once; the rest went in before, `DataStore::add_to_timeline`) and
    /// marks the pull `completed`, in one transaction.
    async fn complete_pull(
        &self,
        consent_id: &str,
        data: &StoredData,
        timeline: &[TimelineEntry],
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
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
    /// Pulls that ended since the database began, by kind and outcome, from the counts the
    /// triggers keep.
    async fn pull_outcome_counts(&self) -> StoreResult<Vec<(String, String, i64)>>;
    /// Pulls ended per hour by outcome, from the hour `since_hour` on: one row per hour and
    /// outcome that had any. Hours are counted from the epoch on Indian time
    /// ([`crate::domain::ist_hour`]), so they fall into Indian calendar days exactly.
    async fn pull_outcomes_by_hour(&self, since_hour: i64) -> StoreResult<Vec<(i64, String, i64)>>;
}

#[async_trait]
impl PullStore for SqlStore {
    async fn create_pull(&self, new: &NewPull, job: &NewJob) -> StoreResult<CreatePull> {
        let p = &new.pull;
        let mut tx = self.lazy_write_tx().await?;
        lock_consent(self.dialect, &mut tx, &p.consent_id).await?;
        if let Some(key) = &new.idempotency_key {
            let row = sqlx::query(&format!(
                "{}SELECT {PULL_COLUMNS}, request_hash FROM pulls WHERE consent_id = $1 AND idempotency_key = $2",
                tx.opening()
            ))
            .bind(&p.consent_id)
            .bind(key)
            .fetch_all(&mut *tx)
            .await?;
            if let Some(row) = row.first() {
                let hash: Option<String> = row.try_get("request_hash")?;
                let (_, pull) = pull_from_row(row)?;
                tx.commit().await?;
                return Ok(CreatePull::Existing {
                    pull,
                    same_request: hash.as_deref() == Some(new.request_hash.as_str()),
                });
            }
        }
        if !insert_pull_within_budget(&mut tx, new, job).await? {
            tx.commit().await?;
            return Ok(CreatePull::OverBudget);
        }
        tx.commit().await?;
        Ok(CreatePull::Created(p.clone()))
    }

    async fn get_pull(&self, pull_id: &str) -> StoreResult<Option<Pull>> {
        let mut conn = self.read().await?;
        pull_where(&mut conn, "pull_id", pull_id).await
    }

    async fn pull_with_consent(
        &self,
        pull_id: &str,
    ) -> StoreResult<Option<(Pull, Option<Consent>)>> {
        let pull = format!("SELECT {PULL_COLUMNS} FROM pulls WHERE pull_id = $1");
        let consent = format!(
            "SELECT {CONSENT_COLUMNS} FROM consents
             WHERE consent_id = (SELECT consent_id FROM pulls WHERE pull_id = $1)"
        );
        let mut conn = self.read().await?;
        // The pull's row, then its consent's.
        let rows = match self.dialect {
            Dialect::Sqlite => {
                sqlx::query(&format!("{pull}; {consent}"))
                    .bind(pull_id)
                    .fetch_all(&mut *conn)
                    .await?
            }
            // Postgres takes statements with parameters one at a time.
            Dialect::Postgres => {
                let mut rows = sqlx::query(&pull)
                    .bind(pull_id)
                    .fetch_all(&mut *conn)
                    .await?;
                if !rows.is_empty() {
                    rows.extend(
                        sqlx::query(&consent)
                            .bind(pull_id)
                            .fetch_optional(&mut *conn)
                            .await?,
                    );
                }
                rows
            }
        };
        let mut rows = rows.iter();
        let Some(pull) = rows.next() else {
            return Ok(None);
        };
        let (_, pull) = pull_from_row(pull)?;
        let consent = rows
            .next()
            .map(consent_from_row)
            .transpose()?
            .map(|(_, c)| c);
        Ok(Some((pull, consent)))
    }

    async fn pulls_by_upstream_sessions(
        &self,
        upstream_session_ids: &[&str],
    ) -> StoreResult<Vec<Pull>> {
        if upstream_session_ids.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "SELECT {PULL_COLUMNS} FROM pulls WHERE upstream_session_id IN {}",
            self.dialect.values_list(1, upstream_session_ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in upstream_session_ids {
            query = query.bind(*id);
        }
        query
            .fetch_all(&mut *self.read().await?)
            .await?
            .iter()
            .map(|r| pull_from_row(r).map(|(_, p)| p))
            .collect()
    }

    async fn list_pulls(&self, f: &PullFilter) -> StoreResult<Vec<(i64, Pull)>> {
        let (sql, from) = list_pulls_sql(f);
        let rows = sqlx::query(&sql)
            .bind(f.consent_id.as_deref())
            .bind(f.status.map(|s| s.as_str()))
            .bind(from)
            .bind(f.limit as i64)
            .bind(f.updated_after.map_or(i64::MIN, to_ms))
            .fetch_all(&mut *self.read().await?)
            .await?;
        rows.iter().map(pull_from_row).collect()
    }

    async fn consent_for_pull(
        &self,
        consent_id: &str,
    ) -> StoreResult<Option<(Consent, Option<NaiveDate>)>> {
        let row = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS},
                (SELECT MAX(p.to_date) FROM pulls p
                 WHERE p.consent_id = consents.consent_id AND p.status = 'completed') AS last_completed_to
             FROM consents WHERE consent_id = $1"
        ))
        .bind(consent_id)
        .fetch_optional(&mut *self.read().await?)
        .await?;
        row.map(|r| {
            let (_, consent) = consent_from_row(&r)?;
            let to: Option<String> = r.try_get("last_completed_to")?;
            Ok((consent, opt_date(to)?))
        })
        .transpose()
    }

    async fn last_completed_to_many(
        &self,
        consent_ids: &[&str],
    ) -> StoreResult<std::collections::HashMap<String, NaiveDate>> {
        if consent_ids.is_empty() {
            return Ok(Default::default());
        }
        let sql = format!(
            "SELECT consent_id, MAX(to_date) FROM pulls
             WHERE consent_id IN {} AND status = 'completed' GROUP BY consent_id",
            self.dialect.values_list(1, consent_ids.len())
        );
        let mut query = sqlx::query_as::<_, (String, Option<String>)>(&sql);
        for id in consent_ids {
            query = query.bind(*id);
        }
        let mut out = std::collections::HashMap::new();
        for (consent_id, to) in query.fetch_all(&mut *self.read().await?).await? {
            if let Some(to) = opt_date(to)? {
                out.insert(consent_id, to);
            }
        }
        Ok(out)
    }

    async fn mark_submitted(
        &self,
        pull_id: &str,
        upstream_session_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        const SUBMITTED: &str = "UPDATE pulls SET status = 'submitted', upstream_session_id = $1,
                    submitted_at = $2, updated_at = $3, error_code = NULL, error_message = NULL
             WHERE pull_id = $4 AND status = 'queued'";
        // A webhook that overtook this commit found no pull; it is processed again. Seen by
        // both this read and its own processing, a webhook is processed twice, which changes
        // nothing; what matters is that one of them sees it.
        const EARLY: &str = "SELECT id FROM webhook_inbox WHERE upstream_session_id = $1";
        // On SQLite the one writer holds the write lock from this read until the commit that
        // holds the update, so a webhook stored after the read is processed after that commit
        // and finds the pull submitted: the read travels in the update's call and needs no
        // reader connection, one call a pull fewer (docs/benchmarks.md, "eighth session").
        // Postgres takes one statement a call, and looks after the commit (below).
        let sql = match self.dialect {
            Dialect::Sqlite => format!("{SUBMITTED}; {EARLY}"),
            Dialect::Postgres => SUBMITTED.to_string(),
        };
        let mut tx = self.one_statement_tx().await?;
        let mut early: Vec<i64> = sqlx::query_scalar(&sql)
            .bind(upstream_session_id)
            .bind(to_ms(now))
            .bind(to_ms(now))
            .bind(pull_id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        if self.dialect == Dialect::Postgres {
            // Looked for only after the commit: a webhook whose processing ran before the
            // commit was itself committed before that processing, so this read sees it. (Read
            // inside the transaction, it could miss a webhook committed just after the read
            // whose processing then ran just before this commit, and that pull waited for its
            // poll.)
            early = sqlx::query_scalar(EARLY)
                .bind(upstream_session_id)
                .fetch_all(&mut *self.read().await?)
                .await?;
        }
        if !early.is_empty() {
            let job = NewJob::new(Task::ProcessWebhook { inbox_ids: early }, now);
            insert_job(&mut *self.write_conn().await?, &job, now).await?;
        }
        Ok(())
    }

    async fn start_fetching(
        &self,
        fetches: &[NewJob],
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<String>> {
        let mut pull_ids: Vec<&str> = fetches.iter().filter_map(|j| j.task.pull_id()).collect();
        pull_ids.sort_unstable();
        pull_ids.dedup();
        if pull_ids.is_empty() {
            return Ok(vec![]);
        }
        let mut tx = self.lazy_write_tx().await?;
        let sql = format!(
            "{}UPDATE pulls SET status = 'fetching', updated_at = {}
             WHERE pull_id IN {} AND status = 'submitted' RETURNING pull_id",
            tx.opening(),
            self.dialect.param(1),
            self.dialect.values_list_after(1, 1, pull_ids.len())
        );
        let mut update = sqlx::query_scalar(&sql).bind(to_ms(now));
        for pull_id in &pull_ids {
            update = update.bind(*pull_id);
        }
        let moved: Vec<String> = update.fetch_all(&mut *tx).await?;
        // One job for each pull that moved, however often the batch named it.
        let jobs: Vec<&NewJob> = moved
            .iter()
            .filter_map(|m| {
                fetches
                    .iter()
                    .find(|j| j.task.pull_id() == Some(m.as_str()))
            })
            .collect();
        insert_jobs(&mut tx, jobs.into_iter(), now).await?;
        tx.commit().await?;
        Ok(moved)
    }

    async fn start_polling(
        &self,
        submitted_before: DateTime<Utc>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<String>> {
        let poll_kind = Task::PollPull {
            pull_id: String::new(),
        }
        .kind();
        // Read first: most sweeps find nothing and need not take the writer.
        let late: Vec<String> = sqlx::query_scalar(
            "SELECT pull_id FROM pulls
             WHERE status = 'submitted' AND submitted_at <= $1
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.pull_id = pulls.pull_id
                               AND j.status IN ('queued', 'running') AND j.kind = $2)
             ORDER BY seq LIMIT $3",
        )
        .bind(to_ms(submitted_before))
        .bind(poll_kind)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.read().await?)
        .await?;
        if late.is_empty() {
            return Ok(late);
        }
        let polls: Vec<NewJob> = late
            .iter()
            .map(|pull_id| {
                NewJob::new(
                    Task::PollPull {
                        pull_id: pull_id.clone(),
                    },
                    now,
                )
            })
            .collect();
        // Another instance's sweep may queue the same polls: the live dedupe key keeps one.
        let mut tx = self.one_statement_tx().await?;
        insert_jobs(&mut tx, polls.iter(), now).await?;
        tx.commit().await?;
        Ok(late)
    }

    async fn end_pull(
        &self,
        pull_id: &str,
        status: PullStatus,
        code: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let ended = sqlx::query(&format!(
            "UPDATE pulls SET status = $1, error_code = $2, error_message = $3, updated_at = $4
             WHERE pull_id = $5 AND status IN ('queued', 'submitted', 'fetching')
             RETURNING {PULL_COLUMNS}, {PULL_LINK_ID}"
        ))
        .bind(status.as_str())
        .bind(code)
        .bind(message)
        .bind(to_ms(now))
        .bind(pull_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(pull) = &ended {
            cancel_pull_jobs(&mut tx, pull_id, None, now).await?;
            let event = match status {
                PullStatus::Expired => EventType::PullExpired,
                _ => EventType::PullFailed,
            };
            record_pull_event_from(&mut tx, event, pull, now).await?;
        }
        tx.commit().await?;
        Ok(ended.is_some())
    }

    async fn complete_pull(
        &self,
        consent_id: &str,
        d: &StoredData,
        timeline: &[TimelineEntry],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        // The data, then the pull marked completed; on SQLite in one call, which carries the
        // transaction's opening too.
        const STORE: &str =
            "INSERT INTO pull_data (pull_id, kind, content_encoding, body, raw_size, fetched_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (pull_id) DO NOTHING";
        let complete = |p: usize| {
            format!(
                "UPDATE pulls SET status = 'completed', completed_at = COALESCE(completed_at, ${p}),
                        updated_at = ${p}, error_code = NULL, error_message = NULL
                 WHERE pull_id = ${} AND status IN ('submitted', 'fetching')
                 RETURNING {PULL_COLUMNS}, {PULL_LINK_ID}",
                p + 1
            )
        };
        let store = |sql| {
            sqlx::query(sql)
                .bind(&d.pull_id)
                .bind(d.kind.as_str())
                .bind(&d.content_encoding)
                .bind(&d.body)
                .bind(d.raw_size)
                .bind(to_ms(d.fetched_at))
        };
        let mut tx = self.lazy_write_tx().await?;
        let completed = match self.dialect {
            Dialect::Sqlite => {
                let sql = format!("{}{STORE}; {}", tx.opening(), complete(7));
                let rows = store(&sql)
                    .bind(to_ms(now))
                    .bind(&d.pull_id)
                    .fetch_all(&mut *tx)
                    .await?;
                rows.into_iter().next()
            }
            // Postgres takes statements with parameters one at a time.
            Dialect::Postgres => {
                store(STORE).execute(&mut *tx).await?;
                sqlx::query(&complete(1))
                    .bind(to_ms(now))
                    .bind(&d.pull_id)
                    .fetch_optional(&mut *tx)
                    .await?
            }
        };
        insert_timeline(&mut tx, consent_id, timeline, d.fetched_at).await?;
        if let Some(pull) = &completed {
            record_pull_event_from(&mut tx, EventType::PullCompleted, pull, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn expire_overdue_pulls(
        &self,
        created_before: DateTime<Utc>,
        code: &str,
        message: &str,
        limit: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<String>> {
        let mut tx = self.write_tx().await?;
        let expired: Vec<String> = sqlx::query_scalar(self.dialect.expire_overdue())
            .bind(code)
            .bind(message)
            .bind(to_ms(now))
            .bind(to_ms(created_before))
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?;
        for pull_id in &expired {
            cancel_pull_jobs(&mut tx, pull_id, None, now).await?;
            record_pull_event(&mut tx, EventType::PullExpired, pull_id, now).await?;
        }
        tx.commit().await?;
        Ok(expired)
    }
    async fn pull_outcome_counts(&self) -> StoreResult<Vec<(String, String, i64)>> {
        let rows =
            sqlx::query("SELECT kind, outcome, n FROM pull_outcome_counts ORDER BY kind, outcome")
                .fetch_all(&mut *self.read().await?)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("kind")?, r.try_get("outcome")?, r.try_get("n")?)))
            .collect()
    }

    async fn pull_outcomes_by_hour(&self, since_hour: i64) -> StoreResult<Vec<(i64, String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT hour, outcome, n FROM pull_outcomes_hourly WHERE hour >= $1 ORDER BY hour, outcome",
        )
        .bind(since_hour)
        .fetch_all(&mut *self.read().await?)
        .await?)
    }
}

/// A page of pulls, and the key it starts after: through `pulls_by_consent` when a consent is
/// asked for, else `pulls_by_status` when a status is, else in key order.
pub(super) fn list_pulls_sql(f: &PullFilter) -> (String, i64) {
    let (seek, order, from) = keyset("seq", 3, f.after_seq, f.newest_first);
    let (consent, status) = (f.consent_id.is_some(), f.status.is_some());
    let sql = format!(
        "SELECT {PULL_COLUMNS} FROM pulls
         WHERE {} AND {} AND {seek} AND updated_at > $5
         ORDER BY {order} LIMIT $4",
        filter_eq("consent_id", 1, consent),
        filter_eq("status", 2, status && !consent)
    );
    (sql, from)
}
