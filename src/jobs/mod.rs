//! The durable job queue: every piece of follow-up work is a row that survives a crash,
//! is leased by one worker at a time, retried with backoff and finally marked dead.

pub mod capture_consents;
pub mod fetch_data;
pub mod poll;
pub mod process_webhook;
pub mod submit_pull;
pub mod worker;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::consent::string_enum;

/// What a job does; one handler per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Fetch and store the consent details of an approved session.
    CaptureConsents,
    /// Send a pull's Fetch Recurring AA Data call, within the fair-use budget.
    SubmitPull,
    /// Ask the upstream whether a submitted pull is done (the webhook's safety net).
    PollPull,
    /// Act on a stored webhook.
    ProcessWebhook,
    /// Fetch and store a finished pull's Insights or Transactions.
    FetchPullData,
}

string_enum!(JobKind {
    CaptureConsents => "capture_consents",
    SubmitPull => "submit_pull",
    PollPull => "poll_pull",
    ProcessWebhook => "process_webhook",
    FetchPullData => "fetch_pull_data",
});

impl JobKind {
    /// How many attempts before a job of this kind is dead. With the default backoff (capped
    /// at an hour) capturing consents keeps trying for most of a day, which outlasts an
    /// ordinary upstream outage.
    pub fn max_attempts(self) -> i32 {
        match self {
            JobKind::CaptureConsents | JobKind::FetchPullData => 30,
            JobKind::SubmitPull | JobKind::ProcessWebhook => 20,
            // Polling ends at the pull's deadline, not after a number of tries.
            JobKind::PollPull => 100_000,
        }
    }
}

/// A job to insert. `dedupe_key` makes enqueueing idempotent: while a job with the same key
/// is queued or running, another insert is a no-op.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: JobKind,
    pub payload: serde_json::Value,
    pub run_at: DateTime<Utc>,
    pub dedupe_key: Option<String>,
    /// The pull this job works on, if any: the pull shows the job's progress, and fails
    /// when the job dies.
    pub pull_id: Option<String>,
}

/// A claimed job, leased to this worker until its lease expires.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Attempts so far, this one included.
    pub attempts: i32,
    pub max_attempts: i32,
    pub pull_id: Option<String>,
}

/// How a claimed job ends this attempt.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    Done,
    Retry {
        run_at: DateTime<Utc>,
        error: String,
    },
    Dead {
        error: String,
    },
    /// Given back unfinished (shutdown): runs again at once, and this attempt does not count.
    Release,
}

/// A handler's failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Try again later; `after` overrides the backoff (an upstream `Retry-After`).
    #[error("{message}")]
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// Trying again cannot help: the job is dead at once.
    #[error("{0}")]
    Fatal(String),
}

impl NewJob {
    /// A job of `kind` about `payload`, due at `run_at`, at most one live per `dedupe_key`.
    pub fn new(
        kind: JobKind,
        payload: impl Serialize,
        run_at: DateTime<Utc>,
        dedupe_key: Option<String>,
    ) -> Self {
        NewJob {
            kind,
            payload: serde_json::to_value(payload).expect("job payloads serialise"),
            run_at,
            dedupe_key,
            pull_id: None,
        }
    }

    /// A step of a pull (submit, poll or fetch), at most one live per pull and step.
    pub fn for_pull(kind: JobKind, pull_id: &str, run_at: DateTime<Utc>) -> Self {
        let step = match kind {
            JobKind::SubmitPull => "submit",
            JobKind::PollPull => "poll",
            JobKind::FetchPullData => "fetch",
            other => other.as_str(),
        };
        NewJob {
            pull_id: Some(pull_id.to_string()),
            ..NewJob::new(
                kind,
                PullPayload {
                    pull_id: pull_id.to_string(),
                },
                run_at,
                Some(format!("{step}:{pull_id}")),
            )
        }
    }
}

/// Payload of the pull jobs: submit, poll and fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullPayload {
    pub pull_id: String,
}

/// Payload of [`JobKind::ProcessWebhook`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookPayload {
    pub inbox_id: i64,
}

/// Payload of [`JobKind::CaptureConsents`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapturePayload {
    pub session_id: String,
}

/// Exponential backoff with full jitter: a uniformly random wait up to `base * 2^(attempt-1)`,
/// capped, and never less than a tenth of that bound so that retries do not bunch at zero.
/// `unit` is a random number in [0, 1).
pub fn backoff(attempt: i32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 30) as u32;
    let bound = base.saturating_mul(1u32 << exp.min(20)).min(cap);
    let frac = 0.1 + 0.9 * unit.clamp(0.0, 1.0);
    bound.mul_f64(frac)
}

