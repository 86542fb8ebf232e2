//! The published contract: OpenAPI 3.1, generated from the handlers' `#[utoipa::path]`
//! attributes as `http::router` registers them (utoipa-axum), so a route cannot be served
//! without being described. Served at `/openapi.json`, shown at `/docs` (Swagger UI from
//! vendored assets) and printed by `aa-recurring openapi`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Every error: `{"error": {"code", "message"}}`. The codes a route answers are listed with
/// each of its responses; one code always comes with one status.
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "CONSENT_NOT_FOUND", "message": "consent not found"}}))]
#[allow(dead_code)] // a description only: `ApiError` writes the body
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `FAIR_USE_LIMIT`.
    code: String,
    /// For people; may change between versions.
    message: String,
    /// `FAIR_USE_LIMIT` only: when the next pull is allowed (also as `Retry-After`).
    #[schema(format = DateTime)]
    next_pull_allowed_at: Option<String>,
}

/// The errors any `/api/v1` route may answer besides its own.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ApiErrors {
    /// `INVALID_QUERY`, `INVALID_JSON`, `UNREADABLE_BODY` or `INVALID_CURSOR`: the request
    /// cannot be read.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `UNAUTHORIZED`: a valid bearer token is required.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `OVERLOADED`, `REQUEST_TIMEOUT`, `DATABASE_UNAVAILABLE` or `UPSTREAM_UNAVAILABLE`: try
    /// again after `Retry-After` seconds.
    #[response(status = 503, headers(("retry-after" = u64, description = "seconds")))]
    Unavailable(ErrorBody),
}

/// Bearer tokens (`API_TOKENS`) for `/api/v1`.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "aa-recurring",
        description = "A lender's backend for FinBox BankConnect Account Aggregator recurring pulls: consent journeys, consents, pulls within Sahamati fair use, the enriched data, events and webhooks to your systems, and the job queue. Errors are always `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Proprietary")
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody)),
    tags(
        (name = "journeys", description = "Start a recurring-consent journey and see how it ended"),
        (name = "consents", description = "Consents, their schedule, usage and timeline"),
        (name = "pulls", description = "Pulls and the data they fetched"),
        (name = "events", description = "The event feed and its deliveries"),
        (name = "webhook endpoints", description = "Your endpoints for outbound webhooks"),
        (name = "jobs", description = "The durable job queue, for operators"),
        (name = "bankconnect", description = "What BankConnect and the borrower's browser call"),
        (name = "operations", description = "Probes, metrics and this description"),
    )
)]
pub struct ApiDoc;

/// Every operation of the spec as `(METHOD, path template, first success status)`: the routes
/// the metrics show at 0 from the start, and what the contract test walks.
pub fn operations(spec: &utoipa::openapi::OpenApi) -> Vec<(String, String, u16)> {
    let mut out = vec![];
    for (path, item) in &spec.paths.paths {
        let methods = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PATCH", &item.patch),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
        ];
        for (method, op) in methods {
            let Some(op) = op else { continue };
            let success = op
                .responses
                .responses
                .keys()
                .filter_map(|k| k.parse::<u16>().ok())
                .find(|s| (200..300).contains(s))
                .unwrap_or(200);
            out.push((method.to_string(), path.clone(), success));
        }
    }
    out
}
