//! The service survives its Postgres going away: requests answer 503 while the database is
//! unreachable, and work resumes by itself once it is back. Runs when TEST_POSTGRES_URL is
//! set and says so loudly otherwise.

use std::io::Write;
use std::time::Duration;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::json;

/// Makes the test database refuse connections and drops the ones it has: to the service this
/// is the database going down.
async fn set_reachable(admin: &sqlx::PgPool, db: &str, reachable: bool) {
    sqlx::query(&format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS {reachable}"
    ))
    .execute(admin)
    .await
    .unwrap();
    if !reachable {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(db)
            .execute(admin)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn requests_get_503_while_the_database_is_down_and_work_resumes_after() {
    // Postgres-only already: it runs in the main pass, not again in the Postgres pass.
    if crate::common::on_postgres() {
        return;
    }
    let Ok(admin_url) = std::env::var("TEST_POSTGRES_URL") else {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** DATABASE OUTAGE TEST SKIPPED: set TEST_POSTGRES_URL to run it ***\n"
        );
        return;
    };
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let db_url = fresh_postgres_database(&admin_url).await;
    let db = url::Url::parse(&db_url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    let app = TestApp::builder()
        .database(db_url, dir)
        .env(&[
            ("DATABASE_ACQUIRE_TIMEOUT_SECS", "1"),
            ("POLL_FALLBACK_AFTER_SECS", "1"),
        ])
        .start()
        .await;
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    let consent = app.approved_consent("cust-outage-db", json!({})).await;

    // A pull is submitted; its webhook arrives while the database is down.
    app.sandbox_settings(SandboxSettings {
        webhook_delay_ms: 700,
        ..Default::default()
    })
    .await;
    let pull_id = app.pull(&consent).await;
    app.pull_reaches(&pull_id, "submitted", 10).await;
    set_reachable(&admin, &db, false).await;

    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = app.get("/api/v1/consents").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(code(&body), "DATABASE_UNAVAILABLE");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = app.get(&format!("/api/v1/pulls/{pull_id}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Back up: the service recovers by itself, and the pull whose webhook was refused
    // completes through polling.
    set_reachable(&admin, &db, true).await;
    app.eventually("/readyz", 20, |b| b["status"] == "ready")
        .await;
    app.pull_reaches(&pull_id, "completed", 30).await;
    let second = app.pull(&consent).await;
    app.pull_reaches(&second, "completed", 20).await;
}
