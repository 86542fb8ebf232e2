//! Pulls end to end, black-box: start, learn completion (webhook or polling), fetch, serve.

use std::time::Duration;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn a_pull_completes_by_webhook_and_its_data_is_served() {
    let app = TestApp::builder().start().await;
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
    let app = TestApp::builder().start().await;
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
async fn a_pull_completes_by_polling_when_webhooks_are_lost() {
    let app = TestApp::builder()
        .env(&[("POLL_FALLBACK_AFTER_SECS", "1")])
        .start()
        .await;
    app.sandbox_settings(SandboxSettings {
        drop_webhooks: true,
        not_ready_polls: 2,
        ..Default::default()
    })
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
async fn a_pulls_default_window_starts_where_the_last_completed_pull_ended() {
    let (app, clock) = clocked(&[]).await;
    let consent = app.approved_consent("cust-window", json!({})).await;
    clock.advance(chrono::Duration::days(3));
    let first = app.pull(&consent).await;
    let first = app.pull_reaches(&first, "completed", 15).await;
    clock.advance(chrono::Duration::days(3));
    let (status, second) = app.start_pull(&consent, None, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    // The first covered the approval day to its own; the second goes on from there.
    assert_ne!(first["from"], first["to"], "{first}");
    assert_eq!(second["from"], first["to"], "{first} then {second}");
}

#[tokio::test]
async fn a_poll_job_is_queued_only_for_a_pull_whose_webhook_is_late() {
    let (app, clock) = clocked(&[]).await;
    let poll_jobs = || async {
        let (status, jobs) = app.get("/api/v1/jobs?kind=poll_pull").await;
        assert_eq!(status, StatusCode::OK, "{jobs}");
        jobs["items"].as_array().unwrap().clone()
    };
    // Heard by webhook: no poll was ever queued, nor anything left planned.
    let heard = app.approved_consent("cust-heard", json!({})).await;
    let pull_id = app.pull(&heard).await;
    let pull = app.pull_reaches(&pull_id, "completed", 15).await;
    assert_eq!(pull["next_attempt_at"], Value::Null, "{pull}");
    assert_eq!(poll_jobs().await, Vec::<Value>::new());

    // Its webhook lost: nothing is queued while the fallback (a minute) runs…
    app.sandbox_settings(SandboxSettings {
        drop_webhooks: true,
        ..Default::default()
    })
    .await;
    let lost = app.approved_consent("cust-lost", json!({})).await;
    let pull_id = app.pull(&lost).await;
    app.pull_reaches(&pull_id, "submitted", 5).await;
    clock.advance(chrono::Duration::seconds(59));
    // Several sweeps (every 50 ms tick in tests) pass.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(poll_jobs().await, Vec::<Value>::new());
    // …and once it has passed, the sweep queues one poll, which learns the result.
    clock.advance(chrono::Duration::seconds(2));
    app.pull_reaches(&pull_id, "completed", 15).await;
    let polls = poll_jobs().await;
    assert_eq!(polls.len(), 1, "{polls:?}");
    assert_eq!(polls[0]["state"], "done", "{polls:?}");
    assert_eq!(app.upstream_calls("session_status").await, 1);
}

#[tokio::test]
async fn downloads_wait_for_a_slot_so_payloads_in_memory_stay_bounded() {
    let app = TestApp::builder()
        .env(&[("MAX_CONCURRENT_DOWNLOADS", "1")])
        .start()
        .await;
    // Each answer is sent in ten pieces over ~600 ms, and all three pulls are ready to fetch
    // within a few milliseconds of each other.
    app.sandbox_settings(SandboxSettings {
        data_padding_bytes: 10_000,
        data_drip_ms: 600,
        ..Default::default()
    })
    .await;
    let mut pulls = vec![];
    for i in 0..3 {
        let consent = app
            .approved_consent(&format!("cust-slot-{i}"), json!({}))
            .await;
        pulls.push(app.pull(&consent).await);
    }
    // While one downloads, the others are seen waiting for the slot.
    const HOLDING: &str = r#"aa_recurring_bankconnect_downloads{state="holding"}"#;
    const WAITING: &str = r#"aa_recurring_bankconnect_downloads{state="waiting"}"#;
    let mut seen_waiting = 0;
    for _ in 0..200 {
        let (holding, waiting) = (app.metric(HOLDING).await, app.metric(WAITING).await);
        assert!(holding <= 1, "{holding} downloads hold a payload");
        seen_waiting = seen_waiting.max(waiting);
        if seen_waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        seen_waiting > 0,
        "no download was seen waiting for its slot"
    );
    for pull_id in &pulls {
        app.pull_reaches(pull_id, "completed", 30).await;
        let (status, _) = app.get(&format!("/api/v1/pulls/{pull_id}/insights")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(app.upstream_calls("insights").await, 3);
    assert_eq!(app.upstream_downloads_peak().await, 1);
    assert_eq!(
        (app.metric(HOLDING).await, app.metric(WAITING).await),
        (0, 0)
    );
}

#[tokio::test]
async fn data_is_refused_while_the_pull_is_not_completed() {
    let app = TestApp::builder().start().await;
    app.sandbox_settings(SandboxSettings {
        drop_webhooks: true,
        ..Default::default()
    })
    .await;
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
async fn transient_failures_after_submission_heal_without_a_second_fetch() {
    let app = TestApp::builder()
        .env(&[
            ("POLL_FALLBACK_AFTER_SECS", "1"),
            ("BANKCONNECT_TIMEOUT_SECS", "1"),
        ])
        .start()
        .await;
    app.sandbox_settings(SandboxSettings {
        drop_webhooks: true,
        ..Default::default()
    })
    .await;
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
    let app = TestApp::builder()
        .env(&[("BANKCONNECT_TIMEOUT_SECS", "1")])
        .start()
        .await;
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
    let app = TestApp::builder().start().await;

    // CONSENT_REVOKED, for real: the user revokes in the sandbox.
    let consent = app.approved_consent("cust-revoked", json!({})).await;
    app.revoke_upstream(&consent).await;
    let pull_id = app.pull(&consent).await;
    let pull = app.pull_reaches(&pull_id, "failed", 10).await;
    assert_eq!(pull["error_code"], "CONSENT_REVOKED");
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    assert_eq!(c["status"], "revoked");
    let calls = app.upstream_calls("fetch_recurring_aa_data").await;
    let (status, body) = app.start_pull(&consent, None, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
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
    app.sandbox_settings(SandboxSettings {
        fail_accounts: true,
        ..Default::default()
    })
    .await;
    let consent = app.approved_consent("cust-accounts", json!({})).await;
    let pull = app
        .pull_reaches(&app.pull(&consent).await, "failed", 10)
        .await;
    assert_eq!(pull["error_code"], "FIP_DATA_FETCH_FAILED");
    assert_eq!(app.upstream_calls("insights").await, 0);
}

#[tokio::test]
async fn idempotency_keys_return_the_same_pull() {
    let app = TestApp::builder().start().await;
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
    let app = TestApp::builder().start().await;
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
async fn a_large_slow_download_completes_within_the_read_timeout() {
    // Every gap between reads is well under the 1 s read timeout, the whole download is not.
    let app = TestApp::builder()
        .env(&[("BANKCONNECT_TIMEOUT_SECS", "1")])
        .start()
        .await;
    let consent = app.approved_consent("cust-large", json!({})).await;
    app.sandbox_settings(SandboxSettings {
        data_padding_bytes: 50_000_000,
        data_drip_ms: 2500,
        ..Default::default()
    })
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

#[tokio::test]
async fn a_pull_is_read_with_its_consent_in_one_store_call() {
    use aa_recurring::domain::consent::{FrequencyUnit, UseCase};
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    store.migrate().await.unwrap();
    let now = chrono::Utc::now();
    let consent = insert_consent(
        &store,
        "c-read",
        UseCase::Monitoring,
        FrequencyUnit::Day,
        1,
        now,
    )
    .await;
    let created = create_queued_pull(&store, &consent, now).await;
    let (pull, with) = store
        .pull_with_consent(&created.pull_id)
        .await
        .unwrap()
        .expect("the pull");
    // The same as the two reads it replaces.
    assert_eq!(Some(pull), store.get_pull(&created.pull_id).await.unwrap());
    assert_eq!(with, store.get_consent(&consent.consent_id).await.unwrap());
    assert!(with.is_some());
    assert!(
        store
            .pull_with_consent("no-such-pull")
            .await
            .unwrap()
            .is_none()
    );
}
