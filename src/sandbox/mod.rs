//! A BankConnect simulator, faithful to docs/bankconnect.md: the same paths, bodies, error shapes
//! and codes, with a hosted "SDK" page where a person (or a test) approves or denies.
//!
//! State is in memory and generated data is deterministic: the same calls in the same order
//! give the same ids and accounts. Control endpoints under `/_control` inject faults and count
//! calls, so tests can prove what the service did and did not send upstream.

mod data;
mod pages;
mod pulls;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::bankconnect::wire::parse_wire_date;
use crate::config::WebhookVerify;
use crate::domain::consent::FrequencyUnit;

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
    faults: HashMap<String, Fault>,
}

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
    unit: FrequencyUnit,
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
            .route("/v1/session/", post(create_session))
            .route(
                "/v1/account_aggregator/get_recurring_consent_details/",
                post(consent_details),
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
            .route("/sdk/{session_id}/{decision}", post(decide))
            .route("/_control/calls", get(calls))
            .route("/_control/faults", post(set_fault).delete(clear_faults))
            .route("/_control/settings", get(get_settings).post(set_settings))
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

    /// Counts the call, then applies injected latency and faults and the auth check, as the
    /// real upstream's gateway would before the endpoint itself. `Some` is the answer to send
    /// instead of the endpoint's own.
    async fn refuse(&self, endpoint: &str, headers: &HeaderMap) -> Option<Response> {
        let (latency, fault, error_rate) = {
            let mut st = self.lock();
            *st.calls.entry(endpoint.to_string()).or_default() += 1;
            let fault = st
                .faults
                .get_mut(endpoint)
                .filter(|f| f.remaining > 0)
                .map(|f| {
                    f.remaining -= 1;
                    f.clone()
                });
            (st.settings.latency_ms, fault, st.settings.error_rate)
        };
        if latency > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
        }
        if let Some(Fault {
            delay_ms: Some(ms), ..
        }) = &fault
        {
            tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
        }
        if let Some(Fault {
            status: Some(status),
            code,
            ..
        }) = fault
        {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let code = code.as_deref().unwrap_or("SANDBOX_FAULT");
            return Some(error(status, code, "injected fault"));
        }
        if error_rate > 0.0 && rand::random::<f64>() < error_rate {
            return Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SANDBOX_FAULT",
                "random injected fault",
            ));
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
        };
        let (Some(key), Some(hash)) = (header("x-api-key"), header("server-hash")) else {
            return Some(
                (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"detail": "Authentication credentials were not provided."})),
                )
                    .into_response(),
            );
        };
        if let Some((want_key, want_hash)) = &self.config.credentials
            && (key != want_key.expose_secret() || hash != want_hash.expose_secret())
        {
            return Some(error(
                StatusCode::FORBIDDEN,
                "ACCESS_DENIED",
                "invalid credentials",
            ));
        }
        None
    }
}

fn str_field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

fn int_field(body: &Value, names: &[&str]) -> Result<Option<i64>, ()> {
    for n in names {
        if let Some(v) = body.get(*n) {
            return v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Some)
                .ok_or(());
        }
    }
    Ok(None)
}

