//! The lender's webhook endpoints: `POST/GET /api/v1/webhook-endpoints`,
//! `GET/PATCH/DELETE …/{endpoint_id}`, `POST …/{endpoint_id}/enable` and `…/rotate-secret`.
//! The secret is shown on creation and rotation only.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, Json, Query};
use super::ids::EndpointId;
use super::page::{Page, PageRequest};
use crate::domain::event::EventType;
use crate::domain::invalid;
use crate::domain::notify::{Endpoint, EndpointStatus, OLD_SECRET_OVERLAP, new_secret};
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    description: Option<String>,
}

/// An endpoint with its secret: the answer to creation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    endpoint: Endpoint,
    secret: String,
}

/// The URL must be absolute `https://` (or `http://` in development, or with
/// `NOTIFY_ALLOW_HTTP=true`, for internal receivers).
fn checked_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| invalid("INVALID_URL", format!("url is not a valid URL ({e})")))?;
    match parsed.scheme() {
        "https" => Ok(parsed.to_string()),
        "http" if state.config.notify_allow_http => Ok(parsed.to_string()),
        "http" => Err(invalid(
            "INVALID_URL",
            "url must be https:// (set NOTIFY_ALLOW_HTTP=true to allow http:// receivers)",
        )
        .into()),
        _ => Err(invalid("INVALID_URL", "url must be http:// or https://").into()),
    }
}

fn checked_types(types: Option<Vec<String>>) -> Result<Option<Vec<EventType>>, ApiError> {
    types
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    t.parse::<EventType>().map_err(|_| {
                        ApiError::from(invalid(
                            "INVALID_EVENT_TYPE",
                            format!(
                                "event_types: `{}` is not one of {}",
                                t.escape_debug(),
                                EventType::ALL.join(", ")
                            ),
                        ))
                    })
                })
                .collect()
        })
        .transpose()
}

fn checked_description(d: Option<String>) -> Result<Option<String>, ApiError> {
    match d {
        Some(d) if d.chars().count() > 500 || d.chars().any(char::is_control) => Err(invalid(
            "INVALID_DESCRIPTION",
            "description must be at most 500 characters, none of them control characters",
        )
        .into()),
        d => Ok(d),
    }
}

