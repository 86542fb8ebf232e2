//! `POST /api/v1/consent-sessions`: start a recurring-consent journey.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::consents::ConsentView;
use super::error::{ApiError, Json};
use super::ids::SessionId;
use crate::domain::ist;
use crate::domain::session::{Session, SessionRequest, SessionStatus, validate};
use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionCreatedView {
    pub session_id: String,
    pub redirect_url: String,
}

#[utoipa::path(
    post, path = "/consent-sessions", tag = "journeys", security(("bearer" = [])),
    request_body = crate::domain::session::SessionRequest,
    responses(
        (status = 201, description = "The journey started: send the borrower to `redirect_url`", body = SessionCreatedView),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "INVALID_BODY, INVALID_LINK_ID, INVALID_USE_CASE, INVALID_JOURNEY_MODE, INVALID_TENURE, INVALID_FREQUENCY_UNIT, INVALID_FREQUENCY_VALUE, INVALID_DATE_FORMAT, INVALID_DATE_RANGE, INVALID_BANK_NAME, INVALID_MOBILE_NUMBER", body = crate::http::openapi::ErrorBody),
        (status = 502, description = "UPSTREAM_AUTH_FAILED or UPSTREAM_<code>: BankConnect refused the session", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Json(req): Json<SessionRequest>,
) -> Result<(StatusCode, axum::Json<SessionCreatedView>), ApiError> {
    let now = state.clock.now();
    let new = validate(req, now.with_timezone(&ist()).date_naive())?;
    let created = state
        .bankconnect
        .create_session(&new, &state.config.callback_url())
        .await?;
    state
        .store
        .insert_session(&Session::started(created.session_id.clone(), &new, now))
        .await?;
    tracing::info!(session_id = %created.session_id, use_case = %new.use_case, "consent journey started");
    Ok((
        StatusCode::CREATED,
        axum::Json(SessionCreatedView {
            session_id: created.session_id,
            redirect_url: created.redirect_url,
        }),
    ))
}

/// A journey as the API shows it: where it stands, why it failed, and the consents it gave.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    #[serde(flatten)]
    pub session: Session,
    pub consents: Vec<ConsentView>,
}

/// `GET /api/v1/consent-sessions/{session_id}`: how the journey ended, without waiting for the
/// borrower's browser. A capture that could not finish shows `failed` with its reason.
#[utoipa::path(
    get, path = "/consent-sessions/{session_id}", tag = "journeys", security(("bearer" = [])),
    params(("session_id" = String, Path, description = "The session id `POST /consent-sessions` answered")),
    responses(
        (status = 200, description = "How the journey stands, with its consents", body = SessionView),
        (status = 404, description = "SESSION_NOT_FOUND", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::ApiErrors,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    SessionId(session_id): SessionId,
) -> Result<axum::Json<SessionView>, ApiError> {
    let session = state
        .store
        .get_session(&session_id)
        .await?
        .ok_or_else(SessionId::not_found)?;
    let mut consents = vec![];
    if session.status == SessionStatus::Completed {
        for c in state.store.consents_for_session(&session_id).await? {
            consents.push(super::consents::consent_view(&state, c).await?);
        }
    }
    Ok(axum::Json(SessionView { session, consents }))
}
