//! Liveness and readiness for orchestrators.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// The process is up; says nothing about its dependencies.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready only while the database answers and every background task (workers, scheduler,
/// housekeeping) runs, so a load balancer stops sending traffic to an instance that cannot
/// commit anything or would let its work pile up.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let problem = match state.store.ping().await {
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Some("the database does not answer".to_string())
        }
        Ok(()) => {
            let down = state.tasks.down();
            (!down.is_empty()).then(|| format!("background tasks down: {}", down.join(", ")))
        }
    };
    match problem {
        None => Json(json!({"status": "ready"})).into_response(),
        Some(message) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"code": "NOT_READY", "message": message}})),
        )
            .into_response(),
    }
}

/// Prometheus text exposition. The gauges are read at the scrape, through indexes.
pub async fn metrics(State(state): State<AppState>) -> Response {
    match state.store.oldest_pending().await {
        Ok(oldest) => state.metrics.set_undelivered(&oldest, state.clock.now()),
        Err(e) => tracing::warn!(error = %e, "reading undelivered events for /metrics failed"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
