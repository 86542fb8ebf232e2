//! The consent journey in the simulator: the Session API, the hosted SDK page's decision, and
//! Get Recurring Consent Details (docs/bankconnect.md §1 and §2).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::wire_date;
use super::{
    BANKS, CONSENT_DETAILS, JOURNEY_MODES, Journey, SESSION, Sandbox, SimConsent, SimSession,
    SimState, UNITS, bad, derived_id, error,
};

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

pub(super) async fn create_session(
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
    let parsed = (dates.0.map(wire_date), dates.1.map(wire_date));
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
pub(super) struct SessionQuery {
    pub(super) session_id: Option<String>,
}

pub(super) async fn consent_details(
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
pub(super) async fn decide(
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
                            unit: session.unit.clone(),
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
