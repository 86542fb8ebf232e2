//! Pulls: start one for a consent, list and read them, and serve the data they fetched.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::{ApiError, Query, RawBody};
use super::ids::{ConsentId, PullId, plausible_id};
use super::page::{Page, PageRequest, parse_filter};
use crate::domain::input::parse_api_instant;
use crate::state::AppState;

use crate::domain::invalid;
use crate::domain::ist;
use crate::domain::pull::{Pull, PullKind, PullRequest, PullStatus, resolve_window};
use crate::store::{CreatePull, PullFilter};

/// Longest `Idempotency-Key` we keep.
const MAX_IDEMPOTENCY_KEY: usize = 255;

fn not_found() -> ApiError {
    PullId::not_found()
}

/// `POST /api/v1/consents/{consent_id}/pulls`. The body may be empty: every field has a default.
pub async fn create(
    State(state): State<AppState>,
    ConsentId(consent_id): ConsentId,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, axum::Json<Pull>), ApiError> {
    let req: PullRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PullRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::Invalid(invalid("INVALID_BODY", e.to_string()))
            }
            _ => ApiError::bad_request("INVALID_JSON", e.to_string()),
        })?
    };
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.trim().is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => {
                Some(k.trim().to_string())
            }
            _ => {
                return Err(ApiError::bad_request(
                    "INVALID_IDEMPOTENCY_KEY",
                    format!(
                        "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible characters"
                    ),
                ));
            }
        },
    };

    let consent = state
        .store
        .get_consent(&consent_id)
        .await?
        .ok_or_else(ConsentId::not_found)?;
    let now = state.clock.now();
    // The consent's state, not the request, is at fault: 409, as for pause and resume.
    consent.pullable(now).map_err(|e| ApiError::Conflict {
        code: e.code,
        message: e.message,
    })?;
    let kind = match req.kind.as_deref() {
        None => PullKind::default_for(consent.use_case),
        Some(k) => k.parse().map_err(|_| {
            invalid(
                "INVALID_KIND",
                format!(
                    "kind must be one of {}, got `{k}`",
                    PullKind::ALL.join(", ")
                ),
            )
        })?,
    };
    let today = now.with_timezone(&ist()).date_naive();
    let since = crate::pulls::window_since(&state, &consent).await?;
    let (from, to) = resolve_window(
        req.from.as_deref(),
        req.to.as_deref(),
        since,
        consent.use_case,
        today,
    )?;

    if let Some(until) = consent.pull_blocked_until.filter(|u| *u > now) {
        return Err(fair_use_refusal(&state, until, now));
    }
    let request_hash = hex::encode(Sha256::digest(
        serde_json::to_vec(&req).expect("serialises"),
    ));
    let (new, job) = crate::pulls::plan(
        &consent,
        kind,
        (from, to),
        now,
        idempotency_key,
        request_hash,
    );
    match state.store.create_pull(&new, &job).await? {
        CreatePull::Created(pull) => {
            state.jobs_wakeup.notify_one();
            tracing::info!(pull_id = %pull.pull_id, consent_id = %pull.consent_id, kind = %pull.kind, "pull accepted");
            Ok((StatusCode::ACCEPTED, axum::Json(pull)))
        }
        CreatePull::Existing {
            pull,
            same_request: true,
        } => Ok((StatusCode::ACCEPTED, axum::Json(pull))),
        CreatePull::Existing { .. } => Err(invalid(
            "IDEMPOTENCY_KEY_REUSED",
            "this Idempotency-Key was used with a different request body",
        )
        .into()),
        CreatePull::OverBudget => {
            let usage = super::consents::consent_view(&state, consent).await?.usage;
            // Pulls accepted but not yet sent fill the budget too; then the window must turn.
            let next = if usage.next_pull_allowed_at > now {
                usage.next_pull_allowed_at
            } else {
                usage.window_resets_at
            };
            Err(fair_use_refusal(&state, next, now))
        }
    }
}

fn fair_use_refusal(
    state: &AppState,
    next: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> ApiError {
    state.metrics.fair_use_refusals.inc();
    ApiError::FairUseLimit {
        next_pull_allowed_at: next,
        retry_after: (next - now).to_std().unwrap_or_default(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    consent_id: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
    updated_after: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Page<Pull>>, ApiError> {
    let status = parse_filter(
        "INVALID_STATUS",
        "status",
        q.status.as_deref(),
        PullStatus::ALL,
    )?;
    if q.consent_id.as_deref().is_some_and(|c| !plausible_id(c)) {
        return Err(invalid("INVALID_CONSENT_ID", "consent_id is not a consent id").into());
    }
    let page = PageRequest::<i64>::new("pull", q.limit, q.cursor.as_deref())?;
    let filter = PullFilter {
        consent_id: q.consent_id,
        status,
        updated_after: q
            .updated_after
            .as_deref()
            .map(|v| parse_api_instant("updated_after", v))
            .transpose()?,
        after_seq: page.after,
        limit: page.fetch_limit(),
    };
    let rows = state.store.list_pulls(&filter).await?;
    Ok(axum::Json(page.page(rows, |p| p)))
}

pub async fn get(
    State(state): State<AppState>,
    PullId(pull_id): PullId,
) -> Result<axum::Json<Pull>, ApiError> {
    state
        .store
        .get_pull(&pull_id)
        .await?
        .map(axum::Json)
        .ok_or_else(not_found)
}

pub async fn insights(
    state: State<AppState>,
    path: PullId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    data(state, path, headers, PullKind::Insights).await
}

pub async fn transactions(
    state: State<AppState>,
    path: PullId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    data(state, path, headers, PullKind::Transactions).await
}

/// Serves stored data. Clients that accept gzip get the stored bytes as they are, so a
/// several-MB payload costs its compressed size in memory and no CPU.
async fn data(
    State(state): State<AppState>,
    PullId(pull_id): PullId,
    headers: HeaderMap,
    kind: PullKind,
) -> Result<Response, ApiError> {
    let pull = state
        .store
        .get_pull(&pull_id)
        .await?
        .ok_or_else(not_found)?;
    let absent = ApiError::NotFound {
        code: "DATA_NOT_FOUND",
        what: "data",
    };
    if pull.kind != kind {
        return Err(absent);
    }
    if pull.status != PullStatus::Completed {
        return Err(ApiError::Conflict {
            code: "PULL_NOT_COMPLETED",
            message: format!(
                "the pull is {}; data is served once it is completed",
                pull.status
            ),
        });
    }
    if pull.data_purged_at.is_some() {
        return Err(ApiError::NotFound {
            code: "DATA_PURGED",
            what: "data (deleted at the end of its data life)",
        });
    }
    let stored = state.store.pull_data(&pull_id).await?.ok_or(absent)?;
    let accepts_gzip = headers
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    if accepts_gzip && stored.content_encoding == "gzip" {
        return Ok((
            [
                (CONTENT_TYPE, "application/json"),
                (CONTENT_ENCODING, "gzip"),
                (VARY, "accept-encoding"),
            ],
            Body::from(stored.body),
        )
            .into_response());
    }
    // Decompressed as it is sent, so the uncompressed payload is never whole in memory.
    let reader = tokio::io::BufReader::new(std::io::Cursor::new(stored.body));
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(
        async_compression::tokio::bufread::GzipDecoder::new(reader),
    ));
    Ok((
        [
            (CONTENT_TYPE, "application/json"),
            (VARY, "accept-encoding"),
        ],
        body,
    )
        .into_response())
}
