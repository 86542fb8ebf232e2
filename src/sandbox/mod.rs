//! A BankConnect simulator, faithful to docs/bankconnect.md: the same paths, bodies, error shapes
//! and codes, with a hosted "SDK" page where a person (or a test) approves or denies.
//!
//! State is in memory and generated data is deterministic: the same calls in the same order
//! give the same ids and accounts. Control endpoints under `/_control` inject faults and count
//! calls, so tests can prove what the service did and did not send upstream.

mod control;
mod data;
mod gateway;
mod journey;
mod pages;
mod pulls;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone, Timelike, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::WebhookVerify;

/// How the simulator presents itself.
#[derive(Clone)]
pub struct SandboxConfig {
    /// How browsers reach the simulator's root (its SDK page links are built from it).
    pub public_url: String,
    /// `(x-api-key, server-hash)` the simulator insists on; `None` accepts any non-empty pair.
    pub credentials: Option<(SecretString, SecretString)>,
    /// Where and how pull webhooks are sent. The URL can also be set through the documented
    /// `update_webhook` endpoint.
    pub webhook: WebhookTarget,
    /// The simulator's "today" and fair-use windows; in-process it shares the service's clock.
    pub clock: Arc<dyn crate::clock::Clock>,
}

/// A webhook destination and how deliveries are signed.
#[derive(Clone)]
pub struct WebhookTarget {
    /// Deliveries go to these in turn (several instances behind no load balancer).
    pub urls: Vec<String>,
    pub scheme: WebhookVerify,
    pub secret: SecretString,
}

#[derive(Clone)]
pub struct Sandbox {
    config: Arc<SandboxConfig>,
    state: Arc<Mutex<SimState>>,
    http: reqwest::Client,
}

#[derive(Default)]
struct SimState {
    seq: u64,
    sessions: HashMap<String, SimSession>,
    consents: HashMap<String, SimConsent>,
    pulls: HashMap<String, pulls::SimPull>,
    webhook_urls: Vec<String>,
    webhook_turn: usize,
    settings: Settings,
    calls: BTreeMap<String, u64>,
    /// The last `x-request-id`s each endpoint received (at most [`KEPT_REQUEST_IDS`]), so
    /// tests can see the service's correlation ids arrive.
    request_ids: BTreeMap<String, std::collections::VecDeque<String>>,
    faults: HashMap<String, Fault>,
    /// Insights and Transactions answers being sent now, and the most there ever were at
    /// once, so tests can see the service bound its downloads.
    downloads: u64,
    downloads_peak: u64,
}

/// How many `x-request-id`s the simulator keeps per endpoint.
const KEPT_REQUEST_IDS: usize = 100;

/// Behaviour that tests and load runs tune through `/_control/settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// How long after a Fetch Recurring AA Data call the webhook is sent.
    pub webhook_delay_ms: u64,
    /// How long a pull takes to process; before that, status and data answer "not yet".
    pub processing_ms: u64,
    /// Send no webhooks at all (the service must fall back to polling).
    pub drop_webhooks: bool,
    /// Send every webhook twice.
    pub duplicate_webhooks: bool,
    /// `session_status` answers `PROCESSING_NOT_COMPLETED` to the first N polls of each pull.
    pub not_ready_polls: u32,
    /// Every account of every pull fails upstream.
    pub fail_accounts: bool,
    /// The share (0 to 1) of API calls that answer 503 at random.
    pub error_rate: f64,
    /// Added to every API call.
    pub latency_ms: u64,
    /// Fetch Recurring AA Data answers this late *after* doing its work (and starting its
    /// webhook), so the webhook can overtake the answer.
    pub fetch_answer_delay_ms: u64,
    /// Insights and Transactions answers carry this many extra bytes (a `padding` field), to
    /// stand in for a large upstream document.
    pub data_padding_bytes: u64,
    /// Insights and Transactions answers are sent in ten pieces spread over this long, like a
    /// slow upstream that keeps sending.
    pub data_drip_ms: u64,
    /// Every account has this many transactions a day (0: none to two, depending on the
    /// day), to stand in for a busy account's large Transactions and Insights answers.
    pub transactions_per_day: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            webhook_delay_ms: 50,
            processing_ms: 0,
            drop_webhooks: false,
            duplicate_webhooks: false,
            not_ready_polls: 0,
            fail_accounts: false,
            error_rate: 0.0,
            latency_ms: 0,
            fetch_answer_delay_ms: 0,
            data_padding_bytes: 0,
            data_drip_ms: 0,
            transactions_per_day: 0,
        }
    }
}

