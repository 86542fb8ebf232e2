//! `/console/consents`: find a consent by link id or status, see its schedule, fair-use
//! windows, pulls and events, and pause, resume or start a pull with the API's own rules.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{
    self, Section, badge, button, csrf, flash, pager, query, usage, when, when_opt,
};
use super::session::SignedIn;
use super::{Console, ConsoleError, DoneQuery, PAGE};
use crate::domain::consent::{ConsentStatus, ConsentView};
use crate::domain::fair_use::budget;
use crate::domain::input::validate_link_id;
use crate::domain::pull::PullKind;
use crate::http::error::RawBody;
use crate::http::ids::{ConsentId, plausible_id};
use crate::http::page::parse_filter;
use crate::store::{ConsentFilter, EventFilter, PullFilter};

/// Everything but RFC 3986's unreserved characters.
const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// An id as a path segment.
pub(super) fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, RESERVED).to_string()
}

pub(super) fn consent_href(id: &str) -> String {
    format!("/console/consents/{}", segment(id))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    link_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    after: Option<i64>,
}

/// `GET /console/consents`: oldest first, as the API lists them, 50 a page; usage for the
/// whole page is counted in one query.
pub(super) async fn list(
    State(console): State<Console>,
    Extension(operator): Extension<SignedIn>,
    Query(q): Query<ListQuery>,
) -> Result<Markup, ConsoleError> {
    let link_id = q.link_id.clone().filter(|l| !l.trim().is_empty());
    let status_text = q.status.clone().filter(|s| !s.is_empty());
    if let Some(l) = &link_id {
        validate_link_id(l).map_err(crate::http::error::ApiError::from)?;
    }
    let status = parse_filter::<ConsentStatus>(
        "INVALID_STATUS",
        "status",
        status_text.as_deref(),
        ConsentStatus::ALL,
    )?;
    let rows = console
        .app
        .store
        .list_consents(&ConsentFilter {
            link_id: link_id.clone(),
            status,
            updated_after: None,
            after_seq: q.after,
            limit: PAGE + 1,
        })
        .await?;
    let mut views = crate::http::consents::consent_views(&console.app, rows).await?;
    let next = (views.len() > PAGE as usize).then(|| {
        views.truncate(PAGE as usize);
        let last = views.last().map(|(seq, _)| seq.to_string());
        format!(
            "/console/consents{}",
            query(&[
                ("link_id", link_id.clone()),
                ("status", status_text.clone()),
                ("after", last)
            ])
        )
    });
    Ok(layout::page(
        "Consents",
        Section::Consents,
        &operator,
        None,
        html! {
            h1 { "Consents" }
            form.filters method="get" action="/console/consents" role="search" {
                div {
                    label for="link_id" { "Link id" }
                    input id="link_id" name="link_id" type="search" value=[link_id.as_deref()];
                }
                div { (layout::status_filter("Status", ConsentStatus::ALL, status_text.as_deref())) }
                button type="submit" { "Search" }
            }
            @if views.is_empty() {
                p.muted { "No consent matches." }
            } @else {
                div.table-wrap {
                    table {
                        caption.muted { "Oldest first" }
                        thead { tr {
                            th scope="col" { "Consent" }
                            th scope="col" { "Link id" }
                            th scope="col" class="hide-narrow" { "Account" }
                            th scope="col" { "Status" }
                            th scope="col" { "Fair use" }
                            th scope="col" { "Next pull" }
                        } }
                        tbody {
                            @for (_, v) in &views { (row(v)) }
                        }
                    }
                }
            }
            (pager(next))
        },
    ))
}

fn row(v: &ConsentView) -> Markup {
    let c = &v.consent;
    html! {
        tr {
            td { a.mono href=(consent_href(&c.consent_id)) { (c.consent_id) } }
            td.mono { (c.link_id) }
            td class="hide-narrow" {
                (c.bank_name.as_deref().unwrap_or("")) " "
                span.mono { (c.masked_account_number.as_deref().unwrap_or("")) }
            }
            td { (badge(c.status.as_str())) }
            td { (usage(v.usage.pulls_used, v.usage.pulls_allowed, &v.usage.window.to_string())) }
            td { (when_opt(c.next_pull_at)) }
        }
    }
}

