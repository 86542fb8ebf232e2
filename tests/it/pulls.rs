//! Pulls end to end, black-box: start, learn completion (webhook or polling), fetch, serve.

use std::time::Duration;

use crate::common::*;
use aa_recurring::config::WebhookVerify;
use aa_recurring::webhook_auth::sign;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn a_pull_completes_by_webhook_and_its_data_is_served() {
    let app = spawn_app().await;
    let consent = app.approved_consent("cust-webhook", json!({})).await;
    let pull_id = app.pull(&consent).await;
    let pull = app.pull_reaches(&pull_id, "completed", 20).await;
    assert_eq!(pull["kind"], "insights");
    assert!(pull["upstream_session_id"].is_string());
    assert!(pull["completed_at"].is_string());

    // Learned by webhook: no poll was needed.
    assert_eq!(
        app.metric("aa_recurring_webhooks_total{outcome=\"accepted\"}")
            .await,
        1
    );
    assert_eq!(app.upstream_calls("session_status").await, 0);
    assert_eq!(app.upstream_calls("fetch_recurring_aa_data").await, 1);

    let (status, insights) = app.get(&format!("/api/v1/pulls/{pull_id}/insights")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(insights["session_id"], pull["upstream_session_id"]);
    let txns = insights["accounts"][0]["data"]["transactions"]
        .as_array()
        .unwrap();
    for t in txns {
        assert!(
            t["hash"].is_string() && t["amount"].is_number() && t["date"].is_string(),
            "{t}"
        );
    }
    assert!(insights["accounts"][0]["data"]["monthly_analysis"].is_object());

    // Compressed as stored for clients that accept gzip.
    let r = app
        .http
        .get(app.url(&format!("/api/v1/pulls/{pull_id}/insights")))
        .bearer_auth(TOKEN)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let gz = r.bytes().await.unwrap();
    let mut raw = vec![];
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&raw).unwrap(), insights);

    // The other kind was never fetched for this pull.
    let (status, body) = app
        .get(&format!("/api/v1/pulls/{pull_id}/transactions"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "DATA_NOT_FOUND");

    // Lists and usage.
    let (_, list) = app
        .get(&format!(
            "/api/v1/pulls?consent_id={consent}&status=completed"
        ))
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    assert_eq!(c["usage"]["pulls_used"], 1);
}

#[tokio::test]
async fn collections_pull_transactions_for_one_day() {
    let app = spawn_app().await;
    let consent = app
        .approved_consent(
            "cust-collect",
            json!({"use_case": "collections", "frequency_value": 1}),
        )
        .await;
    let (status, pull) = app.start_pull(&consent, None, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(pull["kind"], "transactions");
    let pull_id = pull["pull_id"].as_str().unwrap();
    app.pull_reaches(pull_id, "completed", 20).await;
    let (status, data) = app
        .get(&format!("/api/v1/pulls/{pull_id}/transactions"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(data["accounts"][0]["transactions"].is_array());

    // One a day: a second pull today is refused, saying when the next is allowed.
    let (status, body) = app.start_pull(&consent, None, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "FAIR_USE_LIMIT");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("T18:30:00Z"),
        "{body}"
    );
    assert_eq!(app.upstream_calls("fetch_recurring_aa_data").await, 1);
}

#[tokio::test]
async fn a_webhook_that_overtakes_its_submission_is_not_lost() {
    let app = spawn_app().await;
    // The webhook goes out at once, while the answer to the fetch call comes 800 ms later.
    app.sandbox_settings(json!({"webhook_delay_ms": 0, "fetch_answer_delay_ms": 800}))
        .await;
    let consent = app.approved_consent("cust-overtake", json!({})).await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "completed", 15).await;
    // Completed by that webhook, not by polling (the fallback is a minute away).
    assert_eq!(app.upstream_calls("session_status").await, 0);
    assert_eq!(
        app.metric("aa_recurring_webhooks_total{outcome=\"accepted\"}")
            .await,
        1
    );
}

#[tokio::test]
async fn a_pull_completes_by_polling_when_webhooks_are_lost() {
    let app = spawn_with(&[("POLL_FALLBACK_AFTER_SECS", "1")]).await;
    app.sandbox_settings(json!({"drop_webhooks": true, "not_ready_polls": 2}))
        .await;
    let consent = app.approved_consent("cust-poll", json!({})).await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "submitted", 5).await;
    app.pull_reaches(&pull_id, "completed", 30).await;
    // Two "not yet" answers, then the result.
    assert_eq!(app.upstream_calls("session_status").await, 3);
    assert_eq!(app.upstream_calls("webhooks_delivered").await, 0);
    assert_eq!(app.upstream_calls("fetch_recurring_aa_data").await, 1);
    let (status, _) = app.get(&format!("/api/v1/pulls/{pull_id}/insights")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn data_is_refused_while_the_pull_is_not_completed() {
    let app = spawn_app().await;
    app.sandbox_settings(json!({"drop_webhooks": true})).await;
    let consent = app.approved_consent("cust-early", json!({})).await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "submitted", 5).await;
    let (status, body) = app.get(&format!("/api/v1/pulls/{pull_id}/insights")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "PULL_NOT_COMPLETED");
    let (status, body) = app.get("/api/v1/pulls/pull_nope/insights").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "PULL_NOT_FOUND");
}

