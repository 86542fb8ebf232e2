//! The job handlers: one file per kind of [`Task`], and the worker pool that runs them. The
//! queue's vocabulary (tasks, keys, backoff) is in `queue`; the rows are in the store.

pub mod capture_consents;
pub mod deliver;
pub mod fetch_data;
pub mod poll;
pub mod process_webhook;
pub mod submit_pull;
pub mod worker;

use std::time::Duration;

use crate::queue::{JOB_FAILED, Job, Task};

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

/// What a pull job does with an upstream error on the pull's own session: a transient one is
/// retried, a permanent one ends the pull as `failed` with the upstream's code, and a
/// configuration one also leaves the job dead so that operators see it.
pub(crate) async fn pull_step_failed(
    state: &crate::state::AppState,
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

/// Gives the work of a dead job a visible end (docs/architecture.md, "Every pull ends"). A
/// pull is failed by the store in the transaction that records its job dead; a capture fails
/// its session here, with `JOB_FAILED` and the job's last error. A webhook's processing needs
/// nothing more: its pull still ends by polling or by the deadline, and the dead job stays for
/// operators.
pub(crate) async fn on_dead(
    state: &crate::state::AppState,
    job: &Job,
    error: &str,
) -> Result<(), crate::store::StoreError> {
    if let Ok(Task::CaptureConsents { session_id }) = &job.task
        && state
            .store
            .fail_capture(session_id, JOB_FAILED, error, state.clock.now())
            .await?
    {
        tracing::warn!(%session_id, %error, "consent capture failed: its job died");
    }
    Ok(())
}

/// The pull a job is about. A pull that does not exist is a bug: the job is dead at once.
pub(crate) async fn load_pull(
    state: &crate::state::AppState,
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
