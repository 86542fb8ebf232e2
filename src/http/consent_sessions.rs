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

#[derive(Debug, Serialize)]
pub struct SessionCreatedView {
    pub session_id: String,
    pub redirect_url: String,
}

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
#[derive(Debug, Serialize)]
pub struct SessionView {
    #[serde(flatten)]
    pub session: Session,
    pub consents: Vec<ConsentView>,
}

/// `GET /api/v1/consent-sessions/{session_id}`: how the journey ended, without waiting for the
/// borrower's browser. A capture that could not finish shows `failed` with its reason.
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
