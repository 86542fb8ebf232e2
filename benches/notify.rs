//! Events delivered per second to a local receiver, against pulls completed per second, in the
//! same run: `cargo bench --bench notify` (`CONSENTS=N` changes the population).
//!
//! The service runs in sandbox mode on a SQLite file (WAL, `synchronous=FULL`), with one
//! endpoint on loopback that wants `pull.completed`. N consents are approved through the real
//! journey, then each is pulled once, all at once. Pulls per second is N over the time from
//! the first pull's acceptance to the last pull's completion; deliveries per second is N over
//! the time from the first pull's acceptance to the last delivery's arrival.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aa_recurring::config::Config;
use aa_recurring::startup::{App, RunOptions};
use serde_json::{Value, json};

#[path = "support/journey.rs"]
mod journey;
use journey::journey;

const TOKEN: &str = "bench-token";

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("CONSENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let vars: HashMap<&str, String> = HashMap::from([
        (
            "DATABASE_URL",
            format!("sqlite://{}/bench.db", dir.path().display()),
        ),
        ("API_TOKENS", TOKEN.into()),
        ("PUBLIC_BASE_URL", base.clone()),
    ]);
    let config = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let app = App::start(config, listener, RunOptions::default())
        .await
        .unwrap();

    // The receiver: counts deliveries, notes when the last one came.
    let received = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_url = format!("http://{}/hooks", receiver.local_addr().unwrap());
    {
        let (received, last) = (received.clone(), last.clone());
        let router = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move || {
                let (received, last) = (received.clone(), last.clone());
                async move {
                    received.fetch_add(1, Ordering::SeqCst);
                    *last.lock().unwrap() = Instant::now();
                    "ok"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(receiver, router).await });
    }

    let http = reqwest::Client::new();
    let api = |path: &str| format!("{base}/api/v1{path}");
    http.post(api("/webhook-endpoints"))
        .bearer_auth(TOKEN)
        .json(&json!({"url": receiver_url, "event_types": ["pull.completed"]}))
        .send()
        .await
        .unwrap();

    // N consents through the real journey.
    let mut consents = Vec::with_capacity(n);
    for i in 0..n {
        consents.push(journey(&http, &base, TOKEN, &format!("bench-{i}")).await);
    }

    // One pull each, all at once.
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in consents {
        let (http, url) = (http.clone(), api(&format!("/consents/{c}/pulls")));
        set.spawn(async move {
            http.post(url).bearer_auth(TOKEN).send().await.unwrap();
        });
    }
    while set.join_next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut pulls_done = None;
    while Instant::now() < deadline {
        if pulls_done.is_none() {
            let mut completed = 0;
            let mut cursor: Option<String> = None;
            loop {
                let mut url = api("/pulls?status=completed&limit=200");
                if let Some(c) = &cursor {
                    url.push_str(&format!("&cursor={c}"));
                }
                let page: Value = http
                    .get(url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                completed += page["items"].as_array().unwrap().len();
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            if completed == n {
                pulls_done = Some(started.elapsed());
            }
        }
        if pulls_done.is_some() && received.load(Ordering::SeqCst) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pulls_done = pulls_done.expect("every pull completed within 5 minutes");
    assert!(
        received.load(Ordering::SeqCst) >= n,
        "every event delivered"
    );
    let delivered_done = last.lock().unwrap().duration_since(started);
    let pulls_per_s = n as f64 / pulls_done.as_secs_f64();
    let delivered_per_s = n as f64 / delivered_done.as_secs_f64();
    println!(
        "{n} pulls completed in {:.2} s ({pulls_per_s:.1}/s); their {n} pull.completed events \
         delivered by {:.2} s ({delivered_per_s:.1}/s); delivered/completed = {:.2}",
        pulls_done.as_secs_f64(),
        delivered_done.as_secs_f64(),
        delivered_per_s / pulls_per_s
    );
    app.stop().await.unwrap();
}