/// When a failed attempt should run again.
pub fn retry_delay(attempt: i32, after: Option<Duration>) -> Duration {
    after.unwrap_or_else(|| backoff(attempt, BACKOFF_BASE, BACKOFF_CAP, rand::random::<f64>()))
}

pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(3600);

/// What a pull job does with an upstream error on the pull's own session: a transient one is
/// retried, a permanent one ends the pull as `failed` with the upstream's code, and a
/// configuration one also leaves the job dead so that operators see it.
pub(crate) async fn pull_step_failed(
    state: &crate::app::AppState,
    pull_id: &str,
    e: crate::bankconnect::BankConnectError,
) -> Result<(), JobError> {
    use crate::bankconnect::ErrorClass;
    use crate::domain::pull::PullStatus;
    match e.class() {
        ErrorClass::Transient => Err(JobError::Retry {
            message: e.to_string(),
            after: e.retry_after(),
        }),
        class => {
            state
                .store
                .end_pull(
                    pull_id,
                    PullStatus::Failed,
                    &e.code_or_kind(),
                    &e.to_string(),
                    state.clock.now(),
                )
                .await
                .map_err(store_retry)?;
            tracing::warn!(pull_id, error = %e, "pull failed");
            if class == ErrorClass::Configuration {
                Err(JobError::Fatal(e.to_string()))
            } else {
                Ok(())
            }
        }
    }
}

/// Gives the work of a dead job a visible end (docs/architecture.md, "Every pull ends"): a
/// pull fails with `JOB_FAILED` and the job's last error, a capture fails its session the same
/// way. A webhook's processing needs nothing more: its pull still ends by polling or by the
/// deadline, and the dead job stays for operators.
pub(crate) async fn on_dead(
    state: &crate::app::AppState,
    job: &Job,
    error: &str,
) -> Result<(), crate::store::StoreError> {
    use crate::domain::pull::PullStatus;
    let now = state.clock.now();
    if let Some(pull_id) = &job.pull_id {
        if state
            .store
            .end_pull(pull_id, PullStatus::Failed, JOB_FAILED, error, now)
            .await?
        {
            tracing::warn!(%pull_id, kind = %job.kind, %error, "pull failed: its job died");
        }
    } else if job.kind == JobKind::CaptureConsents.as_str()
        && let Ok(p) = serde_json::from_value::<CapturePayload>(job.payload.clone())
        && state
            .store
            .fail_capture(&p.session_id, JOB_FAILED, error, now)
            .await?
    {
        tracing::warn!(session_id = %p.session_id, %error, "consent capture failed: its job died");
    }
    Ok(())
}

/// The error code of a pull or session whose job died.
pub const JOB_FAILED: &str = "JOB_FAILED";

/// The pull a job is about. A pull that does not exist is a bug: the job is dead at once.
pub(crate) async fn load_pull(
    state: &crate::app::AppState,
    pull_id: &str,
) -> Result<crate::domain::pull::Pull, JobError> {
    state
        .store
        .get_pull(pull_id)
        .await
        .map_err(store_retry)?
        .ok_or_else(|| JobError::Fatal(format!("pull {pull_id} does not exist")))
}

/// A store failure inside a job: the database may be back on the next attempt.
pub(crate) fn store_retry(e: crate::store::StoreError) -> JobError {
    JobError::Retry {
        message: e.to_string(),
        after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(1, b, cap, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(3, b, cap, 0.999_999).as_millis(), 3999);
        assert_eq!(backoff(40, b, cap, 0.999_999).as_secs(), 59);
        assert_eq!(backoff(40, b, cap, 0.0), Duration::from_secs(6));
        assert_eq!(backoff(1, b, cap, 0.0), Duration::from_millis(100));
    }

    #[test]
    fn backoff_is_safe_for_odd_attempts() {
        let b = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(0, b, cap, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(-5, b, cap, 0.0), Duration::from_millis(100));
        assert!(backoff(i32::MAX, b, cap, 1.0) <= cap);
    }

    #[test]
    fn retry_after_wins_over_backoff() {
        assert_eq!(
            retry_delay(5, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert!(retry_delay(1, None) <= Duration::from_secs(1));
    }
}
