//! The HTTP surface: one file per resource, one error type, one auth layer.

pub mod auth;
pub mod callback;
pub mod consent_sessions;
pub mod consents;
pub mod console;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod ids;
pub mod jobs;
pub mod openapi;
pub mod page;
pub mod probes;
pub mod pulls;
pub mod server;
pub mod webhooks;

use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;
use error::ApiError;

/// The largest body the API reads: its requests are a few hundred bytes of JSON.
pub const API_BODY_LIMIT_BYTES: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    let config = &state.config;
    let api = api_routes()
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT_BYTES));
    // Only the webhook route takes a body at the edge.
    let edge = edge_routes().layer(DefaultBodyLimit::max(config.webhook_body_limit));
    let (routes, spec) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api/v1", api)
        .merge(edge)
        .split_for_parts();
    state.metrics.known_routes(&openapi::operations(&spec));
    let request_id = HeaderName::from_static("x-request-id");
    routes
        .merge(console::routes(state.clone()))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", spec))
        .fallback(|| async {
            ApiError::NotFound {
                code: "NOT_FOUND",
                what: "route",
            }
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // One `layer` call for the whole stack: each `Router::layer` boxes every route again,
        // which costs an allocation and a clone per request. Outermost first: a panic anywhere
        // is caught; the request id is set before the span and the log lines that carry it.
        // Load shedding: past the limit a request is refused at once with 503 and Retry-After,
        // never queued; one that runs too long is cut off the same way. A stored payload
        // streams after its headers are sent, so streaming is not cut off.
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(panicked))
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(middleware::from_fn_with_state(state.clone(), observe))
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(
                    config.max_concurrent_requests,
                ))
                .timeout(config.request_timeout),
        )
        .with_state(state)
}

/// The published contract, as `router` serves it (`aa-recurring openapi` prints it).
pub fn spec() -> utoipa::openapi::OpenApi {
    OpenApiRouter::<AppState>::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api/v1", api_routes())
        .merge(edge_routes())
        .into_openapi()
}

/// `/api/v1`, for the lender's systems (bearer tokens). Registering a handler through
/// `routes!` puts it in the spec, so the spec cannot miss a route (`tests/it/contract.rs`
/// checks that nothing is registered any other way).
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(consent_sessions::create))
        .routes(routes!(consent_sessions::get))
        .routes(routes!(consents::list))
        .routes(routes!(consents::get, consents::patch))
        .routes(routes!(consents::pause))
        .routes(routes!(consents::resume))
        .routes(routes!(consents::transactions))
        .routes(routes!(pulls::create))
        .routes(routes!(pulls::list))
        .routes(routes!(pulls::get))
        .routes(routes!(pulls::insights))
        .routes(routes!(pulls::transactions))
        .routes(routes!(events::list))
        .routes(routes!(events::get))
        .routes(routes!(events::deliveries))
        .routes(routes!(events::redeliver))
        .routes(routes!(endpoints::list, endpoints::create))
        .routes(routes!(endpoints::get, endpoints::patch, endpoints::delete))
        .routes(routes!(endpoints::enable))
        .routes(routes!(endpoints::rotate_secret))
        .routes(routes!(jobs::list))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::retry))
}

/// What BankConnect, the borrower's browser and operators call.
fn edge_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(callback::handle))
        .routes(routes!(webhooks::receive))
        .routes(routes!(probes::metrics))
        .routes(routes!(probes::healthz))
        .routes(routes!(probes::readyz))
}

/// Every log line of a request carries its `request_id` (set or kept by `SetRequestIdLayer`,
/// which runs first) and its route template, never the raw path.
fn request_span(req: &axum::extract::Request) -> tracing::Span {
    let (request_id, route) = (request_id(req), route(req));
    tracing::info_span!("request", method = %req.method(), route, request_id)
}

/// The request's id, as `SetRequestIdLayer` set or kept it.
fn request_id(req: &axum::extract::Request) -> &str {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The route template the request matched (never the raw path, which holds ids).
fn route(req: &axum::extract::Request) -> &str {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
}

/// Counts the request by its route template (`http_requests_total`, its latency in
/// `http_request_duration_seconds`) and runs it with its request id in scope, so that every
/// BankConnect call it makes carries the same `x-request-id`.
async fn observe(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = route(&req).to_string();
    let request_id = request_id(&req).to_string();
    let response = crate::bankconnect::REQUEST_ID
        .scope(request_id, next.run(req))
        .await;
    state.metrics.http_request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The answer for a request the service would not or could not finish in time.
async fn overloaded(e: tower::BoxError) -> Response {
    if e.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Unavailable {
            code: "OVERLOADED",
            message: "too many requests in flight; try again shortly".into(),
            retry_after: Duration::from_secs(1),
        }
        .into_response()
    } else if e.is::<tower::timeout::error::Elapsed>() {
        ApiError::Unavailable {
            code: "REQUEST_TIMEOUT",
            message: "the request did not complete in time (REQUEST_TIMEOUT_SECS)".into(),
            retry_after: Duration::from_secs(1),
        }
        .into_response()
    } else {
        tracing::error!(error = %e, "request failed in a middleware");
        ApiError::Internal.into_response()
    }
}

/// The last line of defence: a handler that panics answers 500 in our error shape, and says
/// so loudly in the log. Every panic found is fixed at its root; this only keeps one from
/// resetting the connection.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = crate::supervise::panic_message(&*panic);
    tracing::error!(%message, "a request handler panicked");
    ApiError::Internal.into_response()
}
