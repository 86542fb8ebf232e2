//! `/console/webhooks` (what BankConnect sent us) and `/console/notifications` (what we sent
//! the lender's endpoints, with Redeliver).

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::consents::segment;
use super::layout::{self, Section, badge, button, flash, pager, query, when};
use super::session::SignedIn;
use super::{Console, ConsoleError, ListQuery, PAGE};
use crate::http::ids::EventId;

#[derive(Debug, Default, Deserialize)]
pub(super) struct WebhooksQuery {
    /// `duplicate` or `rejected`; empty for both.
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    stored_before: Option<i64>,
    #[serde(default)]
    other_before: Option<i64>,
}

const OUTCOMES: [&str; 2] = ["duplicate", "rejected"];

/// `GET /console/webhooks`: deliveries stored (newest first) and those that were not
/// (duplicates, and rejections by reason), each list paged on its own. A rejected
/// delivery's body was never kept, so it cannot be shown.
pub(super) async fn webhooks(
    State(console): State<Console>,
    Extension(operator): Extension<SignedIn>,
    Query(q): Query<WebhooksQuery>,
) -> Result<Markup, ConsoleError> {
    let outcome = q.outcome.clone().filter(|o| !o.is_empty());
    if outcome.as_deref().is_some_and(|o| !OUTCOMES.contains(&o)) {
        return Err(ConsoleError::NotFound("kind of delivery"));
    }
    let store = &console.app.store;
    let mut stored = store.list_inbox(q.stored_before, PAGE + 1).await?;
    let mut other = store
        .list_webhook_receipts(outcome.as_deref(), q.other_before, PAGE + 1)
        .await?;
    let keep = |name: &str, v: Option<i64>| (name.to_string(), v.map(|v| v.to_string()));
    let link = |pairs: [(String, Option<String>); 2]| {
        let mut all = vec![("outcome", outcome.clone())];
        all.extend(pairs.iter().map(|(k, v)| (k.as_str(), v.clone())));
        format!("/console/webhooks{}", query(&all))
    };
    let next_stored = (stored.len() > PAGE as usize).then(|| {
        stored.truncate(PAGE as usize);
        link([
            keep("stored_before", stored.last().map(|w| w.id)),
            keep("other_before", q.other_before),
        ])
    });
    let next_other = (other.len() > PAGE as usize).then(|| {
        other.truncate(PAGE as usize);
        link([
            keep("stored_before", q.stored_before),
            keep("other_before", other.last().map(|r| r.id)),
        ])
    });
    Ok(layout::page(
        "Webhooks",
        Section::Webhooks,
        &operator,
        None,
        html! {
            h1 { "Webhooks from BankConnect" }
            h2 id="stored" { "Accepted and stored" }
            @if stored.is_empty() {
                p.muted { "None received yet." }
            } @else {
                div.table-wrap { table aria-labelledby="stored" {
                    thead { tr {
                        th scope="col" { "Received" }
                        th scope="col" { "Event" }
                        th scope="col" { "Upstream session" }
                        th scope="col" class="hide-narrow" { "Size" }
                    } }
                    tbody {
                        @for w in &stored {
                            tr {
                                td { (when(w.received_at)) }
                                td { (badge("accepted")) " " (w.event_name.as_deref().unwrap_or("—")) }
                                td.mono { (w.upstream_session_id.as_deref().unwrap_or("—")) }
                                td class="hide-narrow" { (w.body_bytes) " B" }
                            }
                        }
                    }
                } }
            }
            (pager(next_stored))
            h2 id="other" { "Duplicates and rejections" }
            p.hint { "Recorded up to 20 a second per instance; "
                code { "webhooks_total" } " and " code { "webhook_rejections_total" } " count every one. A rejected body is never kept." }
            form.filters method="get" action="/console/webhooks" {
                div {
                    label for="outcome" { "Outcome" }
                    select id="outcome" name="outcome" {
                        option value="" selected[outcome.is_none()] { "any" }
                        @for o in OUTCOMES { option value=(o) selected[outcome.as_deref() == Some(o)] { (o) } }
                    }
                }
                button type="submit" { "Filter" }
            }
            @if other.is_empty() {
                p.muted { "None." }
            } @else {
                div.table-wrap { table aria-labelledby="other" {
                    thead { tr {
                        th scope="col" { "Received" }
                        th scope="col" { "Outcome" }
                        th scope="col" { "Reason" }
                        th scope="col" class="hide-narrow" { "Size" }
                        th scope="col" class="hide-narrow" { "Request id" }
                    } }
                    tbody {
                        @for r in &other {
                            tr {
                                td { (when(r.received_at)) }
                                td { (badge(&r.outcome)) }
                                td.mono { (r.reason.as_deref().or(r.dedupe_key.as_deref()).unwrap_or("")) }
                                td class="hide-narrow" { (r.body_bytes) " B" }
                                td.mono class="hide-narrow" { (r.request_id.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                } }
            }
            (pager(next_other))
        },
    ))
}

const DELIVERY_STATUSES: [&str; 3] = ["pending", "delivered", "failed"];

/// `GET /console/notifications`: the lender's endpoints and the deliveries to them.
pub(super) async fn notifications(
    State(console): State<Console>,
    Extension(operator): Extension<SignedIn>,
    Query(q): Query<ListQuery>,
) -> Result<Markup, ConsoleError> {
    let status = q.status().map(str::to_string);
    if status
        .as_deref()
        .is_some_and(|s| !DELIVERY_STATUSES.contains(&s))
    {
        return Err(ConsoleError::NotFound("delivery status"));
    }
    let store = &console.app.store;
    let endpoints = store.list_endpoints(0, 200).await?;
    let mut deliveries = store
        .list_deliveries(status.as_deref(), q.before, PAGE + 1)
        .await?;
    let next = (deliveries.len() > PAGE as usize).then(|| {
        deliveries.truncate(PAGE as usize);
        format!(
            "/console/notifications{}",
            query(&[
                ("status", status.clone()),
                ("before", deliveries.last().map(|d| d.seq.to_string())),
            ])
        )
    });
    Ok(layout::page(
        "Notifications",
        Section::Notifications,
        &operator,
        None,
        html! {
            h1 { "Notifications to the lender" }
            (flash(q.done.as_deref()))
            h2 id="endpoints" { "Endpoints" }
            @if endpoints.is_empty() {
                p.muted { "No endpoints exist. Create one with " code { "POST /api/v1/webhook-endpoints" } "." }
            } @else {
                div.table-wrap { table aria-labelledby="endpoints" {
                    thead { tr {
                        th scope="col" { "Endpoint" }
                        th scope="col" { "URL" }
                        th scope="col" { "Status" }
                        th scope="col" class="hide-narrow" { "Events" }
                    } }
                    tbody {
                        @for (_, e) in &endpoints {
                            tr {
                                td.mono { (e.endpoint_id) }
                                td.mono { (e.url) }
                                td { (badge(e.status.as_str()))
                                    @if let Some(r) = &e.disabled_reason { br; span.hint { (r) } } }
                                td class="hide-narrow" {
                                    @match &e.event_types {
                                        None => "every type",
                                        Some(types) => (types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")),
                                    }
                                }
                            }
                        }
                    }
                } }
            }
            h2 id="deliveries" { "Deliveries" }
            form.filters method="get" action="/console/notifications" {
                div { (layout::status_filter("Status", &DELIVERY_STATUSES, status.as_deref())) }
                button type="submit" { "Filter" }
            }
            @if deliveries.is_empty() {
                p.muted { "No deliveries." }
            } @else {
                div.table-wrap { table aria-labelledby="deliveries" {
                    caption.muted { "Newest first" }
                    thead { tr {
                        th scope="col" { "Event" }
                        th scope="col" { "Endpoint" }
                        th scope="col" { "Status" }
                        th scope="col" { "Attempts" }
                        th scope="col" { "Last error" }
                        th scope="col" class="hide-narrow" { "Updated" }
                        th scope="col" { span.visually-hidden { "Action" } }
                    } }
                    tbody {
                        @for d in &deliveries {
                            tr {
                                td { (d.event_type) br; span.mono { (d.event_id) } }
                                td.mono { (d.endpoint_id) }
                                td { (badge(&d.status)) }
                                td { (d.attempts) }
                                td.error { (d.last_error.as_deref().unwrap_or("")) }
                                td class="hide-narrow" { (when(d.updated_at)) }
                                td { (button(&operator, &format!("/console/events/{}/redeliver", segment(&d.event_id)), "Redeliver", "secondary")) }
                            }
                        }
                    }
                } }
            }
            (pager(next))
        },
    ))
}

/// `POST /console/events/{event_id}/redeliver`: the API's redeliver.
pub(super) async fn redeliver(
    State(console): State<Console>,
    EventId(event_id): EventId,
) -> Result<Response, ConsoleError> {
    let _accepted = crate::http::events::redeliver(State(console.app), EventId(event_id)).await?;
    Ok(Redirect::to("/console/notifications?done=redelivered").into_response())
}
