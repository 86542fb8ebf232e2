//! The operator's CLI, run as the real binary against the database a running service uses
//! (SQLite, or Postgres in the Postgres pass): every command, tables and `--json`.

use std::process::Output;

use serde_json::{Value, json};

use crate::common::*;

/// Runs `aa-recurring ARGS` with the test service's configuration.
async fn cli(app: &TestApp, args: &[&str]) -> Output {
    cli_with(app, &[], args).await
}

async fn cli_with(app: &TestApp, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_aa-recurring"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &app.db_url)
        .env("API_TOKENS", TOKEN)
        .env("PUBLIC_BASE_URL", &app.base)
        .env("BIND_ADDR", app.base.trim_start_matches("http://"))
        .current_dir(app.dir.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_of(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "{}\n{}",
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[tokio::test]
async fn consents_and_pulls_are_listed_shown_and_steered_as_through_the_api() {
    let app = TestApp::builder().start().await;
    let consent = app.approved_consent("cust-cli", json!({})).await;

    let list = json_of(
        &cli(
            &app,
            &["consents", "list", "--link-id", "cust-cli", "--json"],
        )
        .await,
    );
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["consent_id"] == consent.as_str()),
        "{list}"
    );
    let (_, api) = app.get(&format!("/api/v1/consents/{consent}")).await;
    let shown = json_of(&cli(&app, &["consents", "show", &consent, "--json"]).await);
    assert_eq!(shown["consent_id"], api["consent_id"]);
    assert_eq!(shown["status"], "active");

    // Tables for people.
    let table = cli(&app, &["consents", "list"]).await;
    assert!(table.status.success());
    let text = stdout(&table);
    assert!(
        text.lines().next().unwrap().starts_with("CONSENT_ID"),
        "{text}"
    );
    assert!(text.contains(&consent), "{text}");
    let details = stdout(&cli(&app, &["consents", "show", &consent]).await);
    assert!(
        details.contains("status") && details.contains("active"),
        "{details}"
    );

    // Pause and resume, and the API agrees.
    let paused = json_of(&cli(&app, &["consents", "pause", &consent, "--json"]).await);
    assert_eq!(paused["status"], "paused");
    let (_, api) = app.get(&format!("/api/v1/consents/{consent}")).await;
    assert_eq!(api["status"], "paused");
    // A paused consent takes no pull: the same rule and code as the API, exit code 1.
    let refused = cli(&app, &["pulls", "start", &consent]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("CONSENT_NOT_ACTIVE"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let resumed = json_of(&cli(&app, &["consents", "resume", &consent, "--json"]).await);
    assert_eq!(resumed["status"], "active");

    // Start a pull from the CLI; the running service sends and completes it.
    let started = json_of(
        &cli(
            &app,
            &[
                "pulls",
                "start",
                &consent,
                "--idempotency-key",
                "cli-1",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(started["status"], "queued");
    let pull_id = started["pull_id"].as_str().unwrap().to_string();
    let again = json_of(
        &cli(
            &app,
            &[
                "pulls",
                "start",
                &consent,
                "--idempotency-key",
                "cli-1",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(again["pull_id"], pull_id.as_str(), "idempotency holds");
    app.pull_reaches(&pull_id, "completed", 15).await;
    let shown = json_of(&cli(&app, &["pulls", "show", &pull_id, "--json"]).await);
    assert_eq!(shown["status"], "completed");
    let list = json_of(&cli(&app, &["pulls", "list", "--consent-id", &consent, "--json"]).await);
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let table = stdout(&cli(&app, &["pulls", "list", "--status", "completed"]).await);
    assert!(
        table.contains(&pull_id) && table.contains("completed"),
        "{table}"
    );

    // Bad input gets the API's error, and nothing else.
    let bad = cli(&app, &["consents", "list", "--status", "sleeping"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("INVALID_STATUS"));
    let missing = cli(&app, &["pulls", "show", "pull_nope"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("PULL_NOT_FOUND"));
}

#[tokio::test]
async fn jobs_are_listed_shown_and_a_dead_one_retried() {
    let app = TestApp::builder().start().await;
    app.inject_fault("get_recurring_consent_details", 401, 1)
        .await;
    let (session_id, redirect_url) = app.start_journey("cust-cli-jobs").await;
    let (_, cb) = app.decide(&redirect_url, "approve").await;
    assert_eq!(cb["status"], "failed", "{cb}");
    app.eventually("/api/v1/jobs?state=dead", 10, |page| {
        !page["items"].as_array().unwrap().is_empty()
    })
    .await;

    let dead = json_of(&cli(&app, &["jobs", "list", "--state", "dead", "--json"]).await);
    let job_id = dead["items"][0]["job_id"].as_i64().unwrap().to_string();
    let table = stdout(&cli(&app, &["jobs", "list", "--state", "dead"]).await);
    assert!(table.starts_with("JOB_ID"), "{table}");
    assert!(
        table.contains("capture_consents") && table.contains("401"),
        "{table}"
    );
    let shown = json_of(&cli(&app, &["jobs", "show", &job_id, "--json"]).await);
    assert_eq!(shown["state"], "dead");
    let retried = json_of(&cli(&app, &["jobs", "retry", &job_id, "--json"]).await);
    assert_eq!(retried["state"], "queued");
    let session = app
        .eventually(&format!("/api/v1/consent-sessions/{session_id}"), 15, |s| {
            s["status"] == "completed"
        })
        .await;
    assert!(!session["consents"].as_array().unwrap().is_empty());
    let again = cli(&app, &["jobs", "retry", &job_id]).await;
    assert_eq!(again.status.code(), Some(1));
}

#[tokio::test]
async fn register_webhook_calls_update_webhook_and_doctor_checks_a_deployment() {
    let app = TestApp::builder().start().await;
    // Against the service's own simulator, as a separate BankConnect.
    let upstream = [
        ("BANKCONNECT_BASE_URL", app.sandbox_base.as_str()),
        ("BANKCONNECT_API_KEY", aa_recurring::config::SANDBOX_API_KEY),
        (
            "BANKCONNECT_SERVER_HASH",
            aa_recurring::config::SANDBOX_SERVER_HASH,
        ),
        ("WEBHOOK_SECRETS", "a-long-enough-test-secret"),
    ];
    let out = cli_with(
        &app,
        &upstream,
        &[
            "bankconnect",
            "register-webhook",
            "--url",
            "https://lender.example/hooks/bc",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("https://lender.example/hooks/bc"));
    assert_eq!(app.upstream_calls("update_webhook").await, 1);
    // The default is our own webhook route.
    let out = cli_with(
        &app,
        &upstream,
        &["bankconnect", "register-webhook", "--json"],
    )
    .await;
    let body = json_of(&out);
    assert_eq!(
        body["webhook_url"],
        format!("{}/webhooks/bankconnect", app.base).as_str()
    );

    let out = cli_with(&app, &upstream, &["doctor"]).await;
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "configuration",
        "database",
        "migrations",
        "upstream",
        "webhooks",
        "public url",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(check) && !l.starts_with("FAIL")),
            "{check}: {text}"
        );
    }
    assert!(
        !text.contains("a-long-enough-test-secret"),
        "a secret was printed"
    );
    assert!(!text.contains(aa_recurring::config::SANDBOX_API_KEY));

    // Wrong credentials, an unreachable database: each fails its own line, exit code 1.
    let mut wrong = upstream.to_vec();
    wrong[1] = ("BANKCONNECT_API_KEY", "wrong-key");
    let out = cli_with(&app, &wrong, &["doctor", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
    let upstream_check = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "upstream")
        .unwrap();
    assert_eq!(upstream_check["ok"], false, "{checks}");
    let out = cli_with(
        &app,
        &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")],
        &["doctor"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("database")),
        "{}",
        stdout(&out)
    );
}
