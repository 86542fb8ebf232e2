//! `/console`: what needs attention, in a few reads of small tables kept by triggers
//! (consents by status, pulls ended per hour) and of indexes.

use axum::Extension;
use axum::extract::State;
use chrono::Duration;
use maud::{Markup, html};

use super::chart::{self, OUTCOMES};
use super::layout::{self, Section, when};
use super::session::SignedIn;
use super::{Console, ConsoleError};
use crate::domain::{ist, ist_hour};
use crate::queue::JobState;

/// Days the chart covers.
const CHART_DAYS: u32 = 30;

pub(super) async fn page(
    State(console): State<Console>,
    Extension(operator): Extension<SignedIn>,
) -> Result<Markup, ConsoleError> {
    let store = &console.app.store;
    let now = console.app.clock.now();
    let today = now.with_timezone(&ist()).date_naive();
    let first_day = today - Duration::days(i64::from(CHART_DAYS - 1));
    let hours = store
        .pull_outcomes_by_hour(chart::first_hour(first_day))
        .await?;
    let this_hour = ist_hour(now);
    let mut last_day = [0i64; 3];
    for (hour, outcome, n) in &hours {
        if *hour > this_hour - 24
            && let Some(o) = OUTCOMES.iter().position(|x| x == outcome)
        {
            last_day[o] += n;
        }
    }
    let consents = store.consent_status_counts().await?;
    let gauges = store.job_gauges(now).await?;
    let jobs_in = |state: JobState| -> i64 {
        gauges
            .counts
            .iter()
            .filter(|(_, s, _)| *s == state)
            .map(|(_, _, n)| n)
            .sum()
    };
    let rejected = store
        .count_webhook_receipts("rejected", now - Duration::hours(1))
        .await?;
    let last_webhook = store.list_inbox(None, 1).await?.into_iter().next();
    let failed_notifications = store.count_deliveries("failed").await?;
    let days = chart::by_day(&hours, today, CHART_DAYS);

    Ok(layout::page(
        "Overview",
        Section::Overview,
        &operator,
        None,
        html! {
            h1 { "Overview" }
            div.cards {
                section.card aria-labelledby="c-consents" {
                    h2 id="c-consents" { a href="/console/consents" { "Consents by status" } }
                    dl {
                        @for (status, n) in &consents {
                            dt { a href=(format!("/console/consents?status={status}")) { (status) } }
                            dd { (n) }
                        }
                    }
                }
                section.card aria-labelledby="c-pulls" {
                    h2 id="c-pulls" { a href="/console/pulls" { "Pulls, last 24 hours" } }
                    dl {
                        @for (o, n) in OUTCOMES.iter().zip(last_day) {
                            dt { a href=(format!("/console/pulls?status={o}")) { (o) } }
                            dd { (n) }
                        }
                    }
                }
                section.card aria-labelledby="c-dead" {
                    h2 id="c-dead" { a href="/console/jobs" { "Dead jobs" } }
                    p.big { (jobs_in(JobState::Dead)) }
                    p.hint { (jobs_in(JobState::Queued)) " queued, " (jobs_in(JobState::Running)) " running" }
                }
                section.card aria-labelledby="c-webhooks" {
                    h2 id="c-webhooks" { a href="/console/webhooks" { "Webhooks rejected, last hour" } }
                    p.big { (rejected) }
                    p.hint {
                        "Last accepted: "
                        @match &last_webhook { Some(w) => (when(w.received_at)), None => "never" }
                    }
                }
                section.card aria-labelledby="c-notify" {
                    h2 id="c-notify" { a href="/console/notifications?status=failed" { "Failed notifications" } }
                    p.big { (failed_notifications) }
                }
            }
            h2 { "Pulls per day by outcome, last " (CHART_DAYS) " days" }
            (chart::pulls_per_day(&days))
        },
    ))
}
