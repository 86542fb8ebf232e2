//! The recurring schedule, black-box, on an injected clock: months of pulls in seconds.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::common::*;
use aa_recurring::clock::{Clock, ManualClock};
use aa_recurring::domain::ist;
use chrono::{DateTime, Datelike, NaiveDate};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Moves the clock on by `days`, a day at a time, letting the schedule run.
async fn run_days(app: &TestApp, clock: &ManualClock, days: u32) {
    for _ in 0..days {
        clock.advance(chrono::Duration::days(1));
        settle(app, clock).await;
    }
}

fn ist_day(v: &Value) -> NaiveDate {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&ist())
        .date_naive()
}

/// A consent's timeline from `from` to `to`, every page of `limit` followed to the end.
async fn whole_timeline(
    app: &TestApp,
    consent: &str,
    from: &str,
    to: &str,
    limit: u32,
) -> Vec<Value> {
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let mut path =
            format!("/api/v1/consents/{consent}/transactions?from={from}&to={to}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    seen
}

/// Pulls sent per calendar month (IST), by when they were created.
fn per_month(pulls: &[Value]) -> BTreeMap<(i32, u32), usize> {
    let mut m = BTreeMap::new();
    for p in pulls {
        let d = ist_day(&p["created_at"]);
        *m.entry((d.year(), d.month())).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn monitoring_runs_by_itself_within_five_a_month_with_gap_free_windows() {
    let (app, clock) = clocked(&[]).await;
    let consent = app
        .approved_consent(
            "cust-monthly",
            json!({"frequency_unit": "month", "frequency_value": 5}),
        )
        .await;
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    let approved = ist_day(&c["approved_at"]);
    run_days(&app, &clock, 75).await;

    let all = pulls(&app, &consent).await;
    // One every 31/5 days: slots at 6.2, 12.4, … 74.4 days.
    assert_eq!(all.len(), 12, "pulls in 75 days");
    for p in &all {
        assert_eq!(p["status"], "completed", "{p}");
    }
    for (month, n) in per_month(&all) {
        assert!(n <= 5, "{n} pulls in {month:?}");
    }
    // Each window starts where the previous one ended.
    assert_eq!(date(&all[0]["from"]), approved);
    for pair in all.windows(2) {
        assert_eq!(
            pair[1]["from"], pair[0]["to"],
            "gap between {} and {}",
            pair[0], pair[1]
        );
    }
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    assert!(
        DateTime::parse_from_rfc3339(c["next_pull_at"].as_str().unwrap()).unwrap() > clock.now()
    );
    assert_eq!(
        app.upstream_calls("fetch_recurring_aa_data").await as usize,
        all.len()
    );
}

#[tokio::test]
async fn collections_pull_the_latest_day_once_a_day() {
    let (app, clock) = clocked(&[]).await;
    let consent = app
        .approved_consent(
            "cust-daily",
            json!({"use_case": "collections", "frequency_value": 1}),
        )
        .await;
    run_days(&app, &clock, 10).await;
    let all = pulls(&app, &consent).await;
    assert_eq!(all.len(), 10);
    let mut days = HashSet::new();
    for p in &all {
        assert_eq!(p["status"], "completed");
        assert_eq!(p["kind"], "transactions");
        assert_eq!(date(&p["to"]) - date(&p["from"]), chrono::Duration::days(1));
        assert!(
            days.insert(ist_day(&p["created_at"])),
            "two pulls on one day"
        );
    }
    for pair in all.windows(2) {
        assert_eq!(pair[1]["from"], pair[0]["to"]);
    }
}

#[tokio::test]
async fn a_revocation_mid_schedule_stops_it() {
    let (app, clock) = clocked(&[]).await;
    let consent = app
        .approved_consent(
            "cust-revoke",
            json!({"use_case": "collections", "frequency_value": 1}),
        )
        .await;
    run_days(&app, &clock, 3).await;
    assert_eq!(pulls(&app, &consent).await.len(), 3);
    app.revoke_upstream(&consent).await;
    run_days(&app, &clock, 4).await;
    let all = pulls(&app, &consent).await;
    assert_eq!(
        all.len(),
        4,
        "one more try finds the revocation, then nothing"
    );
    assert_eq!(all[3]["error_code"], "CONSENT_REVOKED");
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    assert_eq!(c["status"], "revoked");
    assert_eq!(app.upstream_calls("fetch_recurring_aa_data").await, 4);
    let (status, body) = app
        .post(&format!("/api/v1/consents/{consent}/resume"), &json!({}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "CONSENT_NOT_ACTIVE")
    );
}

#[tokio::test]
async fn a_spent_budget_moves_the_next_slot_to_when_the_budget_allows_again() {
    let (app, clock) = clocked(&[]).await;
    let consent = app
        .approved_consent(
            "cust-spent",
            json!({"frequency_unit": "month", "frequency_value": 5}),
        )
        .await;
    // The lender spends January's five pulls on 5 January; the first slot is six days on.
    for day in 1..=5 {
        let window =
            json!({"from": format!("2025-12-{day:02}"), "to": format!("2025-12-{:02}", day + 1)});
        let (status, pull) = app.start_pull(&consent, Some(window), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{pull}");
        settle(&app, &clock).await;
    }
    assert_eq!(pulls(&app, &consent).await.len(), 5);
    run_days(&app, &clock, 7).await;
    // The slot came and went without a pull, and the schedule waits for February (IST).
    assert_eq!(
        pulls(&app, &consent).await.len(),
        5,
        "nothing sent over budget"
    );
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    assert_eq!(
        DateTime::parse_from_rfc3339(c["next_pull_at"].as_str().unwrap()).unwrap(),
        DateTime::parse_from_rfc3339("2026-02-01T00:00:00+05:30").unwrap(),
        "{c}"
    );
    assert_eq!(app.metric("aa_recurring_fair_use_refusals_total").await, 1);
    // On 1 February the deferred slot fires.
    run_days(&app, &clock, 20).await;
    let all = pulls(&app, &consent).await;
    assert_eq!(all.len(), 6, "{all:?}");
    assert_eq!(
        ist_day(&all[5]["created_at"]),
        NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()
    );
}

#[tokio::test]
async fn pause_stops_the_schedule_and_resume_does_not_burst() {
    let (app, clock) = clocked(&[]).await;
    let consent = app
        .approved_consent(
            "cust-pause",
            json!({"use_case": "collections", "frequency_value": 1}),
        )
        .await;
    run_days(&app, &clock, 2).await;
    assert_eq!(pulls(&app, &consent).await.len(), 2);
    let (status, c) = app
        .post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["status"], "paused");
    // Paused: no pull, manual or scheduled.
    run_days(&app, &clock, 5).await;
    assert_eq!(pulls(&app, &consent).await.len(), 2);
    let (status, body) = app.start_pull(&consent, None, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "CONSENT_NOT_ACTIVE");

    let (status, c) = app
        .post(&format!("/api/v1/consents/{consent}/resume"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(c["status"], "active");
    settle(&app, &clock).await;
    // One pull for the missed time, not five.
    assert_eq!(pulls(&app, &consent).await.len(), 3);
    run_days(&app, &clock, 2).await;
    assert_eq!(pulls(&app, &consent).await.len(), 5);

    // Resuming an active consent is harmless; pausing twice too.
    let (status, _) = app
        .post(&format!("/api/v1/consents/{consent}/resume"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..2 {
        let (status, _) = app
            .post(&format!("/api/v1/consents/{consent}/pause"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_consent_behind_by_more_than_six_months_catches_up_without_gaps() {
    let (app, clock) = clocked(&[]).await;
    let consent = app
        .approved_consent(
            "cust-catchup",
            json!({"frequency_unit": "month", "frequency_value": 5, "tenure_months": 24}),
        )
        .await;
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    let approved = ist_day(&c["approved_at"]);
    // Thirteen months pass with the service down.
    clock.advance(chrono::Duration::days(396));
    settle(&app, &clock).await;
    run_days(&app, &clock, 20).await;
    let all = pulls(&app, &consent).await;
    assert!(all.len() >= 3, "{all:?}");
    assert_eq!(date(&all[0]["from"]), approved);
    for pair in all.windows(2) {
        assert_eq!(pair[1]["from"], pair[0]["to"]);
    }
    for p in &all {
        assert!(date(&p["to"]) - date(&p["from"]) <= chrono::Duration::days(184));
    }
    let today = clock.now().with_timezone(&ist()).date_naive();
    assert!(today - date(&all.last().unwrap()["to"]) <= chrono::Duration::days(7));
    for (month, n) in per_month(&all) {
        assert!(n <= 5, "{n} pulls in {month:?}");
    }
}

#[tokio::test]
async fn a_slower_interval_can_be_set_and_a_faster_one_cannot() {
    let (app, clock) = clocked(&[]).await;
    let consent = app
        .approved_consent(
            "cust-interval",
            json!({"use_case": "collections", "frequency_value": 1}),
        )
        .await;
    let patch = |body: Value| {
        app.http
            .patch(app.url(&format!("/api/v1/consents/{consent}")))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let (status, body) = decode(patch(json!({"pull_interval": "1h"})).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&body), "PULL_INTERVAL_TOO_SHORT");
    let (status, body) = decode(patch(json!({"pull_interval": "soon"})).await.unwrap()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_PULL_INTERVAL")
    );
    let (status, c) = decode(patch(json!({"pull_interval": "3days"})).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["pull_interval_secs"], 3 * 86_400);
    run_days(&app, &clock, 9).await;
    assert_eq!(pulls(&app, &consent).await.len(), 3);
    let (_, c) = decode(patch(json!({"pull_interval": null})).await.unwrap()).await;
    assert_eq!(c["pull_interval_secs"], Value::Null);
}

#[tokio::test]
async fn consents_expire_at_tenure_end_and_leave_the_schedule() {
    let (app, clock) = clocked(&[]).await;
    let consent = app
        .approved_consent(
            "cust-tenure",
            json!({"use_case": "collections", "frequency_value": 1, "tenure_months": 1}),
        )
        .await;
    run_days(&app, &clock, 33).await;
    let (_, c) = app.get(&format!("/api/v1/consents/{consent}")).await;
    assert_eq!(c["status"], "expired");
    let n = pulls(&app, &consent).await.len();
    assert!((30..=32).contains(&n), "{n}");
    run_days(&app, &clock, 3).await;
    assert_eq!(pulls(&app, &consent).await.len(), n);
}

#[tokio::test]
async fn data_past_its_data_life_is_purged_and_the_pull_stays() {
    let (app, clock) = clocked(&[("DATA_RETENTION_DAYS", "30")]).await;
    let consent = app.approved_consent("cust-purge", json!({})).await;
    let pull_id = app.pull(&consent).await;
    settle(&app, &clock).await;
    let (status, _) = app.get(&format!("/api/v1/pulls/{pull_id}/insights")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, timeline) = app
        .get(&format!(
            "/api/v1/consents/{consent}/transactions?limit=200"
        ))
        .await;
    assert!(!timeline["items"].as_array().unwrap().is_empty());
    // Nothing new is fetched meanwhile: every account's consent of this customer is paused.
    let (_, all) = app.get("/api/v1/consents?link_id=cust-purge").await;
    for c in all["items"].as_array().unwrap() {
        let id = c["consent_id"].as_str().unwrap();
        let (status, paused) = app
            .post(&format!("/api/v1/consents/{id}/pause"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{paused}");
    }

    run_days(&app, &clock, 29).await;
    let (status, _) = app.get(&format!("/api/v1/pulls/{pull_id}/insights")).await;
    assert_eq!(status, StatusCode::OK, "still within its data life");
    run_days(&app, &clock, 2).await;
    let (status, body) = app.get(&format!("/api/v1/pulls/{pull_id}/insights")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "DATA_PURGED");
    let (_, pull) = app.get(&format!("/api/v1/pulls/{pull_id}")).await;
    assert_eq!(pull["status"], "completed");
    assert!(pull["data_purged_at"].is_string());
    let (_, timeline) = app
        .get(&format!("/api/v1/consents/{consent}/transactions"))
        .await;
    assert_eq!(timeline["items"], json!([]));
    // Finished jobs of that time are gone too; the queue does not grow for ever.
    let counts = app.job_counts().await;
    assert!(!counts.iter().any(|(s, _)| s == "done"), "{counts:?}");
}

#[tokio::test]
async fn a_six_month_pull_puts_every_transaction_in_the_timeline() {
    // A busy account: ~2,700 transactions, which go into the timeline in three chunks (of up
    // to 1,024), each in several multi-row statements.
    let app = TestApp::builder().start().await;
    app.sandbox_settings(SandboxSettings {
        transactions_per_day: 15,
        ..Default::default()
    })
    .await;
    let consent = app.approved_consent("cust-long", json!({})).await;
    let today = chrono::Utc::now().with_timezone(&ist()).date_naive();
    let from = (today - chrono::Days::new(180)).to_string();
    let (status, pull) = app
        .start_pull(
            &consent,
            Some(json!({"from": from, "to": today.to_string()})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pull}");
    let pull_id = pull["pull_id"].as_str().unwrap();
    app.pull_reaches(pull_id, "completed", 20).await;
    let (_, data) = app.get(&format!("/api/v1/pulls/{pull_id}/insights")).await;
    let fetched: Vec<(String, String)> = data["accounts"][0]["data"]["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["hash"].as_str().unwrap().into(),
                t["date"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(fetched.len() > 2 * 1024, "{} transactions", fetched.len());

    let mut stored: Vec<(String, String)> =
        whole_timeline(&app, &consent, &from, &today.to_string(), 200)
            .await
            .iter()
            .map(|t| {
                (
                    t["hash"].as_str().unwrap().to_string(),
                    t["date"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    let mut expected = fetched.clone();
    expected.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    stored.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    assert_eq!(
        stored, expected,
        "each fetched transaction once, with its date"
    );
}

#[tokio::test]
async fn overlapping_windows_give_one_deduplicated_timeline() {
    let app = TestApp::builder().start().await;
    let consent = app.approved_consent("cust-dedupe", json!({})).await;
    let today = chrono::Utc::now().with_timezone(&ist()).date_naive();
    let day = |n: u64| (today - chrono::Days::new(n)).to_string();
    let mut hashes = HashSet::new();
    let mut total = 0;
    for (from, to) in [(day(20), day(8)), (day(12), day(0))] {
        let (status, pull) = app
            .start_pull(&consent, Some(json!({"from": from, "to": to})), None)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{pull}");
        let pull_id = pull["pull_id"].as_str().unwrap();
        app.pull_reaches(pull_id, "completed", 20).await;
        let (_, data) = app.get(&format!("/api/v1/pulls/{pull_id}/insights")).await;
        for t in data["accounts"][0]["data"]["transactions"]
            .as_array()
            .unwrap()
        {
            total += 1;
            hashes.insert(t["hash"].as_str().unwrap().to_string());
        }
    }
    assert!(
        total > hashes.len(),
        "the windows overlap, so some transactions came twice"
    );

    // Walk the whole timeline in pages.
    let seen = whole_timeline(&app, &consent, &day(20), &day(0), 7).await;
    let seen_hashes: HashSet<String> = seen
        .iter()
        .map(|t| t["hash"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen.len(), seen_hashes.len(), "each transaction once");
    assert_eq!(seen_hashes, hashes);
    let dates: Vec<&str> = seen.iter().map(|t| t["date"].as_str().unwrap()).collect();
    let mut sorted = dates.clone();
    sorted.sort();
    assert_eq!(dates, sorted, "oldest first");

    let (status, body) = app
        .get(&format!(
            "/api/v1/consents/{consent}/transactions?from={}&to={}",
            day(0),
            day(5)
        ))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_WINDOW")
    );
}

#[tokio::test]
async fn instances_ticking_together_fire_each_slot_once() {
    use aa_recurring::domain::consent::{FrequencyUnit, UseCase};
    use aa_recurring::scheduler::{SchedulerSettings, tick};
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(dir.path()).await;
    let clock = Arc::new(ManualClock::new(start_instant()));
    let mut states = vec![];
    for _ in 0..3 {
        let store = aa_recurring::store::connect(&url, &Default::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        states.push(bare_state(store, clock.clone()));
    }
    for i in 0..60 {
        insert_consent(
            &states[0].store,
            &format!("c{i}"),
            UseCase::Collections,
            FrequencyUnit::Day,
            1,
            clock.now(),
        )
        .await;
    }
    clock.advance(chrono::Duration::days(1));
    let settings = SchedulerSettings {
        batch: 7,
        ..SchedulerSettings::default()
    };
    let (a, b, c) = tokio::join!(
        tick(&states[0], &settings),
        tick(&states[1], &settings),
        tick(&states[2], &settings)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.fired + b.fired + c.fired, 60, "{a:?} {b:?} {c:?}");
    let pulls = states[1]
        .store
        .list_pulls(&aa_recurring::store::PullFilter {
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pulls.len(), 60);
    // Nothing is due any more, whoever ticks.
    assert_eq!(tick(&states[2], &settings).await.unwrap().fired, 0);
    // The batch's submissions are spread out rather than all due at the same instant.
    let (first, last) = submit_spread(&url).await;
    assert!(last > first, "all {first}");
    assert!(last - first <= 60 * 20, "spread {} ms", last - first);
}

/// The earliest and latest `run_at` of the submit jobs, in unix milliseconds.
async fn submit_spread(url: &str) -> (i64, i64) {
    let sql = "SELECT MIN(run_at), MAX(run_at) FROM jobs WHERE kind = 'submit_pull'";
    if on_postgres() {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query_as(sql).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query_as(sql).fetch_one(&pool).await.unwrap()
    }
}
