//! The simulator speaks BankConnect's language: paths, auth, bodies, error shapes and codes.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn session_body() -> Value {
    json!({
        "link_id": "cust", "api_key": "k", "redirect_url": "https://lender.example/cb", "mode": "aa",
        "aa_journey_mode": "only_recurring", "aa_recurring_tenure_month_count": 12,
        "aa_recurring_frequency_unit": "day", "aa_recurring_frequency_value": 1
    })
}

async fn post_session(base: &str, body: &Value) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/session/"))
        .header("x-api-key", "k")
        .header("server-hash", "h")
        .json(body)
        .send()
        .await
        .unwrap();
    decode(r).await
}

#[tokio::test]
async fn the_sandbox_requires_auth_headers() {
    let base = spawn_sandbox().await;
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/session/"))
        .json(&session_body())
        .send()
        .await
        .unwrap();
    let (status, body) = decode(r).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"detail": "Authentication credentials were not provided."})
    );

    // In-process, the sandbox insists on the configured credentials.
    let app = TestApp::builder().start().await;
    let r = app
        .http
        .post(format!("{}/v1/session/", app.sandbox_base))
        .header("x-api-key", "not-the-key")
        .header("server-hash", "not-the-hash")
        .json(&session_body())
        .send()
        .await
        .unwrap();
    let (status, body) = decode(r).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "ACCESS_DENIED");
}

