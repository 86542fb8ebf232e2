//! What an operator sees and steers: metrics families, correlated logs, readiness, and the
//! jobs API (docs/architecture.md, "Operating it").

use std::time::Duration;

use aa_recurring::queue::{JobState, NewJob, Task};
use chrono::Utc;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// Every family DESIGN names, with its Prometheus type.
const FAMILIES: &[(&str, &str)] = &[
    ("http_requests", "counter"),
    ("http_request_duration_seconds", "histogram"),
    ("bankconnect_requests", "counter"),
    ("bankconnect_request_duration_seconds", "histogram"),
    ("bankconnect_downloads", "gauge"),
    ("jobs", "gauge"),
    ("jobs_oldest_queued_age_seconds", "gauge"),
    ("pulls", "counter"),
    ("consents", "gauge"),
    ("fair_use_refusals", "counter"),
    ("scheduler_fired", "counter"),
    ("job_handoffs", "counter"),
    ("webhooks", "counter"),
    ("notifications", "counter"),
    ("sqlite_commits", "counter"),
    ("sqlite_write_transactions", "counter"),
    ("sqlite_writer_wait_seconds", "counter"),
    ("sqlite_wal_bytes", "gauge"),
    ("housekeeping_last_success_timestamp_seconds", "gauge"),
    ("housekeeping_failures", "counter"),
];

