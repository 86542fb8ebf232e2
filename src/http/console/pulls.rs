//! `/console/pulls`: pulls newest first, and one pull's timings, attempts, errors and data.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::consents::{consent_href, segment};
use super::layout::{self, Section, badge, flash, pager, query, when, when_opt};
use super::session::SignedIn;
use super::{Console, ConsoleError, DoneQuery, PAGE};
use crate::domain::pull::{Pull, PullKind, PullStatus};
use crate::http::ids::{PullId, plausible_id};
use crate::http::page::parse_filter;
use crate::store::PullFilter;

pub(super) fn pull_href(id: &str) -> String {
    format!("/console/pulls/{}", segment(id))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    consent_id: Option<String>,
    #[serde(default)]
    before: Option<i64>,
}

/// `GET /console/pulls`.
pub(super) async fn list(
    State(console): State<Console>,
    Extension(operator): Extension<SignedIn>,
    Query(q): Query<ListQuery>,
) -> Result<Markup, ConsoleError> {
    let status_text = q.status.clone().filter(|s| !s.is_empty());
    let consent_id = q.consent_id.clone().filter(|c| !c.is_empty());
    let status = parse_filter::<PullStatus>(
        "INVALID_STATUS",
        "status",
        status_text.as_deref(),
        PullStatus::ALL,
    )?;
    if consent_id.as_deref().is_some_and(|c| !plausible_id(c)) {
        return Err(ConsoleError::NotFound("consent"));
    }
    let mut rows = console
        .app
        .store
        .list_pulls(&PullFilter {
            consent_id: consent_id.clone(),
            status,
            updated_after: None,
            after_seq: q.before,
            limit: PAGE + 1,
            newest_first: true,
        })
        .await?;
    let next = (rows.len() > PAGE as usize).then(|| {
        rows.truncate(PAGE as usize);
        format!(
            "/console/pulls{}",
            query(&[
                ("status", status_text.clone()),
                ("consent_id", consent_id.clone()),
                ("before", rows.last().map(|(seq, _)| seq.to_string())),
            ])
        )
    });
    Ok(layout::page(
        "Pulls",
        Section::Pulls,
        &operator,
        None,
        html! {
            h1 { "Pulls" }
            form.filters method="get" action="/console/pulls" {
                @if let Some(c) = &consent_id { input type="hidden" name="consent_id" value=(c); }
                div { (layout::status_filter("Status", PullStatus::ALL, status_text.as_deref())) }
                button type="submit" { "Filter" }
            }
            @if let Some(c) = &consent_id {
                p { "Of consent " a.mono href=(consent_href(c)) { (c) } " · " a href="/console/pulls" { "all pulls" } }
            }
            @if rows.is_empty() {
                p.muted { "No pull matches." }
            } @else {
                div.table-wrap { table {
                    caption.muted { "Newest first" }
                    thead { tr {
                        th scope="col" { "Pull" }
                        th scope="col" { "Status" }
                        th scope="col" { "Kind" }
                        th scope="col" class="hide-narrow" { "Window" }
                        th scope="col" { "Queued" }
                        th scope="col" class="hide-narrow" { "Attempts" }
                        th scope="col" { "Last error" }
                    } }
                    tbody {
                        @for (_, p) in &rows {
                            tr {
                                td { a.mono href=(pull_href(&p.pull_id)) { (p.pull_id) } }
                                td { (badge(p.status.as_str())) }
                                td { (p.kind) }
                                td class="hide-narrow" { (p.from) " to " (p.to) }
                                td { (when(p.created_at)) }
                                td class="hide-narrow" { (p.attempts) }
                                td.error { (p.error_message.as_deref().or(p.last_error.as_deref()).unwrap_or("")) }
                            }
                        }
                    }
                } }
            }
            (pager(next))
        },
    ))
}

fn ended(p: &Pull) -> bool {
    matches!(
        p.status,
        PullStatus::Completed | PullStatus::Failed | PullStatus::Expired
    )
}

/// "12.3 s after it was queued".
fn after(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Markup {
    match to {
        Some(t) => {
            let ms = (t - from).num_milliseconds().max(0);
            html! { (when(t)) span.hint { " (" (format!("{:.1}", ms as f64 / 1000.0)) " s after queued)" } }
        }
        None => when_opt(None),
    }
}

/// `GET /console/pulls/{pull_id}`. While the pull runs the page refreshes itself every two
/// seconds, without JavaScript.
pub(super) async fn detail(
    State(console): State<Console>,
    Extension(operator): Extension<SignedIn>,
    PullId(pull_id): PullId,
    Query(q): Query<DoneQuery>,
) -> Result<Markup, ConsoleError> {
    let p = console
        .app
        .store
        .get_pull(&pull_id)
        .await?
        .ok_or(ConsoleError::NotFound("pull"))?;
    let running = !ended(&p);
    Ok(layout::page(
        &format!("Pull {}", p.pull_id),
        Section::Pulls,
        &operator,
        running.then_some(2),
        html! {
            p { a href="/console/pulls" { "← Pulls" } }
            h1 { "Pull " span.mono { (p.pull_id) } " " span id="pull-status" { (badge(p.status.as_str())) } }
            (flash(q.done.as_deref()))
            @if running { p.hint role="status" { "This page refreshes every 2 seconds until the pull ends." } }
            dl.facts {
                dt { "Consent" } dd { a.mono href=(consent_href(&p.consent_id)) { (p.consent_id) } }
                dt { "Kind" } dd { (p.kind) }
                dt { "Window" } dd { (p.from) " to " (p.to) }
                dt { "Upstream session" } dd.mono { (p.upstream_session_id.as_deref().unwrap_or("—")) }
                dt { "Queued" } dd { (when(p.created_at)) }
                dt { "Submitted" } dd { (after(p.created_at, p.submitted_at)) }
                dt { "Ended" } dd { (after(p.created_at, p.completed_at)) }
                dt { "Attempts" } dd { (p.attempts) }
                @if let Some(t) = p.next_attempt_at { dt { "Next attempt" } dd { (when(t)) } }
                @if let Some(code) = &p.error_code {
                    dt { "Error" } dd.error { strong { (code) } " " (p.error_message.as_deref().unwrap_or("")) }
                }
                @if let Some(e) = &p.last_error { dt { "Last error" } dd.error { (e) } }
                dt { "Data" } dd {
                    @if let Some(t) = p.data_purged_at {
                        "Deleted at the end of its data life, " (when(t))
                    } @else if p.status == PullStatus::Completed {
                        a href=(format!("{}/data", pull_href(&p.pull_id))) { "Stored " (p.kind) " (JSON)" }
                    } @else {
                        span.muted { "Not fetched" }
                    }
                }
            }
        },
    ))
}

/// `GET /console/pulls/{pull_id}/data`: the stored payload, served by the API's own handler
/// (streamed, gzip when the browser takes it).
pub(super) async fn data(
    State(console): State<Console>,
    PullId(pull_id): PullId,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    let pull = console
        .app
        .store
        .get_pull(&pull_id)
        .await?
        .ok_or(ConsoleError::NotFound("pull"))?;
    let state = State(console.app);
    let id = PullId(pull_id);
    Ok(match pull.kind {
        PullKind::Insights => crate::http::pulls::insights(state, id, headers).await?,
        PullKind::Transactions => crate::http::pulls::transactions(state, id, headers).await?,
    })
}
