//! `GET /api/v1/consents` and `GET /api/v1/consents/{consent_id}`.

use axum::extract::State;
use serde::Deserialize;

use super::error::{ApiError, Json, Query};
use super::ids::ConsentId;
use super::page::{Page, PageRequest, parse_filter};
use crate::domain::consent::{Consent, ConsentStatus};
use crate::domain::fair_use::budget;
use crate::domain::input::parse_api_instant;
use crate::domain::input::{invalid, parse_api_date, validate_link_id};
use crate::domain::ist;
use crate::domain::schedule::{respaced_next, resumed_next};
use crate::domain::session::MAX_LOOKBACK_MONTHS;
use crate::state::AppState;
use crate::store::ConsentFilter;

pub use crate::domain::consent::ConsentView;

/// The consent as the API shows it, with its usage counted now.
pub async fn consent_view(state: &AppState, consent: Consent) -> Result<ConsentView, ApiError> {
    let now = state.clock.now();
    let used = state
        .store
        .attempts_since(&consent.consent_id, &budget(&consent.limits(), now))
        .await?;
    Ok(ConsentView::new(consent, &used, now))
}

/// Many consents as the API shows them, their usage counted in one query.
pub async fn consent_views<P>(
    state: &AppState,
    consents: Vec<(P, Consent)>,
) -> Result<Vec<(P, ConsentView)>, ApiError> {
    let now = state.clock.now();
    let budgets: Vec<(&str, Vec<_>)> = consents
        .iter()
        .map(|(_, c)| (c.consent_id.as_str(), budget(&c.limits(), now)))
        .collect();
    let used = state.store.attempts_since_many(&budgets).await?;
    Ok(consents
        .into_iter()
        .zip(used)
        .map(|((p, c), used)| (p, ConsentView::new(c, &used, now)))
        .collect())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    link_id: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
    updated_after: Option<String>,
}

