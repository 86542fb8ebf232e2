//! The HTTP surface: one file per resource, one error type, one auth layer.

pub mod auth;
pub mod callback;
pub mod consent_sessions;
pub mod consents;
pub mod error;
pub mod ids;
pub mod page;
pub mod probes;
pub mod pulls;
pub mod webhooks;

use axum::Router;
use axum::http::HeaderName;
use axum::middleware;
use axum::routing::{get, post};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use error::ApiError;

/// The largest request body we read. Our own API bodies are tiny.
const BODY_LIMIT_BYTES: usize = 1024 * 1024;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/consent-sessions", post(consent_sessions::create))
        .route("/consents", get(consents::list))
        .route(
            "/consents/{consent_id}",
            get(consents::get).patch(consents::patch),
        )
        .route("/consents/{consent_id}/pause", post(consents::pause))
        .route("/consents/{consent_id}/resume", post(consents::resume))
        .route(
            "/consents/{consent_id}/transactions",
            get(consents::transactions),
        )
        .route("/consents/{consent_id}/pulls", post(pulls::create))
        .route("/pulls", get(pulls::list))
        .route("/pulls/{pull_id}", get(pulls::get))
        .route("/pulls/{pull_id}/insights", get(pulls::insights))
        .route("/pulls/{pull_id}/transactions", get(pulls::transactions))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));

    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .nest("/api/v1", api)
        .route(crate::config::CALLBACK_PATH, get(callback::handle))
        .route("/webhooks/bankconnect", post(webhooks::receive))
        .route("/metrics", get(probes::metrics))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .fallback(|| async {
            ApiError::NotFound {
                code: "NOT_FOUND",
                what: "route",
            }
        })
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT_BYTES))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}
