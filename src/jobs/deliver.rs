//! Deliver one event to one of the lender's endpoints, signed as the Standard Webhooks spec
//! says (the same signer the webhook verifier is tested with). Deliveries to one endpoint go
//! out in event order: a delivery waits while an earlier one to the same endpoint is pending.
//! A failed attempt is tried again after each delay of `NOTIFY_RETRY_SCHEDULE`, then the
//! delivery is `failed` (and can be sent again with redeliver). A 410 disables the endpoint at
//! once; one that has failed every delivery for 5 days is disabled.

use std::time::{Duration, Instant};

use super::{JobError, store_retry};
use crate::config::WebhookVerify;
use crate::domain::notify::{EndpointStatus, FAILING_DISABLE_AFTER, Verdict, next_delay, verdict};
use crate::state::AppState;
use crate::store::{AttemptRecord, Delivery};
use crate::webhook_auth::sign;

/// How much of an endpoint's answer is kept.
const RESPONSE_PREFIX: usize = 1024;
/// How long a delivery waits before looking again whether the one ahead of it is done.
const ORDER_WAIT: Duration = Duration::from_secs(2);

pub async fn run(state: &AppState, delivery_seq: i64) -> Result<(), JobError> {
    let store = &state.store;
    let Some(d) = store
        .get_delivery(delivery_seq)
        .await
        .map_err(store_retry)?
    else {
        // The endpoint (or the event, past its data life) is gone: nothing to deliver.
        return Ok(());
    };
    if d.status != "pending" {
        return Ok(());
    }
    let now = state.clock.now();
    if d.endpoint.status == EndpointStatus::Disabled {
        let attempt = AttemptRecord {
            http_status: None,
            latency_ms: 0,
            response: None,
            error: Some("the endpoint is disabled".into()),
            delivery_status: "failed",
            disable: None,
        };
        store
            .record_attempt(&d, &attempt, now)
            .await
            .map_err(store_retry)?;
        return Ok(());
    }
    if store
        .earlier_pending(&d.endpoint.endpoint_id, d.event_seq)
        .await
        .map_err(store_retry)?
    {
        return Err(JobError::Retry {
            message: "an earlier event to this endpoint is still being delivered".into(),
            after: Some(ORDER_WAIT),
        });
    }

    let (status, response, error, latency_ms) = send(state, &d).await;
    let attempts = d.attempts as u32 + 1;
    let (outcome, delivery_status, disable, retry_after) = match verdict(status) {
        Verdict::Delivered => ("delivered", "delivered", None, None),
        Verdict::Gone => (
            "gone",
            "failed",
            Some("the endpoint answered 410 Gone".to_string()),
            None,
        ),
        Verdict::Failed => {
            let failing_for = d.endpoint.failing_since.map(|since| now - since);
            if failing_for.is_some_and(|f| f >= FAILING_DISABLE_AFTER) {
                (
                    "failed",
                    "failed",
                    Some("every delivery failed for 5 days".to_string()),
                    None,
                )
            } else {
                match next_delay(&state.config.notify_retry_schedule, attempts) {
                    Some(delay) => ("retry", "pending", None, Some(delay)),
                    None => ("failed", "failed", None, None),
                }
            }
        }
    };
    state.metrics.notification(outcome);
    if outcome != "delivered" {
        tracing::warn!(
            endpoint_id = %d.endpoint.endpoint_id,
            event_id = %d.event.id,
            attempt = attempts,
            status = ?status,
            error = error.as_deref().unwrap_or(""),
            outcome,
            "event delivery failed"
        );
    }
    let record = AttemptRecord {
        http_status: status,
        latency_ms,
        response,
        error: error.clone().or_else(|| {
            status
                .filter(|s| !(200..300).contains(s))
                .map(|s| format!("the endpoint answered {s}"))
        }),
        delivery_status,
        disable,
    };
    store
        .record_attempt(&d, &record, now)
        .await
        .map_err(store_retry)?;
    // The endpoint's next delivery was made due by that record.
    state.jobs_wakeup.notify_one();
    match retry_after {
        Some(after) => Err(JobError::Retry {
            message: record.error.unwrap_or_default(),
            after: Some(after),
        }),
        None => Ok(()),
    }
}

/// One attempt: the answer's status and first bytes, or why there was none, and how long it
/// took. Bounded in time (10 s, the client's timeout) and memory (1 KiB is kept; the rest is
/// read and dropped up to the timeout).
async fn send(
    state: &AppState,
    d: &Delivery,
) -> (Option<u16>, Option<String>, Option<String>, i64) {
    let body = serde_json::to_vec(&d.event).expect("events serialise");
    let now = state.clock.now();
    let mut request = state
        .notify_http
        .post(&d.endpoint.url)
        .header("content-type", "application/json");
    let mut signatures = vec![];
    for secret in d.endpoint.signing_secrets(now) {
        for (name, value) in sign(
            WebhookVerify::StandardWebhooks,
            secret,
            &d.event.id,
            now.timestamp(),
            &body,
        ) {
            if name == "webhook-signature" {
                signatures.push(value);
            } else if signatures.is_empty() {
                request = request.header(name, value);
            }
        }
    }
    request = request.header("webhook-signature", signatures.join(" "));
    let started = Instant::now();
    let result = request.body(body).send().await;
    let (status, response, error) = match result {
        Err(e) => (None, None, Some(format!("no answer: {e}"))),
        Ok(mut r) => {
            let status = r.status().as_u16();
            let mut kept = Vec::new();
            let mut error = None;
            loop {
                match r.chunk().await {
                    Ok(Some(chunk)) => {
                        let room = RESPONSE_PREFIX.saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        if room == 0 {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(format!("the answer broke off: {e}"));
                        break;
                    }
                }
            }
            (
                Some(status),
                Some(String::from_utf8_lossy(&kept).into_owned()),
                error.filter(|_| !(200..300).contains(&status)),
            )
        }
    };
    (
        status,
        response,
        error,
        started.elapsed().as_millis() as i64,
    )
}
