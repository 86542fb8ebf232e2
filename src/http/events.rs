//! The event feed: `GET /api/v1/events`, oldest first, resumable from any event id. The
//! pull-based way to hear about state changes, and the way to catch up after an outage.

use axum::extract::State;
use serde::Deserialize;

use super::error::{ApiError, Query};
use super::ids::{EventId, plausible_id};
use super::page::Page;
use crate::domain::event::{Event, EventType};
use crate::domain::invalid;
use crate::state::AppState;
use crate::store::EventFilter;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// An event id: the page starts after it. `next_cursor` is the id to pass next.
    after: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    consent_id: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/events", tag = "events", security(("bearer" = [])), params(FeedQuery),
    responses(
        (status = 200, description = "Events, oldest first; pass `next_cursor` back as `after`", body = Page<Event>),
        (status = 422, description = "INVALID_EVENT_TYPE, INVALID_CONSENT_ID, INVALID_LIMIT", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<FeedQuery>,
) -> Result<axum::Json<Page<Event>>, ApiError> {
    let event_type = super::page::parse_filter(
        "INVALID_TYPE",
        "type",
        q.event_type.as_deref(),
        EventType::ALL,
    )?;
    if q.consent_id.as_deref().is_some_and(|c| !plausible_id(c)) {
        return Err(invalid("INVALID_CONSENT_ID", "consent_id is not a consent id").into());
    }
    let limit = super::page::page_limit(q.limit)?;
    let after_seq = match q.after.as_deref() {
        None => None,
        Some(id) => {
            let found = if plausible_id(id) {
                state.store.get_event(id).await?
            } else {
                None
            };
            Some(
                found
                    .ok_or_else(|| invalid("INVALID_AFTER", "after is not an event id"))?
                    .0,
            )
        }
    };
    let mut rows = state
        .store
        .list_events(&EventFilter {
            event_type,
            consent_id: q.consent_id,
            after_seq,
            limit: limit + 1,
            newest_first: false,
        })
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let items: Vec<Event> = rows.into_iter().map(|(_, e)| e).collect();
    let next_cursor = more.then(|| items.last().map(|e| e.id.clone())).flatten();
    Ok(axum::Json(Page { items, next_cursor }))
}

#[utoipa::path(
    get, path = "/events/{event_id}", tag = "events", security(("bearer" = [])),
    params(("event_id" = String, Path)),
    responses(
        (status = 200, description = "The event", body = Event),
        (status = 404, description = "EVENT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    EventId(event_id): EventId,
) -> Result<axum::Json<Event>, ApiError> {
    state
        .store
        .get_event(&event_id)
        .await?
        .map(|(_, e)| axum::Json(e))
        .ok_or_else(EventId::not_found)
}

/// `GET /api/v1/events/{event_id}/deliveries`: every attempt to deliver the event, oldest first.
#[utoipa::path(
    get, path = "/events/{event_id}/deliveries", tag = "events", security(("bearer" = [])),
    params(("event_id" = String, Path)),
    responses(
        (status = 200, description = "Every attempt to deliver the event, oldest first", body = Attempts),
        (status = 404, description = "EVENT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn deliveries(
    State(state): State<AppState>,
    EventId(event_id): EventId,
) -> Result<axum::Json<Attempts>, ApiError> {
    if state.store.get_event(&event_id).await?.is_none() {
        return Err(EventId::not_found());
    }
    let items = state.store.delivery_attempts(&event_id).await?;
    Ok(axum::Json(Attempts { items }))
}

/// The attempts to deliver one event.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Attempts {
    pub items: Vec<crate::store::DeliveryAttempt>,
}

/// How many deliveries a redeliver queued.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Redelivered {
    pub deliveries: u64,
}

/// `POST /api/v1/events/{event_id}/redeliver`: send the event again to every enabled endpoint
/// that wants it (202).
#[utoipa::path(
    post, path = "/events/{event_id}/redeliver", tag = "events", security(("bearer" = [])),
    params(("event_id" = String, Path)),
    responses(
        (status = 202, description = "Queued again for every enabled endpoint that wants it", body = Redelivered),
        (status = 404, description = "EVENT_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn redeliver(
    State(state): State<AppState>,
    EventId(event_id): EventId,
) -> Result<(axum::http::StatusCode, axum::Json<Redelivered>), ApiError> {
    let (seq, event) = state
        .store
        .get_event(&event_id)
        .await?
        .ok_or_else(EventId::not_found)?;
    let n = state
        .store
        .redeliver(&event, seq, state.clock.now())
        .await?;
    state.jobs_wakeup.notify_one();
    Ok((
        axum::http::StatusCode::ACCEPTED,
        axum::Json(Redelivered { deliveries: n }),
    ))
}