#[utoipa::path(
    post, path = "/webhook-endpoints", tag = "webhook endpoints", security(("bearer" = [])),
    request_body = EndpointRequest,
    responses(
        (status = 201, description = "Created; the `secret` is shown here and on rotation only", body = CreatedEndpoint),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "INVALID_BODY, INVALID_URL, INVALID_EVENT_TYPE, INVALID_DESCRIPTION", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Json(req): Json<EndpointRequest>,
) -> Result<(StatusCode, axum::Json<CreatedEndpoint>), ApiError> {
    let url = req
        .url
        .ok_or_else(|| invalid("INVALID_URL", "url is required"))?;
    let now = state.clock.now();
    let endpoint = Endpoint {
        endpoint_id: format!("ep_{}", uuid::Uuid::new_v4().simple()),
        url: checked_url(&state, &url)?,
        description: checked_description(req.description)?,
        event_types: checked_types(req.event_types)?,
        status: EndpointStatus::Enabled,
        disabled_reason: None,
        created_at: now,
        updated_at: now,
        secret: new_secret(),
        old_secret: None,
        old_secret_until: None,
        failing_since: None,
    };
    state.store.create_endpoint(&endpoint).await?;
    let secret = endpoint.secret.clone();
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedEndpoint { endpoint, secret }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/webhook-endpoints", tag = "webhook endpoints", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, description = "Your endpoints, oldest first", body = Page<Endpoint>),
        (status = 422, description = "INVALID_LIMIT", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Page<Endpoint>>, ApiError> {
    let page = PageRequest::<i64>::new("endpoint", q.limit, q.cursor.as_deref())?;
    let rows = state
        .store
        .list_endpoints(page.after.unwrap_or(0), page.fetch_limit())
        .await?;
    Ok(axum::Json(page.page(rows, |e| e)))
}

async fn load(state: &AppState, id: &str) -> Result<Endpoint, ApiError> {
    state
        .store
        .get_endpoint(id)
        .await?
        .ok_or_else(EndpointId::not_found)
}

#[utoipa::path(
    get, path = "/webhook-endpoints/{endpoint_id}", tag = "webhook endpoints", security(("bearer" = [])),
    params(("endpoint_id" = String, Path)),
    responses(
        (status = 200, description = "The endpoint", body = Endpoint),
        (status = 404, description = "ENDPOINT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    EndpointId(id): EndpointId,
) -> Result<axum::Json<Endpoint>, ApiError> {
    Ok(axum::Json(load(&state, &id).await?))
}

#[utoipa::path(
    patch, path = "/webhook-endpoints/{endpoint_id}", tag = "webhook endpoints", security(("bearer" = [])),
    params(("endpoint_id" = String, Path)), request_body = EndpointRequest,
    responses(
        (status = 200, description = "The endpoint as changed", body = Endpoint),
        (status = 404, description = "ENDPOINT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "INVALID_BODY, INVALID_URL, INVALID_EVENT_TYPE, INVALID_DESCRIPTION", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn patch(
    State(state): State<AppState>,
    EndpointId(id): EndpointId,
    Json(req): Json<EndpointRequest>,
) -> Result<axum::Json<Endpoint>, ApiError> {
    let mut endpoint = load(&state, &id).await?;
    if let Some(url) = req.url {
        endpoint.url = checked_url(&state, &url)?;
    }
    if req.event_types.is_some() {
        endpoint.event_types = checked_types(req.event_types)?;
    }
    if req.description.is_some() {
        endpoint.description = checked_description(req.description)?;
    }
    state
        .store
        .update_endpoint(&endpoint, state.clock.now())
        .await?;
    Ok(axum::Json(load(&state, &id).await?))
}

#[utoipa::path(
    delete, path = "/webhook-endpoints/{endpoint_id}", tag = "webhook endpoints", security(("bearer" = [])),
    params(("endpoint_id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "ENDPOINT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    EndpointId(id): EndpointId,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_endpoint(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(EndpointId::not_found())
    }
}

/// `POST …/enable`: an endpoint disabled (by a 410, or by failing for 5 days) receives again.
#[utoipa::path(
    post, path = "/webhook-endpoints/{endpoint_id}/enable", tag = "webhook endpoints", security(("bearer" = [])),
    params(("endpoint_id" = String, Path)),
    responses(
        (status = 200, description = "Enabled again", body = Endpoint),
        (status = 404, description = "ENDPOINT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn enable(
    State(state): State<AppState>,
    EndpointId(id): EndpointId,
) -> Result<axum::Json<Endpoint>, ApiError> {
    if !state
        .store
        .set_endpoint_status(&id, EndpointStatus::Enabled, None, state.clock.now())
        .await?
    {
        return Err(EndpointId::not_found());
    }
    Ok(axum::Json(load(&state, &id).await?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewSecret {
    secret: String,
}

/// `POST …/rotate-secret`: a new secret; the old one still signs, beside it, for 24 hours.
#[utoipa::path(
    post, path = "/webhook-endpoints/{endpoint_id}/rotate-secret", tag = "webhook endpoints", security(("bearer" = [])),
    params(("endpoint_id" = String, Path)),
    responses(
        (status = 200, description = "The new secret; the old one still signs, beside it, for 24 hours", body = NewSecret),
        (status = 404, description = "ENDPOINT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    EndpointId(id): EndpointId,
) -> Result<axum::Json<NewSecret>, ApiError> {
    let now = state.clock.now();
    let secret = new_secret();
    if !state
        .store
        .rotate_secret(&id, &secret, now + OLD_SECRET_OVERLAP, now)
        .await?
    {
        return Err(EndpointId::not_found());
    }
    Ok(axum::Json(NewSecret { secret }))
}
