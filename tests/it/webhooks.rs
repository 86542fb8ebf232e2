//! BankConnect's webhooks, black-box: verified over the raw bytes, stored once, acted on once.

use std::time::Duration;

use crate::common::*;
use aa_recurring::config::WebhookVerify;
use aa_recurring::webhook_auth::sign;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn a_webhook_that_overtakes_its_submission_is_not_lost() {
    let app = TestApp::builder().start().await;
    // The webhook goes out at once, while the answer to the fetch call comes 800 ms later.
    app.sandbox_settings(SandboxSettings {
        webhook_delay_ms: 0,
        fetch_answer_delay_ms: 800,
        ..Default::default()
    })
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
async fn a_stored_webhook_is_handed_to_this_instances_workers_without_a_claim() {
    let app = TestApp::builder().start().await;
    let consent = app.approved_consent("cust-handoff", json!({})).await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "completed", 15).await;
    // Its processing job was stored leased to this instance and started from memory.
    assert_eq!(app.metric("aa_recurring_job_handoffs_total").await, 1);
    let (_, jobs) = app.get("/api/v1/jobs?kind=process_webhook").await;
    let jobs = jobs["items"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "done");
    assert_eq!(jobs[0]["attempts"], 1);
}

#[tokio::test]
async fn duplicate_and_replayed_webhooks_are_processed_once() {
    let app = TestApp::builder().start().await;
    app.sandbox_settings(SandboxSettings {
        duplicate_webhooks: true,
        ..Default::default()
    })
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
    let app = TestApp::builder().start().await;
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
    let app = std::sync::Arc::new(TestApp::builder().start().await);
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
    // Each stored delivery is in exactly one processing job, one job for each batch.
    let (jobs, mut processed) = processing_jobs(&app).await;
    let all: i64 = app.job_counts().await.iter().map(|(_, n)| n).sum();
    assert_eq!(all, jobs as i64);
    // (2 or 3 jobs here, where each delivery used to have its own.)
    assert!(
        jobs < 80,
        "deliveries committed together share a job: {jobs}"
    );
    assert_eq!(processed.len(), 80);
    processed.sort_unstable();
    processed.dedup();
    assert_eq!(processed.len(), 80);
}

/// The webhook processing jobs, and the inbox ids they name, each as often as it is named.
async fn processing_jobs(app: &TestApp) -> (usize, Vec<i64>) {
    let (_, page) = app.get("/api/v1/jobs?kind=process_webhook&limit=200").await;
    let jobs = page["items"].as_array().unwrap();
    let ids = jobs
        .iter()
        .flat_map(|j| j["payload"]["inbox_ids"].as_array().unwrap().clone())
        .map(|id| id.as_i64().unwrap())
        .collect();
    (jobs.len(), ids)
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
        let app = TestApp::builder()
            .env(&[
                ("WEBHOOK_VERIFY", scheme_name),
                (
                    "WEBHOOK_SECRETS",
                    &format!("old-{right},{right}").replace("old-whsec_", "whsec_AAAA"),
                ),
            ])
            .start()
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
        let (processing, mut processed) = processing_jobs(&app).await;
        assert_eq!(jobs as usize, processing, "{scheme_name}");
        let named = processed.len();
        processed.sort_unstable();
        processed.dedup();
        assert_eq!(
            (named as u64, processed.len() as u64),
            (accepted, accepted),
            "{scheme_name}: each accepted delivery, and only those, in one processing job"
        );
    }
}

#[tokio::test]
async fn a_batch_of_webhooks_is_stored_with_one_job_leased_or_queued_and_claimed_again_if_its_lease_runs_out()
 {
    use aa_recurring::queue::Task;
    use aa_recurring::store::{Lease, NewWebhook, Recorded};
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    store.migrate().await.unwrap();
    let now = chrono::Utc::now();
    let webhook = |key: &str| NewWebhook {
        dedupe_key: key.into(),
        event_name: None,
        upstream_session_id: None,
        body: bytes::Bytes::from(format!("{{\"key\":\"{key}\"}}")),
    };
    let lease = Lease {
        owner: "worker-here",
        until: now + chrono::Duration::seconds(60),
    };
    // Three new deliveries and a repeat, committed together: one job for the three.
    let recorded = store
        .record_webhooks(
            &[webhook("a"), webhook("c"), webhook("a"), webhook("d")],
            Some(lease),
            now,
        )
        .await
        .unwrap();
    let [
        Recorded::Leased { inbox_id: a },
        Recorded::Leased { inbox_id: c },
        Recorded::Duplicate,
        Recorded::Leased { inbox_id: d },
    ] = recorded.each[..]
    else {
        panic!("{recorded:?}");
    };
    let job = recorded.leased.expect("the batch's job, leased");
    assert_eq!(job.attempts, 1);
    assert_eq!(
        job.task,
        Ok(Task::ProcessWebhook {
            inbox_ids: vec![a, c, d]
        })
    );
    let row = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(row.state.to_string(), "running");
    assert_eq!(row.attempts, 1);
    assert_eq!(row.payload, json!({"inbox_ids": [a, c, d]}));
    assert_eq!(
        store.job_counts().await.unwrap(),
        vec![("running".into(), 1)]
    );
    // Without a lease the batch's job is queued; nothing is handed over.
    let recorded = store
        .record_webhooks(&[webhook("b"), webhook("a")], None, now)
        .await
        .unwrap();
    let [Recorded::Queued { inbox_id: b }, Recorded::Duplicate] = recorded.each[..] else {
        panic!("{recorded:?}");
    };
    assert!(recorded.leased.is_none());
    // A batch of repeats stores no job at all.
    let recorded = store
        .record_webhooks(&[webhook("b"), webhook("c")], None, now)
        .await
        .unwrap();
    assert!(
        matches!(
            recorded.each[..],
            [Recorded::Duplicate, Recorded::Duplicate]
        ),
        "{recorded:?}"
    );
    assert_eq!(store.job_counts().await.unwrap().len(), 2);
    // The job reads its deliveries back in its own order; one that is gone is left out.
    let events = store.get_webhooks(&[d, 999_999, a]).await.unwrap();
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, [d, a]);
    assert_eq!(events[0].body, br#"{"key":"d"}"#);
    // Nobody else may claim the leased job while its lease lasts; once it runs out (the
    // process that held it died), any worker does, and the queued one is claimable at once.
    let claimed = store
        .claim_jobs("worker-there", now, now + chrono::Duration::hours(1), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].task,
        Ok(Task::ProcessWebhook { inbox_ids: vec![b] })
    );
    let later = now + chrono::Duration::seconds(61);
    let claimed = store
        .claim_jobs(
            "worker-there",
            later,
            later + chrono::Duration::seconds(60),
            10,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, job.id);
    assert_eq!(claimed[0].attempts, 2);
}