/// What the simulator knows of an approved consent.
#[derive(Clone)]
struct SimConsent {
    link_id: String,
    account_id: String,
    bank_name: String,
    masked_account_number: String,
    /// `hour`, `day`, `month` or `year`, as the journey asked.
    unit: String,
    value: u32,
    revoked: bool,
    /// When each accepted Fetch Recurring AA Data call came, for fair use.
    uses: Vec<DateTime<Utc>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Journey {
    Pending,
    Approved,
    Denied,
}

#[derive(Clone)]
struct SimSession {
    link_id: String,
    redirect_url: Option<String>,
    bank_name: Option<String>,
    tenure: u32,
    unit: String,
    value: u32,
    journey: Journey,
    consents: Vec<Value>,
}

/// The next `remaining` calls to an endpoint misbehave: they answer `status` instead of doing
/// their work, or they do their work but answer only after `delay_ms` (a client timeout after
/// the upstream acted).
#[derive(Clone)]
struct Fault {
    status: Option<u16>,
    /// The error code the fault answers with (default `SANDBOX_FAULT`).
    code: Option<String>,
    delay_ms: Option<u64>,
    remaining: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    endpoint: String,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    delay_ms: Option<u64>,
    count: u32,
}

const BANKS: [&str; 5] = ["hdfc", "icici", "sbi", "axis", "kotak"];
const UNITS: [&str; 4] = ["hour", "day", "month", "year"];
const JOURNEY_MODES: [&str; 2] = ["only_recurring", "once_with_recurring"];

/// Endpoint names, as counted by `/_control/calls` and named in faults.
pub const SESSION: &str = "session";
pub const CONSENT_DETAILS: &str = "get_recurring_consent_details";
pub const FETCH_RECURRING: &str = "fetch_recurring_aa_data";
pub const SESSION_STATUS: &str = "session_status";
pub const PROGRESS: &str = "progress";
pub const INSIGHTS: &str = "insights";
pub const TRANSACTIONS: &str = "transactions";
pub const UPDATE_WEBHOOK: &str = "update_webhook";

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

fn bad(code: &str, message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, code, message)
}

/// A uuid-shaped id derived from `seed`, so runs are reproducible.
fn derived_id(seed: &str) -> String {
    let hash = Sha256::digest(seed.as_bytes());
    let bytes: [u8; 16] = hash[..16].try_into().expect("16 bytes");
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Self {
        let state = SimState {
            webhook_urls: config.webhook.urls.clone(),
            ..SimState::default()
        };
        Self {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(state)),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/session/", post(journey::create_session))
            .route(
                "/v1/account_aggregator/get_recurring_consent_details/",
                post(journey::consent_details),
            )
            .route(
                "/v1/account_aggregator/fetch_recurring_aa_data/",
                post(pulls::fetch_recurring),
            )
            .route(
                "/v1/session_data/{session_id}/session_status/",
                get(pulls::session_status),
            )
            .route(
                "/v1/session_data/{session_id}/progress/",
                get(pulls::progress),
            )
            .route(
                "/v1/session_data/{session_id}/insights/",
                get(pulls::insights),
            )
            .route(
                "/v1/session_data/{session_id}/transactions/",
                get(pulls::transactions),
            )
            .route(
                "/v1/session_data/update_webhook/",
                post(pulls::update_webhook),
            )
            .route("/sdk", get(pages::sdk_page))
            .route("/sdk/{session_id}/{decision}", post(journey::decide))
            .route("/_control/calls", get(control::calls))
            .route(
                "/_control/faults",
                post(control::set_fault).delete(control::clear_faults),
            )
            .route(
                "/_control/settings",
                get(control::get_settings).post(control::set_settings),
            )
            .route(
                "/_control/consents/{consent_id}/revoke",
                post(pulls::revoke),
            )
            .route(
                "/_control/sessions/{session_id}/expire",
                post(pulls::expire),
            )
            .with_state(self.clone())
    }

    /// The next webhook destination, in turn.
    fn next_webhook_url(&self) -> Option<String> {
        let mut st = self.lock();
        if st.webhook_urls.is_empty() {
            return None;
        }
        st.webhook_turn = st.webhook_turn.wrapping_add(1);
        Some(st.webhook_urls[st.webhook_turn % st.webhook_urls.len()].clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// India Standard Time, where Sahamati's calendar periods are counted.
fn ist() -> FixedOffset {
    FixedOffset::east_opt(5 * 3600 + 1800).expect("in range")
}

/// A BankConnect date (`DD/MM/YYYY`, fixed width). The simulator reads the wire itself,
/// rather than with the client's code, so that a mistake in either shows in the tests.
fn wire_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() != 10 || b[2] != b'/' || b[5] != b'/' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    NaiveDate::from_ymd_opt(num(6..10)? as i32, num(3..5)?, num(0..2)?)
}

/// The start of the calendar period (in IST) of `unit` that holds `t`: the simulator's own
/// fair-use arithmetic, written apart from the service's so a shared bug cannot hide.
fn period_start(unit: &str, t: DateTime<Utc>) -> DateTime<Utc> {
    let local = t.with_timezone(&ist());
    let (y, m, d, h) = (local.year(), local.month(), local.day(), local.hour());
    let (m, d, h) = match unit {
        "hour" => (m, d, h),
        "day" => (m, d, 0),
        "month" => (m, 1, 0),
        _ => (1, 1, 0),
    };
    ist()
        .with_ymd_and_hms(y, m, d, h, 0, 0)
        .single()
        .expect("IST has no gaps")
        .with_timezone(&Utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_on_the_indian_calendar() {
        // 18:31 UTC on 31 March is 00:01 IST on 1 April: a new day, month and hour.
        let t = Utc.with_ymd_and_hms(2025, 3, 31, 18, 31, 0).unwrap();
        let ist_midnight = Utc.with_ymd_and_hms(2025, 3, 31, 18, 30, 0).unwrap();
        assert_eq!(period_start("day", t), ist_midnight);
        assert_eq!(period_start("month", t), ist_midnight);
        assert_eq!(period_start("hour", t), ist_midnight);
        assert_eq!(
            period_start("year", t),
            Utc.with_ymd_and_hms(2024, 12, 31, 18, 30, 0).unwrap()
        );
        assert_eq!(wire_date("02/01/2025"), NaiveDate::from_ymd_opt(2025, 1, 2));
        assert_eq!(wire_date("2/1/2025"), None);
        assert_eq!(wire_date("31/02/2025"), None);
    }
}
