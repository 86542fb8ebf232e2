//! Every pull ends, black-box: at its deadline, when its job dies, across crashes and
//! graceful stops; and it shows its progress on the way.

use std::time::Duration;

use crate::common::*;
use aa_recurring::clock::{Clock, ManualClock};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn expiry_by_webhook_and_by_deadline() {
    let app = TestApp::builder()
        .env(&[
            ("POLL_FALLBACK_AFTER_SECS", "1"),
            ("PULL_DEADLINE_SECS", "3"),
        ])
        .start()
        .await;
    app.sandbox_settings(SandboxSettings {
        drop_webhooks: true,
        not_ready_polls: 1000,
        ..Default::default()
    })
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

/// Points the standalone sandbox's webhooks at the app, through the documented API.
#[tokio::test]
async fn a_pull_shows_its_attempts_last_error_and_next_attempt() {
    let app = TestApp::builder().start().await;
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
    let app = TestApp::builder()
        .env(&[("PULL_DEADLINE_SECS", "3")])
        .start()
        .await;
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
    let mut app = TestApp::builder()
        .database(db_url.clone(), dir.clone())
        .env(&upstream)
        .options(options.clone())
        .start()
        .await;
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
    let app = TestApp::builder()
        .database(db_url, dir)
        .env(&upstream)
        .options(options)
        .start()
        .await;
    let pull = app.pull_reaches(&pull_id, "completed", 20).await;
    assert_eq!(pull["status"], "completed");
    assert_eq!(app.upstream_calls("fetch_recurring_aa_data").await, 1);
    assert_eq!(app.upstream_calls("insights").await, 2);
    let (status, _) = app.get(&format!("/api/v1/pulls/{pull_id}/insights")).await;
    assert_eq!(status, StatusCode::OK);
    let counts = app.settled_job_counts().await;
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
    let mut app = TestApp::builder()
        .database(db_url.clone(), dir.clone())
        .env(&upstream)
        .start()
        .await;
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
    let app = TestApp::builder()
        .database(db_url, dir)
        .env(&upstream)
        .start()
        .await;
    app.pull_reaches(&pull_id, "completed", 20).await;
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

/// Moves the clock on by just over the backoff cap until `path` answers a body for which
/// `done` holds: a job's retries run out in seconds. The clock moves only while no job is
/// running and none is due: a jump past an attempt's lease would end that attempt as a lost
/// lease (the job claimed again by the next claim, and on its last attempt ended "lease
/// expired"), not by the failure the test is about. A job that is due could be claimed between
/// the check and the jump; one whose backoff has not run out cannot.
async fn until_retries_run_out(
    app: &TestApp,
    clock: &ManualClock,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let (_, body) = app.get(path).await;
        if done(&body) {
            return body;
        }
        let mut quiet = false;
        for _ in 0..500 {
            if nothing_running_or_due(app, clock).await {
                quiet = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(quiet, "jobs kept running or due for 10 s");
        clock.advance(chrono::Duration::minutes(61));
    }
    panic!("{path} never got there");
}

/// Running, then due, then running again: a job that is claimed or queued between two of the
/// reads shows in a later one.
async fn nothing_running_or_due(app: &TestApp, clock: &ManualClock) -> bool {
    let none_running = || async {
        let (_, running) = app.get("/api/v1/jobs?state=running").await;
        running["items"].as_array().unwrap().is_empty()
    };
    if !none_running().await {
        return false;
    }
    let now = clock.now();
    let (_, queued) = app.get("/api/v1/jobs?state=queued&limit=200").await;
    let none_due = queued["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| DateTime::parse_from_rfc3339(j["run_at"].as_str().unwrap()).unwrap() > now);
    none_due && none_running().await
}

#[tokio::test]
async fn a_pull_whose_job_dies_fails_with_job_failed_and_its_window_is_pulled_again() {
    let (app, clock) = clocked(&[("PULL_DEADLINE_SECS", "2592000")]).await;
    let consent = app
        .approved_consent(
            "cust-job-dies",
            json!({"frequency_unit": "month", "frequency_value": 5}),
        )
        .await;
    // Every data call fails: the fetch job retries until its attempts run out.
    app.inject_fault("insights", 503, 100_000).await;
    let pull_id = app.pull(&consent).await;
    let failed = until_retries_run_out(&app, &clock, &format!("/api/v1/pulls/{pull_id}"), |p| {
        p["status"] != "queued" && p["status"] != "submitted" && p["status"] != "fetching"
    })
    .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error_code"], "JOB_FAILED", "{failed}");
    assert!(
        failed["error_message"].as_str().unwrap().contains("503"),
        "the job's last error is kept: {failed}"
    );
    assert_eq!(failed["last_error"], failed["error_message"]);
    // One send, then every fetch attempt.
    assert!(failed["attempts"].as_i64().unwrap() >= 31, "{failed}");
    assert_eq!(
        failed["next_attempt_at"],
        Value::Null,
        "nothing more planned"
    );

    // The schedule goes on, and its next pull covers the failed pull's window again.
    app.clear_faults().await;
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    let next = DateTime::parse_from_rfc3339(c["next_pull_at"].as_str().unwrap()).unwrap();
    clock.set(next.with_timezone(&Utc));
    settle(&app, &clock).await;
    let all = pulls(&app, &consent).await;
    let again = all
        .iter()
        .find(|p| p["pull_id"] != failed["pull_id"])
        .unwrap_or_else(|| panic!("no pull after the failed one: {all:?}"));
    assert_eq!(again["status"], "completed", "{again}");
    // Nothing was completed, so the new window starts where the data we hold ends (the
    // approval) and reaches past the failed one's end: no gap is left.
    assert!(
        date(&again["from"]) <= date(&failed["to"]),
        "{again} {failed}"
    );
    assert!(
        date(&again["to"]) >= date(&failed["to"]),
        "{again} {failed}"
    );
}

#[tokio::test]
async fn a_capture_whose_job_dies_fails_its_session_with_job_failed() {
    let (app, clock) = clocked(&[]).await;
    app.inject_fault("get_recurring_consent_details", 503, 100_000)
        .await;
    let (session_id, redirect_url) = app.start_journey("cust-capture-dies").await;
    let (_, cb) = app.decide(&redirect_url, "approve").await;
    assert_eq!(cb["status"], "capturing", "{cb}");
    let session = until_retries_run_out(
        &app,
        &clock,
        &format!("/api/v1/consent-sessions/{session_id}"),
        |s| s["status"] != "capturing",
    )
    .await;
    assert_eq!(session["status"], "failed", "{session}");
    assert_eq!(session["error_code"], "JOB_FAILED", "{session}");
    assert!(
        session["error_message"].as_str().unwrap().contains("503"),
        "{session}"
    );
    assert_eq!(session["consents"], json!([]));
}
