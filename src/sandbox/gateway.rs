//! The simulator's gateway: what the real upstream does before any endpoint runs. It counts
//! the call, applies injected latency and faults, and checks the credentials.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde_json::json;

use super::{Fault, Sandbox, error};

impl Sandbox {
    /// Counts the call, then applies injected latency and faults and the auth check, as the
    /// real upstream's gateway would before the endpoint itself. `Some` is the answer to send
    /// instead of the endpoint's own.
    pub(super) async fn refuse(&self, endpoint: &str, headers: &HeaderMap) -> Option<Response> {
        let (latency, fault, error_rate) = {
            let mut st = self.lock();
            *st.calls.entry(endpoint.to_string()).or_default() += 1;
            if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
                let ids = st.request_ids.entry(endpoint.to_string()).or_default();
                if ids.len() == super::KEPT_REQUEST_IDS {
                    ids.pop_front();
                }
                ids.push_back(id.to_string());
            }
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