#[tokio::test]
async fn the_sandbox_validates_recurring_parameters_and_dates() {
    let base = spawn_sandbox().await;
    let with = |k: &str, v: Value| {
        let mut b = session_body();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = session_body();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let cases = [
        (
            with("aa_recurring_tenure_month_count", json!(0)),
            "INVALID_AA_PARAMETER",
        ),
        (
            with("aa_recurring_frequency_value", json!(9)),
            "INVALID_AA_PARAMETER",
        ),
        (
            with("aa_recurring_frequency_unit", json!("week")),
            "INVALID_AA_PARAMETER",
        ),
        (
            with("aa_journey_mode", json!("sometimes")),
            "INVALID_AA_PARAMETER",
        ),
        (
            without("aa_recurring_frequency_unit"),
            "MISSING_AA_PARAMETER",
        ),
        (
            without("aa_recurring_tenure_month_count"),
            "MISSING_AA_PARAMETER",
        ),
        (
            with("from_date", json!("2025-10-10")),
            "INVALID_DATE_FORMAT",
        ),
        (with("redirect_url", json!("not a url")), "INVALID_URL"),
    ];
    for (body, want) in cases {
        let (status, answer) = post_session(&base, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(code(&answer), want, "{body}");
    }
    let mut reversed = session_body();
    reversed["from_date"] = json!("10/11/2025");
    reversed["to_date"] = json!("10/10/2025");
    let (status, answer) = post_session(&base, &reversed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&answer), "INVALID_DATE_RANGE");

    let mut good = session_body();
    good["from_date"] = json!("10/10/2025");
    good["to_date"] = json!("10/11/2025");
    let (status, answer) = post_session(&base, &good).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        answer["redirect_url"]
            .as_str()
            .unwrap()
            .contains(answer["session_id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn consent_details_follow_the_journey() {
    let base = spawn_sandbox().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let details = |id: &str| {
        http.post(format!(
            "{base}/v1/account_aggregator/get_recurring_consent_details/"
        ))
        .query(&[("session_id", id)])
        .header("x-api-key", "k")
        .header("server-hash", "h")
        .send()
    };
    let (status, body) = decode(details("no-such-session").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "INVALID_SESSION_ID");

    let (_, created) = post_session(&base, &session_body()).await;
    let id = created["session_id"].as_str().unwrap();
    let (_, body) = decode(details(id).await.unwrap()).await;
    assert_eq!(body, json!({"consent_details": []}));

    let r = press(
        &http,
        created["redirect_url"].as_str().unwrap(),
        "approve",
        false,
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("https://lender.example/cb?success=true&session_id={id}")
    );
    let (_, body) = decode(details(id).await.unwrap()).await;
    let list = body["consent_details"].as_array().unwrap();
    assert!(!list.is_empty());
    for c in list {
        assert_eq!(c["tenure_month_count"], 12);
        assert_eq!(c["frequency_unit"], "day");
        assert_eq!(c["frequency_value"], 1);
        assert!(
            c["masked_account_number"]
                .as_str()
                .unwrap()
                .starts_with("XXXXXXXX")
        );
    }
    // Approving again returns the same consents: the data is deterministic.
    press(
        &http,
        created["redirect_url"].as_str().unwrap(),
        "approve",
        false,
    )
    .await;
    let (_, again) = decode(details(id).await.unwrap()).await;
    assert_eq!(again, body);
}

#[tokio::test]
async fn fetch_recurring_enforces_fair_use_revocation_and_dates() {
    let base = spawn_sandbox().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut body = session_body();
    body["aa_recurring_frequency_value"] = json!(2);
    let (_, created) = post_session(&base, &body).await;
    press(
        &http,
        created["redirect_url"].as_str().unwrap(),
        "approve",
        false,
    )
    .await;
    let id = created["session_id"].as_str().unwrap();
    let (_, details) = decode(
        http.post(format!(
            "{base}/v1/account_aggregator/get_recurring_consent_details/"
        ))
        .query(&[("session_id", id)])
        .header("x-api-key", "k")
        .header("server-hash", "h")
        .send()
        .await
        .unwrap(),
    )
    .await;
    let consent = details["consent_details"][0]["consent_id"]
        .as_str()
        .unwrap()
        .to_string();
    let today = chrono::Utc::now()
        .with_timezone(&aa_recurring::domain::ist())
        .date_naive();
    let wire = |d: chrono::NaiveDate| d.format("%d/%m/%Y").to_string();
    let fetch = |consent: String, from: String, to: String| {
        http.post(format!(
            "{base}/v1/account_aggregator/fetch_recurring_aa_data/"
        ))
        .header("x-api-key", "k")
        .header("server-hash", "h")
        .json(
            &json!({"consent_id": consent, "date_time_range_from": from, "date_time_range_to": to}),
        )
        .send()
    };
    let yesterday = wire(today - chrono::Days::new(1));
    let (status, answer) = decode(
        fetch("unknown".into(), yesterday.clone(), wire(today))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::BAD_REQUEST, "INVALID_CONSENT_ID")
    );
    let (_, answer) = decode(
        fetch(consent.clone(), wire(today), yesterday.clone())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code(&answer), "INVALID_DATE_RANGE");
    let (_, answer) = decode(
        fetch(consent.clone(), yesterday.clone(), "2025-01-01".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code(&answer), "INVALID_DATE_RANGE");
    let (_, answer) = decode(
        fetch(
            consent.clone(),
            wire(today),
            wire(today + chrono::Days::new(1)),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(code(&answer), "INVALID_DATE_RANGE");

    // Two a day are allowed; the third is refused.
    for _ in 0..2 {
        let (status, answer) = decode(
            fetch(consent.clone(), yesterday.clone(), wire(today))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(answer["session_id"].is_string());
    }
    let (_, answer) = decode(
        fetch(consent.clone(), yesterday.clone(), wire(today))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code(&answer), "CONSENT_OVERUSED");

    let r = http
        .post(format!("{base}/_control/consents/{consent}/revoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, answer) = decode(
        fetch(consent.clone(), yesterday, wire(today))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code(&answer), "CONSENT_REVOKED");
}

#[tokio::test]
async fn status_and_data_say_not_yet_until_processing_is_done() {
    let app = TestApp::builder().start().await;
    app.sandbox_settings(SandboxSettings {
        drop_webhooks: true,
        processing_ms: 60000,
        ..Default::default()
    })
    .await;
    let consent = app.approved_consent("cust-sb-status", json!({})).await;
    let pull_id = app.pull(&consent).await;
    let pull = app.pull_reaches(&pull_id, "submitted", 5).await;
    let session = pull["upstream_session_id"].as_str().unwrap();
    let auth = |r: reqwest::RequestBuilder| {
        r.header("x-api-key", aa_recurring::config::SANDBOX_API_KEY)
            .header("server-hash", aa_recurring::config::SANDBOX_SERVER_HASH)
    };
    for path in ["session_status", "insights", "transactions"] {
        let r = auth(app.http.get(format!(
            "{}/v1/session_data/{session}/{path}/",
            app.sandbox_base
        )))
        .send()
        .await
        .unwrap();
        let (status, body) = decode(r).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(code(&body), "PROCESSING_NOT_COMPLETED", "{path}");
    }
    let r = auth(app.http.get(format!(
        "{}/v1/session_data/{session}/progress/",
        app.sandbox_base
    )))
    .send()
    .await
    .unwrap();
    let (_, body) = decode(r).await;
    assert_eq!(body["session_progress"], "processing");
    let r = auth(app.http.get(format!(
        "{}/v1/session_data/nope/session_status/",
        app.sandbox_base
    )))
    .send()
    .await
    .unwrap();
    let (status, body) = decode(r).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "SESSION_NOT_FOUND")
    );
}