async fn create_session(
    State(sb): State<Sandbox>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = sb.refuse(SESSION, &headers).await {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad("INVALID_REQUEST", "body must be JSON");
    };
    let link_id = match str_field(&body, "link_id") {
        Some(l) if !l.is_empty() && l.chars().count() <= 500 => l.to_string(),
        _ => {
            return bad(
                "INVALID_REQUEST",
                "link_id is required (at most 500 characters)",
            );
        }
    };
    let redirect_url = match str_field(&body, "redirect_url") {
        None => None,
        Some(u) if u.len() <= 200 && url::Url::parse(u).is_ok() => Some(u.to_string()),
        Some(_) => {
            return bad(
                "INVALID_URL",
                "redirect_url must be a URL of at most 200 characters",
            );
        }
    };
    let bank_name = match str_field(&body, "bank_name") {
        Some(b) if b.chars().count() > 50 => {
            return bad("INVALID_REQUEST", "bank_name is too long");
        }
        b => b.map(str::to_string),
    };
    let dates = (str_field(&body, "from_date"), str_field(&body, "to_date"));
    let parsed = (dates.0.map(parse_wire_date), dates.1.map(parse_wire_date));
    if matches!(parsed.0, Some(None)) || matches!(parsed.1, Some(None)) {
        return bad("INVALID_DATE_FORMAT", "dates must be DD/MM/YYYY");
    }
    if let (Some(Some(from)), Some(Some(to))) = parsed
        && from > to
    {
        return bad("INVALID_DATE_RANGE", "from_date is after to_date");
    }

    let Some(mode) = str_field(&body, "aa_journey_mode") else {
        return bad(
            "MISSING_AA_PARAMETER",
            "aa_journey_mode is required for recurring consent",
        );
    };
    if !JOURNEY_MODES.contains(&mode) {
        return bad("INVALID_AA_PARAMETER", "aa_journey_mode is not valid");
    }
    let Some(unit) = str_field(&body, "aa_recurring_frequency_unit") else {
        return bad(
            "MISSING_AA_PARAMETER",
            "aa_recurring_frequency_unit is required",
        );
    };
    if !UNITS.contains(&unit) {
        return bad(
            "INVALID_AA_PARAMETER",
            "aa_recurring_frequency_unit is not valid",
        );
    }
    let tenure = match int_field(
        &body,
        &[
            "aa_recurring_tenure_month_count",
            "aa_recurring_tenure_month",
        ],
    ) {
        Ok(Some(t)) if (1..=60).contains(&t) => t as u32,
        Ok(None) => {
            return bad(
                "MISSING_AA_PARAMETER",
                "aa_recurring_tenure_month_count is required",
            );
        }
        _ => {
            return bad(
                "INVALID_AA_PARAMETER",
                "aa_recurring_tenure_month_count must be 1 to 60",
            );
        }
    };
    let value = match int_field(&body, &["aa_recurring_frequency_value"]) {
        Ok(Some(v)) if (1..=5).contains(&v) => v as u32,
        Ok(None) => {
            return bad(
                "MISSING_AA_PARAMETER",
                "aa_recurring_frequency_value is required",
            );
        }
        _ => {
            return bad(
                "INVALID_AA_PARAMETER",
                "aa_recurring_frequency_value must be 1 to 5",
            );
        }
    };

    let mut st = sb.lock();
    st.seq += 1;
    let session_id = derived_id(&format!("session:{}:{link_id}", st.seq));
    st.sessions.insert(
        session_id.clone(),
        SimSession {
            link_id,
            redirect_url,
            bank_name,
            tenure,
            unit: unit.to_string(),
            value,
            journey: Journey::Pending,
            consents: vec![],
        },
    );
    let redirect_url = format!("{}/sdk?session_id={session_id}", sb.config.public_url);
    Json(json!({"session_id": session_id, "redirect_url": redirect_url})).into_response()
}

#[derive(Deserialize)]
struct SessionQuery {
    session_id: Option<String>,
}

async fn consent_details(
    State(sb): State<Sandbox>,
    headers: HeaderMap,
    Query(q): Query<SessionQuery>,
) -> Response {
    if let Some(r) = sb.refuse(CONSENT_DETAILS, &headers).await {
        return r;
    }
    let st = sb.lock();
    let Some(session) = q.session_id.as_deref().and_then(|id| st.sessions.get(id)) else {
        return bad(
            "INVALID_SESSION_ID",
            "Session is invalid, expired, or closed",
        );
    };
    Json(json!({"consent_details": session.consents})).into_response()
}

