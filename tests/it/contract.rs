//! The published contract against the router: every route is described, the description is
//! the one `aa-recurring openapi` prints, and errors keep one shape with one status per code.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn the_served_spec_is_openapi_3_1_and_every_route_it_names_is_served() {
    let app = TestApp::builder().start().await;
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let spec: Value = r.json().await.unwrap();
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec["openapi"]
    );
    assert_eq!(
        spec,
        serde_json::to_value(aa_recurring::http::spec()).unwrap(),
        "the served spec is the one `aa-recurring openapi` prints"
    );
    let paths = spec["paths"].as_object().unwrap();
    // Every route DESIGN fixes is described.
    for (method, path) in [
        ("post", "/api/v1/consent-sessions"),
        ("get", "/api/v1/consent-sessions/{session_id}"),
        ("get", "/api/v1/consents"),
        ("get", "/api/v1/consents/{consent_id}"),
        ("post", "/api/v1/consents/{consent_id}/pause"),
        ("post", "/api/v1/consents/{consent_id}/resume"),
        ("post", "/api/v1/consents/{consent_id}/pulls"),
        ("get", "/api/v1/pulls"),
        ("get", "/api/v1/pulls/{pull_id}"),
        ("get", "/api/v1/pulls/{pull_id}/insights"),
        ("get", "/api/v1/pulls/{pull_id}/transactions"),
        ("get", "/api/v1/events"),
        ("get", "/api/v1/events/{event_id}"),
        ("get", "/api/v1/events/{event_id}/deliveries"),
        ("post", "/api/v1/events/{event_id}/redeliver"),
        ("post", "/api/v1/webhook-endpoints"),
        ("get", "/api/v1/webhook-endpoints"),
        ("get", "/api/v1/webhook-endpoints/{endpoint_id}"),
        ("patch", "/api/v1/webhook-endpoints/{endpoint_id}"),
        ("delete", "/api/v1/webhook-endpoints/{endpoint_id}"),
        (
            "post",
            "/api/v1/webhook-endpoints/{endpoint_id}/rotate-secret",
        ),
        ("post", "/api/v1/webhook-endpoints/{endpoint_id}/enable"),
        ("get", "/api/v1/jobs"),
        ("post", "/api/v1/jobs/{job_id}/retry"),
        ("get", "/bankconnect/callback"),
        ("post", "/webhooks/bankconnect"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is missing from the spec"
        );
    }
    // And every described operation is served: none answers the router's own 404 or 405.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let url = app.url(&path.replace(['{', '}'], ""));
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app
                .http
                .request(method.clone(), url)
                .bearer_auth(TOKEN)
                .header("accept", "application/json")
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                !(status == StatusCode::NOT_FOUND && code(&body) == "NOT_FOUND"),
                "{method} {path} is described but not served"
            );
            // Every operation that can refuse lists its errors.
            let responses = op["responses"].as_object().unwrap();
            assert!(
                !path.starts_with("/api/") && path != "/webhooks/bankconnect"
                    || responses
                        .keys()
                        .any(|s| s.starts_with('4') || s.starts_with('5')),
                "{method} {path} lists no error"
            );
        }
    }
    let r = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text().await.unwrap().contains("swagger"),
        "Swagger UI at /docs"
    );
}

/// A route can only be registered through `routes!` with its `#[utoipa::path]`: any other
/// registration in the service's own code would serve a route the spec does not name. The
/// one exception is the operator console (`src/http/console`): pages for people, not the
/// API, and only under `/console`.
#[test]
fn no_route_is_registered_outside_the_described_routers() {
    let mut offenders = vec![];
    let mut stack = vec![std::path::PathBuf::from("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // The simulator is not our API.
                if !path.ends_with("sandbox") {
                    stack.push(path);
                }
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let console = path.starts_with("src/http/console");
            let lines: Vec<&str> = text.lines().collect();
            for (n, line) in lines.iter().enumerate() {
                // rustfmt may put the path on the line after `.route(`.
                let call = format!(
                    "{}{}",
                    line.trim(),
                    lines.get(n + 1).map_or("", |l| l.trim())
                );
                if [".route(", ".route_service(", ".nest_service("]
                    .iter()
                    .any(|r| line.contains(r))
                    && !(console && call.contains(".route(\"/console"))
                {
                    offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes outside the spec: {offenders:#?}"
    );
}

/// Every code the spec names for a route comes with exactly one status.
#[test]
fn one_error_code_always_has_one_status() {
    let spec = serde_json::to_value(aa_recurring::http::spec()).unwrap();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if !(status.starts_with('4') || status.starts_with('5')) {
                    continue;
                }
                let description = response["description"].as_str().unwrap_or_default();
                for word in description
                    .split(|c: char| !(c.is_ascii_uppercase() || c == '_' || c == '<' || c == '>'))
                {
                    if word.len() < 4 || !word.contains('_') && word != "UNAUTHORIZED" {
                        continue;
                    }
                    if let Some(other) = seen.insert(word.to_string(), status.clone())
                        && other != *status
                    {
                        panic!("{word} is {other} somewhere and {status} at {method} {path}");
                    }
                }
            }
        }
    }
    assert!(seen.contains_key("FAIR_USE_LIMIT"));
    assert_eq!(seen["CONSENT_NOT_ACTIVE"], "409");
}
