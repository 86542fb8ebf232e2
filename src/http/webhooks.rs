//! `POST /webhooks/bankconnect`: verify the raw bytes, commit to the inbox together with the
//! processing job (group-committed with concurrent deliveries), then acknowledge. The job is
//! handed to this instance's workers with the body when they have room (`queue::Handoff`).
//! Nothing unauthenticated is stored; duplicates are acknowledged and processed once.

use axum::extract::State;
use axum::http::HeaderMap;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::error::{ApiError, RawBody};
use super::ids::plausible_id;
use crate::bankconnect::wire::WebhookEvent;
use crate::state::AppState;
use crate::store::{NewWebhook, Recorded, WebhookReceipt};
use crate::webhook_auth;

#[utoipa::path(
    post, path = "/webhooks/bankconnect", tag = "bankconnect",
    request_body(content = Object, description = "BankConnect's event, verified over the raw bytes (WEBHOOK_VERIFY)"),
    params(
        ("x-secret-key" = Option<String>, Header, description = "secret-key scheme"),
        ("x-webhook-timestamp" = Option<String>, Header, description = "hmac-sha256 scheme"),
        ("x-webhook-signature" = Option<String>, Header, description = "hmac-sha256 scheme: sha256=<hex>"),
        ("webhook-id" = Option<String>, Header, description = "standard-webhooks scheme"),
        ("webhook-timestamp" = Option<String>, Header, description = "standard-webhooks scheme"),
        ("webhook-signature" = Option<String>, Header, description = "standard-webhooks scheme"),
    ),
    responses(
        (status = 200, description = "Stored with its processing job (or a duplicate, processed once)", body = Object),
        (status = 401, description = "INVALID_SIGNATURE", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "OVERLOADED, REQUEST_TIMEOUT, DATABASE_UNAVAILABLE", body = crate::http::openapi::ErrorBody),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<axum::Json<Value>, ApiError> {
    let secrets: Vec<&str> = state
        .config
        .webhook_secrets
        .iter()
        .map(|s| s.expose_secret())
        .collect();
    let now = state.clock.now();
    let verified = match webhook_auth::verify(
        state.config.webhook_verify,
        &secrets,
        &headers,
        &body,
        now.timestamp(),
    ) {
        Ok(v) => v,
        Err(e) => {
            state.metrics.webhook("rejected");
            state.metrics.webhook_rejected(e.reason());
            tracing::warn!(reason = e.reason(), error = %e, "webhook refused");
            state.webhooks.note(receipt(
                "rejected",
                Some(e.reason()),
                None,
                &headers,
                body.len(),
                now,
            ));
            return Err(e.into());
        }
    };
    // Only what routing needs is read here; the body is stored exactly as received.
    let event = serde_json::from_slice::<WebhookEvent>(&body).ok();
    let dedupe_key = match verified.id {
        Some(id) if plausible_id(&id) => format!("id:{id}"),
        // An id too long to index still identifies the delivery by its hash.
        Some(id) => format!("id-sha256:{}", hex::encode(Sha256::digest(id.as_bytes()))),
        None => format!("sha256:{}", hex::encode(Sha256::digest(&body))),
    };
    // Routing fields that could not be ids are not kept as such (the body keeps them as sent),
    // so one odd delivery cannot fail the batch it is committed with.
    let webhook = NewWebhook {
        dedupe_key,
        event_name: event
            .as_ref()
            .and_then(|e| e.event_name.clone())
            .filter(|n| plausible_id(n)),
        upstream_session_id: event.and_then(|e| e.session_id).filter(|s| plausible_id(s)),
        body: body.clone(),
    };
    let dedupe_key = webhook.dedupe_key.clone();
    let recorded = state.webhooks.record(webhook, now).await?;
    let fresh = !matches!(recorded, Recorded::Duplicate);
    match recorded {
        Recorded::Leased { .. } => state.metrics.webhook("accepted"),
        Recorded::Queued { .. } => {
            state.metrics.webhook("accepted");
            state.jobs_wakeup.notify_one();
        }
        Recorded::Duplicate => {
            state.metrics.webhook("duplicate");
            state.webhooks.note(receipt(
                "duplicate",
                None,
                Some(dedupe_key),
                &headers,
                body.len(),
                now,
            ));
        }
    }
    Ok(axum::Json(
        json!({"status": if fresh { "accepted" } else { "duplicate" }}),
    ))
}

/// What the console shows of a delivery that was not stored as new: never its body.
fn receipt(
    outcome: &str,
    reason: Option<&str>,
    dedupe_key: Option<String>,
    headers: &HeaderMap,
    body_bytes: usize,
    received_at: chrono::DateTime<chrono::Utc>,
) -> WebhookReceipt {
    WebhookReceipt {
        id: 0,
        outcome: outcome.into(),
        reason: reason.map(Into::into),
        dedupe_key,
        body_bytes: body_bytes as i64,
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(Into::into),
        received_at,
    }
}
