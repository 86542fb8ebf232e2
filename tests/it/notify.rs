//! Outbound webhooks, black-box: a real receiver on loopback verifies every delivery's
//! Standard Webhooks signature with its own code, and answers as each test needs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

#[derive(Default)]
pub(crate) struct Receiver {
    /// Statuses to answer, in turn; 200 once they run out.
    pub(crate) answers: Mutex<VecDeque<u16>>,
    /// Every delivery: its headers and body.
    pub(crate) got: Mutex<Vec<(HeaderMap, Bytes)>>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.got.lock().unwrap().push((headers, body));
    let status = r.answers.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

/// A receiver on `port` (0: any); returns its URL.
pub(crate) async fn receiver_on(port: u16, r: Arc<Receiver>) -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hooks", axum::routing::post(receive))
        .with_state(r);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Whether `secret` signed this delivery: the Standard Webhooks scheme, computed here
/// independently of the service's signer.
fn signed_by(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let id = headers["webhook-id"].to_str().unwrap();
    let ts = headers["webhook-timestamp"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .any(|s| s == want)
}

async fn endpoint(app: &TestApp, url: &str, types: Value) -> (String, String) {
    let (status, body) = app
        .post(
            "/api/v1/webhook-endpoints",
            &json!({"url": url, "event_types": types, "description": "tests"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "enabled");
    (
        body["endpoint_id"].as_str().unwrap().to_string(),
        body["secret"].as_str().unwrap().to_string(),
    )
}

/// The first `n` deliveries: headers, raw body (what the signature covers) and parsed body.
async fn delivered(r: &Receiver, n: usize) -> Vec<(HeaderMap, Value, Bytes)> {
    for _ in 0..200 {
        {
            let got = r.got.lock().unwrap();
            if got.len() >= n {
                return got
                    .iter()
                    .map(|(h, b)| (h.clone(), serde_json::from_slice(b).unwrap(), b.clone()))
                    .collect();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} deliveries arrived");
}

#[tokio::test]
async fn events_arrive_signed_in_order_and_only_those_asked_for() {
    let app = TestApp::builder().start().await;
    let r = Arc::new(Receiver::default());
    let url = receiver_on(0, r.clone()).await;
    let (endpoint_id, secret) =
        endpoint(&app, &url, json!(["pull.completed", "consent.paused"])).await;
    let consent = app.approved_consent("cust-notify", json!({})).await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "completed", 10).await;
    app.post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
        .await;

    let got = delivered(&r, 2).await;
    assert_eq!(got.len(), 2, "consent.active was not asked for");
    assert_eq!(got[0].1["type"], "pull.completed");
    assert_eq!(got[0].1["data"]["pull_id"], pull_id.as_str());
    assert_eq!(got[1].1["type"], "consent.paused");
    for (headers, body, raw) in &got {
        assert!(
            signed_by(&secret, headers, raw),
            "signature does not verify"
        );
        assert_eq!(headers["webhook-id"], body["id"].as_str().unwrap());
        let (_, feed) = app
            .get(&format!("/api/v1/events/{}", body["id"].as_str().unwrap()))
            .await;
        assert_eq!(
            &feed, body,
            "the delivery is the event as the feed shows it"
        );
    }
    let event_id = got[0].1["id"].as_str().unwrap();
    let (_, deliveries) = app
        .get(&format!("/api/v1/events/{event_id}/deliveries"))
        .await;
    assert_eq!(deliveries["items"][0]["endpoint_id"], endpoint_id.as_str());
    assert_eq!(deliveries["items"][0]["http_status"], 200);
    assert_eq!(deliveries["items"][0]["delivery_status"], "delivered");
}

#[tokio::test]
async fn a_receiver_that_answers_503_or_is_down_gets_it_on_a_later_attempt() {
    let app = TestApp::builder()
        .env(&[("NOTIFY_RETRY_SCHEDULE", "100ms,200ms,300ms,400ms")])
        .start()
        .await;
    // Two 503s, then a success.
    let r = Arc::new(Receiver::default());
    r.answers.lock().unwrap().extend([503, 503]);
    let url = receiver_on(0, r.clone()).await;
    endpoint(&app, &url, json!(["pull.completed"])).await;
    let consent = app.approved_consent("cust-notify-retry", json!({})).await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "completed", 10).await;
    let got = delivered(&r, 3).await;
    let event_id = got[2].1["id"].as_str().unwrap().to_string();
    assert!(
        got.iter().all(|(_, b, _)| b["id"] == event_id.as_str()),
        "the same event, again"
    );
    let deliveries = app
        .eventually(&format!("/api/v1/events/{event_id}/deliveries"), 5, |d| {
            d["items"].as_array().unwrap().len() == 3
        })
        .await;
    let statuses: Vec<&Value> = deliveries["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["http_status"])
        .collect();
    assert_eq!(statuses, [&json!(503), &json!(503), &json!(200)]);
    assert_eq!(
        app.metric("aa_recurring_notifications_total{outcome=\"retry\"}")
            .await,
        2
    );

    // A receiver that is down (nothing listens), then up on the same port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let down = Arc::new(Receiver::default());
    let (down_id, _) = endpoint(
        &app,
        &format!("http://127.0.0.1:{port}/hooks"),
        json!(["consent.paused"]),
    )
    .await;
    app.post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
        .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Meanwhile the wait shows, per endpoint.
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "aa_recurring_notifications_oldest_undelivered_age_seconds{{endpoint_id=\"{down_id}\"}}"
        )),
        "{metrics}"
    );
    receiver_on(port, down.clone()).await;
    let got = delivered(&down, 1).await;
    assert_eq!(got[0].1["type"], "consent.paused");
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_enable_with_redeliver_sends_again() {
    let app = TestApp::builder().start().await;
    let r = Arc::new(Receiver::default());
    r.answers.lock().unwrap().push_back(410);
    let url = receiver_on(0, r.clone()).await;
    let (endpoint_id, _) = endpoint(&app, &url, json!(["consent.paused", "consent.resumed"])).await;
    let consent = app.approved_consent("cust-notify-gone", json!({})).await;
    app.post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
        .await;
    let ep = app
        .eventually(
            &format!("/api/v1/webhook-endpoints/{endpoint_id}"),
            5,
            |e| e["status"] == "disabled",
        )
        .await;
    assert!(
        ep["disabled_reason"].as_str().unwrap().contains("410"),
        "{ep}"
    );
    assert!(
        ep.get("secret").is_none(),
        "the secret is shown on creation only"
    );
    let paused_event = delivered(&r, 1).await[0].1["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Disabled: the next event is not sent.
    app.post(&format!("/api/v1/consents/{consent}/resume"), &json!({}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.got.lock().unwrap().len(), 1);

    let (status, body) = app
        .post(
            &format!("/api/v1/webhook-endpoints/{endpoint_id}/enable"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "enabled");
    let (status, body) = app
        .post(
            &format!("/api/v1/events/{paused_event}/redeliver"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 1);
    let got = delivered(&r, 2).await;
    assert_eq!(got[1].1["id"], paused_event.as_str());
}

#[tokio::test]
async fn after_rotation_both_secrets_sign_and_bad_input_is_refused() {
    let app = TestApp::builder().start().await;
    let r = Arc::new(Receiver::default());
    let url = receiver_on(0, r.clone()).await;
    let (endpoint_id, old) = endpoint(&app, &url, json!(["consent.paused"])).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/webhook-endpoints/{endpoint_id}/rotate-secret"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let consent = app.approved_consent("cust-notify-rotate", json!({})).await;
    app.post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
        .await;
    let (headers, _, raw) = delivered(&r, 1).await.remove(0);
    assert!(signed_by(&new, &headers, &raw));
    assert!(signed_by(&old, &headers, &raw));

    for (req, want) in [
        (json!({"url": "ftp://x.example/h"}), "INVALID_URL"),
        (json!({"url": "not a url"}), "INVALID_URL"),
        (json!({}), "INVALID_URL"),
        (
            json!({"url": url, "event_types": ["pull.exploded"]}),
            "INVALID_EVENT_TYPE",
        ),
    ] {
        let (status, body) = app.post("/api/v1/webhook-endpoints", &req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{req}: {body}");
        assert_eq!(code(&body), want);
    }
    let r = app
        .http
        .post(app.url("/api/v1/webhook-endpoints"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (status, list) = app.get("/api/v1/webhook-endpoints").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let gone = app
        .http
        .delete(app.url(&format!("/api/v1/webhook-endpoints/{endpoint_id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let (status, _) = app
        .get(&format!("/api/v1/webhook-endpoints/{endpoint_id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A receiver that hangs for `hang` before answering, or answers `big` bytes.
async fn misbehaving(hang: Duration, big: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move || async move {
            tokio::time::sleep(hang).await;
            (StatusCode::INTERNAL_SERVER_ERROR, "x".repeat(big))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_hanging_or_flooding_receiver_costs_one_bounded_attempt_and_delays_no_other() {
    let app = TestApp::builder()
        .env(&[("NOTIFY_RETRY_SCHEDULE", "1h")])
        .start()
        .await;
    let hangs = misbehaving(Duration::from_secs(30), 0).await;
    let floods = misbehaving(Duration::ZERO, 10 * 1024 * 1024).await;
    endpoint(&app, &hangs, json!(["consent.paused"])).await;
    endpoint(&app, &floods, json!(["consent.paused"])).await;
    let r = Arc::new(Receiver::default());
    let healthy = receiver_on(0, r.clone()).await;
    endpoint(&app, &healthy, json!(["consent.paused"])).await;
    let consent = app.approved_consent("cust-notify-slow", json!({})).await;
    let started = std::time::Instant::now();
    app.post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
        .await;
    // The healthy endpoint hears at once, whatever the others do.
    let got = delivered(&r, 1).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let event_id = got[0].1["id"].as_str().unwrap().to_string();
    // The others: one attempt each, bounded by the 10 s timeout and 1 KiB kept.
    let deliveries = app
        .eventually(&format!("/api/v1/events/{event_id}/deliveries"), 20, |d| {
            d["items"].as_array().unwrap().len() == 3
        })
        .await;
    for a in deliveries["items"].as_array().unwrap() {
        if a["http_status"] == 200 {
            continue;
        }
        assert!(a["latency_ms"].as_i64().unwrap() < 12_000, "{a}");
        assert!(
            a["response"].as_str().map_or(0, str::len) <= 1024,
            "at most 1 KiB of an answer is kept"
        );
    }
}

#[tokio::test]
async fn an_event_committed_before_a_crash_is_delivered_after_the_restart() {
    let retry = [("NOTIFY_RETRY_SCHEDULE", "1s,1s,1s,1s,1s")];
    let mut app = TestApp::builder().env(&retry).start().await;
    // Nothing listens yet: the delivery's job is waiting to try again when the service dies.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    endpoint(
        &app,
        &format!("http://127.0.0.1:{port}/hooks"),
        json!(["consent.paused"]),
    )
    .await;
    let consent = app.approved_consent("cust-notify-crash", json!({})).await;
    app.post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.app.take().unwrap().abort();

    // Up again, with the receiver listening: the durable job delivers the event by itself.
    let r = Arc::new(Receiver::default());
    receiver_on(port, r.clone()).await;
    let app = TestApp::builder()
        .database(app.db_url.clone(), app.dir.clone())
        .env(&retry)
        .start()
        .await;
    let got = delivered(&r, 1).await;
    let (_, feed) = app.get("/api/v1/events?type=consent.paused").await;
    assert_eq!(got[0].1["id"], feed["items"][0]["id"]);
}

#[tokio::test]
async fn an_endpoint_that_fails_every_delivery_for_five_days_is_disabled() {
    let (app, clock) = clocked(&[("NOTIFY_RETRY_SCHEDULE", "1s")]).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (endpoint_id, _) = endpoint(
        &app,
        &format!("http://127.0.0.1:{port}/hooks"),
        json!(["consent.paused", "consent.resumed"]),
    )
    .await;
    let consent = app.approved_consent("cust-notify-dead", json!({})).await;
    app.post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
        .await;
    let (_, feed) = app.get("/api/v1/events?type=consent.paused").await;
    let first = feed["items"][0]["id"].as_str().unwrap().to_string();
    // Its one retry fails too: the delivery is given up, the endpoint still enabled.
    for _ in 0..50 {
        clock.advance(chrono::Duration::seconds(2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, d) = app.get(&format!("/api/v1/events/{first}/deliveries")).await;
        if d["items"].as_array().unwrap().len() == 2 {
            break;
        }
    }
    let (_, d) = app.get(&format!("/api/v1/events/{first}/deliveries")).await;
    assert_eq!(d["items"][1]["delivery_status"], "failed", "{d}");
    let (_, ep) = app
        .get(&format!("/api/v1/webhook-endpoints/{endpoint_id}"))
        .await;
    assert_eq!(ep["status"], "enabled");

    // Five days later, still failing: the next failure disables it.
    clock.advance(chrono::Duration::days(5));
    app.post(&format!("/api/v1/consents/{consent}/resume"), &json!({}))
        .await;
    let ep = app
        .eventually(
            &format!("/api/v1/webhook-endpoints/{endpoint_id}"),
            10,
            |e| e["status"] == "disabled",
        )
        .await;
    assert!(
        ep["disabled_reason"].as_str().unwrap().contains("5 days"),
        "{ep}"
    );
}

#[tokio::test]
async fn two_instances_on_one_database_deliver_each_event_once() {
    let a = TestApp::builder().start().await;
    let r = Arc::new(Receiver::default());
    let url = receiver_on(0, r.clone()).await;
    endpoint(&a, &url, json!(["consent.paused", "consent.resumed"])).await;
    // Approved before the second instance starts: each in-process sandbox knows only its own
    // journeys, and the capture must run where the journey began.
    let consent = a.approved_consent("cust-notify-two", json!({})).await;
    let b = TestApp::builder()
        .database(a.db_url.clone(), a.dir.clone())
        .start()
        .await;
    // Twenty events, made through either instance; both run workers.
    for i in 0..10 {
        let app = if i % 2 == 0 { &a } else { &b };
        for action in ["pause", "resume"] {
            let (status, body) = app
                .post(&format!("/api/v1/consents/{consent}/{action}"), &json!({}))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    let got = delivered(&r, 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_now = r.got.lock().unwrap().len();
    assert_eq!(got_now, 20, "no event was delivered twice");
    let mut ids: Vec<&str> = got
        .iter()
        .map(|(h, _, _)| h["webhook-id"].to_str().unwrap())
        .collect();
    let in_order = ids.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "each event once");
    // And in event order: the feed's order for this consent.
    let (_, feed) = a
        .get(&format!("/api/v1/events?consent_id={consent}&limit=200"))
        .await;
    let feed_ids: Vec<&str> = feed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] != "consent.active")
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(in_order, feed_ids);
}
