//! `/console/jobs`: dead jobs and those retrying, with their last error and Retry.

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::layout::{self, Section, badge, button, flash, pager, query, when};
use super::pulls::pull_href;
use super::session::SignedIn;
use super::{Console, ConsoleError, ListQuery, PAGE};
use crate::http::ids::JobId;
use crate::queue::JobState;
use crate::store::JobFilter;

/// The two views: jobs that gave up, and jobs that failed and will try again.
const VIEWS: [(&str, &str); 2] = [("dead", "Dead"), ("retrying", "Retrying")];

/// `GET /console/jobs?status=dead|retrying`, newest first.
pub(super) async fn list(
    State(console): State<Console>,
    Extension(operator): Extension<SignedIn>,
    Query(q): Query<ListQuery>,
) -> Result<Markup, ConsoleError> {
    let view = match q.status() {
        None | Some("dead") => "dead",
        Some("retrying") => "retrying",
        Some(_) => return Err(ConsoleError::NotFound("list of jobs")),
    };
    let mut jobs = console
        .app
        .store
        .list_jobs(&JobFilter {
            state: Some(if view == "dead" {
                JobState::Dead
            } else {
                JobState::Queued
            }),
            failed_before: view == "retrying",
            after_id: q.before,
            limit: PAGE + 1,
            newest_first: true,
            ..Default::default()
        })
        .await?;
    let next = (jobs.len() > PAGE as usize).then(|| {
        jobs.truncate(PAGE as usize);
        format!(
            "/console/jobs{}",
            query(&[
                ("status", Some(view.to_string())),
                ("before", jobs.last().map(|j| j.job_id.to_string())),
            ])
        )
    });
    Ok(layout::page(
        "Jobs",
        Section::Jobs,
        &operator,
        None,
        html! {
            h1 { "Jobs" }
            (flash(q.done.as_deref()))
            nav aria-label="Which jobs" {
                p {
                    @for (v, name) in VIEWS {
                        a href=(format!("/console/jobs?status={v}")) aria-current=[(v == view).then_some("page")] { (name) }
                        " "
                    }
                }
            }
            @if jobs.is_empty() {
                p.muted { @if view == "dead" { "No dead jobs." } @else { "No job is retrying." } }
            } @else {
                div.table-wrap { table {
                    caption.muted { "Newest first" }
                    thead { tr {
                        th scope="col" { "Job" }
                        th scope="col" { "Kind" }
                        th scope="col" { "State" }
                        th scope="col" { "Attempts" }
                        th scope="col" { "Last error" }
                        th scope="col" { @if view == "dead" { "Died" } @else { "Runs next" } }
                        th scope="col" { span.visually-hidden { "Action" } }
                    } }
                    tbody {
                        @for j in &jobs {
                            tr id=(format!("job-{}", j.job_id)) {
                                td.mono { (j.job_id) }
                                td {
                                    (j.kind)
                                    @if let Some(p) = &j.pull_id { br; a.mono href=(pull_href(p)) { (p) } }
                                }
                                td { (badge(j.state.as_str())) }
                                td { (j.attempts) " of " (j.max_attempts) }
                                td.error { (j.last_error.as_deref().unwrap_or("")) }
                                td { (when(if view == "dead" { j.updated_at } else { j.run_at })) }
                                td { (button(&operator, &format!("/console/jobs/{}/retry", j.job_id), "Retry", "")) }
                            }
                        }
                    }
                } }
            }
            (pager(next))
        },
    ))
}

/// `POST /console/jobs/{job_id}/retry`: the API's retry.
pub(super) async fn retry(
    State(console): State<Console>,
    JobId(job_id): JobId,
) -> Result<Response, ConsoleError> {
    let _queued = crate::http::jobs::retry(State(console.app), JobId(job_id)).await?;
    Ok(Redirect::to("/console/jobs?done=retried").into_response())
}
