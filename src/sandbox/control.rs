//! Control endpoints for tests and load runs (not part of BankConnect): calls answered per
//! endpoint, the most data answers sent at once, injected faults, and behaviour settings.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Fault, FaultRequest, Sandbox, Settings};

pub(super) async fn calls(State(sb): State<Sandbox>) -> Json<Value> {
    let st = sb.lock();
    Json(json!({
        "calls": st.calls,
        "request_ids": st.request_ids,
        "downloads_peak": st.downloads_peak,
    }))
}

pub(super) async fn set_fault(
    State(sb): State<Sandbox>,
    Json(f): Json<FaultRequest>,
) -> StatusCode {
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

pub(super) async fn get_settings(State(sb): State<Sandbox>) -> Json<Settings> {
    Json(sb.lock().settings.clone())
}

/// Replaces the settings; fields left out take their defaults.
pub(super) async fn set_settings(
    State(sb): State<Sandbox>,
    Json(settings): Json<Settings>,
) -> Json<Settings> {
    sb.lock().settings = settings.clone();
    Json(settings)
}

pub(super) async fn clear_faults(State(sb): State<Sandbox>) -> StatusCode {
    sb.lock().faults.clear();
    StatusCode::NO_CONTENT
}
