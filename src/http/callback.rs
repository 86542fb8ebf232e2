//! `GET /bankconnect/callback`: where BankConnect sends the user's browser after the journey.
//!
//! The approval is committed together with a capture job before anything else happens, so an
//! upstream outage (or a crash) at this moment loses nothing. The job usually finishes within
//! the request, so the browser normally sees the consents at once.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::{ACCEPT, LOCATION};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::consents::ConsentView;
use super::error::{ApiError, Query};
use super::ids::plausible_id;
use crate::domain::session::{Session, SessionStatus};
use crate::queue::{NewJob, Task};
use crate::state::AppState;

/// How long the callback waits for the capture's first attempt before answering `capturing`.
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    session_id: Option<String>,
    success: Option<String>,
}

#[derive(Debug, Serialize)]
struct CallbackView {
    session_id: Option<String>,
    status: SessionStatus,
    error_code: Option<String>,
    consents: Vec<ConsentView>,
}

#[utoipa::path(
    get, path = "/bankconnect/callback", tag = "bankconnect",
    params(CallbackQuery),
    responses(
        (status = 200, description = "With `Accept: application/json`, the journey as `GET /api/v1/consent-sessions/{id}` shows it; else a small result page", content((Object = "application/json"), (String = "text/html"))),
        (status = 303, description = "Sent on to FRONTEND_RETURN_URL with `?session_id=…&status=…`"),
        (status = 400, description = "INVALID_QUERY", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "UNKNOWN_SESSION", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "OVERLOADED, REQUEST_TIMEOUT, DATABASE_UNAVAILABLE", body = crate::http::openapi::ErrorBody),
    )
)]
pub async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let success = match q.success.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ => {
            return Err(ApiError::bad_request(
                "INVALID_CALLBACK",
                "success must be `true` or `false`",
            ));
        }
    };
    let Some(session_id) = q.session_id.filter(|s| !s.trim().is_empty()) else {
        if success {
            return Err(ApiError::bad_request(
                "MISSING_SESSION_ID",
                "session_id is required when success=true",
            ));
        }
        // BankConnect may send a denial without the session id: nothing to record, but the
        // browser still has to go on.
        let view = CallbackView {
            session_id: None,
            status: SessionStatus::Abandoned,
            error_code: None,
            consents: vec![],
        };
        return Ok(respond(&state, &headers, view));
    };

    // Only journeys we started come back; anything else is refused before any upstream call.
    if !plausible_id(&session_id) {
        return Err(unknown_session());
    }
    let session = state
        .store
        .get_session(&session_id)
        .await?
        .ok_or_else(unknown_session)?;
    let now = state.clock.now();
    let session = if !success {
        state.store.abandon_session(&session_id, now).await?
    } else if session.status == SessionStatus::Completed {
        session
    } else {
        let job = NewJob::new(
            Task::CaptureConsents {
                session_id: session_id.clone(),
            },
            now,
        );
        state.store.begin_capture(&session_id, &job, now).await?;
        state.jobs_wakeup.notify_one();
        wait_for_first_attempt(&state, &session_id).await?
    };
    tracing::info!(session_id = %session.session_id, status = %session.status, "callback handled");

    let consents = if session.status == SessionStatus::Completed {
        state.store.consents_for_session(&session_id).await?
    } else {
        vec![]
    };
    let mut views = Vec::with_capacity(consents.len());
    for c in consents {
        views.push(super::consents::consent_view(&state, c).await?);
    }
    let view = CallbackView {
        session_id: Some(session_id),
        status: session.status,
        error_code: session.error_code,
        consents: views,
    };
    Ok(respond(&state, &headers, view))
}

fn unknown_session() -> ApiError {
    ApiError::NotFound {
        code: "UNKNOWN_SESSION",
        what: "session",
    }
}

/// Waits until the capture job has either finished or recorded a failed attempt.
async fn wait_for_first_attempt(state: &AppState, session_id: &str) -> Result<Session, ApiError> {
    let deadline = tokio::time::Instant::now() + FIRST_ATTEMPT_WAIT;
    let mut pause = Duration::from_millis(10);
    loop {
        let session = state
            .store
            .get_session(session_id)
            .await?
            .ok_or_else(unknown_session)?;
        let settled = session.status != SessionStatus::Capturing || session.error_code.is_some();
        if settled || tokio::time::Instant::now() >= deadline {
            return Ok(session);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

fn respond(state: &AppState, headers: &HeaderMap, view: CallbackView) -> Response {
    if wants_json(headers) {
        return axum::Json(view).into_response();
    }
    if let Some(base) = &state.config.frontend_return_url {
        let mut url = base.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(id) = &view.session_id {
                q.append_pair("session_id", id);
            }
            q.append_pair("status", view.status.as_str());
        }
        return (StatusCode::SEE_OTHER, [(LOCATION, url.to_string())]).into_response();
    }
    Html(result_page(&view)).into_response()
}

fn result_page(view: &CallbackView) -> String {
    use html_escape::encode_text as esc;
    let (title, text) = match view.status {
        SessionStatus::Completed => (
            "Consent approved",
            "Thank you. Your recurring consent is in place.",
        ),
        SessionStatus::Capturing => (
            "Consent approved",
            "Thank you. We are finishing the setup; you may close this page.",
        ),
        SessionStatus::Abandoned => (
            "Consent not given",
            "The consent journey was not completed.",
        ),
        SessionStatus::Failed => (
            "Something went wrong",
            "We could not confirm your consent. Please try again.",
        ),
        SessionStatus::Pending => ("Consent pending", "The consent journey is still open."),
    };
    let accounts: String = view
        .consents
        .iter()
        .map(|c| {
            format!(
                "<li>{} {}</li>",
                esc(c.consent.bank_name.as_deref().unwrap_or("bank")),
                esc(c.consent.masked_account_number.as_deref().unwrap_or(""))
            )
        })
        .collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{text}</p><ul>{accounts}</ul>\
         <p><small>status: {}</small></p></body></html>",
        view.status.as_str()
    )
}
