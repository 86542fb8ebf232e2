//! The durable job queue's rows: enqueue, claim with a lease, heartbeat, finish.
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::db::*;
use super::events::record_pull_event;
use super::*;
use crate::domain::event::EventType;
use crate::queue::{JOB_FAILED, Job, JobOutcome, NewJob, Task};

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
    /// Counts jobs by status, for tests and operators.
    async fn job_counts(&self) -> StoreResult<Vec<(String, i64)>>;
}

#[async_trait]
impl JobStore for SqlStore {
    async fn enqueue_job(&self, job: &NewJob, now: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
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
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(self.dialect.claim_jobs())
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
                values_list(1, pulls.len())
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
        let mut tx = self.write_tx().await?;
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
                        cancel_pull_jobs(&mut tx, &pull_id, None, now).await?;
                        record_pull_event(&mut tx, EventType::PullFailed, &pull_id, now).await?;
                    }
                }
            }
        }
        tx.commit().await?;
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
