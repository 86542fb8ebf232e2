//! The durable job queue's rows: enqueue, claim with a lease, heartbeat, finish.
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::db::*;
use super::events::record_pull_event;
use super::*;
use crate::domain::event::EventType;
use crate::queue::{
    JOB_FAILED, Job, JobGauges, JobOutcome, JobRecord, JobState, NewJob, RetryOutcome, Task,
};

/// The durable job queue's rows: enqueue, claim with a lease, heartbeat, finish.
#[async_trait]
pub trait JobStore: Send + Sync {
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
    /// [`JobStore::finish_job`] for a batch of this owner's jobs, in one transaction: the
    /// worker pool records outcomes together, so a busy pool does not spend a commit on each.
    async fn finish_jobs(
        &self,
        owner: &str,
        batch: &[(i64, JobOutcome)],
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Counts jobs by status, for tests and operators.
    async fn job_counts(&self) -> StoreResult<Vec<(String, i64)>>;
    /// Jobs oldest first, by state and kind, after `after_id`.
    async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<JobRecord>>;
    async fn get_job(&self, job_id: i64) -> StoreResult<Option<JobRecord>>;
    /// An operator's retry: a dead or waiting job runs now (a dead one with its attempts
    /// counted afresh). A capture whose session failed because this job died reopens the
    /// session, so the borrower's approval is not lost.
    async fn retry_job(&self, job_id: i64, now: DateTime<Utc>) -> StoreResult<RetryOutcome>;
    /// Live and dead jobs by kind and state, read through `jobs_by_state` (finished jobs,
    /// the bulk of the table, are not counted).
    async fn job_gauges(&self, now: DateTime<Utc>) -> StoreResult<JobGauges>;
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    /// Only jobs that have failed at least once (with `state: queued`, those retrying).
    pub failed_before: bool,
    /// The position to continue from: ids after it, or before it when `newest_first`.
    pub after_id: Option<i64>,
    pub limit: u32,
    /// Newest first (the console) rather than oldest first (the API).
    pub newest_first: bool,
}

const JOB_COLUMNS: &str = "id, kind, payload, status, pull_id, attempts, max_attempts, run_at, last_error, \
     lease_expires_at, dedupe_key, created_at, updated_at";

fn job_record(r: &sqlx::any::AnyRow) -> StoreResult<JobRecord> {
    let payload: String = r.try_get("payload")?;
    let status: String = r.try_get("status")?;
    Ok(JobRecord {
        job_id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        state: parse_enum("job status", &status)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        pull_id: r.try_get("pull_id")?,
        attempts: r.try_get::<i64, _>("attempts")? as i32,
        max_attempts: r.try_get::<i64, _>("max_attempts")? as i32,
        run_at: from_ms(r.try_get("run_at")?)?,
        last_error: r.try_get("last_error")?,
        lease_expires_at: r
            .try_get::<Option<i64>, _>("lease_expires_at")?
            .map(from_ms)
            .transpose()?,
        created_at: from_ms(r.try_get("created_at")?)?,
        updated_at: from_ms(r.try_get("updated_at")?)?,
    })
}

#[async_trait]
impl JobStore for SqlStore {
    async fn enqueue_job(&self, job: &NewJob, now: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.one_statement_tx().await?;
        insert_job(&mut tx, job, now).await?;
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
        let mut tx = self.lazy_write_tx().await?;
        let rows = sqlx::query(&format!("{}{}", tx.opening(), self.dialect.claim_jobs()))
            .bind(owner)
            .bind(to_ms(lease_until))
            .bind(to_ms(now))
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?;
        let jobs = rows
            .iter()
            .map(|r| {
                let payload: String = r.try_get("payload")?;
                let kind: String = r.try_get("kind")?;
                Ok(Job {
                    id: r.try_get("id")?,
                    task: Task::from_row(&kind, &payload),
                    kind,
                    attempts: r.try_get("attempts")?,
                    max_attempts: r.try_get("max_attempts")?,
                })
            })
            .collect::<StoreResult<Vec<Job>>>()?;
        // A pull counts each try of its steps as it starts, so a pull that shows `completed`
        // already counts the try that completed it.
        let pulls: Vec<&str> = jobs
            .iter()
            .filter_map(|j| j.task.as_ref().ok().and_then(Task::pull_id))
            .collect();
        if !pulls.is_empty() {
            let sql = format!(
                "UPDATE pulls SET attempts = attempts + 1 WHERE pull_id IN {}",
                self.dialect.values_list(1, pulls.len())
            );
            let mut tally = sqlx::query(&sql);
            for pull_id in &pulls {
                tally = tally.bind(*pull_id);
            }
            tally.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(jobs)
    }
    async fn extend_lease(
        &self,
        job_id: i64,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
        )
        .bind(to_ms(lease_until))
        .bind(job_id)
        .bind(owner)
        .execute(&mut *self.write_conn().await?)
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
        self.finish_jobs(owner, &[(job_id, outcome.clone())], now)
            .await
    }

