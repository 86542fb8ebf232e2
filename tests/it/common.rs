//! Spawns the real service on port 0 against the sandbox and drives it over HTTP.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use aa_recurring::config::Config;
use aa_recurring::config::WebhookVerify;
use aa_recurring::jobs::worker::WorkerSettings;
use aa_recurring::sandbox::{Sandbox, SandboxConfig, WebhookTarget};
use aa_recurring::scheduler::SchedulerSettings;
use aa_recurring::startup::{App, RunOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const TOKEN: &str = "test-token";
pub const WEBHOOK_SECRET: &str = "test-webhook-secret";

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub app: Option<App>,
    pub db_url: String,
    /// Where the upstream simulator is reached (in-process or standalone).
    pub sandbox_base: String,
    pub dir: std::sync::Arc<tempfile::TempDir>,
}

pub fn worker_settings() -> WorkerSettings {
    WorkerSettings {
        poll: Duration::from_millis(50),
        grace: Duration::from_secs(2),
        ..WorkerSettings::default()
    }
}

/// Background parts tuned for tests: quick polls and ticks, housekeeping on every tick.
pub fn test_options() -> RunOptions {
    RunOptions {
        workers: worker_settings(),
        scheduler: SchedulerSettings {
            tick: Duration::from_millis(50),
            housekeeping_every: chrono::Duration::zero(),
            sweep_every: chrono::Duration::zero(),
            ..SchedulerSettings::default()
        },
        ..RunOptions::default()
    }
}

/// The service in sandbox mode on a fresh SQLite file.
pub async fn spawn_app() -> TestApp {
    spawn_with(&[]).await
}

pub async fn spawn_with(extra: &[(&str, &str)]) -> TestApp {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let db_url = fresh_database(dir.path()).await;
    start(db_url, dir, extra).await
}

/// True in the Postgres pass of a test binary (see [`postgres_pass`]).
pub fn on_postgres() -> bool {
    std::env::var("AA_TEST_BACKEND").as_deref() == Ok("postgres")
}

/// A new, empty database for one test: a SQLite file in `dir`, or in the Postgres pass a new
/// database on the server that `TEST_POSTGRES_URL` names.
pub async fn fresh_database(dir: &std::path::Path) -> String {
    if !on_postgres() {
        return format!("sqlite://{}/test.db", dir.display());
    }
    let admin =
        std::env::var("TEST_POSTGRES_URL").expect("the Postgres pass needs TEST_POSTGRES_URL");
    fresh_postgres_database(&admin).await
}

