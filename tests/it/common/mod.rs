//! Spawns the real service on port 0 against the sandbox and drives it over HTTP.
#![allow(dead_code)]

mod clocked;
mod fixtures;
mod logs;
pub use clocked::*;
pub use fixtures::*;
pub use logs::*;

use std::collections::HashMap;
use std::time::Duration;

use aa_recurring::config::Config;
use aa_recurring::config::WebhookVerify;
use aa_recurring::jobs::worker::WorkerSettings;
pub use aa_recurring::sandbox::Settings as SandboxSettings;
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

/// How a test starts the service, the one way: `TestApp::builder()…start().await`. By default
/// it runs in sandbox mode on a fresh database (SQLite, or Postgres in the Postgres pass),
/// with the background parts tuned for tests.
pub struct TestAppBuilder {
    env: Vec<(String, String)>,
    options: RunOptions,
    database: Option<(String, std::sync::Arc<tempfile::TempDir>)>,
}

impl TestAppBuilder {
    /// Environment variables on top of the test defaults.
    pub fn env(mut self, pairs: &[(&str, &str)]) -> Self {
        self.env
            .extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// The clock the service (and its in-process sandbox) runs on.
    pub fn clock(mut self, clock: std::sync::Arc<dyn aa_recurring::clock::Clock>) -> Self {
        self.options.clock = clock;
        self
    }

    /// Background settings other than the test defaults.
    pub fn options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs on an existing database (a restart), instead of a fresh one.
    pub fn database(mut self, db_url: String, dir: std::sync::Arc<tempfile::TempDir>) -> Self {
        self.database = Some((db_url, dir));
        self
    }

    pub async fn start(self) -> TestApp {
        let (db_url, dir) = match self.database {
            Some(existing) => existing,
            None => {
                let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
                (fresh_database(dir.path()).await, dir)
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let mut vars: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".into(), db_url.clone()),
            ("API_TOKENS".into(), TOKEN.into()),
            ("PUBLIC_BASE_URL".into(), base.clone()),
            ("BANKCONNECT_TIMEOUT_SECS".into(), "5".into()),
        ]);
        vars.extend(self.env);
        let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("test config");
        let sandbox_base = vars
            .get("BANKCONNECT_BASE_URL")
            .cloned()
            .unwrap_or_else(|| format!("{base}/sandbox"));
        let app = App::start(config, listener, self.options)
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
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            env: vec![],
            options: test_options(),
            database: None,
        }
    }

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

    /// What the simulator has answered: `calls` and `request_ids` per endpoint.
    async fn upstream_record(&self) -> Value {
        let r = self
            .http
            .get(format!("{}/_control/calls", self.sandbox_base))
            .send()
            .await
            .unwrap();
        decode(r).await.1
    }

    /// Calls the simulator has answered per endpoint.
    pub async fn upstream_calls(&self, endpoint: &str) -> u64 {
        self.upstream_record().await["calls"][endpoint]
            .as_u64()
            .unwrap_or(0)
    }

    /// The most Insights and Transactions answers the simulator was sending at once.
    pub async fn upstream_downloads_peak(&self) -> u64 {
        self.upstream_record().await["downloads_peak"]
            .as_u64()
            .expect("the simulator reports downloads_peak")
    }

    /// The last `x-request-id`s the simulator received on an endpoint.
    pub async fn upstream_request_ids(&self, endpoint: &str) -> Vec<String> {
        let ids = self.upstream_record().await["request_ids"][endpoint].clone();
        serde_json::from_value(ids).unwrap_or_default()
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
    /// Makes a dead job, a consent capture whose upstream answered 401 (a configuration
    /// error, never retried), and returns its id.
    pub async fn dead_capture_job(&self, link_id: &str) -> i64 {
        self.inject_fault("get_recurring_consent_details", 401, 1)
            .await;
        let (_, redirect_url) = self.start_journey(link_id).await;
        self.decide(&redirect_url, "approve").await;
        let dead = self
            .eventually("/api/v1/jobs?state=dead&kind=capture_consents", 10, |p| {
                !p["items"].as_array().unwrap().is_empty()
            })
            .await;
        dead["items"][0]["job_id"].as_i64().unwrap()
    }

    pub async fn pull_reaches(&self, pull_id: &str, status: &str, secs: u64) -> Value {
        self.eventually(&format!("/api/v1/pulls/{pull_id}"), secs, |p| {
            p["status"] == status
        })
        .await
    }

    /// The borrower revokes the consent upstream (the sandbox's control endpoint).
    pub async fn revoke_upstream(&self, consent_id: &str) {
        let r = self
            .http
            .post(format!(
                "{}/_control/consents/{consent_id}/revoke",
                self.sandbox_base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }

    /// Replaces the simulator's settings (fields left out take their defaults).
    pub async fn sandbox_settings(&self, settings: SandboxSettings) {
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

    /// The whole `/metrics` exposition.
    pub async fn metrics_text(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    }

    /// A counter from `/metrics`, by its full sample name with labels.
    pub async fn metric(&self, sample: &str) -> u64 {
        self.metric_value(sample).await as u64
    }

    /// A sample's value from `/metrics`, by its full name with labels; 0 when absent.
    pub async fn metric_value(&self, sample: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .filter(|v| v.starts_with(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
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

    /// [`TestApp::job_counts`] once no job is `running`, or after a second: a job records its
    /// outcome just after its work commits (the worker pool's finisher batches them), so a
    /// pull can show `completed` a moment before its job shows `done`.
    pub async fn settled_job_counts(&self) -> Vec<(String, i64)> {
        let mut counts = self.job_counts().await;
        for _ in 0..50 {
            if !counts.iter().any(|(s, _)| s == "running") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            counts = self.job_counts().await;
        }
        counts
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
