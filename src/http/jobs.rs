//! `GET /api/v1/jobs`, `GET /api/v1/jobs/{job_id}` and `POST /api/v1/jobs/{job_id}/retry`:
//! the durable queue as operators see it (docs/architecture.md, "Operating it").

use axum::extract::State;
use serde::Deserialize;

use super::error::{ApiError, Query};
use super::ids::{JobId, JobPath};
use super::page::{Page, PageRequest, parse_filter};
use crate::domain::invalid;
use crate::queue::{JOB_KINDS, JobRecord, JobState, RetryOutcome};
use crate::state::AppState;
use crate::store::JobFilter;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    kind: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/jobs", tag = "jobs", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, description = "Jobs, oldest first", body = Page<JobRecord>),
        (status = 422, description = "INVALID_STATE, INVALID_KIND, INVALID_LIMIT", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Page<JobRecord>>, ApiError> {
    let job_state = parse_filter("INVALID_STATE", "state", q.state.as_deref(), JobState::ALL)?;
    if let Some(kind) = &q.kind
        && !JOB_KINDS.contains(&kind.as_str())
    {
        return Err(invalid(
            "INVALID_KIND",
            format!("kind must be one of {}, got `{kind}`", JOB_KINDS.join(", ")),
        )
        .into());
    }
    let page = PageRequest::<i64>::new("job", q.limit, q.cursor.as_deref())?;
    let filter = JobFilter {
        state: job_state,
        kind: q.kind,
        after_id: page.after,
        limit: page.fetch_limit(),
        ..Default::default()
    };
    let rows = state.store.list_jobs(&filter).await?;
    Ok(axum::Json(page.page(
        rows.into_iter().map(|j| (j.job_id, j)).collect(),
        |j| j,
    )))
}

#[utoipa::path(
    get, path = "/jobs/{job_id}", tag = "jobs", security(("bearer" = [])),
    params(("job_id" = i64, Path)),
    responses(
        (status = 200, description = "The job", body = JobRecord),
        (status = 404, description = "JOB_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    JobId(job_id): JobId,
) -> Result<axum::Json<JobRecord>, ApiError> {
    state
        .store
        .get_job(job_id)
        .await?
        .map(axum::Json)
        .ok_or_else(JobPath::not_found)
}

/// Runs a dead or waiting job now. A dead job's attempts start afresh; a job whose pull has
/// ended is refused, since a new pull covers the window again.
#[utoipa::path(
    post, path = "/jobs/{job_id}/retry", tag = "jobs", security(("bearer" = [])),
    params(("job_id" = i64, Path)),
    responses(
        (status = 200, description = "Queued to run now", body = JobRecord),
        (status = 404, description = "JOB_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "JOB_NOT_RETRYABLE, PULL_ENDED, JOB_ALREADY_LIVE", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn retry(
    State(state): State<AppState>,
    JobId(job_id): JobId,
) -> Result<axum::Json<JobRecord>, ApiError> {
    match state.store.retry_job(job_id, state.clock.now()).await? {
        RetryOutcome::Retried(job) => {
            tracing::info!(job_id, kind = %job.kind, "job retried by an operator");
            state.jobs_wakeup.notify_one();
            Ok(axum::Json(job))
        }
        RetryOutcome::NotFound => Err(JobPath::not_found()),
        RetryOutcome::NotRetryable(job) => Err(ApiError::Conflict {
            code: "JOB_NOT_RETRYABLE",
            message: format!(
                "job {job_id} is {}: only a dead or queued job can be retried",
                job.state
            ),
        }),
        RetryOutcome::PullEnded { job, pull_status } => Err(ApiError::Conflict {
            code: "PULL_ENDED",
            message: format!(
                "job {job_id}'s pull {} has ended ({pull_status}); start a new pull, which covers its window again",
                job.pull_id.unwrap_or_default()
            ),
        }),
        RetryOutcome::Duplicate(job) => Err(ApiError::Conflict {
            code: "JOB_ALREADY_LIVE",
            message: format!(
                "another live {} job already does job {job_id}'s work",
                job.kind
            ),
        }),
    }
}