#[utoipa::path(
    get, path = "/consents", tag = "consents", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, description = "Consents, oldest first", body = Page<ConsentView>),
        (status = 422, description = "INVALID_STATUS, INVALID_LINK_ID, INVALID_LIMIT, INVALID_INSTANT", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Page<ConsentView>>, ApiError> {
    let status = parse_filter(
        "INVALID_STATUS",
        "status",
        q.status.as_deref(),
        ConsentStatus::ALL,
    )?;
    if let Some(link_id) = &q.link_id {
        validate_link_id(link_id)?;
    }
    let page = PageRequest::<i64>::new("consent", q.limit, q.cursor.as_deref())?;
    let filter = ConsentFilter {
        link_id: q.link_id,
        status,
        updated_after: q
            .updated_after
            .as_deref()
            .map(|v| parse_api_instant("updated_after", v))
            .transpose()?,
        after_seq: page.after,
        limit: page.fetch_limit(),
    };
    let rows = state.store.list_consents(&filter).await?;
    let views = consent_views(&state, rows).await?;
    Ok(axum::Json(page.page(views, |v| v)))
}

#[utoipa::path(
    get, path = "/consents/{consent_id}", tag = "consents", security(("bearer" = [])),
    params(("consent_id" = String, Path)),
    responses(
        (status = 200, description = "The consent with its schedule and usage", body = ConsentView),
        (status = 404, description = "CONSENT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ConsentId(consent_id): ConsentId,
) -> Result<axum::Json<ConsentView>, ApiError> {
    let consent = state
        .store
        .get_consent(&consent_id)
        .await?
        .ok_or_else(consent_not_found)?;
    Ok(axum::Json(consent_view(&state, consent).await?))
}

fn consent_not_found() -> ApiError {
    ConsentId::not_found()
}

fn wrong_state(consent: &Consent, action: &str) -> ApiError {
    ApiError::Conflict {
        code: "CONSENT_NOT_ACTIVE",
        message: format!("a {} consent cannot be {action}", consent.status),
    }
}

/// `POST /api/v1/consents/{id}/pause`: stop the schedule (Sahamati: monitor only while the
/// loan is active). Pausing a paused consent is a no-op.
#[utoipa::path(
    post, path = "/consents/{consent_id}/pause", tag = "consents", security(("bearer" = [])),
    params(("consent_id" = String, Path)),
    responses(
        (status = 200, description = "Paused (pausing a paused consent changes nothing)", body = ConsentView),
        (status = 404, description = "CONSENT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "CONSENT_NOT_ACTIVE", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn pause(
    State(state): State<AppState>,
    ConsentId(consent_id): ConsentId,
) -> Result<axum::Json<ConsentView>, ApiError> {
    let now = state.clock.now();
    let consent = state
        .store
        .pause_consent(&consent_id, now)
        .await?
        .ok_or_else(consent_not_found)?;
    if consent.status != ConsentStatus::Paused {
        return Err(wrong_state(&consent, "paused"));
    }
    Ok(axum::Json(consent_view(&state, consent).await?))
}

/// `POST /api/v1/consents/{id}/resume`: restart the schedule. Missed slots are not made up
/// in a burst: the next pull comes at its old time, or now if that has passed, and covers
/// the data since the last pull.
#[utoipa::path(
    post, path = "/consents/{consent_id}/resume", tag = "consents", security(("bearer" = [])),
    params(("consent_id" = String, Path)),
    responses(
        (status = 200, description = "Active again; one pull covers the time missed", body = ConsentView),
        (status = 404, description = "CONSENT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "CONSENT_NOT_ACTIVE, CONSENT_EXPIRED", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    ConsentId(consent_id): ConsentId,
) -> Result<axum::Json<ConsentView>, ApiError> {
    let now = state.clock.now();
    let current = state
        .store
        .get_consent(&consent_id)
        .await?
        .ok_or_else(consent_not_found)?;
    if current.expires_at <= now {
        return Err(ApiError::Conflict {
            code: "CONSENT_EXPIRED",
            message: format!("the consent expired at {}", current.expires_at),
        });
    }
    let next = resumed_next(current.next_pull_at, now);
    let consent = state
        .store
        .resume_consent(&consent_id, next, now)
        .await?
        .ok_or_else(consent_not_found)?;
    if consent.status != ConsentStatus::Active {
        return Err(wrong_state(&consent, "resumed"));
    }
    Ok(axum::Json(consent_view(&state, consent).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentPatch {
    /// Seconds, or a duration such as `"36h"` or `"7days"`; `null` goes back to the default.
    pull_interval: Option<serde_json::Value>,
}

/// The longest spacing we accept: a year, the longest calendar unit.
const MAX_PULL_INTERVAL_SECS: i64 = 366 * 86_400;

/// `PATCH /api/v1/consents/{id}` `{pull_interval}`: make this consent's pulls less frequent.
/// Nothing can make them more frequent than the consent and Sahamati allow.
#[utoipa::path(
    patch, path = "/consents/{consent_id}", tag = "consents", security(("bearer" = [])),
    params(("consent_id" = String, Path)), request_body = ConsentPatch,
    responses(
        (status = 200, description = "The consent with its new spacing", body = ConsentView),
        (status = 404, description = "CONSENT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "INVALID_BODY, INVALID_PULL_INTERVAL, PULL_INTERVAL_TOO_SHORT", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn patch(
    State(state): State<AppState>,
    ConsentId(consent_id): ConsentId,
    Json(body): Json<ConsentPatch>,
) -> Result<axum::Json<ConsentView>, ApiError> {
    let secs = match body.pull_interval {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => {
            Some(n.as_i64().filter(|s| *s > 0).ok_or_else(|| {
                invalid(
                    "INVALID_PULL_INTERVAL",
                    "pull_interval must be a positive number of seconds",
                )
            })?)
        }
        Some(serde_json::Value::String(s)) => Some(
            humantime::parse_duration(&s)
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok())
                .ok_or_else(|| {
                    invalid(
                        "INVALID_PULL_INTERVAL",
                        format!(
                            "pull_interval `{}` is not a duration such as \"36h\"",
                            s.escape_debug()
                        ),
                    )
                })?,
        ),
        Some(_) => {
            return Err(invalid(
                "INVALID_PULL_INTERVAL",
                "pull_interval must be seconds, a duration like \"36h\", or null",
            )
            .into());
        }
    };
    let consent = state
        .store
        .get_consent(&consent_id)
        .await?
        .ok_or_else(consent_not_found)?;
    let global_min = state
        .config
        .pull_interval_min
        .and_then(|d| chrono::Duration::from_std(d).ok());
    let floor = Consent {
        pull_interval_secs: None,
        ..consent.clone()
    }
    .interval(global_min);
    if let Some(s) = secs {
        if s < floor.num_seconds() {
            return Err(invalid(
                "PULL_INTERVAL_TOO_SHORT",
                format!(
                    "this consent allows a pull at most every {} seconds; pull_interval may only be longer",
                    floor.num_seconds()
                ),
            )
            .into());
        }
        if s > MAX_PULL_INTERVAL_SECS {
            return Err(invalid(
                "INVALID_PULL_INTERVAL",
                "pull_interval may be at most a year",
            )
            .into());
        }
    }
    // Keep the slot of the last pull and move the next one by the new spacing.
    let now = state.clock.now();
    let old = consent.interval(global_min);
    let new = Consent {
        pull_interval_secs: secs,
        ..consent.clone()
    }
    .interval(global_min);
    let next = respaced_next(consent.next_pull_at, old, new, now);
    let consent = state
        .store
        .set_pull_interval(&consent_id, secs, next, now)
        .await?
        .ok_or_else(consent_not_found)?;
    Ok(axum::Json(consent_view(&state, consent).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /api/v1/consents/{id}/transactions?from=&to=`: one timeline across all the
/// consent's pulls, each transaction once (by the upstream's `hash`), oldest first.
#[utoipa::path(
    get, path = "/consents/{consent_id}/transactions", tag = "consents", security(("bearer" = [])),
    params(("consent_id" = String, Path), TimelineQuery),
    responses(
        (status = 200, description = "The merged timeline, each transaction once, oldest first", body = Page<serde_json::Value>),
        (status = 404, description = "CONSENT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "INVALID_DATE_FORMAT, INVALID_WINDOW, INVALID_LIMIT", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn transactions(
    State(state): State<AppState>,
    ConsentId(consent_id): ConsentId,
    Query(q): Query<TimelineQuery>,
) -> Result<axum::Json<Page<serde_json::Value>>, ApiError> {
    let consent = state
        .store
        .get_consent(&consent_id)
        .await?
        .ok_or_else(consent_not_found)?;
    let today = state.clock.now().with_timezone(&ist()).date_naive();
    let from = match q.from.as_deref() {
        Some(v) => parse_api_date("from", v)?,
        None => {
            consent.approved_at.with_timezone(&ist()).date_naive()
                - chrono::Months::new(MAX_LOOKBACK_MONTHS)
        }
    };
    let to = match q.to.as_deref() {
        Some(v) => parse_api_date("to", v)?,
        None => today,
    };
    if from > to {
        return Err(invalid("INVALID_WINDOW", "from must not be after to").into());
    }
    let page = PageRequest::<(String, i64)>::new("txn", q.limit, q.cursor.as_deref())?;
    let rows = state
        .store
        .timeline(
            &consent_id,
            from,
            to,
            page.after.as_ref(),
            page.fetch_limit(),
        )
        .await?;
    Ok(axum::Json(page.page(rows, |t| {
        let mut body = t.body;
        if let Some(obj) = body.as_object_mut() {
            obj.insert("pull_id".into(), serde_json::Value::String(t.pull_id));
        }
        body
    })))
}