#[tokio::test]
async fn duplicate_and_replayed_webhooks_are_processed_once() {
    let app = spawn_app().await;
    app.sandbox_settings(json!({"duplicate_webhooks": true}))
        .await;
    let consent = app.approved_consent("cust-dup", json!({})).await;
    let pull_id = app.pull(&consent).await;
    let pull = app.pull_reaches(&pull_id, "completed", 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.metric("aa_recurring_webhooks_total{outcome=\"accepted\"}")
            .await,
        1
    );
    assert_eq!(
        app.metric("aa_recurring_webhooks_total{outcome=\"duplicate\"}")
            .await,
        1
    );

    // A replay of the same body, freshly signed, is a duplicate too.
    let body = json!({
        "session_id": pull["upstream_session_id"], "insights_available": true, "event_name": "ENRICHMENT_NOTIFICATION",
        "accounts": [{"account_id": "x", "account_status": "completed"}]
    });
    let (status, answer) = post_webhook(
        &app,
        WebhookVerify::HmacSha256,
        "sandbox-webhook-secret",
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["status"], "accepted",
        "a different body is a different delivery"
    );
    let (status, answer) = post_webhook(
        &app,
        WebhookVerify::HmacSha256,
        "sandbox-webhook-secret",
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["status"], "duplicate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // However many deliveries, the data was fetched once.
    assert_eq!(app.upstream_calls("insights").await, 1);
    assert_eq!(
        app.pull_reaches(&pull_id, "completed", 1).await["completed_at"],
        pull["completed_at"]
    );
}

#[tokio::test]
async fn a_webhook_for_an_unknown_session_is_stored_and_acknowledged() {
    let app = spawn_app().await;
    for body in [
        json!({"session_id": "not-ours", "event_name": "ENRICHMENT_NOTIFICATION", "accounts": []}),
        json!({"session_id": "not-ours", "event_name": "SESSION_REQUIREMENT_COMPLETION_NOTIFICATION"}),
        json!(["not", "an", "object"]),
    ] {
        let (status, answer) = post_webhook(
            &app,
            WebhookVerify::HmacSha256,
            "sandbox-webhook-secret",
            &body,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(answer["status"], "accepted");
    }
    assert_eq!(
        app.metric("aa_recurring_webhooks_total{outcome=\"accepted\"}")
            .await,
        3
    );
}

#[tokio::test]
async fn concurrent_deliveries_are_committed_together_and_each_counted_once() {
    let app = std::sync::Arc::new(spawn_app().await);
    let mut set = tokio::task::JoinSet::new();
    // 80 distinct deliveries, 20 of them sent twice, all at once.
    for i in 0..100 {
        let app = app.clone();
        set.spawn(async move {
            let n = if i < 80 { i } else { i - 80 };
            let body = json!({"session_id": format!("burst-{n}"), "event_name": "SOMETHING_ELSE"});
            post_webhook(
                &app,
                WebhookVerify::HmacSha256,
                "sandbox-webhook-secret",
                &body,
            )
            .await
        });
    }
    let mut accepted = 0;
    let mut duplicate = 0;
    while let Some(r) = set.join_next().await {
        let (status, answer) = r.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        match answer["status"].as_str().unwrap() {
            "accepted" => accepted += 1,
            "duplicate" => duplicate += 1,
            other => panic!("{other}"),
        }
    }
    assert_eq!((accepted, duplicate), (80, 20));
    // One processing job per stored delivery.
    let jobs: i64 = app.job_counts().await.iter().map(|(_, n)| n).sum();
    assert_eq!(jobs, 80);
}

async fn post_webhook(
    app: &TestApp,
    scheme: WebhookVerify,
    secret: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let mut req = app
        .http
        .post(app.url("/webhooks/bankconnect"))
        .header("content-type", "application/json")
        .body(bytes.clone());
    for (k, v) in sign(scheme, secret, &id, chrono::Utc::now().timestamp(), &bytes) {
        req = req.header(k, v);
    }
    decode(req.send().await.unwrap()).await
}

#[tokio::test]
async fn bad_signatures_are_refused_in_every_scheme() {
    let sw_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let cases = [
        ("secret-key", "right-secret", "wrong-secret"),
        ("hmac-sha256", "right-secret", "wrong-secret"),
        ("standard-webhooks", sw_secret, "whsec_dGhpcyBpcyBub3QgaXQ="),
    ];
    for (scheme_name, right, wrong) in cases {
        let app = spawn_with(&[
            ("WEBHOOK_VERIFY", scheme_name),
            (
                "WEBHOOK_SECRETS",
                &format!("old-{right},{right}").replace("old-whsec_", "whsec_AAAA"),
            ),
        ])
        .await;
        let scheme = match scheme_name {
            "secret-key" => WebhookVerify::SecretKey,
            "hmac-sha256" => WebhookVerify::HmacSha256,
            _ => WebhookVerify::StandardWebhooks,
        };
        let body = json!({"event_name": "SOMETHING_ELSE", "session_id": "s"});
        let (status, answer) = post_webhook(&app, scheme, wrong, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{scheme_name}: {answer}");
        assert_eq!(code(&answer), "INVALID_SIGNATURE");
        // No headers at all.
        let r = app
            .http
            .post(app.url("/webhooks/bankconnect"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{scheme_name}");
        // A stale timestamp, correctly signed.
        if scheme != WebhookVerify::SecretKey {
            let bytes = serde_json::to_vec(&body).unwrap();
            let mut req = app
                .http
                .post(app.url("/webhooks/bankconnect"))
                .body(bytes.clone());
            for (k, v) in sign(
                scheme,
                right,
                "msg_1",
                chrono::Utc::now().timestamp() - 301,
                &bytes,
            ) {
                req = req.header(k, v);
            }
            assert_eq!(
                req.send().await.unwrap().status(),
                StatusCode::UNAUTHORIZED,
                "{scheme_name} stale"
            );
        }
        // A tampered body under a valid signature.
        let bytes = serde_json::to_vec(&body).unwrap();
        let mut req = app
            .http
            .post(app.url("/webhooks/bankconnect"))
            .body(b"{\"event_name\":\"X\"}".to_vec());
        for (k, v) in sign(
            scheme,
            right,
            "msg_2",
            chrono::Utc::now().timestamp(),
            &bytes,
        ) {
            req = req.header(k, v);
        }
        let tampered = req.send().await.unwrap().status();
        if scheme == WebhookVerify::SecretKey {
            // The only scheme FinBox documents does not sign the body.
            assert_eq!(tampered, StatusCode::OK);
        } else {
            assert_eq!(tampered, StatusCode::UNAUTHORIZED, "{scheme_name} tampered");
        }
        let rejected = app
            .metric("aa_recurring_webhooks_total{outcome=\"rejected\"}")
            .await;
        assert!(rejected >= 2, "{scheme_name}: {rejected}");
        // The right secret (the second of two: rotation) passes.
        let (status, answer) = post_webhook(&app, scheme, right, &body).await;
        assert_eq!(status, StatusCode::OK, "{scheme_name}: {answer}");
        // Nothing that was refused was stored: only the accepted deliveries made jobs.
        let accepted = app
            .metric("aa_recurring_webhooks_total{outcome=\"accepted\"}")
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let jobs: i64 = app.job_counts().await.iter().map(|(_, n)| n).sum::<i64>();
        assert_eq!(
            jobs as u64, accepted,
            "{scheme_name}: one processing job per accepted delivery"
        );
    }
}

#[tokio::test]
async fn transient_failures_after_submission_heal_without_a_second_fetch() {
    let app = spawn_with(&[
        ("POLL_FALLBACK_AFTER_SECS", "1"),
        ("BANKCONNECT_TIMEOUT_SECS", "1"),
    ])
    .await;
    app.sandbox_settings(json!({"drop_webhooks": true})).await;
    let consent = app.approved_consent("cust-heal", json!({})).await;
    app.inject_error("session_status", 503, "SERVICE_UNAVAILABLE", 2)
        .await;
    app.inject_delay("insights", 1500, 1).await;
    app.inject_error("insights", 502, "BAD_GATEWAY", 1).await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "completed", 40).await;
    assert_eq!(app.upstream_calls("fetch_recurring_aa_data").await, 1);
    assert!(app.upstream_calls("session_status").await >= 3);
    assert!(app.upstream_calls("insights").await >= 2);
    let counts = app.job_counts().await;
    assert!(!counts.iter().any(|(s, _)| s == "dead"), "{counts:?}");
}

#[tokio::test]
async fn a_fetch_that_may_have_spent_the_consent_is_counted_and_never_overspends() {
    let app = spawn_with(&[("BANKCONNECT_TIMEOUT_SECS", "1")]).await;
    // One pull a day; the first call does its work upstream but answers too late.
    let consent = app
        .approved_consent("cust-timeout", json!({"frequency_value": 1}))
        .await;
    app.inject_delay("fetch_recurring_aa_data", 1500, 1).await;
    let pull_id = app.pull(&consent).await;
    let c = app
        .eventually(&format!("/api/v1/consents/{consent}"), 10, |c| {
            c["usage"]["pulls_used"] == 1
        })
        .await;
    assert_eq!(c["usage"]["pulls_allowed"], 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The budget is spent, so the pull waits for the next window instead of sending again.
    assert_eq!(app.upstream_calls("fetch_recurring_aa_data").await, 1);
    let (_, pull) = app.get(&format!("/api/v1/pulls/{pull_id}")).await;
    assert_eq!(pull["status"], "queued");

    // With room in the budget, a 5xx on the call is retried, and both calls count.
    let consent = app
        .approved_consent("cust-5xx", json!({"frequency_value": 3}))
        .await;
    app.inject_error("fetch_recurring_aa_data", 503, "SERVICE_UNAVAILABLE", 1)
        .await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "completed", 20).await;
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    assert_eq!(c["usage"]["pulls_used"], 2);
}

#[tokio::test]
async fn each_upstream_error_code_is_handled_as_documented() {
    let app = spawn_app().await;

    // CONSENT_REVOKED, for real: the user revokes in the sandbox.
    let consent = app.approved_consent("cust-revoked", json!({})).await;
    let r = app
        .http
        .post(format!(
            "{}/_control/consents/{consent}/revoke",
            app.sandbox_base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let pull_id = app.pull(&consent).await;
    let pull = app.pull_reaches(&pull_id, "failed", 10).await;
    assert_eq!(pull["error_code"], "CONSENT_REVOKED");
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    assert_eq!(c["status"], "revoked");
    let calls = app.upstream_calls("fetch_recurring_aa_data").await;
    let (status, body) = app.start_pull(&consent, None, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&body), "CONSENT_NOT_ACTIVE");
    assert_eq!(
        app.upstream_calls("fetch_recurring_aa_data").await,
        calls,
        "no pull is sent for a revoked consent"
    );

    // INVALID_CONSENT_ID marks the consent invalid.
    let consent = app.approved_consent("cust-invalid", json!({})).await;
    app.inject_error("fetch_recurring_aa_data", 400, "INVALID_CONSENT_ID", 1)
        .await;
    let pull = app
        .pull_reaches(&app.pull(&consent).await, "failed", 10)
        .await;
    assert_eq!(pull["error_code"], "INVALID_CONSENT_ID");
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    assert_eq!(c["status"], "invalid");

    // CONSENT_OVERUSED stops pulls until the next window.
    let consent = app.approved_consent("cust-overused", json!({})).await;
    app.inject_error("fetch_recurring_aa_data", 400, "CONSENT_OVERUSED", 1)
        .await;
    let pull = app
        .pull_reaches(&app.pull(&consent).await, "failed", 10)
        .await;
    assert_eq!(pull["error_code"], "CONSENT_OVERUSED");
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    assert_eq!(c["status"], "active");
    assert_eq!(
        c["usage"]["next_pull_allowed_at"],
        c["usage"]["window_resets_at"]
    );
    let (status, body) = app.start_pull(&consent, None, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "FAIR_USE_LIMIT");

    // INVALID_DATE_RANGE and INVALID_SESSION_ID fail the pull with that code.
    for code_name in ["INVALID_DATE_RANGE", "INVALID_SESSION_ID"] {
        let consent = app
            .approved_consent(&format!("cust-{code_name}"), json!({}))
            .await;
        app.inject_error("fetch_recurring_aa_data", 400, code_name, 1)
            .await;
        let pull = app
            .pull_reaches(&app.pull(&consent).await, "failed", 10)
            .await;
        assert_eq!(pull["error_code"], code_name);
        let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
        assert_eq!(c["status"], "active");
    }

    // Every account failing upstream fails the pull with their codes.
    app.sandbox_settings(json!({"fail_accounts": true})).await;
    let consent = app.approved_consent("cust-accounts", json!({})).await;
    let pull = app
        .pull_reaches(&app.pull(&consent).await, "failed", 10)
        .await;
    assert_eq!(pull["error_code"], "FIP_DATA_FETCH_FAILED");
    assert_eq!(app.upstream_calls("insights").await, 0);
}

#[tokio::test]
async fn expiry_by_webhook_and_by_deadline() {
    let app = spawn_with(&[
        ("POLL_FALLBACK_AFTER_SECS", "1"),
        ("PULL_DEADLINE_SECS", "3"),
    ])
    .await;
    app.sandbox_settings(json!({"drop_webhooks": true, "not_ready_polls": 1000}))
        .await;
    let consent = app.approved_consent("cust-expiry", json!({})).await;
    let pull_id = app.pull(&consent).await;
    let pull = app.pull_reaches(&pull_id, "submitted", 5).await;
    let session = pull["upstream_session_id"].as_str().unwrap();
    let r = app
        .http
        .post(format!(
            "{}/_control/sessions/{session}/expire",
            app.sandbox_base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let pull = app.pull_reaches(&pull_id, "expired", 10).await;
    assert_eq!(pull["error_code"], "SESSION_EXPIRED");

    let pull_id = app.pull(&consent).await;
    let pull = app.pull_reaches(&pull_id, "expired", 20).await;
    assert_eq!(pull["error_code"], "PULL_DEADLINE");
}

#[tokio::test]
async fn idempotency_keys_return_the_same_pull() {
    let app = spawn_app().await;
    let consent = app.approved_consent("cust-idem", json!({})).await;
    let body = json!({"kind": "insights"});
    let (s1, first) = app
        .start_pull(&consent, Some(body.clone()), Some("key-1"))
        .await;
    let (s2, second) = app
        .start_pull(&consent, Some(body.clone()), Some("key-1"))
        .await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(first["pull_id"], second["pull_id"]);
    let (status, answer) = app
        .start_pull(
            &consent,
            Some(json!({"kind": "transactions"})),
            Some("key-1"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&answer), "IDEMPOTENCY_KEY_REUSED");
    app.pull_reaches(first["pull_id"].as_str().unwrap(), "completed", 20)
        .await;
    let (_, list) = app
        .get(&format!("/api/v1/pulls?consent_id={consent}"))
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.upstream_calls("fetch_recurring_aa_data").await, 1);
    let (status, _) = app.start_pull(&consent, None, Some(&"k".repeat(300))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bad_pull_requests_are_refused_with_a_code() {
    let app = spawn_app().await;
    let consent = app.approved_consent("cust-badpull", json!({})).await;
    let today = chrono::Utc::now()
        .with_timezone(&aa_recurring::domain::ist())
        .date_naive();
    let cases = [
        (json!({"kind": "everything"}), "INVALID_KIND"),
        (json!({"from": "2020-01-01"}), "WINDOW_TOO_LONG"),
        (
            json!({"to": (today + chrono::Days::new(1)).to_string()}),
            "INVALID_WINDOW",
        ),
        (json!({"from": today.to_string()}), "INVALID_WINDOW"),
        (json!({"from": "01/01/2025"}), "INVALID_DATE_FORMAT"),
        (json!({"colour": "red"}), "INVALID_BODY"),
    ];
    for (body, want) in cases {
        let (status, answer) = app.start_pull(&consent, Some(body.clone()), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(code(&answer), want, "{body}");
    }
    let (status, answer) = app.start_pull("no-such-consent", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&answer), "CONSENT_NOT_FOUND");
    for (path, want) in [
        ("/api/v1/pulls?status=done", "INVALID_STATUS"),
        ("/api/v1/pulls?limit=0", "INVALID_LIMIT"),
    ] {
        let (status, answer) = app.get(path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert_eq!(code(&answer), want);
    }
    let (status, answer) = app.get("/api/v1/pulls?cursor=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&answer), "INVALID_CURSOR");
    assert_eq!(app.upstream_calls("fetch_recurring_aa_data").await, 0);
}

#[tokio::test]
async fn a_worker_killed_mid_job_is_replaced_and_the_job_completes_once() {
    let sandbox = spawn_sandbox().await;
    let upstream = [
        ("BANKCONNECT_BASE_URL", sandbox.as_str()),
        ("BANKCONNECT_API_KEY", "k"),
        ("BANKCONNECT_SERVER_HASH", "h"),
        ("WEBHOOK_SECRETS", WEBHOOK_SECRET),
    ];
    let options = aa_recurring::startup::RunOptions {
        workers: aa_recurring::jobs::worker::WorkerSettings {
            lease: Duration::from_secs(2),
            ..worker_settings()
        },
        ..test_options()
    };
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let db_url = fresh_database(dir.path()).await;
    let mut app = start_with(db_url.clone(), dir.clone(), &upstream, options.clone()).await;
    set_webhook_url(&app).await;
    let consent = approve_against(&app, "cust-kill").await;
    // The data fetch hangs long enough to kill the worker in the middle of it.
    app.inject_delay("insights", 3000, 1).await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "fetching", 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.upstream_calls("insights").await, 1);
    app.app.take().unwrap().abort();

    // A new instance reclaims the job once its lease has expired.
    let app = start_with(db_url, dir, &upstream, options).await;
    let pull = app.pull_reaches(&pull_id, "completed", 20).await;
    assert_eq!(pull["status"], "completed");
    assert_eq!(app.upstream_calls("fetch_recurring_aa_data").await, 1);
    assert_eq!(app.upstream_calls("insights").await, 2);
    let (status, _) = app.get(&format!("/api/v1/pulls/{pull_id}/insights")).await;
    assert_eq!(status, StatusCode::OK);
    let counts = app.job_counts().await;
    assert!(
        !counts.iter().any(|(s, _)| s == "dead" || s == "running"),
        "{counts:?}"
    );
}

#[tokio::test]
async fn a_graceful_stop_hands_running_jobs_back() {
    let sandbox = spawn_sandbox().await;
    let upstream = [
        ("BANKCONNECT_BASE_URL", sandbox.as_str()),
        ("BANKCONNECT_API_KEY", "k"),
        ("BANKCONNECT_SERVER_HASH", "h"),
        ("WEBHOOK_SECRETS", WEBHOOK_SECRET),
    ];
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let db_url = fresh_database(dir.path()).await;
    let mut app = start(db_url.clone(), dir.clone(), &upstream).await;
    set_webhook_url(&app).await;
    let consent = app.approved_consent("cust-drain", json!({})).await;
    // The fetch outlasts the shutdown grace period (2 s in tests).
    app.inject_delay("insights", 6000, 1).await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "fetching", 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = app.app.as_ref().unwrap().state.clone();
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?}",
        started.elapsed()
    );
    // Given back, not left leased: nothing is running, and the attempt did not count.
    let counts = state.store.job_counts().await.unwrap();
    assert!(
        !counts.iter().any(|(s, _)| s == "running" || s == "dead"),
        "{counts:?}"
    );
    let now = chrono::Utc::now();
    let claimed = state
        .store
        .claim_jobs("inspector", now, now, 10)
        .await
        .unwrap();
    let fetch = claimed
        .iter()
        .find(|j| j.kind == "fetch_pull_data")
        .expect("the fetch job is queued again");
    assert_eq!(fetch.attempts, 1, "the released attempt was not counted");
    state
        .store
        .finish_job(
            fetch.id,
            "inspector",
            &aa_recurring::queue::JobOutcome::Release,
            now,
        )
        .await
        .unwrap();
    for j in claimed.iter().filter(|j| j.kind != "fetch_pull_data") {
        state
            .store
            .finish_job(
                j.id,
                "inspector",
                &aa_recurring::queue::JobOutcome::Release,
                now,
            )
            .await
            .unwrap();
    }

    // The next instance finishes it.
    let app = start(db_url, dir, &upstream).await;
    app.pull_reaches(&pull_id, "completed", 20).await;
}

/// Points the standalone sandbox's webhooks at the app, through the documented API.
#[tokio::test]
async fn a_pull_shows_its_attempts_last_error_and_next_attempt() {
    let app = spawn_app().await;
    let consent = app.approved_consent("cust-progress", json!({})).await;
    app.inject_fault("insights", 503, 2).await;
    let (status, accepted) = app.start_pull(&consent, None, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["attempts"], 0);
    assert_eq!(accepted["last_error"], Value::Null);
    assert!(accepted["next_attempt_at"].is_string(), "{accepted}");
    let pull = app
        .pull_reaches(accepted["pull_id"].as_str().unwrap(), "completed", 20)
        .await;
    // One send, two failed fetches and the one that worked; the fallback poll never ran.
    assert_eq!(pull["attempts"], 4, "{pull}");
    assert!(
        pull["last_error"].as_str().unwrap().contains("503"),
        "{pull}"
    );
    assert_eq!(pull["next_attempt_at"], Value::Null, "{pull}");
}

#[tokio::test]
async fn a_pull_stuck_at_any_step_is_expired_at_its_deadline() {
    let app = spawn_with(&[("PULL_DEADLINE_SECS", "3")]).await;
    let consent = app.approved_consent("cust-stuck", json!({})).await;
    // The webhook says done, but the data never becomes ready.
    app.inject_error("insights", 400, "PROCESSING_NOT_COMPLETED", 100_000)
        .await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "fetching", 5).await;
    let pull = app.pull_reaches(&pull_id, "expired", 10).await;
    assert_eq!(pull["error_code"], "PULL_DEADLINE", "{pull}");
    // Its queued work is cancelled: nothing more is planned, and nothing runs later.
    assert_eq!(pull["next_attempt_at"], Value::Null, "{pull}");
    let fetches = app.upstream_calls("insights").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.upstream_calls("insights").await, fetches);
    // The consent is free for a new pull at once.
    app.clear_faults().await;
    let next = app.pull(&consent).await;
    app.pull_reaches(&next, "completed", 10).await;
}

#[tokio::test]
async fn a_large_slow_download_completes_within_the_read_timeout() {
    // Every gap between reads is well under the 1 s read timeout, the whole download is not.
    let app = spawn_with(&[("BANKCONNECT_TIMEOUT_SECS", "1")]).await;
    let consent = app.approved_consent("cust-large", json!({})).await;
    app.sandbox_settings(json!({"data_padding_bytes": 50_000_000, "data_drip_ms": 2500}))
        .await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "completed", 60).await;
    let r = app
        .http
        .get(app.url(&format!("/api/v1/pulls/{pull_id}/insights")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.bytes().await.unwrap();
    assert!(body.len() > 50_000_000, "{} bytes", body.len());
}

async fn set_webhook_url(app: &TestApp) {
    let r = app
        .http
        .post(format!(
            "{}/v1/session_data/update_webhook/",
            app.sandbox_base
        ))
        .header("x-api-key", "k")
        .header("server-hash", "h")
        .json(&json!({"webhook_url": app.url("/webhooks/bankconnect"), "webhook_mode": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn approve_against(app: &TestApp, link_id: &str) -> String {
    app.approved_consent(link_id, json!({})).await
}