#[tokio::test]
async fn every_metric_family_is_there_from_the_start_and_moves_with_its_event() {
    let (app, clock) = clocked(&[]).await;
    let text = app.metrics_text().await;
    for (family, kind) in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE aa_recurring_{family} {kind}\n")),
            "{family} ({kind}) is missing at start:\n{text}"
        );
    }
    // Families with a closed set of labels carry every series at 0.
    for sample in [
        r#"aa_recurring_pulls_total{kind="insights",outcome="completed"} 0"#,
        r#"aa_recurring_consents{status="active"} 0"#,
        r#"aa_recurring_jobs{kind="submit_pull",state="dead"} 0"#,
        r#"aa_recurring_jobs_oldest_queued_age_seconds{kind="fetch_pull_data"} 0"#,
        r#"aa_recurring_bankconnect_requests_total{endpoint="fetch_recurring_aa_data",outcome="ok"} 0"#,
        r#"aa_recurring_webhooks_total{outcome="accepted"} 0"#,
        r#"aa_recurring_bankconnect_downloads{state="holding"} 0"#,
        r#"aa_recurring_bankconnect_downloads{state="waiting"} 0"#,
        "aa_recurring_fair_use_refusals_total 0",
        "aa_recurring_scheduler_fired_total 0",
    ] {
        assert!(text.contains(sample), "{sample} is missing at start");
    }

    // One monitoring pull a month: the second in the same month is refused.
    let consent = app
        .approved_consent(
            "cust-metrics",
            json!({"frequency_unit": "month", "frequency_value": 1}),
        )
        .await;
    // The sandbox gives a link id one or two accounts, one consent each.
    let (_, consents) = app.get("/api/v1/consents").await;
    let approved = consents["items"].as_array().unwrap().len() as u64;
    let pull_id = app.pull(&consent).await;
    settle(&app, &clock).await;
    assert_eq!(
        app.pull_reaches(&pull_id, "completed", 10).await["status"],
        "completed"
    );
    let (status, _) = app.start_pull(&consent, None, None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let route = "/api/v1/consents/{consent_id}/pulls";
    assert_eq!(
        app.metric(&format!(
            r#"aa_recurring_http_requests_total{{method="POST",route="{route}",status="202"}}"#
        ))
        .await,
        1
    );
    assert_eq!(
        app.metric(&format!(
            r#"aa_recurring_http_requests_total{{method="POST",route="{route}",status="409"}}"#
        ))
        .await,
        1
    );
    assert_eq!(
        app.metric(&format!(
            r#"aa_recurring_http_request_duration_seconds_count{{method="POST",route="{route}"}}"#
        ))
        .await,
        2
    );
    assert!(
        !app.metrics_text().await.contains(&consent),
        "a raw path (with its id) became a label"
    );
    assert_eq!(
        app.metric(r#"aa_recurring_bankconnect_requests_total{endpoint="fetch_recurring_aa_data",outcome="ok"}"#)
            .await,
        1
    );
    assert!(
        app.metric(
            r#"aa_recurring_bankconnect_request_duration_seconds_count{endpoint="insights"}"#
        )
        .await
            >= 1
    );
    assert_eq!(
        app.metric(r#"aa_recurring_pulls_total{kind="insights",outcome="completed"}"#)
            .await,
        1
    );
    assert!(
        app.metric(r#"aa_recurring_webhooks_total{outcome="accepted"}"#)
            .await
            >= 1
    );
    assert_eq!(app.metric("aa_recurring_fair_use_refusals_total").await, 1);
    // SQLite's writer: every write counted, each commit holding at least one.
    let commits = app.metric("aa_recurring_sqlite_commits_total").await;
    let transactions = app
        .metric("aa_recurring_sqlite_write_transactions_total")
        .await;
    // And its write-ahead log, which holds those writes until a checkpoint copies them.
    let wal = app.metric("aa_recurring_sqlite_wal_bytes").await;
    if on_postgres() {
        assert_eq!((commits, transactions, wal), (0, 0, 0));
    } else {
        assert!(commits >= 5, "the journey and the pull wrote: {commits}");
        assert!(transactions >= commits, "{transactions} < {commits}");
        assert!(wal > 0, "the log holds the writes: {wal} bytes");
    }
    assert_eq!(
        app.metric(r#"aa_recurring_consents{status="active"}"#)
            .await,
        approved
    );

    // Consents by status follow a pause (kept by the database's triggers).
    let (status, _) = app
        .post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.metric(r#"aa_recurring_consents{status="active"}"#)
            .await,
        approved - 1
    );
    assert_eq!(
        app.metric(r#"aa_recurring_consents{status="paused"}"#)
            .await,
        1
    );
    let (status, _) = app
        .post(&format!("/api/v1/consents/{consent}/resume"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    // The scheduler fires the next month's pull by itself.
    clock.advance(chrono::Duration::days(32));
    settle(&app, &clock).await;
    assert!(app.metric("aa_recurring_scheduler_fired_total").await >= 1);
    assert!(
        app.metric(r#"aa_recurring_pulls_total{kind="insights",outcome="completed"}"#)
            .await
            >= 2
    );

    // A capture that dies shows as a dead job.
    app.inject_fault("get_recurring_consent_details", 401, 1)
        .await;
    let (_, redirect_url) = app.start_journey("cust-metrics-dead").await;
    let (_, cb) = app.decide(&redirect_url, "approve").await;
    assert_eq!(cb["status"], "failed", "{cb}");
    app.eventually("/api/v1/jobs?state=dead", 10, |page| {
        !page["items"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        app.metric(r#"aa_recurring_jobs{kind="capture_consents",state="dead"}"#)
            .await,
        1
    );
    assert_eq!(
        app.metric(r#"aa_recurring_bankconnect_requests_total{endpoint="get_recurring_consent_details",outcome="configuration"}"#)
            .await,
        1
    );
}

#[tokio::test]
async fn job_gauges_count_live_and_dead_jobs_and_the_oldest_due_wait() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    store.migrate().await.unwrap();
    let now = Utc::now();
    let due = now - chrono::Duration::seconds(30);
    for (pull_id, run_at) in [("p1", due), ("p2", now + chrono::Duration::hours(1))] {
        let task = Task::SubmitPull {
            pull_id: pull_id.into(),
        };
        store
            .enqueue_job(&NewJob::new(task, run_at), now)
            .await
            .unwrap();
    }
    let gauges = store.job_gauges(now).await.unwrap();
    assert_eq!(
        gauges.counts,
        vec![("submit_pull".to_string(), JobState::Queued, 2)]
    );
    let oldest = gauges.oldest_due;
    assert_eq!(oldest.len(), 1);
    assert_eq!(oldest[0].0, "submit_pull");
    assert_eq!(oldest[0].1.timestamp_millis(), due.timestamp_millis());

    let metrics = aa_recurring::metrics::Metrics::default();
    metrics.set_jobs(&store.job_gauges(now).await.unwrap(), now);
    let text = metrics.render();
    assert!(
        text.contains(r#"aa_recurring_jobs_oldest_queued_age_seconds{kind="submit_pull"} 30.0"#),
        "{text}"
    );
    assert!(text.contains(r#"aa_recurring_jobs{kind="submit_pull",state="queued"} 2"#));
}

#[tokio::test]
async fn a_request_id_is_on_every_log_line_of_its_request_and_reaches_bankconnect() {
    capture_logs();
    let app = TestApp::builder().start().await;
    let consent = app.approved_consent("cust-request-id", json!({})).await;
    let request_id = format!("rid-{}", uuid::Uuid::new_v4());
    let r = app
        .http
        .post(app.url(&format!("/api/v1/consents/{consent}/pulls")))
        .bearer_auth(TOKEN)
        .header("x-request-id", &request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["x-request-id"], request_id.as_str());
    let lines = log_lines_with(&request_id);
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "pull accepted"),
        "{lines:?}"
    );
    for line in &lines {
        let span = &line["span"];
        assert_eq!(span["request_id"], request_id.as_str(), "{line}");
        assert_eq!(
            span["route"], "/api/v1/consents/{consent_id}/pulls",
            "{line}"
        );
    }

    // A call made inside a request carries its id upstream.
    let request_id = format!("rid-{}", uuid::Uuid::new_v4());
    let r = app
        .http
        .post(app.url("/api/v1/consent-sessions"))
        .bearer_auth(TOKEN)
        .header("x-request-id", &request_id)
        .json(&json!({"link_id": "cust-rid", "tenure_months": 12, "frequency_unit": "month", "frequency_value": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(
        app.upstream_request_ids("session")
            .await
            .contains(&request_id)
    );
    // A job's calls carry the job's id and attempt.
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "completed", 10).await;
    assert!(
        app.upstream_request_ids("fetch_recurring_aa_data")
            .await
            .iter()
            .any(|id| id.starts_with("job-")),
        "{:?}",
        app.upstream_request_ids("fetch_recurring_aa_data").await
    );
    // Every line of a job carries its id and kind.
    let job_lines = log_lines_with(&pull_id);
    assert!(
        job_lines
            .iter()
            .any(|l| l["span"]["kind"] == "fetch_pull_data" && l["span"]["job_id"].is_number()),
        "{job_lines:?}"
    );
}

#[tokio::test]
async fn readiness_is_503_when_the_scheduler_stops_and_when_draining() {
    let app = TestApp::builder().start().await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let running = app.app.as_ref().unwrap();
    running.abort_scheduler();
    let mut last = (StatusCode::OK, Value::Null);
    for _ in 0..50 {
        last = app.get("/readyz").await;
        if last.0 != StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last.0, StatusCode::SERVICE_UNAVAILABLE, "{}", last.1);
    assert_eq!(code(&last.1), "NOT_READY");
    assert!(
        last.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scheduler"),
        "{}",
        last.1
    );

    // Draining: the router of a service whose shutdown began says so.
    let state = running.state.clone();
    state.shutdown.cancel();
    let router = aa_recurring::http::router(state);
    let response = tower::ServiceExt::oneshot(
        router,
        axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&body).contains("draining"));
}

#[tokio::test]
async fn readiness_knows_a_database_whose_migrations_are_pending() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    assert!(!store.pending_migrations().await.unwrap().is_empty());
    store.migrate().await.unwrap();
    assert_eq!(store.pending_migrations().await.unwrap(), Vec::<i64>::new());
}

#[tokio::test]
async fn a_dead_job_is_listed_retried_by_an_operator_and_its_work_completes() {
    let app = TestApp::builder().start().await;
    app.inject_fault("get_recurring_consent_details", 401, 1)
        .await;
    let (session_id, redirect_url) = app.start_journey("cust-retry").await;
    let (_, cb) = app.decide(&redirect_url, "approve").await;
    assert_eq!(cb["status"], "failed", "{cb}");

    // The session fails just before its job is recorded dead.
    let dead = app
        .eventually("/api/v1/jobs?state=dead", 10, |page| {
            !page["items"].as_array().unwrap().is_empty()
        })
        .await;
    let items = dead["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{dead}");
    let job = &items[0];
    assert_eq!(job["kind"], "capture_consents");
    assert_eq!(job["state"], "dead");
    assert_eq!(job["payload"]["session_id"], session_id.as_str());
    assert!(job["last_error"].as_str().unwrap().contains("401"), "{job}");
    let job_id = job["job_id"].as_i64().unwrap();
    let (_, one) = app.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(one, *job);
    let (_, by_kind) = app
        .get("/api/v1/jobs?kind=capture_consents&state=dead")
        .await;
    assert_eq!(by_kind["items"].as_array().unwrap().len(), 1);

    let (status, retried) = app
        .post(&format!("/api/v1/jobs/{job_id}/retry"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["attempts"], 0, "{retried}");
    // The session reopens and its consents are captured after all.
    let session = app
        .eventually(&format!("/api/v1/consent-sessions/{session_id}"), 10, |s| {
            s["status"] == "completed"
        })
        .await;
    assert_eq!(
        session["consents"].as_array().unwrap().len(),
        1,
        "{session}"
    );
    let job = app
        .eventually(&format!("/api/v1/jobs/{job_id}"), 10, |j| {
            j["state"] == "done"
        })
        .await;
    assert_eq!(job["attempts"], 1);

    // A done job, an unknown one and a bad filter.
    let (status, body) = app
        .post(&format!("/api/v1/jobs/{job_id}/retry"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "JOB_NOT_RETRYABLE");
    for path in ["/api/v1/jobs/999999", "/api/v1/jobs/abc", "/api/v1/jobs/-1"] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(code(&body), "JOB_NOT_FOUND");
    }
    let (status, body) = app.post("/api/v1/jobs/999999/retry", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "JOB_NOT_FOUND");
    let (status, body) = app.get("/api/v1/jobs?state=sleeping").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&body), "INVALID_STATE");
    let (status, body) = app.get("/api/v1/jobs?kind=mine").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&body), "INVALID_KIND");
}

#[tokio::test]
async fn a_dead_pull_job_is_not_retried_once_its_pull_has_ended() {
    let app = TestApp::builder().start().await;
    let consent = app.approved_consent("cust-retry-pull", json!({})).await;
    app.inject_fault("fetch_recurring_aa_data", 403, 1).await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "failed", 10).await;
    let (_, dead) = app.get("/api/v1/jobs?state=dead&kind=submit_pull").await;
    let job = dead["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["pull_id"] == pull_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no dead job for the pull: {dead}"));
    let (status, body) = app
        .post(&format!("/api/v1/jobs/{}/retry", job["job_id"]), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "PULL_ENDED");
}

#[tokio::test]
async fn jobs_are_listed_oldest_first_a_page_at_a_time() {
    let app = TestApp::builder().start().await;
    let consent = app.approved_consent("cust-jobs-page", json!({})).await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "completed", 10).await;
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/jobs?limit=1&cursor={c}"),
            None => "/api/v1/jobs?limit=1".to_string(),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for j in page["items"].as_array().unwrap() {
            seen.push(j["job_id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}
