//! Liveness and readiness for orchestrators.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// The process is up; says nothing about its dependencies.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Object, example = json!({"status": "ok"})))
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready only while the database answers and has every migration this build needs, every
/// background task (workers, scheduler, housekeeping) runs, and the service is not draining,
/// so a load balancer stops sending traffic to an instance that cannot commit anything, would
/// let its work pile up, or is going away.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Object, example = json!({"status": "ready"})),
        (status = 503, description = "NOT_READY: the database does not answer, a migration is pending, a background task is down, or the service is draining", body = crate::http::openapi::ErrorBody),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match not_ready(&state).await {
        None => Json(json!({"status": "ready"})).into_response(),
        Some(message) => {
            tracing::warn!(%message, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": {"code": "NOT_READY", "message": message}})),
            )
                .into_response()
        }
    }
}

/// Why the service is not ready, if it is not.
async fn not_ready(state: &AppState) -> Option<String> {
    if state.shutdown.is_cancelled() {
        return Some("the service is draining".into());
    }
    match state.store.pending_migrations().await {
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            return Some("the database does not answer".into());
        }
        Ok(pending) if !pending.is_empty() => {
            return Some(format!("migrations pending: {pending:?}"));
        }
        Ok(_) => {}
    }
    let down = state.tasks.down();
    (!down.is_empty()).then(|| format!("background tasks down: {}", down.join(", ")))
}

/// Prometheus text exposition. The gauges are read at the scrape, through indexes.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus (OpenMetrics) text; every family is present from the start", content_type = "application/openmetrics-text", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let now = state.clock.now();
    let store = &state.store;
    match store.oldest_pending().await {
        Ok(oldest) => state.metrics.set_undelivered(&oldest, now),
        Err(e) => tracing::warn!(error = %e, "reading undelivered events for /metrics failed"),
    }
    match store.job_gauges(now).await {
        Ok(gauges) => state.metrics.set_jobs(&gauges, now),
        Err(e) => tracing::warn!(error = %e, "reading job gauges for /metrics failed"),
    }
    match store.consent_status_counts().await {
        Ok(counts) => state.metrics.set_consents(&counts),
        Err(e) => tracing::warn!(error = %e, "reading consent counts for /metrics failed"),
    }
    match store.pull_outcome_counts().await {
        Ok(counts) => state.metrics.set_pulls(&counts),
        Err(e) => tracing::warn!(error = %e, "reading pull counts for /metrics failed"),
    }
    if let Some(stats) = store.writer_stats() {
        state.metrics.set_writer(&stats);
    }
    state.metrics.set_downloads(state.bankconnect.downloads());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
