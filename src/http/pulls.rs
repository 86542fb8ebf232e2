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
#[utoipa::path(
    post, path = "/consents/{consent_id}/pulls", tag = "pulls", security(("bearer" = [])),
    params(
        ("consent_id" = String, Path),
        ("idempotency-key" = Option<String>, Header, description = "The same key with the same body answers the same pull"),
    ),
    request_body(content = Option<PullRequest>, description = "Optional: the window defaults to since the last pull, up to today"),
    responses(
        (status = 202, description = "Accepted: the pull is queued", body = Pull),
        (status = 404, description = "CONSENT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "CONSENT_NOT_ACTIVE, CONSENT_EXPIRED, or FAIR_USE_LIMIT (with `Retry-After` and `error.next_pull_allowed_at`)", body = crate::http::openapi::ErrorBody, headers(("retry-after" = u64, description = "seconds, with FAIR_USE_LIMIT"))),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "INVALID_BODY, INVALID_DATE_FORMAT, INVALID_WINDOW, WINDOW_TOO_LONG, INVALID_KIND, IDEMPOTENCY_KEY_REUSED", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
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

    let (consent, last_completed_to) = state
        .store
        .consent_for_pull(&consent_id)
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
    let since = crate::pulls::window_since(&state, &consent, last_completed_to).await?;
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    consent_id: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
    updated_after: Option<String>,
}

#[utoipa::path(
    get, path = "/pulls", tag = "pulls", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, description = "Pulls, oldest first", body = Page<Pull>),
        (status = 422, description = "INVALID_STATUS, INVALID_CONSENT_ID, INVALID_LIMIT, INVALID_INSTANT", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
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
        newest_first: false,
    };
    let rows = state.store.list_pulls(&filter).await?;
    Ok(axum::Json(page.page(rows, |p| p)))
}

#[utoipa::path(
    get, path = "/pulls/{pull_id}", tag = "pulls", security(("bearer" = [])),
    params(("pull_id" = String, Path)),
    responses(
        (status = 200, description = "The pull with its progress", body = Pull),
        (status = 404, description = "PULL_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
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

#[utoipa::path(
    get, path = "/pulls/{pull_id}/insights", tag = "pulls", security(("bearer" = [])),
    params(("pull_id" = String, Path)),
    responses(
        (status = 200, description = "The Insights JSON as BankConnect sent it (gzip as stored with `Accept-Encoding: gzip`)", body = Object),
        (status = 404, description = "PULL_NOT_FOUND, DATA_NOT_FOUND, DATA_PURGED", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "PULL_NOT_COMPLETED", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn insights(
    state: State<AppState>,
    path: PullId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    data(state, path, headers, PullKind::Insights).await
}

#[utoipa::path(
    get, path = "/pulls/{pull_id}/transactions", tag = "pulls", security(("bearer" = [])),
    params(("pull_id" = String, Path)),
    responses(
        (status = 200, description = "The Transactions JSON as BankConnect sent it (gzip as stored with `Accept-Encoding: gzip`)", body = Object),
        (status = 404, description = "PULL_NOT_FOUND, DATA_NOT_FOUND, DATA_PURGED", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "PULL_NOT_COMPLETED", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
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
