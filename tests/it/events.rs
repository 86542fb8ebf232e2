//! Events, black-box: every state change the lender cares about is in the feed, with the
//! resource as the API shows it, oldest first and resumable from any event id.

use std::time::Duration;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn feed(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/events?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().unwrap().clone()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn state_changes_are_in_the_feed_with_the_resource_as_the_api_shows_it() {
    let app = TestApp::builder().start().await;
    let consent = app.approved_consent("cust-events", json!({})).await;

    // The journey and its consents.
    let all = feed(&app, "limit=200").await;
    let completed: Vec<&Value> = all
        .iter()
        .filter(|e| e["type"] == "consent_session.completed")
        .collect();
    assert_eq!(completed.len(), 1, "{all:?}");
    assert_eq!(completed[0]["data"]["status"], "completed");
    assert!(
        !completed[0]["data"]["consents"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let active = feed(&app, &format!("type=consent.active&consent_id={consent}")).await;
    assert_eq!(active.len(), 1, "{all:?}");
    let (_, mut shown) = app.get(&format!("/api/v1/consents/{consent}")).await;
    // As the API showed it at the event: "the next pull is allowed now" moves with the clock.
    let mut data = active[0]["data"].clone();
    for v in [&mut data, &mut shown] {
        v["usage"]
            .as_object_mut()
            .unwrap()
            .remove("next_pull_allowed_at");
    }
    assert_eq!(data, shown, "the consent as the API shows it");
    assert!(active[0]["id"].as_str().unwrap().starts_with("evt_"));
    assert!(active[0]["timestamp"].is_string());

    // A completed pull: the pull as the API shows it, with the consent's link_id.
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "completed", 10).await;
    let done = feed(&app, &format!("type=pull.completed&consent_id={consent}")).await;
    assert_eq!(done.len(), 1);
    let (_, pull) = app.get(&format!("/api/v1/pulls/{pull_id}")).await;
    data = done[0]["data"].clone();
    assert_eq!(data["link_id"], "cust-events");
    data.as_object_mut().unwrap().remove("link_id");
    assert_eq!(data, pull);

    // Pause and resume, in order.
    for action in ["pause", "resume"] {
        let (status, body) = app
            .post(&format!("/api/v1/consents/{consent}/{action}"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let mine = feed(&app, &format!("consent_id={consent}&limit=200")).await;
    assert_eq!(
        types(&mine),
        [
            "consent.active",
            "pull.completed",
            "consent.paused",
            "consent.resumed"
        ]
    );
    // Pausing again changes nothing and tells nothing.
    app.post(&format!("/api/v1/consents/{consent}/resume"), &json!({}))
        .await;
    assert_eq!(
        feed(&app, &format!("consent_id={consent}&limit=200"))
            .await
            .len(),
        4
    );

    // Resumable from any event id: a page at a time gives the same feed.
    let whole = feed(&app, "limit=200").await;
    let mut walked = vec![];
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(id) => format!("limit=2&after={id}"),
            None => "limit=2".into(),
        };
        let (_, page) = app.get(&format!("/api/v1/events?{q}")).await;
        walked.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(walked, whole);
    let one = &whole[1];
    let (status, got) = app
        .get(&format!("/api/v1/events/{}", one["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&got, one);

    // Bad input is a 4xx with a code.
    for (q, want) in [
        ("type=pull.exploded", "INVALID_TYPE"),
        ("after=evt_nope", "INVALID_AFTER"),
        ("consent_id=%00", "INVALID_CONSENT_ID"),
        ("limit=0", "INVALID_LIMIT"),
    ] {
        let (status, body) = app.get(&format!("/api/v1/events?{q}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{q}: {body}");
        assert_eq!(code(&body), want);
    }
    let (status, body) = app.get("/api/v1/events/evt_nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(code(&body), "EVENT_NOT_FOUND");
}

#[tokio::test]
async fn failed_and_expired_pulls_and_revoked_consents_are_told() {
    let app = TestApp::builder()
        .env(&[("PULL_DEADLINE_SECS", "3")])
        .start()
        .await;
    let consent = app.approved_consent("cust-events-bad", json!({})).await;

    app.sandbox_settings(SandboxSettings {
        fail_accounts: true,
        ..Default::default()
    })
    .await;
    let failed = app.pull(&consent).await;
    app.pull_reaches(&failed, "failed", 10).await;

    app.sandbox_settings(SandboxSettings::default()).await;
    app.inject_error("insights", 400, "PROCESSING_NOT_COMPLETED", 100_000)
        .await;
    let stuck = app.pull(&consent).await;
    app.pull_reaches(&stuck, "expired", 15).await;
    app.clear_faults().await;

    app.revoke_upstream(&consent).await;
    let revoked = app.pull(&consent).await;
    app.pull_reaches(&revoked, "failed", 10).await;

    let mine = feed(&app, &format!("consent_id={consent}&limit=200")).await;
    let tail: Vec<&str> = types(&mine).into_iter().skip(1).collect();
    assert_eq!(
        tail,
        [
            "pull.failed",
            "pull.expired",
            "consent.revoked",
            "pull.failed"
        ],
        "{mine:?}"
    );
    assert_eq!(mine[1]["data"]["error_code"], "FIP_DATA_FETCH_FAILED");
    assert_eq!(mine[2]["data"]["error_code"], "PULL_DEADLINE");
    assert_eq!(mine[3]["data"]["status"], "revoked");
    assert_eq!(mine[4]["data"]["error_code"], "CONSENT_REVOKED");
}

#[tokio::test]
async fn lists_take_updated_after() {
    let app = TestApp::builder().start().await;
    let consent = app.approved_consent("cust-updated-after", json!({})).await;
    let first = app.pull(&consent).await;
    let first = app.pull_reaches(&first, "completed", 10).await;
    let since = first["updated_at"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = app.pull(&consent).await;
    app.pull_reaches(&second, "completed", 10).await;

    let q = format!("updated_after={}", since.replace('+', "%2B"));
    let (status, pulls) = app.get(&format!("/api/v1/pulls?{q}")).await;
    assert_eq!(status, StatusCode::OK, "{pulls}");
    let ids: Vec<&str> = pulls["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pull_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str()]);

    let (_, consents) = app.get(&format!("/api/v1/consents?{q}")).await;
    assert!(
        consents["items"].as_array().unwrap().is_empty(),
        "{consents}"
    );
    app.post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
        .await;
    let (_, consents) = app.get(&format!("/api/v1/consents?{q}")).await;
    assert_eq!(consents["items"][0]["consent_id"], consent.as_str());

    let (status, body) = app.get("/api/v1/pulls?updated_after=yesterday").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(code(&body), "INVALID_INSTANT");
}