    async fn finish_jobs(
        &self,
        owner: &str,
        batch: &[(i64, JobOutcome)],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut tx = self.lazy_write_tx().await?;
        // Most outcomes are `done`, which touches nothing but the job: one statement for all
        // of them. The rest may change their pull too, one by one.
        let done: Vec<i64> = batch
            .iter()
            .filter(|(_, o)| matches!(o, JobOutcome::Done))
            .map(|(id, _)| *id)
            .collect();
        if !done.is_empty() {
            let sql = format!("{}{}", tx.opening(), self.dialect.finish_done(done.len()));
            let mut query = sqlx::query(&sql).bind(to_ms(now));
            for id in &done {
                query = query.bind(*id);
            }
            query.bind(owner).execute(&mut *tx).await?;
        }
        tx.open_now().await?;
        for (job_id, outcome) in batch {
            if !matches!(outcome, JobOutcome::Done) {
                finish_one(&mut tx, *job_id, owner, outcome, now).await?;
            }
        }
        // Outcomes are written after the work they record: they can share the next commit.
        tx.commit_unhurried().await?;
        Ok(())
    }

    async fn job_counts(&self) -> StoreResult<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status ORDER BY status")
                .fetch_all(&mut *self.read().await?)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<JobRecord>> {
        let (seek, order, from) = keyset("id", 3, filter.after_id, filter.newest_first);
        // Through `jobs_by_state` (status, kind, id) when both are asked for, which gives the
        // rows in id order; with one of them, in key order (a state alone, such as `done`, can
        // be most of the table, and its rows in that index are not in id order).
        let both = filter.state.is_some() && filter.kind.is_some();
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE {} AND {} AND {seek} AND attempts >= $5
             ORDER BY {order} LIMIT $4",
            filter_eq("status", 1, both),
            filter_eq("kind", 2, both)
        ))
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.kind.as_deref())
        .bind(from)
        .bind(filter.limit as i64)
        .bind(i32::from(filter.failed_before))
        .fetch_all(&mut *self.read().await?)
        .await?;
        rows.iter().map(job_record).collect()
    }

    async fn get_job(&self, job_id: i64) -> StoreResult<Option<JobRecord>> {
        sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(job_id)
            .fetch_optional(&mut *self.read().await?)
            .await?
            .as_ref()
            .map(job_record)
            .transpose()
    }

    async fn retry_job(&self, job_id: i64, now: DateTime<Utc>) -> StoreResult<RetryOutcome> {
        let mut tx = self.write_tx().await?;
        let Some(row) = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1{}",
            self.dialect.for_update()
        ))
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(RetryOutcome::NotFound);
        };
        let job = job_record(&row)?;
        let dedupe_key: Option<String> = row.try_get("dedupe_key")?;
        let payload: String = row.try_get("payload")?;
        match job.state {
            JobState::Queued => {}
            JobState::Dead => {
                if let Some(pull_id) = &job.pull_id {
                    let pull_status: Option<String> =
                        sqlx::query_scalar("SELECT status FROM pulls WHERE pull_id = $1")
                            .bind(pull_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if let Some(pull_status) = pull_status
                        && !matches!(pull_status.as_str(), "queued" | "submitted" | "fetching")
                    {
                        return Ok(RetryOutcome::PullEnded { job, pull_status });
                    }
                }
                if let Some(key) = &dedupe_key {
                    let live: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM jobs WHERE dedupe_key = $1 AND status IN ('queued', 'running')",
                    )
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
                    if live > 0 {
                        return Ok(RetryOutcome::Duplicate(job));
                    }
                }
                if let Ok(Task::CaptureConsents { session_id }) =
                    Task::from_row(&job.kind, &payload)
                {
                    sqlx::query(
                        "UPDATE sessions SET status = 'capturing', error_code = NULL, error_message = NULL, updated_at = $1
                         WHERE session_id = $2 AND status = 'failed' AND error_code = $3",
                    )
                    .bind(to_ms(now))
                    .bind(&session_id)
                    .bind(JOB_FAILED)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            JobState::Running | JobState::Done | JobState::Cancelled => {
                return Ok(RetryOutcome::NotRetryable(job));
            }
        }
        let attempts_reset = i64::from(job.state == JobState::Dead);
        let row = sqlx::query(&format!(
            "UPDATE jobs SET status = 'queued', run_at = $1, updated_at = $1,
                    attempts = CASE WHEN $2 = 1 THEN 0 ELSE attempts END
             WHERE id = $3 RETURNING {JOB_COLUMNS}"
        ))
        .bind(to_ms(now))
        .bind(attempts_reset)
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RetryOutcome::Retried(job_record(&row)?))
    }

    async fn job_gauges(&self, now: DateTime<Utc>) -> StoreResult<JobGauges> {
        let rows = sqlx::query(
            "SELECT kind, status, COUNT(*) AS n FROM jobs
             WHERE status IN ('queued', 'running', 'dead') GROUP BY kind, status",
        )
        .fetch_all(&mut *self.read().await?)
        .await?;
        let counts = rows
            .iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok((
                    r.try_get("kind")?,
                    parse_enum("job status", &status)?,
                    r.try_get("n")?,
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let rows = sqlx::query(
            "SELECT kind, MIN(run_at) AS oldest FROM jobs
             WHERE status = 'queued' AND run_at <= $1 GROUP BY kind",
        )
        .bind(to_ms(now))
        .fetch_all(&mut *self.read().await?)
        .await?;
        let oldest_due = rows
            .iter()
            .map(|r| Ok((r.try_get("kind")?, from_ms(r.try_get("oldest")?)?)))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(JobGauges { counts, oldest_due })
    }
}

/// Ends one attempt at a job inside the caller's transaction; a no-op if the lease was lost.
async fn finish_one(
    tx: &mut sqlx::AnyConnection,
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
    let finished: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE jobs SET status = $1, run_at = COALESCE($2, run_at), last_error = COALESCE($3, last_error),
                attempts = attempts + $4, lease_owner = NULL, lease_expires_at = NULL, updated_at = $5
         WHERE id = $6 AND lease_owner = $7 AND status = 'running'
         RETURNING pull_id",
    )
    .bind(status)
    .bind(run_at)
    .bind(error)
    .bind(attempts_delta)
    .bind(to_ms(now))
    .bind(job_id)
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(Some(pull_id)) = finished {
        match outcome {
            JobOutcome::Done => {}
            // Given back unfinished: that try does not count.
            JobOutcome::Release => {
                sqlx::query("UPDATE pulls SET attempts = attempts - 1 WHERE pull_id = $1")
                    .bind(&pull_id)
                    .execute(&mut *tx)
                    .await?;
            }
            JobOutcome::Retry { error, .. } => {
                sqlx::query("UPDATE pulls SET last_error = $1 WHERE pull_id = $2")
                    .bind(error)
                    .bind(&pull_id)
                    .execute(&mut *tx)
                    .await?;
            }
            // Every pull ends: one whose job died fails, with the job's last error, in the
            // same transaction that records the job dead.
            JobOutcome::Dead { error } => {
                sqlx::query("UPDATE pulls SET last_error = $1 WHERE pull_id = $2")
                    .bind(error)
                    .bind(&pull_id)
                    .execute(&mut *tx)
                    .await?;
                let failed = sqlx::query(
                    "UPDATE pulls SET status = 'failed', error_code = $1, error_message = $2, updated_at = $3
                     WHERE pull_id = $4 AND status IN ('queued', 'submitted', 'fetching')",
                )
                .bind(JOB_FAILED)
                .bind(error)
                .bind(to_ms(now))
                .bind(&pull_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if failed {
                    cancel_pull_jobs(tx, &pull_id, None, now).await?;
                    record_pull_event(tx, EventType::PullFailed, &pull_id, now).await?;
                }
            }
        }
    }
    Ok(())
}