#[tokio::test]
async fn a_claimed_batch_job_acts_on_each_of_its_deliveries_and_dies_naming_one_that_is_gone() {
    use aa_recurring::domain::consent::{FrequencyUnit, UseCase};
    use aa_recurring::domain::pull::PullStatus;
    use aa_recurring::jobs::{JobError, process_webhook};
    use aa_recurring::queue::Task;
    use aa_recurring::store::NewWebhook;
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    store.migrate().await.unwrap();
    let now = chrono::Utc::now();
    let state = bare_state(
        store.clone(),
        std::sync::Arc::new(aa_recurring::clock::ManualClock::new(now)),
    );
    let consent =
        insert_consent(&store, "c", UseCase::Monitoring, FrequencyUnit::Day, 1, now).await;
    // Two submitted pulls, and a delivery saying each is done (the first pull's twice, as two
    // distinct deliveries), committed together.
    let mut deliveries = Vec::new();
    let mut pull_ids = Vec::new();
    for session in ["up-1", "up-2"] {
        let pull = create_queued_pull(&store, &consent, now).await;
        store
            .mark_submitted(&pull.pull_id, session, now)
            .await
            .unwrap();
        pull_ids.push(pull.pull_id);
        let body = json!({"event_name": "ENRICHMENT_NOTIFICATION", "session_id": session});
        deliveries.push(NewWebhook {
            dedupe_key: session.into(),
            event_name: Some("ENRICHMENT_NOTIFICATION".into()),
            upstream_session_id: Some(session.into()),
            body: serde_json::to_vec(&body).unwrap().into(),
        });
    }
    let mut again = deliveries[0].clone();
    again.dedupe_key = "up-1-again".into();
    deliveries.push(again);
    let recorded = store.record_webhooks(&deliveries, None, now).await.unwrap();
    let claimed = store
        .claim_jobs("w", now, now + chrono::Duration::seconds(60), 10)
        .await
        .unwrap();
    let batch: Vec<_> = claimed
        .iter()
        .filter_map(|j| match &j.task {
            Ok(Task::ProcessWebhook { inbox_ids }) => Some(inbox_ids.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        batch.len(),
        1,
        "one job for the batch: {claimed:?} {recorded:?}"
    );
    assert_eq!(batch[0].len(), 3);
    process_webhook::run(&state, &batch[0]).await.unwrap();
    // Both pulls move on to fetching, each with one fetch job, however often it was named.
    let fetches = store
        .list_jobs(&aa_recurring::store::JobFilter {
            kind: Some("fetch_pull_data".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut fetched: Vec<_> = fetches.iter().filter_map(|j| j.pull_id.clone()).collect();
    fetched.sort();
    let mut expected = pull_ids.clone();
    expected.sort();
    assert_eq!(fetched, expected, "{fetches:?}");
    for pull_id in &pull_ids {
        let pull = store.get_pull(pull_id).await.unwrap().unwrap();
        assert_eq!(pull.status, PullStatus::Fetching, "{pull_id}");
    }
    // Acting again changes nothing; a delivery that is gone makes the job dead, by name.
    let gone = batch[0].iter().max().unwrap() + 1000;
    let again = process_webhook::run(&state, &[batch[0][0], gone]).await;
    let Err(JobError::Fatal(why)) = again else {
        panic!("{again:?}");
    };
    assert!(why.contains(&gone.to_string()), "{why}");
    let pull = store.get_pull(&pull_ids[0]).await.unwrap().unwrap();
    assert_eq!(pull.status, PullStatus::Fetching);
}