/// `GET /console/consents/{consent_id}`.
pub(super) async fn detail(
    State(console): State<Console>,
    Extension(operator): Extension<SignedIn>,
    ConsentId(consent_id): ConsentId,
    Query(q): Query<DoneQuery>,
) -> Result<Markup, ConsoleError> {
    let store = &console.app.store;
    let consent = store
        .get_consent(&consent_id)
        .await?
        .ok_or(ConsoleError::NotFound("consent"))?;
    let now = console.app.clock.now();
    let limits = consent.limits();
    let budgets = budget(&limits, now);
    let used = store.attempts_since(&consent_id, &budgets).await?;
    let global_min = console
        .app
        .config
        .pull_interval_min
        .and_then(|d| chrono::Duration::from_std(d).ok());
    let interval = consent.interval(global_min);
    let pulls = store
        .list_pulls(&PullFilter {
            consent_id: Some(consent_id.clone()),
            limit: 20,
            newest_first: true,
            ..Default::default()
        })
        .await?;
    let events = store
        .list_events(&EventFilter {
            consent_id: Some(consent_id.clone()),
            limit: 20,
            newest_first: true,
            ..Default::default()
        })
        .await?;
    let view = ConsentView::new(consent, &used, now);
    let c = &view.consent;
    let href = consent_href(&c.consent_id);
    let idempotency_key = hex::encode(rand::random::<[u8; 16]>());
    Ok(layout::page(
        &format!("Consent {}", c.consent_id),
        Section::Consents,
        &operator,
        None,
        html! {
            p { a href="/console/consents" { "← Consents" } }
            h1 { "Consent " span.mono { (c.consent_id) } " " (badge(c.status.as_str())) }
            (flash(q.done.as_deref()))
            div.actions {
                @if c.status == ConsentStatus::Active {
                    (button(&operator, &format!("{href}/pause"), "Pause", "secondary"))
                    form.inline method="post" action=(format!("{href}/pulls")) {
                        (csrf(&operator))
                        input type="hidden" name="idempotency_key" value=(idempotency_key);
                        label for="kind" { "Kind " }
                        select id="kind" name="kind" {
                            @for k in PullKind::ALL {
                                option value=(k) selected[*k == PullKind::default_for(c.use_case).to_string()] { (k) }
                            }
                        }
                        " "
                        button type="submit" { "Start pull" }
                    }
                }
                @if c.status == ConsentStatus::Paused {
                    (button(&operator, &format!("{href}/resume"), "Resume", ""))
                }
            }
            div.two-col {
                section aria-labelledby="schedule" {
                    h2 id="schedule" { "Schedule" }
                    dl.facts {
                        dt { "Link id" } dd.mono { (c.link_id) }
                        dt { "Use case" } dd { (c.use_case) }
                        dt { "Bank" } dd { (c.bank_name.as_deref().unwrap_or("—")) " " span.mono { (c.masked_account_number.as_deref().unwrap_or("")) } }
                        dt { "Frequency" } dd { (c.frequency_value) " per " (c.frequency_unit) }
                        dt { "Spacing" } dd { (humantime::format_duration(interval.to_std().unwrap_or_default())) }
                        dt { "Next pull" } dd { (when_opt(c.next_pull_at)) }
                        dt { "Approved" } dd { (when(c.approved_at)) }
                        dt { "Expires" } dd { (when(c.expires_at)) }
                        @if let Some(b) = c.pull_blocked_until.filter(|b| *b > now) {
                            dt { "Blocked by BankConnect until" } dd { (when(b)) }
                        }
                    }
                }
                section aria-labelledby="fair-use" {
                    h2 id="fair-use" { "Fair use" }
                    dl.facts {
                        @for (i, (limit, b)) in limits.iter().zip(&budgets).enumerate() {
                            dt { @if i == 0 { "The consent's own" } @else { "Sahamati's cap" } }
                            dd {
                                (usage(used.get(i).copied().unwrap_or(0), limit.max, &limit.unit.to_string()))
                                br;
                                span.hint { "since " (when(b.period_start)) }
                            }
                        }
                        dt { "Next pull allowed" } dd { (when(view.usage.next_pull_allowed_at)) }
                    }
                }
            }
            h2 { "Pulls" }
            @if pulls.is_empty() {
                p.muted { "No pulls yet." }
            } @else {
                ol.timeline {
                    @for (_, p) in &pulls {
                        li {
                            a.mono href=(super::pulls::pull_href(&p.pull_id)) { (p.pull_id) } " "
                            (badge(p.status.as_str())) " " (p.kind) ", " (p.from) " to " (p.to)
                            br;
                            span.hint { "queued " (when(p.created_at))
                                @if let Some(t) = p.completed_at { ", ended " (when(t)) } }
                            @if let Some(e) = &p.error_message { br; span.error { (e) } }
                        }
                    }
                }
                p { a href=(format!("/console/pulls?consent_id={}", segment(&c.consent_id))) { "All of this consent's pulls" } }
            }
            h2 { "Events" }
            @if events.is_empty() {
                p.muted { "No events yet." }
            } @else {
                div.table-wrap { table {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Type" } th scope="col" { "Event" } } }
                    tbody {
                        @for (_, e) in &events {
                            tr { td { (when(e.timestamp)) } td { (e.event_type.as_str()) } td.mono { (e.id) } }
                        }
                    }
                } }
            }
        },
    ))
}

