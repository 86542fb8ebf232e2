//! Scheduler cost on SQLite with 1,000,000 consents: a tick that finds nothing due, and a
//! tick that fires 1,000. Each is reported beside a bare `SELECT 1` on the same pool, as a
//! ratio, because absolute numbers drift on shared machines; resident memory is reported too.
//!
//! Run: `cargo bench --bench scheduler` (set `CONSENTS` to change the population).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aa_recurring::clock::ManualClock;
use aa_recurring::config::Config;
use aa_recurring::scheduler::{self, SchedulerSettings};
use aa_recurring::state::AppState;
use aa_recurring::store::connect;
use chrono::{DateTime, Utc};

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(mut xs: Vec<Duration>, p: f64) -> Duration {
    xs.sort();
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let consents: i64 = std::env::var("CONSENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let rss_start = rss_mib();

    let store = connect(&url, &Default::default()).await?;
    store.migrate().await?;
    let t0: DateTime<Utc> =
        DateTime::parse_from_rfc3339("2026-01-05T04:30:00Z")?.with_timezone(&Utc);
    let base = t0.timestamp_millis() + 3_600_000;
    // Population: consent i is due at base + i seconds, so moving the clock picks exactly how
    // many are due. Inserted with plain SQL: this is setup, not what is measured.
    {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (session_id, link_id, use_case, journey_mode, tenure_months, frequency_unit,
                                   frequency_value, status, created_at, updated_at)
             VALUES ('s', 'bench', 'monitoring', 'only_recurring', 60, 'month', 5, 'completed', ?1, ?1)",
        )
        .bind(t0.timestamp_millis())
        .execute(&pool)
        .await?;
        let started = Instant::now();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO consents (consent_id, session_id, link_id, use_case, journey_mode, tenure_months,
                                   frequency_unit, frequency_value, status, approved_at, expires_at, next_pull_at,
                                   created_at, updated_at)
             SELECT 'consent-' || i, 's', 'link-' || i, 'monitoring', 'only_recurring', 60, 'month', 5, 'active',
                    ?2, ?2 + 157680000000, ?3 + i * 1000, ?2, ?2
             FROM n",
        )
        .bind(consents)
        .bind(t0.timestamp_millis())
        .bind(base)
        .execute(&pool)
        .await?;
        eprintln!("inserted {consents} consents in {:.1?}", started.elapsed());
    }
    let rss_loaded = rss_mib();

    let clock = Arc::new(ManualClock::new(t0));
    let config = Config::from_lookup(|k| (k == "DATABASE_URL").then(|| url.clone()))?;
    let state = AppState::new(config, store.clone(), "http://127.0.0.1:9", clock.clone())?;
    let settings = SchedulerSettings::default();

    // 1. Nothing due, side by side with a bare round trip.
    let rounds = 200;
    let (mut idle, mut bare) = (vec![], vec![]);
    for _ in 0..rounds {
        let t = Instant::now();
        let r = scheduler::tick(&state, &settings).await?;
        idle.push(t.elapsed());
        assert_eq!(r.fired, 0);
        let t = Instant::now();
        store.ping().await?;
        bare.push(t.elapsed());
    }
    let (idle_p50, bare_p50) = (percentile(idle.clone(), 0.5), percentile(bare.clone(), 0.5));
    println!(
        "idle tick: p50 {:?}, p99 {:?}; bare SELECT 1: p50 {:?}; ratio {:.1}x",
        idle_p50,
        percentile(idle, 0.99),
        bare_p50,
        idle_p50.as_secs_f64() / bare_p50.as_secs_f64()
    );

    // 2. 1,000 due per tick, five times over distinct consents.
    let mut busy = vec![];
    for round in 1..=5i64 {
        clock.set(DateTime::from_timestamp_millis(base + round * 1_000_000).unwrap());
        let t = Instant::now();
        let r = scheduler::tick(&state, &settings).await?;
        busy.push(t.elapsed());
        assert_eq!(r.fired, 1000, "{r:?}");
    }
    let busy_p50 = percentile(busy.clone(), 0.5);
    println!(
        "tick firing 1,000: p50 {:?}, max {:?}; per consent {:?}; ratio to a bare round trip {:.0}x",
        busy_p50,
        busy.iter().max().unwrap(),
        busy_p50 / 1000,
        busy_p50.as_secs_f64() / bare_p50.as_secs_f64()
    );
    // 3. A catch-up after an outage: 10,000 due at once, in one tick.
    clock.set(DateTime::from_timestamp_millis(base + 15_000_000).unwrap());
    let t = Instant::now();
    let r = scheduler::tick(&state, &settings).await?;
    let catch_up = t.elapsed();
    assert_eq!(r.fired, 10_000, "{r:?}");
    println!(
        "tick firing 10,000 (catch-up): {:?}; per consent {:?}",
        catch_up,
        catch_up / 10_000
    );
    println!(
        "RSS: {:.1} MiB at start, {:.1} MiB after loading, {:.1} MiB after the ticks",
        rss_start,
        rss_loaded,
        rss_mib()
    );
    Ok(())
}
