//! The operator console: server-rendered pages at `/console` for operators and support staff
//! (docs/architecture.md, "The console"). Pages read the store through a few indexed queries
//! each; every action (pause, resume, start a pull, retry a job, redeliver an event) calls the
//! API's own handler, so it follows exactly the API's rules and answers with its codes.
//!
//! No JavaScript: forms post, the server redirects (303) to the page that shows the result,
//! and a running pull's page refreshes itself with `<meta http-equiv="refresh">`.

pub mod chart;
mod consents;
mod deliveries;
mod jobs;
mod layout;
mod overview;
mod pulls;
mod session;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum_extra::extract::cookie::Key;
use governor::DefaultKeyedRateLimiter;
use maud::html;
use tower_http::set_header::SetResponseHeaderLayer;

use super::error::ApiError;
use crate::state::AppState;
use crate::store::StoreError;

/// The largest form the console reads: its forms carry a token and a few short fields.
const FORM_LIMIT_BYTES: usize = 16 * 1024;

/// What console handlers share: the service's state, the cookie key and the sign-in limiter.
#[derive(Clone)]
pub struct Console {
    app: AppState,
    /// Read from the store on first use ([`session::key`]), the same on every instance.
    key: Arc<tokio::sync::OnceCell<Key>>,
    sign_ins: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

/// The console's routes, with its own state. It is not part of the published API contract
/// (`/openapi.json`): these are pages for people, and their forms are not an interface.
pub fn routes(app: AppState) -> Router<AppState> {
    let console = Console {
        app,
        key: Arc::default(),
        sign_ins: Arc::new(session::sign_in_limiter()),
    };
    let signed_in = Router::new()
        .route("/console", get(overview::page))
        .route("/console/consents", get(consents::list))
        .route("/console/consents/{consent_id}", get(consents::detail))
        .route(
            "/console/consents/{consent_id}/pause",
            post(consents::pause),
        )
        .route(
            "/console/consents/{consent_id}/resume",
            post(consents::resume),
        )
        .route(
            "/console/consents/{consent_id}/pulls",
            post(consents::start_pull),
        )
        .route("/console/pulls", get(pulls::list))
        .route("/console/pulls/{pull_id}", get(pulls::detail))
        .route("/console/pulls/{pull_id}/data", get(pulls::data))
        .route("/console/jobs", get(jobs::list))
        .route("/console/jobs/{job_id}/retry", post(jobs::retry))
        .route("/console/webhooks", get(deliveries::webhooks))
        .route("/console/notifications", get(deliveries::notifications))
        .route(
            "/console/events/{event_id}/redeliver",
            post(deliveries::redeliver),
        )
        .route("/console/logout", post(session::sign_out))
        .route("/console/{*rest}", any(not_found))
        .route_layer(from_fn_with_state(console.clone(), session::require));
    Router::new()
        .route(
            "/console/login",
            get(session::sign_in_form).post(session::sign_in),
        )
        .route("/console/style.css", get(layout::stylesheet))
        .merge(signed_in)
        .layer(DefaultBodyLimit::max(FORM_LIMIT_BYTES))
        // Pages show borrowers' data: never cached, never framed, and nothing but our own
        // stylesheet is loaded (no script at all).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .with_state(console)
}

async fn not_found() -> ConsoleError {
    ConsoleError::NotFound("page")
}

/// Why a console request failed, shown as a page with the status the API would give.
#[derive(Debug)]
pub enum ConsoleError {
    /// An action the API refused, or a read that failed: its status, code and message.
    Api(ApiError),
    NotFound(&'static str),
    /// A form without this session's CSRF token, or a sign-in form that was not ours.
    Forbidden(&'static str),
    /// Too many sign-in attempts from one address; try again after this many seconds.
    TooManySignIns(u64),
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        ConsoleError::Api(e)
    }
}

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> Self {
        ConsoleError::Api(e.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            ConsoleError::Api(e) => e.describe(),
            ConsoleError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "NOT_FOUND".into(),
                format!("That {what} does not exist."),
            ),
            ConsoleError::Forbidden(why) => {
                (StatusCode::FORBIDDEN, "FORBIDDEN".into(), (*why).into())
            }
            ConsoleError::TooManySignIns(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_SIGN_INS".into(),
                format!("Too many sign-in attempts from this address. Try again in {secs} s."),
            ),
        };
        if status.is_server_error() {
            tracing::warn!(%status, %code, %message, "console request failed");
        }
        let title = if status.is_server_error() {
            "Something went wrong"
        } else {
            "That did not work"
        };
        let body = layout::bare(
            title,
            html! {
                h1 { (title) }
                div.alert.error role="alert" {
                    p { strong { (code) } }
                    p { (message) }
                }
                p { a href="/console" { "Back to the overview" } }
            },
        );
        let mut response = (status, body).into_response();
        if let ConsoleError::TooManySignIns(secs) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The query of a newest-first list page: a status filter and where the page starts.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    before: Option<i64>,
    /// What an action just did, shown once above the page.
    #[serde(default)]
    done: Option<String>,
}

impl ListQuery {
    /// The status filter; an empty value (the form's "any") is none.
    fn status(&self) -> Option<&str> {
        self.status.as_deref().filter(|s| !s.is_empty())
    }
}

/// The query of a page an action redirects to.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct DoneQuery {
    /// What an action just did, shown once above the page.
    #[serde(default)]
    done: Option<String>,
}

/// Rows shown per page.
const PAGE: u32 = 50;
