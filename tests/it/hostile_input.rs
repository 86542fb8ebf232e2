//! No client input breaks the service: every route answers 2xx or 4xx to anything, on both
//! backends; the edges are bounded (body sizes, slow clients, load); the upstream is trusted no
//! further than it must be.

use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;
use aa_recurring::config::WebhookVerify;
use aa_recurring::webhook_auth::sign;
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every byte percent-encoded, so any string reaches the server as it is.
fn enc(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

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
    let app = spawn_app().await;
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
    let app = spawn_with(&[("WEBHOOK_VERIFY", "standard-webhooks")]).await;
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
    let app = spawn_with(&[("WEBHOOK_BODY_LIMIT_BYTES", "1024")]).await;
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
    let app = spawn_app().await;
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
    let app = std::sync::Arc::new(spawn_with(&[("MAX_CONCURRENT_REQUESTS", "1")]).await);
    // The journey's upstream call holds the only slot for a while.
    app.sandbox_settings(json!({"latency_ms": 1500})).await;
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
    let app = spawn_with(&[
        ("REQUEST_TIMEOUT_SECS", "2"),
        ("BANKCONNECT_TIMEOUT_SECS", "1"),
    ])
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
    let app = spawn_with(&[("HEADER_READ_TIMEOUT_SECS", "1")]).await;
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
    let app = spawn_with(&[
        ("BANKCONNECT_BASE_URL", &evil),
        ("BANKCONNECT_API_KEY", "k"),
        ("BANKCONNECT_SERVER_HASH", "h"),
        ("WEBHOOK_SECRETS", WEBHOOK_SECRET),
    ])
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

/// One service for every generated case of this process (the Postgres pass has its own).
fn shared() -> &'static (tokio::runtime::Runtime, TestApp, String) {
    static SHARED: OnceLock<(tokio::runtime::Runtime, TestApp, String)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (app, consent) = rt.block_on(async {
            let app = spawn_app().await;
            let consent = app.approved_consent("cust-prop", json!({})).await;
            (app, consent)
        });
        (rt, app, consent)
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,20}",
        "[0-9+-]{1,8}-[0-9]{1,3}-[0-9]{1,3}",
        "(19|20|99)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
        Just("\u{0}".to_string()),
        Just("x".repeat(600)),
        Just(String::new()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0i64..100).prop_map(Value::from),
        text().prop_map(Value::String),
    ]
}

/// Sends every kind of request with the generated values; each must answer below 500.
async fn throw(app: &TestApp, consent: &str, s: [String; 4], n: [Value; 2]) {
    let [a, b, c, d] = &s;
    let q = |pairs: &[(&str, &str)]| {
        let mut url = url::Url::parse("http://x/").unwrap();
        url.query_pairs_mut().extend_pairs(pairs);
        url.query().unwrap_or_default().to_string()
    };
    let requests: Vec<reqwest::RequestBuilder> =
        vec![
        app.http.post(app.url("/api/v1/consent-sessions")).json(&json!({
            "link_id": a, "tenure_months": n[0], "frequency_unit": b, "frequency_value": n[1],
            "from_date": c, "to_date": d, "bank_name": b, "mobile_number": c, "use_case": d,
        })),
        app.http.get(app.url(&format!("/api/v1/consents/{}", enc(a)))),
        app.http.get(app.url(&format!(
            "/api/v1/consents?{}",
            q(&[("link_id", a), ("status", b), ("limit", c), ("cursor", d)])
        ))),
        app.http.get(app.url(&format!(
            "/api/v1/pulls?{}",
            q(&[("consent_id", a), ("status", b), ("cursor", d)])
        ))),
        app.http.get(app.url(&format!("/api/v1/pulls/{}/insights", enc(a)))),
        app.http
            .post(app.url(&format!("/api/v1/consents/{consent}/pulls")))
            .header("idempotency-key", "k".repeat(300))
            .json(&json!({"from": c, "to": d, "kind": b})),
        app.http
            .post(app.url(&format!("/api/v1/consents/{consent}/pulls")))
            .json(&json!({"from": c, "to": d})),
        app.http.get(app.url(&format!(
            "/api/v1/consents/{consent}/transactions?{}",
            q(&[("from", c), ("to", d), ("cursor", a)])
        ))),
        app.http
            .patch(app.url(&format!("/api/v1/consents/{consent}")))
            .json(&json!({"pull_interval": n[0]})),
        app.http
            .patch(app.url(&format!("/api/v1/consents/{consent}")))
            .json(&json!({"pull_interval": a})),
        app.http
            .get(app.url(&format!(
                "/bankconnect/callback?{}",
                q(&[("session_id", a), ("success", b)])
            )))
            .header("accept", "application/json"),
        app.http
            .post(app.url("/webhooks/bankconnect"))
            .header("x-webhook-timestamp", n[0].to_string())
            .header("x-webhook-signature", format!("sha256={}", enc(b)))
            .body(a.clone()),
        app.http
            .post(app.url(&format!("/api/v1/consents/{}/resume", enc(a)))),
    ];
    for r in requests {
        let r = r.bearer_auth(TOKEN).build().unwrap();
        let what = format!("{} {}", r.method(), r.url());
        let answer = app
            .http
            .execute(r)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        assert!(status.as_u16() < 500, "{what} answered {status}: {body}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn no_input_gets_a_5xx(s in [text(), text(), text(), text()], n in [number(), number()]) {
        let (rt, app, consent) = shared();
        rt.block_on(throw(app, consent, s, n));
    }
}
