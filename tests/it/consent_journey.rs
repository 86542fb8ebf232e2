//! The consent journey, black-box: the service on port 0 against the sandbox over HTTP.

use crate::common::*;
use chrono::{DateTime, Months, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn instant(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn happy_path_through_the_sdk_page_stores_active_consents() {
    let app = TestApp::builder().start().await;
    let (session_id, redirect_url) = app.start_journey("cust-happy").await;
    assert!(
        redirect_url.starts_with(&app.sandbox_base),
        "{redirect_url}"
    );

    let (status, body) = app.decide(&redirect_url, "approve").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["session_id"], session_id.as_str());
    let consents = body["consents"].as_array().unwrap();
    assert!(!consents.is_empty());
    for c in consents {
        assert_eq!(c["status"], "active");
        assert_eq!(c["link_id"], "cust-happy");
        assert_eq!(c["use_case"], "monitoring");
        assert_eq!(c["tenure_months"], 12);
        assert_eq!(c["frequency_unit"], "month");
        assert_eq!(c["frequency_value"], 5);
        let masked = c["masked_account_number"].as_str().unwrap();
        assert!(masked.starts_with("XXXX"), "{masked}");
        let approved = instant(&c["approved_at"]);
        let ist = approved.with_timezone(&aa_recurring::domain::ist());
        let expected = (ist + Months::new(12)).with_timezone(&Utc);
        assert_eq!(instant(&c["expires_at"]), expected);
        assert!(instant(&c["next_pull_at"]) > approved);
        assert_eq!(c["usage"]["pulls_allowed"], 5);
    }

    // The consents API shows the same consents, one by one and as a list.
    let first = consents[0]["consent_id"].as_str().unwrap();
    let (status, one) = app.get(&format!("/api/v1/consents/{first}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["consent_id"], first);
    let (_, list) = app.get("/api/v1/consents?link_id=cust-happy").await;
    assert_eq!(list["items"].as_array().unwrap().len(), consents.len());
    assert_eq!(list["next_cursor"], Value::Null);

    // A reload or replay of the callback creates nothing new and asks upstream nothing more.
    let calls_before = app.upstream_calls("get_recurring_consent_details").await;
    for _ in 0..3 {
        let r = app
            .http
            .get(app.url(&format!(
                "/bankconnect/callback?success=true&session_id={session_id}"
            )))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let (status, again) = decode(r).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again["consents"].as_array().unwrap().len(), consents.len());
    }
    // A stale denial after the approval changes nothing either.
    let (_, after_deny) = decode(
        app.http
            .get(app.url(&format!(
                "/bankconnect/callback?success=false&session_id={session_id}"
            )))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(after_deny["status"], "completed");
    let (_, list) = app.get("/api/v1/consents?link_id=cust-happy").await;
    assert_eq!(list["items"].as_array().unwrap().len(), consents.len());
    assert_eq!(
        app.upstream_calls("get_recurring_consent_details").await,
        calls_before
    );
}

#[tokio::test]
async fn a_browser_gets_a_result_page_or_goes_to_the_frontend() {
    let app = TestApp::builder().start().await;
    let (session_id, redirect_url) = app.start_journey("cust-page").await;
    app.decide(&redirect_url, "approve").await;
    let page = app
        .http
        .get(app.url(&format!(
            "/bankconnect/callback?success=true&session_id={session_id}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("Consent approved"), "{html}");
    assert!(html.contains("XXXXXXXX"), "{html}");

    let app = TestApp::builder()
        .env(&[(
            "FRONTEND_RETURN_URL",
            "https://lender.example/after-consent?from=aa",
        )])
        .start()
        .await;
    let (session_id, redirect_url) = app.start_journey("cust-frontend").await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let to_callback = press(&no_redirects, &redirect_url, "approve", false).await;
    let callback = to_callback.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    let r = no_redirects.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!(
            "https://lender.example/after-consent?from=aa&session_id={session_id}&status=completed"
        )
    );
}

#[tokio::test]
async fn denial_marks_the_session_abandoned_and_stores_nothing() {
    let app = TestApp::builder().start().await;
    let (session_id, redirect_url) = app.start_journey("cust-deny").await;
    let (status, body) = app.decide(&redirect_url, "deny").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "abandoned");
    assert_eq!(body["session_id"], session_id.as_str());
    assert_eq!(body["consents"], json!([]));
    let (_, list) = app.get("/api/v1/consents?link_id=cust-deny").await;
    assert_eq!(list["items"], json!([]));
    assert_eq!(app.upstream_calls("get_recurring_consent_details").await, 0);

    // A denial without a session id still sends the browser on.
    let r = app
        .http
        .get(app.url("/bankconnect/callback?success=false"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let (status, body) = decode(r).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "abandoned");
}

#[tokio::test]
async fn an_unknown_session_is_refused_without_an_upstream_call() {
    let app = TestApp::builder().start().await;
    for success in ["true", "false"] {
        let r = app
            .http
            .get(app.url(&format!(
                "/bankconnect/callback?success={success}&session_id=8d5ea22b-0000-0000-0000-000000000000"
            )))
            .send()
            .await
            .unwrap();
        let (status, body) = decode(r).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(code(&body), "UNKNOWN_SESSION");
    }
    assert_eq!(app.upstream_calls("get_recurring_consent_details").await, 0);
}

#[tokio::test]
async fn an_upstream_failure_at_callback_time_is_finished_by_a_retry() {
    let app = TestApp::builder().start().await;
    let (session_id, redirect_url) = app.start_journey("cust-outage").await;
    app.inject_fault("get_recurring_consent_details", 503, 2)
        .await;

    let (status, body) = app.decide(&redirect_url, "approve").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The first attempt failed: the approval is recorded, the consents are still to come.
    assert_eq!(body["status"], "capturing", "{body}");
    assert_eq!(body["error_code"], "SANDBOX_FAULT");
    assert_eq!(body["consents"], json!([]));

    let list = app
        .eventually("/api/v1/consents?link_id=cust-outage", 20, |b| {
            b["items"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
    for c in list["items"].as_array().unwrap() {
        assert_eq!(c["status"], "active");
        assert_eq!(c["session_id"], session_id.as_str());
    }
    // Two failed attempts and one that worked.
    assert_eq!(app.upstream_calls("get_recurring_consent_details").await, 3);
    assert_eq!(
        app.settled_job_counts().await,
        vec![("done".to_string(), 1)]
    );
}

#[tokio::test]
async fn an_approval_recorded_during_an_outage_survives_a_restart() {
    let sandbox = spawn_sandbox().await;
    let upstream = [
        ("BANKCONNECT_BASE_URL", sandbox.as_str()),
        ("BANKCONNECT_API_KEY", "k"),
        ("BANKCONNECT_SERVER_HASH", "h"),
    ];
    let mut app = TestApp::builder().env(&upstream).start().await;
    let (_, redirect_url) = app.start_journey("cust-restart").await;
    app.inject_fault("get_recurring_consent_details", 500, 1000)
        .await;
    let (_, body) = app.decide(&redirect_url, "approve").await;
    assert_eq!(body["status"], "capturing", "{body}");

    // The service goes down while the upstream is still failing, and comes back after it healed.
    app.stop().await;
    app.clear_faults().await;
    let app = TestApp::builder()
        .database(app.db_url.clone(), app.dir.clone())
        .env(&upstream)
        .start()
        .await;
    let list = app
        .eventually("/api/v1/consents?link_id=cust-restart", 30, |b| {
            b["items"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
    assert_eq!(list["items"][0]["status"], "active");
}

#[tokio::test]
async fn every_api_route_needs_a_valid_token() {
    let app = TestApp::builder().start().await;
    let routes = [
        ("POST", "/api/v1/consent-sessions"),
        ("GET", "/api/v1/consents"),
        ("GET", "/api/v1/consents/some-id"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong-token"), Some("test-token-but-longer")] {
            let mut req = app
                .http
                .request(method.parse().unwrap(), app.url(path))
                .json(&json!({}));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let (status, body) = decode(req.send().await.unwrap()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert_eq!(code(&body), "UNAUTHORIZED");
        }
    }
    // Basic auth with the right secret is still not a bearer token.
    let r = app
        .http
        .get(app.url("/api/v1/consents"))
        .basic_auth(TOKEN, None::<&str>)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.upstream_calls("session").await, 0);
}

#[tokio::test]
async fn bad_input_gets_a_coded_error_and_no_upstream_call() {
    let app = TestApp::builder().start().await;
    let good =
        json!({"link_id": "c", "tenure_months": 12, "frequency_unit": "day", "frequency_value": 1});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let cases = [
        (with("tenure_months", json!(0)), "INVALID_TENURE"),
        (with("tenure_months", json!(61)), "INVALID_TENURE"),
        (with("frequency_value", json!(6)), "INVALID_FREQUENCY_VALUE"),
        (
            with("frequency_unit", json!("week")),
            "INVALID_FREQUENCY_UNIT",
        ),
        (with("link_id", json!("")), "INVALID_LINK_ID"),
        (with("use_case", json!("lending")), "INVALID_USE_CASE"),
        (with("journey_mode", json!("twice")), "INVALID_JOURNEY_MODE"),
        (
            with("from_date", json!("01/10/2025")),
            "INVALID_DATE_FORMAT",
        ),
        (with("mobile_number", json!("123")), "INVALID_MOBILE_NUMBER"),
        (with("tenure_months", json!("twelve")), "INVALID_BODY"),
        (with("unexpected", json!(1)), "INVALID_BODY"),
    ];
    for (body, want) in cases {
        let (status, answer) = app.post("/api/v1/consent-sessions", &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {answer}"
        );
        assert_eq!(code(&answer), want, "{body}");
    }
    let r = app
        .http
        .post(app.url("/api/v1/consent-sessions"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, answer) = decode(r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&answer), "INVALID_JSON");
    let r = app
        .http
        .post(app.url("/api/v1/consent-sessions"))
        .bearer_auth(TOKEN)
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    let (status, answer) = decode(r).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(code(&answer), "UNSUPPORTED_MEDIA_TYPE");
    // None of that reached the upstream.
    assert_eq!(app.upstream_calls("session").await, 0);

    for (path, status, want) in [
        (
            "/bankconnect/callback?success=maybe&session_id=x",
            StatusCode::BAD_REQUEST,
            "INVALID_CALLBACK",
        ),
        (
            "/bankconnect/callback?session_id=x",
            StatusCode::BAD_REQUEST,
            "INVALID_CALLBACK",
        ),
        (
            "/bankconnect/callback?success=true",
            StatusCode::BAD_REQUEST,
            "MISSING_SESSION_ID",
        ),
        (
            "/api/v1/consents?status=happy",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_STATUS",
        ),
        (
            "/api/v1/consents?limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_LIMIT",
        ),
        (
            "/api/v1/consents?limit=1000",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_LIMIT",
        ),
        (
            "/api/v1/consents?limit=ten",
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
        ),
        (
            "/api/v1/consents?cursor=bogus",
            StatusCode::BAD_REQUEST,
            "INVALID_CURSOR",
        ),
        (
            "/api/v1/consents?colour=red",
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
        ),
        (
            "/api/v1/consents/no-such-consent",
            StatusCode::NOT_FOUND,
            "CONSENT_NOT_FOUND",
        ),
        ("/api/v1/nothing-here", StatusCode::NOT_FOUND, "NOT_FOUND"),
    ] {
        let (got, body) = app.get(path).await;
        assert_eq!(got, status, "{path} → {body}");
        assert_eq!(code(&body), want, "{path}");
    }
    assert_eq!(app.upstream_calls("get_recurring_consent_details").await, 0);
}

#[tokio::test]
async fn consents_page_by_cursor_and_filter_by_status() {
    let app = TestApp::builder().start().await;
    for i in 0..3 {
        let (_, redirect_url) = app.start_journey(&format!("cust-page-{i}")).await;
        let (_, body) = app.decide(&redirect_url, "approve").await;
        assert_eq!(body["status"], "completed");
    }
    let (_, all) = app.get("/api/v1/consents?limit=200").await;
    let all: Vec<String> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["consent_id"].as_str().unwrap().to_string())
        .collect();
    assert!(all.len() >= 3);

    let mut walked = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/consents?limit=2&cursor={c}"),
            None => "/api/v1/consents?limit=2".to_string(),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        walked.extend(
            items
                .iter()
                .map(|c| c["consent_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(walked, all);

    let (_, active) = app.get("/api/v1/consents?status=active&limit=200").await;
    assert_eq!(active["items"].as_array().unwrap().len(), all.len());
    let (_, paused) = app.get("/api/v1/consents?status=paused").await;
    assert_eq!(paused["items"], json!([]));
}

#[tokio::test]
async fn probes_answer() {
    let app = TestApp::builder().start().await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ready");
}