/// A new, empty database on the Postgres server `admin` connects to; returns its URL.
pub async fn fresh_postgres_database(admin: &str) -> String {
    let name = format!("aa_test_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(admin)
        .await
        .expect("TEST_POSTGRES_URL answers");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .expect("create a test database");
    pool.close().await;
    let mut url = url::Url::parse(admin).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// Runs every test of this binary again on Postgres, in a child process of the same binary,
/// when `TEST_POSTGRES_URL` is set; says loudly that it did not otherwise. Each binary has a
/// `postgres_pass` test that calls this, so `cargo test` covers both backends.
pub fn postgres_pass() {
    use std::io::Write;
    if on_postgres() {
        return;
    }
    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** POSTGRES TESTS SKIPPED for {}: set TEST_POSTGRES_URL (e.g. postgres://postgres:postgres@127.0.0.1/postgres) to run them ***\n",
            std::env::current_exe()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
        );
        return;
    };
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--skip", "postgres_pass"])
        .env("AA_TEST_BACKEND", "postgres")
        .env("TEST_POSTGRES_URL", url)
        .output()
        .expect("run the Postgres pass");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .filter(|l| l.starts_with("test result"))
        .collect::<Vec<_>>()
        .join("; ");
    let _ = writeln!(std::io::stderr(), "postgres pass: {summary}");
    assert!(
        out.status.success(),
        "the Postgres pass failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts (or restarts) the service on `db_url`.
pub async fn start(
    db_url: String,
    dir: std::sync::Arc<tempfile::TempDir>,
    extra: &[(&str, &str)],
) -> TestApp {
    start_with(db_url, dir, extra, test_options()).await
}

pub async fn start_with(
    db_url: String,
    dir: std::sync::Arc<tempfile::TempDir>,
    extra: &[(&str, &str)],
    options: RunOptions,
) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let mut vars: HashMap<String, String> = HashMap::from([
        ("DATABASE_URL".into(), db_url.clone()),
        ("API_TOKENS".into(), TOKEN.into()),
        ("PUBLIC_BASE_URL".into(), base.clone()),
        ("BANKCONNECT_TIMEOUT_SECS".into(), "5".into()),
    ]);
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("test config");
    let sandbox_base = vars
        .get("BANKCONNECT_BASE_URL")
        .cloned()
        .unwrap_or_else(|| format!("{base}/sandbox"));
    let app = App::start(config, listener, options)
        .await
        .expect("app starts");
    TestApp {
        base,
        http: reqwest::Client::new(),
        app: Some(app),
        db_url,
        sandbox_base,
        dir,
    }
}

/// A standalone simulator on its own port, as `aa-recurring sandbox` runs it, signing
/// webhooks with hmac-sha256 and [`WEBHOOK_SECRET`].
pub async fn spawn_sandbox() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let sandbox = Sandbox::new(SandboxConfig {
        public_url: base.clone(),
        credentials: None,
        webhook: WebhookTarget {
            urls: vec![],
            scheme: WebhookVerify::HmacSha256,
            secret: WEBHOOK_SECRET.into(),
        },
        clock: std::sync::Arc::new(aa_recurring::clock::SystemClock),
    });
    tokio::spawn(async move { axum::serve(listener, sandbox.router()).await });
    base
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        decode(r).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        decode(r).await
    }

    /// Starts a journey and returns `(session_id, redirect_url)`.
    pub async fn start_journey(&self, link_id: &str) -> (String, String) {
        let (status, body) = self
            .post(
                "/api/v1/consent-sessions",
                &json!({"link_id": link_id, "tenure_months": 12, "frequency_unit": "month", "frequency_value": 5}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["session_id"].as_str().unwrap().to_string(),
            body["redirect_url"].as_str().unwrap().to_string(),
        )
    }

    /// Opens the SDK page, presses `decision` ("approve" or "deny") and follows the redirect
    /// into our callback, asking for JSON. Returns the callback's answer.
    pub async fn decide(&self, redirect_url: &str, decision: &str) -> (StatusCode, Value) {
        let r = press(&self.http, redirect_url, decision, true).await;
        assert!(
            r.url().path().ends_with("/bankconnect/callback"),
            "the SDK sent the browser to {}",
            r.url()
        );
        decode(r).await
    }

    /// Calls the simulator has answered per endpoint.
    pub async fn upstream_calls(&self, endpoint: &str) -> u64 {
        let (_, body) = decode(
            self.http
                .get(format!("{}/_control/calls", self.sandbox_base))
                .send()
                .await
                .unwrap(),
        )
        .await;
        body["calls"][endpoint].as_u64().unwrap_or(0)
    }

    pub async fn inject_fault(&self, endpoint: &str, status: u16, count: u32) {
        let r = self
            .http
            .post(format!("{}/_control/faults", self.sandbox_base))
            .json(&json!({"endpoint": endpoint, "status": status, "count": count}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }

    pub async fn clear_faults(&self) {
        self.http
            .delete(format!("{}/_control/faults", self.sandbox_base))
            .send()
            .await
            .unwrap();
    }

    /// Polls `GET path` until `done` holds for its body, or panics after `secs`.
    pub async fn eventually(&self, path: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, body) = self.get(path).await;
            if done(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting on {path}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a journey, approves it and returns the first consent's id.
    pub async fn approved_consent(&self, link_id: &str, body: Value) -> String {
        let mut req = json!({"link_id": link_id, "tenure_months": 12, "frequency_unit": "day", "frequency_value": 5});
        for (k, v) in body.as_object().unwrap() {
            req[k] = v.clone();
        }
        let (status, created) = self.post("/api/v1/consent-sessions", &req).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let (_, cb) = self
            .decide(created["redirect_url"].as_str().unwrap(), "approve")
            .await;
        assert_eq!(cb["status"], "completed", "{cb}");
        cb["consents"][0]["consent_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Starts a pull; returns the answer.
    pub async fn start_pull(
        &self,
        consent_id: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(self.url(&format!("/api/v1/consents/{consent_id}/pulls")))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        decode(req.send().await.unwrap()).await
    }

    /// Starts a pull that must be accepted; returns its id.
    pub async fn pull(&self, consent_id: &str) -> String {
        let (status, body) = self.start_pull(consent_id, None, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["pull_id"].as_str().unwrap().to_string()
    }

    /// Waits until the pull reaches `status`; returns it.
    pub async fn pull_reaches(&self, pull_id: &str, status: &str, secs: u64) -> Value {
        self.eventually(&format!("/api/v1/pulls/{pull_id}"), secs, |p| {
            p["status"] == status
        })
        .await
    }

    /// Replaces the simulator's settings.
    pub async fn sandbox_settings(&self, settings: Value) {
        let r = self
            .http
            .post(format!("{}/_control/settings", self.sandbox_base))
            .json(&settings)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    /// Makes the next `count` calls to `endpoint` answer `status` with `code`.
    pub async fn inject_error(&self, endpoint: &str, status: u16, code: &str, count: u32) {
        let r = self
            .http
            .post(format!("{}/_control/faults", self.sandbox_base))
            .json(&json!({"endpoint": endpoint, "status": status, "code": code, "count": count}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }

    /// Makes the next `count` calls to `endpoint` do their work but answer after `delay_ms`.
    pub async fn inject_delay(&self, endpoint: &str, delay_ms: u64, count: u32) {
        let r = self
            .http
            .post(format!("{}/_control/faults", self.sandbox_base))
            .json(&json!({"endpoint": endpoint, "delay_ms": delay_ms, "count": count}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }

    /// A counter from `/metrics`, by its full sample name with labels.
    pub async fn metric(&self, sample: &str) -> u64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    /// Job counts by status.
    pub async fn job_counts(&self) -> Vec<(String, i64)> {
        self.app
            .as_ref()
            .unwrap()
            .state
            .store
            .job_counts()
            .await
            .unwrap()
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await.unwrap();
        }
    }
}

pub async fn decode(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Opens the sandbox's SDK page at `redirect_url` and presses `decision` ("approve" or
/// "deny") with `http`, as the borrower's browser would (redirects as `http` is built to).
pub async fn press(
    http: &reqwest::Client,
    redirect_url: &str,
    decision: &str,
    accept_json: bool,
) -> reqwest::Response {
    let page = http
        .get(redirect_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut req = http.post(form_action(&page, decision));
    if accept_json {
        req = req.header("accept", "application/json");
    }
    req.send().await.unwrap()
}

/// The `action` of the SDK page's form whose URL ends in `/{decision}`.
pub fn form_action(page: &str, decision: &str) -> String {
    page.split("action=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .find(|a| a.ends_with(&format!("/{decision}")))
        .unwrap_or_else(|| panic!("no {decision} form on the SDK page: {page}"))
}

/// The error code of an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

/// Stores a consent directly (with its session), as a capture would: for tests that drive the
/// scheduler or the store without the HTTP journey.
pub async fn insert_consent(
    store: &aa_recurring::store::DynStore,
    consent_id: &str,
    use_case: aa_recurring::domain::consent::UseCase,
    unit: aa_recurring::domain::consent::FrequencyUnit,
    value: u32,
    approved_at: chrono::DateTime<chrono::Utc>,
) -> aa_recurring::domain::consent::Consent {
    use aa_recurring::domain::consent::{Consent, ConsentStatus, JourneyMode};
    use aa_recurring::domain::session::{NewSession, Session};
    let session_id = format!("session-{consent_id}");
    let new = NewSession {
        link_id: format!("link-{consent_id}"),
        use_case,
        journey_mode: JourneyMode::OnlyRecurring,
        tenure_months: 60,
        frequency_unit: unit,
        frequency_value: value,
        from_date: None,
        to_date: None,
        bank_name: None,
        mobile_number: None,
    };
    store
        .insert_session(&Session::started(session_id.clone(), &new, approved_at))
        .await
        .unwrap();
    let mut consent = Consent {
        consent_id: consent_id.to_string(),
        session_id: session_id.clone(),
        link_id: new.link_id.clone(),
        use_case,
        journey_mode: JourneyMode::OnlyRecurring,
        bank_name: None,
        masked_account_number: None,
        tenure_months: 60,
        frequency_unit: unit,
        frequency_value: value,
        status: ConsentStatus::Active,
        approved_at,
        expires_at: approved_at + chrono::Duration::days(1800),
        next_pull_at: None,
        pull_blocked_until: None,
        pull_interval_secs: None,
        created_at: approved_at,
        updated_at: approved_at,
    };
    consent.next_pull_at = Some(approved_at + consent.interval(None));
    store
        .complete_session(&session_id, std::slice::from_ref(&consent), approved_at)
        .await
        .unwrap();
    consent
}

/// Service state without an HTTP server, for driving the scheduler and jobs directly.
pub fn bare_state(
    store: aa_recurring::store::DynStore,
    clock: std::sync::Arc<dyn aa_recurring::clock::Clock>,
) -> aa_recurring::state::AppState {
    let config = aa_recurring::config::Config::from_lookup(|_| None).unwrap();
    aa_recurring::state::AppState::new(config, store, "http://127.0.0.1:9", clock).unwrap()
}
