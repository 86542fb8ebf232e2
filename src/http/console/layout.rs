//! The console's page shell and the small pieces every page uses: times, status badges,
//! usage bars, forms with their CSRF token, pagination. The stylesheet is `style.css` beside
//! this file, compiled into the binary.

use axum::http::header;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::session::SignedIn;
use crate::domain::ist;

const STYLESHEET: &str = include_str!("style.css");

/// `GET /console/style.css`.
pub(super) async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
}

/// The sections, as the navigation names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Overview,
    Consents,
    Pulls,
    Jobs,
    Webhooks,
    Notifications,
}

const SECTIONS: [(Section, &str, &str); 6] = [
    (Section::Overview, "/console", "Overview"),
    (Section::Consents, "/console/consents", "Consents"),
    (Section::Pulls, "/console/pulls", "Pulls"),
    (Section::Jobs, "/console/jobs", "Jobs"),
    (Section::Webhooks, "/console/webhooks", "Webhooks"),
    (
        Section::Notifications,
        "/console/notifications",
        "Notifications",
    ),
];

fn head(title: &str, refresh: Option<u32>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            @if let Some(secs) = refresh { meta http-equiv="refresh" content=(secs); }
            title { (title) " · aa-recurring console" }
            link rel="stylesheet" href="/console/style.css";
        }
    }
}

/// A page for a signed-in operator: navigation, sign-out and the content.
pub(super) fn page(
    title: &str,
    section: Section,
    operator: &SignedIn,
    refresh: Option<u32>,
    content: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, refresh))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console" { "aa-recurring" }
                    nav aria-label="Sections" {
                        ul {
                            @for (s, href, name) in SECTIONS {
                                li {
                                    a href=(href) aria-current=[(s == section).then_some("page")] { (name) }
                                }
                            }
                        }
                    }
                    form.signout method="post" action="/console/logout" {
                        (csrf(operator))
                        button.link type="submit" { "Sign out" }
                    }
                }
                main id="main" { (content) }
            }
        }
    }
}

/// A page without navigation: sign-in and errors.
pub(super) fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, None))
            body.bare {
                main id="main" { (content) }
            }
        }
    }
}

/// The hidden field every form carries.
pub(super) fn csrf(operator: &SignedIn) -> Markup {
    html! { input type="hidden" name="csrf" value=(operator.csrf); }
}

/// A one-button form that posts to `action`.
pub(super) fn button(operator: &SignedIn, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(operator))
            button class=(class) type="submit" { (label) }
        }
    }
}

/// An instant in Indian time (the calendar the consents and fair use count in), with the
/// exact UTC instant for machines and on hover.
pub(super) fn when(t: DateTime<Utc>) -> Markup {
    let utc = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    html! {
        time datetime=(utc) title=(utc) {
            (t.with_timezone(&ist()).format("%d %b %Y, %H:%M:%S IST"))
        }
    }
}

pub(super) fn when_opt(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => when(t),
        None => html! { span.muted { "—" } },
    }
}

/// A status as a badge; the colour class follows what the status means.
pub(super) fn badge(status: &str) -> Markup {
    let tone = match status {
        "active" | "completed" | "done" | "delivered" | "accepted" | "enabled" => "good",
        "failed" | "dead" | "rejected" | "revoked" | "invalid" | "expired" | "disabled" => "bad",
        "paused" | "duplicate" | "cancelled" => "quiet",
        _ => "busy",
    };
    html! { span class=(format!("badge {tone}")) { (status) } }
}

/// Pulls used against the budget, as a bar with its numbers.
pub(super) fn usage(used: u32, allowed: u32, per: &str) -> Markup {
    html! {
        span.usage {
            meter min="0" max=(allowed.max(1)) low=(allowed.max(1).saturating_sub(1)) high=(allowed.max(1)) optimum="0" value=(used.min(allowed.max(1))) {
                (used) " of " (allowed)
            }
            span { (used) " of " (allowed) " this " (per) }
        }
    }
}

/// What an action just did, shown once after its redirect.
pub(super) fn flash(done: Option<&str>) -> Markup {
    let message = match done {
        Some("paused") => "Paused. No pull is scheduled until it is resumed.",
        Some("resumed") => "Resumed. The next pull covers the time it was paused.",
        Some("started") => "Pull started.",
        Some("retried") => "Job queued to run now.",
        Some("redelivered") => "Event queued for delivery again.",
        _ => return html! {},
    };
    html! { div.alert.ok role="status" { (message) } }
}

/// "Next page" when there is one.
pub(super) fn pager(next: Option<String>) -> Markup {
    html! {
        @if let Some(href) = next {
            nav.pager aria-label="Pagination" { a href=(href) rel="next" { "Next page →" } }
        }
    }
}

/// A query string of the non-empty pairs, for links that keep a page's filters.
pub(super) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

/// A status filter as a select with an "any" choice, and its submit button.
pub(super) fn status_filter(label: &str, all: &[&str], current: Option<&str>) -> Markup {
    html! {
        label for="status" { (label) }
        select id="status" name="status" {
            option value="" selected[current.is_none()] { "any" }
            @for s in all {
                option value=(s) selected[current == Some(*s)] { (s) }
            }
        }
    }
}
