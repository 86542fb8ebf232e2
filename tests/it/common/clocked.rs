//! The service on an injected clock, and reading what it scheduled.

use std::sync::Arc;
use std::time::Duration;

use aa_recurring::clock::{Clock, ManualClock};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use super::TestApp;

/// 10:00 IST on Monday 5 January 2026.
pub fn start_instant() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-05T04:30:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// The service on a clock that moves only when a test says: months of schedule in seconds.
pub async fn clocked(extra: &[(&str, &str)]) -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(start_instant()));
    let app = TestApp::builder()
        .env(extra)
        .clock(clock.clone())
        .start()
        .await;
    (app, clock)
}

/// Lets the service catch up with the clock: time moves on a second at a time while anything
/// is due or under way, and until housekeeping (every tick in tests) has finished a pass that
/// began at or after the time settling began.
pub async fn settle(app: &TestApp, clock: &ManualClock) {
    let since = clock.now().timestamp_millis() as f64 / 1000.0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Busy while an active consent is due (the scheduler has not ticked yet) or a pull is
        // under way.
        let now = clock.now();
        let (_, active) = app.get("/api/v1/consents?status=active&limit=200").await;
        let mut busy = active["items"].as_array().unwrap().iter().any(|c| {
            c["next_pull_at"]
                .as_str()
                .is_some_and(|t| DateTime::parse_from_rfc3339(t).unwrap() <= now)
        });
        for status in ["queued", "submitted", "fetching"] {
            let (_, list) = app.get(&format!("/api/v1/pulls?status={status}")).await;
            busy |= !list["items"].as_array().unwrap().is_empty();
        }
        busy |= app
            .metric_value(
                r#"aa_recurring_housekeeping_last_success_timestamp_seconds{task="purge"}"#,
            )
            .await
            < since;
        if !busy {
            return;
        }
        clock.advance(chrono::Duration::seconds(1));
    }
    panic!("the service did not settle");
}

/// Every pull of a consent, oldest first.
pub async fn pulls(app: &TestApp, consent: &str) -> Vec<Value> {
    let (_, list) = app
        .get(&format!("/api/v1/pulls?consent_id={consent}&limit=200"))
        .await;
    list["items"].as_array().unwrap().clone()
}

/// A `YYYY-MM-DD` field.
pub fn date(v: &Value) -> NaiveDate {
    NaiveDate::parse_from_str(v.as_str().unwrap(), "%Y-%m-%d").unwrap()
}