/// Where an action on a consent lands: its page with what was done, or the API's refusal.
fn after_action<T>(
    consent_id: &str,
    done: &str,
    result: Result<T, crate::http::error::ApiError>,
) -> Result<Response, ConsoleError> {
    result?;
    Ok(Redirect::to(&format!("{}?done={done}", consent_href(consent_id))).into_response())
}

/// `POST /console/consents/{consent_id}/pause`: the API's pause.
pub(super) async fn pause(
    State(console): State<Console>,
    ConsentId(consent_id): ConsentId,
) -> Result<Response, ConsoleError> {
    let r = crate::http::consents::pause(State(console.app), ConsentId(consent_id.clone())).await;
    after_action(&consent_id, "paused", r)
}

/// `POST /console/consents/{consent_id}/resume`: the API's resume.
pub(super) async fn resume(
    State(console): State<Console>,
    ConsentId(consent_id): ConsentId,
) -> Result<Response, ConsoleError> {
    let r = crate::http::consents::resume(State(console.app), ConsentId(consent_id.clone())).await;
    after_action(&consent_id, "resumed", r)
}

#[derive(Debug, Deserialize)]
pub(super) struct StartPull {
    #[serde(default)]
    kind: Option<String>,
    /// Made when the page was drawn, so sending the form twice starts one pull.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// `POST /console/consents/{consent_id}/pulls`: the API's start, with the form's kind and an
/// idempotency key; lands on the new pull's page.
pub(super) async fn start_pull(
    State(console): State<Console>,
    ConsentId(consent_id): ConsentId,
    axum_extra::extract::Form(form): axum_extra::extract::Form<StartPull>,
) -> Result<Response, ConsoleError> {
    let mut headers = HeaderMap::new();
    if let Some(key) = form
        .idempotency_key
        .filter(|k| plausible_id(k))
        .and_then(|k| k.parse().ok())
    {
        headers.insert("idempotency-key", key);
    }
    let body = match form.kind.filter(|k| !k.is_empty()) {
        Some(kind) => serde_json::json!({ "kind": kind }).to_string(),
        None => String::new(),
    };
    let (_, axum::Json(pull)) = crate::http::pulls::create(
        State(console.app),
        ConsentId(consent_id),
        headers,
        RawBody(body.into()),
    )
    .await?;
    Ok(Redirect::to(&format!(
        "{}?done=started",
        super::pulls::pull_href(&pull.pull_id)
    ))
    .into_response())
}
