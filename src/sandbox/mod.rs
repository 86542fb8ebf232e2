//! A BankConnect simulator, faithful to bankconnect.md: the same paths, bodies, error shapes
//! and codes, with a hosted "SDK" page where a person (or a test) approves or denies.
//!
//! State is in memory and generated data is deterministic: the same calls in the same order
//! give the same ids and accounts. Control endpoints under `/_control` inject faults and count
//! calls, so tests can prove what the service did and did not send upstream.

mod pages;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::bankconnect::wire::parse_wire_date;

/// How the simulator presents itself.
#[derive(Clone)]
pub struct SandboxConfig {
    /// How browsers reach the simulator's root (its SDK page links are built from it).
    pub public_url: String,
    /// `(x-api-key, server-hash)` the simulator insists on; `None` accepts any non-empty pair.
    pub credentials: Option<(SecretString, SecretString)>,
}

#[derive(Clone)]
pub struct Sandbox {
    config: Arc<SandboxConfig>,
    state: Arc<Mutex<SimState>>,
}

#[derive(Default)]
struct SimState {
    seq: u64,
    sessions: HashMap<String, SimSession>,
    calls: BTreeMap<String, u64>,
    faults: HashMap<String, Fault>,
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

/// The next `remaining` calls to an endpoint answer `status` instead of doing their work.
#[derive(Clone, Deserialize)]
struct Fault {
    status: u16,
    remaining: u32,
}

#[derive(Deserialize)]
struct FaultRequest {
    endpoint: String,
    status: u16,
    count: u32,
}

const BANKS: [&str; 5] = ["hdfc", "icici", "sbi", "axis", "kotak"];
const UNITS: [&str; 4] = ["hour", "day", "month", "year"];
const JOURNEY_MODES: [&str; 2] = ["only_recurring", "once_with_recurring"];

/// Endpoint names, as counted by `/_control/calls`.
pub const SESSION: &str = "session";
pub const CONSENT_DETAILS: &str = "get_recurring_consent_details";

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
        Self {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(SimState::default())),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/session/", post(create_session))
            .route(
                "/v1/account_aggregator/get_recurring_consent_details/",
                post(consent_details),
            )
            .route("/sdk", get(pages::sdk_page))
            .route("/sdk/{session_id}/{decision}", post(decide))
            .route("/_control/calls", get(calls))
            .route("/_control/faults", post(set_fault).delete(clear_faults))
            .with_state(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the call, then applies an injected fault and the auth check, as the real
    /// upstream's gateway would before the endpoint itself. `Some` is the refusal to send.
    fn refuse(&self, endpoint: &str, headers: &HeaderMap) -> Option<Response> {
        {
            let mut st = self.lock();
            *st.calls.entry(endpoint.to_string()).or_default() += 1;
            if let Some(f) = st.faults.get_mut(endpoint).filter(|f| f.remaining > 0) {
                f.remaining -= 1;
                let status =
                    StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return Some(error(status, "SANDBOX_FAULT", "injected fault"));
            }
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

    /// Calls counted per endpoint since start.
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.lock().calls.get(endpoint).copied().unwrap_or(0)
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
    if let Some(r) = sb.refuse(SESSION, &headers) {
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
    if let Some(r) = sb.refuse(CONSENT_DETAILS, &headers) {
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
    let mut st = sb.lock();
    let Some(session) = st.sessions.get_mut(&session_id) else {
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
            remaining: f.count,
        },
    );
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(sb): State<Sandbox>) -> StatusCode {
    sb.lock().faults.clear();
    StatusCode::NO_CONTENT
}
