//! No client input breaks the service: every route answers 2xx or 4xx to anything, on both
//! backends; the edges are bounded (body sizes, slow clients, load); the upstream is trusted no
//! further than it must be.

use std::time::Duration;

use crate::common::*;
use aa_recurring::config::WebhookVerify;
use aa_recurring::webhook_auth::sign;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn status_of(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    decode(
        r.send()
            .await
            .expect("the server answers (no reset, no panic)"),
    )
    .await
}

#[tokio::test]
async fn the_inputs_that_used_to_break_the_service_get_a_4xx() {
    let app = TestApp::builder().start().await;
    let consent = app.approved_consent("cust-hostile", json!({})).await;

    // NUL and other control characters in a link id.
    for bad in ["a\u{0}b", "line\nbreak", "\u{7f}"] {
        let (status, body) = app
            .post(
                "/api/v1/consent-sessions",
                &json!({"link_id": bad, "tenure_months": 12, "frequency_unit": "month", "frequency_value": 5}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {body}");
        assert_eq!(code(&body), "INVALID_LINK_ID");
    }
    assert_eq!(
        app.upstream_calls("session").await,
        1,
        "only the setup's journey went upstream"
    );

    // Ids that cannot name anything.
    for path in [
        "/api/v1/consents/%00",
        "/api/v1/consents/%FF%FE",
        "/api/v1/pulls/%00",
        "/api/v1/consent-sessions/%00",
        "/api/v1/consents/%00/pause",
    ] {
        let r = if path.ends_with("pause") {
            app.http.post(app.url(path))
        } else {
            app.http.get(app.url(path))
        };
        let (status, body) = status_of(r.bearer_auth(TOKEN)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, body) = status_of(
        app.http
            .get(app.url("/bankconnect/callback?session_id=%00&success=true"))
            .header("accept", "application/json"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(code(&body), "UNKNOWN_SESSION");
    for (path, want) in [
        ("/api/v1/consents?link_id=%00", "INVALID_LINK_ID"),
        ("/api/v1/pulls?consent_id=%00", "INVALID_CONSENT_ID"),
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert_eq!(code(&body), want);
    }

    // Dates at the ends of what chrono can hold.
    for window in [
        json!({"to": "-262143-01-01"}),
        json!({"from": "+262142-12-30", "to": "+262142-12-31"}),
        json!({"from": "0000-01-01"}),
    ] {
        let (status, body) = app.start_pull(&consent, Some(window.clone()), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{window}: {body}");
        assert_eq!(code(&body), "INVALID_DATE_FORMAT");
    }
    for q in ["to=%2B262142-12-31", "from=-262143-01-01", "to=9999-12-31"] {
        let (status, body) = app
            .get(&format!("/api/v1/consents/{consent}/transactions?{q}"))
            .await;
        assert!(
            status.is_client_error() || status.is_success(),
            "{q}: {status} {body}"
        );
    }
    // A forged timeline cursor carrying a NUL byte.
    let cursor = base64_url(b"txn:2025-01-01\x00|1");
    let (status, body) = app
        .get(&format!(
            "/api/v1/consents/{consent}/transactions?cursor={cursor}"
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "INVALID_CURSOR");

    // A duration too long to count in seconds.
    let r = app
        .http
        .patch(app.url(&format!("/api/v1/consents/{consent}")))
        .bearer_auth(TOKEN)
        .json(&json!({"pull_interval": "300000000000 years"}));
    let (status, body) = status_of(r).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(code(&body), "INVALID_PULL_INTERVAL");

    // `Bearer` in any case.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = app
            .http
            .get(app.url("/api/v1/consents"))
            .header("authorization", format!("{scheme} {TOKEN}"));
        let (status, body) = status_of(r).await;
        assert_eq!(status, StatusCode::OK, "{scheme}: {body}");
    }

    // An authentic webhook whose routing fields could not be ids is stored and acknowledged,
    // and does not fail the deliveries committed with it.
    let odd = json!({"session_id": "s\u{0}1", "event_name": "E\u{0}", "accounts": []});
    let fine = json!({"session_id": "normal-session", "event_name": "SOMETHING"});
    let (a, b) = tokio::join!(
        post_signed(&app, &odd, "msg-odd"),
        post_signed(&app, &fine, "msg-fine")
    );
    assert_eq!(a.0, StatusCode::OK, "{}", a.1);
    assert_eq!(b.0, StatusCode::OK, "{}", b.1);
}

#[tokio::test]
async fn a_webhook_id_too_long_to_index_is_kept_by_its_hash() {
    let app = TestApp::builder()
        .env(&[("WEBHOOK_VERIFY", "standard-webhooks")])
        .start()
        .await;
    let body = serde_json::to_vec(&json!({"session_id": "s-long", "event_name": "X"})).unwrap();
    let long_id = "x".repeat(5000);
    let mut answers = vec![];
    for _ in 0..2 {
        let mut r = app
            .http
            .post(app.url("/webhooks/bankconnect"))
            .header("content-type", "application/json");
        for (k, v) in sign(
            WebhookVerify::StandardWebhooks,
            aa_recurring::config::SANDBOX_STANDARD_WEBHOOK_SECRET,
            &long_id,
            chrono::Utc::now().timestamp(),
            &body,
        ) {
            r = r.header(k, v);
        }
        answers.push(status_of(r.body(body.clone())).await);
    }
    assert_eq!(answers[0].0, StatusCode::OK, "{}", answers[0].1);
    assert_eq!(answers[0].1["status"], "accepted");
    assert_eq!(answers[1].1["status"], "duplicate", "{}", answers[1].1);
}

async fn post_signed(app: &TestApp, body: &Value, id: &str) -> (StatusCode, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let now = chrono::Utc::now().timestamp();
    let mut r = app
        .http
        .post(app.url("/webhooks/bankconnect"))
        .header("content-type", "application/json");
    for (k, v) in sign(
        WebhookVerify::HmacSha256,
        "sandbox-webhook-secret",
        id,
        now,
        &bytes,
    ) {
        r = r.header(k, v);
    }
    status_of(r.body(bytes)).await
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn bodies_past_their_limit_are_413_in_the_error_shape() {
    let app = TestApp::builder()
        .env(&[("WEBHOOK_BODY_LIMIT_BYTES", "1024")])
        .start()
        .await;
    let big = json!({"session_id": "s", "padding": "x".repeat(2000)});
    let (status, body) = post_signed(&app, &big, "msg-big").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(code(&body), "PAYLOAD_TOO_LARGE");
    let (status, body) = app
        .post(
            "/api/v1/consent-sessions",
            &json!({"link_id": "x".repeat(100_000)}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(code(&body), "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn refused_webhooks_are_counted_by_reason() {
    let app = TestApp::builder().start().await;
    let r = app
        .http
        .post(app.url("/webhooks/bankconnect"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let now = chrono::Utc::now().timestamp().to_string();
    let r = app
        .http
        .post(app.url("/webhooks/bankconnect"))
        .header("x-webhook-timestamp", &now)
        .header("x-webhook-signature", format!("sha256={}", "0".repeat(64)))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let sample =
        |reason: &str| format!("aa_recurring_webhook_rejections_total{{reason=\"{reason}\"}}");
    assert_eq!(app.metric(&sample("missing_header")).await, 1);
    assert_eq!(app.metric(&sample("bad_signature")).await, 1);
    assert_eq!(app.metric(&sample("stale_timestamp")).await, 0);
}

#[tokio::test]
async fn past_the_concurrency_limit_requests_are_shed_with_503_and_retry_after() {
    let app = std::sync::Arc::new(
        TestApp::builder()
            .env(&[("MAX_CONCURRENT_REQUESTS", "1")])
            .start()
            .await,
    );
    // The journey's upstream call holds the only slot for a while.
    app.sandbox_settings(SandboxSettings {
        latency_ms: 1500,
        ..Default::default()
    })
    .await;
    let holder = {
        let app = app.clone();
        tokio::spawn(async move { app.start_journey("cust-slow").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let (_, body) = decode(r).await;
    assert_eq!(code(&body), "OVERLOADED");
    holder.await.unwrap();
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_request_that_takes_too_long_is_cut_off_with_503() {
    let app = TestApp::builder()
        .env(&[
            ("REQUEST_TIMEOUT_SECS", "2"),
            ("BANKCONNECT_TIMEOUT_SECS", "1"),
        ])
        .start()
        .await;
    // A client that announces a body and never sends it.
    let mut tcp = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(
        format!(
            "POST /api/v1/consent-sessions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .expect("answered within the request timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = TestApp::builder()
        .env(&[("HEADER_READ_TIMEOUT_SECS", "1")])
        .start()
        .await;
    let mut tcp = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// An upstream that answers every call with a redirect to `target`.
async fn redirecting_upstream(target: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move {
            (
                StatusCode::FOUND,
                [("location", format!("{target}/v1/session/"))],
            )
        }
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

#[tokio::test]
async fn redirects_from_the_upstream_are_not_followed() {
    let elsewhere = spawn_sandbox().await;
    let evil = redirecting_upstream(elsewhere.clone()).await;
    let app = TestApp::builder()
        .env(&[
            ("BANKCONNECT_BASE_URL", &evil),
            ("BANKCONNECT_API_KEY", "k"),
            ("BANKCONNECT_SERVER_HASH", "h"),
            ("WEBHOOK_SECRETS", WEBHOOK_SECRET),
        ])
        .start()
        .await;
    let (status, body) = app
        .post(
            "/api/v1/consent-sessions",
            &json!({"link_id": "cust-redirect", "tenure_months": 12, "frequency_unit": "month", "frequency_value": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // The credentials never reached the redirect's target.
    let calls = reqwest::get(format!("{elsewhere}/_control/calls"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(calls["calls"]["session"], Value::Null, "{calls}");
}

#[tokio::test]
async fn errors_keep_one_shape_and_a_fair_use_refusal_says_when_to_come_back() {
    let app = TestApp::builder().start().await;
    for (method, path) in [
        (reqwest::Method::DELETE, "/api/v1/consents"),
        (reqwest::Method::POST, "/healthz"),
    ] {
        let r = app
            .http
            .request(method.clone(), app.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let (status, body) = decode(r).await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
        assert_eq!(code(&body), "METHOD_NOT_ALLOWED");
    }
    let consent = app
        .approved_consent(
            "cust-errors",
            json!({"use_case": "collections", "frequency_unit": "day", "frequency_value": 1}),
        )
        .await;
    app.pull(&consent).await;
    let r = app
        .http
        .post(app.url(&format!("/api/v1/consents/{consent}/pulls")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, body) = decode(r).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "FAIR_USE_LIMIT");
    let next = chrono::DateTime::parse_from_rfc3339(
        body["error"]["next_pull_allowed_at"].as_str().unwrap(),
    )
    .unwrap();
    let wait = (next.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
    assert!(
        retry_after >= 1 && (retry_after as i64 - wait).abs() <= 2,
        "Retry-After {retry_after} against {wait}"
    );
    // A consent that cannot be pulled is a conflict, as for pause and resume.
    app.post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
        .await;
    let (status, body) = app.start_pull(&consent, None, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "CONSENT_NOT_ACTIVE");
}
