//! `POST /api/v1/consent-sessions`: start a recurring-consent journey.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::error::{ApiError, Json};
use crate::app::AppState;
use crate::domain::ist;
use crate::domain::session::{Session, SessionRequest, validate};

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