/// One consent per account; one or two accounts, decided by the link id.
fn make_consents(session_id: &str, s: &SimSession) -> Vec<Value> {
    let seed = Sha256::digest(s.link_id.as_bytes());
    let accounts = 1 + (seed[0] % 2) as usize;
    (0..accounts)
        .map(|i| {
            let h = Sha256::digest(format!("account:{session_id}:{i}").as_bytes());
            let last4 = u16::from_be_bytes([h[0], h[1]]) % 10_000;
            let bank = s
                .bank_name
                .clone()
                .unwrap_or_else(|| BANKS[h[2] as usize % BANKS.len()].to_string());
            json!({
                "consent_id": derived_id(&format!("consent:{session_id}:{i}")),
                "bank_name": bank,
                "masked_account_number": format!("XXXXXXXX{last4:04}"),
                "tenure_month_count": s.tenure,
                "frequency_unit": s.unit,
                "frequency_value": s.value,
            })
        })
        .collect()
}

/// The SDK page's buttons. Approving twice is harmless; the browser goes back to the lender
/// as BankConnect documents: `?success=true&session_id=…` or `?success=false&session_id=…`.
async fn decide(
    State(sb): State<Sandbox>,
    Path((session_id, decision)): Path<(String, String)>,
) -> Response {
    let mut guard = sb.lock();
    let SimState {
        sessions, consents, ..
    } = &mut *guard;
    let Some(session) = sessions.get_mut(&session_id) else {
        return bad(
            "INVALID_SESSION_ID",
            "Session is invalid, expired, or closed",
        );
    };
    let success = match decision.as_str() {
        "approve" => {
            if session.journey != Journey::Approved {
                session.consents = make_consents(&session_id, session);
                session.journey = Journey::Approved;
                let registered: Vec<(String, SimConsent)> = session
                    .consents
                    .iter()
                    .map(|c| {
                        let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                        let consent = SimConsent {
                            link_id: session.link_id.clone(),
                            account_id: derived_id(&format!("account:{}", text("consent_id"))),
                            bank_name: text("bank_name"),
                            masked_account_number: text("masked_account_number"),
                            unit: session.unit.parse().unwrap_or(FrequencyUnit::Day),
                            value: session.value,
                            revoked: false,
                            uses: vec![],
                        };
                        (text("consent_id"), consent)
                    })
                    .collect();
                consents.extend(registered);
            }
            true
        }
        "deny" => {
            if session.journey == Journey::Pending {
                session.journey = Journey::Denied;
            }
            false
        }
        _ => return error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown decision"),
    };
    match &session.redirect_url {
        Some(base) => {
            let mut url = url::Url::parse(base).expect("validated at session creation");
            url.query_pairs_mut()
                .append_pair("success", if success { "true" } else { "false" })
                .append_pair("session_id", &session_id);
            Redirect::to(url.as_str()).into_response()
        }
        None => (StatusCode::OK, if success { "approved" } else { "denied" }).into_response(),
    }
}

async fn calls(State(sb): State<Sandbox>) -> Json<Value> {
    Json(json!({"calls": sb.lock().calls}))
}

async fn set_fault(State(sb): State<Sandbox>, Json(f): Json<FaultRequest>) -> StatusCode {
    sb.lock().faults.insert(
        f.endpoint,
        Fault {
            status: f.status,
            code: f.code,
            delay_ms: f.delay_ms,
            remaining: f.count,
        },
    );
    StatusCode::NO_CONTENT
}

async fn get_settings(State(sb): State<Sandbox>) -> Json<Settings> {
    Json(sb.lock().settings.clone())
}

/// Replaces the settings; fields left out take their defaults.
async fn set_settings(State(sb): State<Sandbox>, Json(settings): Json<Settings>) -> Json<Settings> {
    sb.lock().settings = settings.clone();
    Json(settings)
}

async fn clear_faults(State(sb): State<Sandbox>) -> StatusCode {
    sb.lock().faults.clear();
    StatusCode::NO_CONTENT
}
