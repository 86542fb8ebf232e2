//! Recurring pulls in the simulator: Fetch Recurring AA Data with fair use, status and
//! progress, Insights and Transactions, and signed webhooks.

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::data::{self, Account};
use super::{
    FETCH_RECURRING, INSIGHTS, PROGRESS, SESSION_STATUS, Sandbox, SimConsent, TRANSACTIONS,
    UPDATE_WEBHOOK, bad, derived_id, error, ist, period_start, wire_date,
};
use crate::webhook_auth;

/// A pull session the simulator is processing or has processed.
pub(super) struct SimPull {
    consent: SimConsent,
    from: NaiveDate,
    to: NaiveDate,
    started: Instant,
    polls: u32,
    expired: bool,
    accounts_fail: bool,
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "SESSION_NOT_FOUND",
        "Session not found",
    )
}

fn not_ready() -> Response {
    bad(
        "PROCESSING_NOT_COMPLETED",
        "Processing is not completed yet",
    )
}

fn account_status(session_id: &str, p: &SimPull) -> Value {
    let failed = p.accounts_fail;
    json!([{
        "name": "Sandbox User",
        "account_category": "individual",
        "account_id": p.consent.account_id,
        "bank_name": p.consent.bank_name,
        "error_code": if failed { json!("FIP_DATA_FETCH_FAILED") } else { Value::Null },
        "error_message": if failed { json!(format!("the bank did not answer for session {session_id}")) } else { Value::Null },
        "account_status": if failed { "failed" } else { "completed" },
        "attempt_types": ["AA"],
    }])
}

pub(super) async fn fetch_recurring(
    State(sb): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = sb.refuse(FETCH_RECURRING, &headers).await {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad("INVALID_REQUEST", "body must be JSON");
    };
    let Some(consent_id) = body["consent_id"].as_str() else {
        return bad("INVALID_CONSENT_ID", "consent_id is required");
    };
    let date = |k: &str| body[k].as_str().and_then(wire_date);
    let (Some(from), Some(to)) = (date("date_time_range_from"), date("date_time_range_to")) else {
        return bad(
            "INVALID_DATE_RANGE",
            "date_time_range_from and date_time_range_to must be DD/MM/YYYY",
        );
    };
    let now = sb.config.clock.now();
    if from > to || to > now.with_timezone(&ist()).date_naive() {
        return bad(
            "INVALID_DATE_RANGE",
            "Date range invalid for recurring pull",
        );
    }

    let (session_id, event, settings) = match accept_fetch(&sb, consent_id, from, to, now) {
        Ok(accepted) => accepted,
        Err((code, message)) => return bad(code, message),
    };
    if !settings.drop_webhooks {
        let times = if settings.duplicate_webhooks { 2 } else { 1 };
        let delay = Duration::from_millis(settings.webhook_delay_ms.max(settings.processing_ms));
        sb.send_webhook(
            sb.next_webhook_url(),
            event,
            format!("msg_{}", session_id),
            delay,
            times,
        );
    }
    if settings.fetch_answer_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(settings.fetch_answer_delay_ms)).await;
    }
    Json(json!({"session_id": session_id})).into_response()
}

/// Checks a Fetch Recurring AA Data call against the consent and, if it may go ahead, spends
/// a use and starts the pull. Answers the new session id, its webhook event and the settings
/// in force, or the refusal's code and message.
fn accept_fetch(
    sb: &Sandbox,
    consent_id: &str,
    from: NaiveDate,
    to: NaiveDate,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(String, Value, super::Settings), (&'static str, &'static str)> {
    let mut st = sb.lock();
    let Some(consent) = st.consents.get_mut(consent_id) else {
        return Err((
            "INVALID_CONSENT_ID",
            "Consent not found or not linked to session",
        ));
    };
    if consent.revoked {
        return Err(("CONSENT_REVOKED", "User has revoked the recurring consent"));
    }
    let since = period_start(&consent.unit, now);
    if consent.uses.iter().filter(|t| **t >= since).count() >= consent.value as usize {
        return Err((
            "CONSENT_OVERUSED",
            "Consent usage limit exhausted per Sahamati rules",
        ));
    }
    consent.uses.push(now);
    let consent = consent.clone();
    st.seq += 1;
    let session_id = derived_id(&format!("pull:{}:{consent_id}", st.seq));
    let pull = SimPull {
        consent,
        from,
        to,
        started: Instant::now(),
        polls: 0,
        expired: false,
        accounts_fail: st.settings.fail_accounts,
    };
    let event = json!({
        "session_id": session_id,
        "insights_available": !pull.accounts_fail,
        "accounts": account_status(&session_id, &pull),
        "event_name": "ENRICHMENT_NOTIFICATION",
    });
    st.pulls.insert(session_id.clone(), pull);
    Ok((session_id, event, st.settings.clone()))
}

impl Sandbox {
    /// Delivers a signed webhook after `delay`, `times` times over (duplicates carry the same
    /// id and bytes). Like FinBox, a failed delivery is not retried.
    fn send_webhook(
        &self,
        url: Option<String>,
        event: Value,
        id: String,
        delay: Duration,
        times: usize,
    ) {
        let Some(url) = url else { return };
        let target = self.config.webhook.clone();
        let http = self.http.clone();
        let sb = self.clone();
        let clock = self.config.clock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let bytes = serde_json::to_vec(&event).expect("serialises");
            for _ in 0..times {
                let signed = webhook_auth::sign(
                    target.scheme,
                    target.secret.expose_secret(),
                    &id,
                    clock.now().timestamp(),
                    &bytes,
                );
                let mut req = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(bytes.clone());
                for (k, v) in signed {
                    req = req.header(k, v);
                }
                let outcome = if req.send().await.is_ok_and(|r| r.status().is_success()) {
                    "webhooks_delivered"
                } else {
                    "webhooks_failed"
                };
                *sb.lock().calls.entry(outcome.to_string()).or_default() += 1;
            }
        });
    }
}

/// Why a pull session cannot be answered for.
enum Unavailable {
    Unknown,
    Expired,
}

impl IntoResponse for Unavailable {
    fn into_response(self) -> Response {
        match self {
            Unavailable::Unknown => not_found(),
            Unavailable::Expired => error(StatusCode::GONE, "SESSION_DELETED", "Session expired"),
        }
    }
}

/// Looks a pull session up and says whether its processing is finished; `poll` counts the
/// call against `not_ready_polls`.
fn pull_state(
    sb: &Sandbox,
    session_id: &str,
    poll: bool,
) -> Result<(SimPullView, bool), Unavailable> {
    let mut st = sb.lock();
    let settings = st.settings.clone();
    let Some(p) = st.pulls.get_mut(session_id) else {
        return Err(Unavailable::Unknown);
    };
    if p.expired {
        return Err(Unavailable::Expired);
    }
    if poll {
        p.polls += 1;
    }
    let ready = p.started.elapsed() >= Duration::from_millis(settings.processing_ms)
        && (!poll || p.polls > settings.not_ready_polls);
    Ok((
        SimPullView {
            link_id: p.consent.link_id.clone(),
            account_id: p.consent.account_id.clone(),
            bank_name: p.consent.bank_name.clone(),
            masked: p.consent.masked_account_number.clone(),
            from: p.from,
            to: p.to,
            accounts: account_status(session_id, p),
            accounts_fail: p.accounts_fail,
        },
        ready,
    ))
}

/// What a data answer needs of a pull, copied out of the lock.
pub(super) struct SimPullView {
    link_id: String,
    account_id: String,
    bank_name: String,
    masked: String,
    from: NaiveDate,
    to: NaiveDate,
    accounts: Value,
    accounts_fail: bool,
}

impl SimPullView {
    fn account(&self, sb: &Sandbox) -> Account<'_> {
        Account {
            account_id: &self.account_id,
            bank_name: &self.bank_name,
            masked_account_number: &self.masked,
            transactions_per_day: sb.lock().settings.transactions_per_day,
        }
    }
}

pub(super) async fn session_status(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = sb.refuse(SESSION_STATUS, &headers).await {
        return r;
    }
    match pull_state(&sb, &id, true) {
        Err(r) => r.into_response(),
        Ok((_, false)) => not_ready(),
        Ok((p, true)) => Json(json!({
            "session_id": id,
            "insights_available": !p.accounts_fail,
            "accounts": p.accounts,
        }))
        .into_response(),
    }
}

pub(super) async fn progress(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = sb.refuse(PROGRESS, &headers).await {
        return r;
    }
    match pull_state(&sb, &id, false) {
        Err(r) => r.into_response(),
        Ok((p, ready)) => {
            let status = if ready { "completed" } else { "processing" };
            Json(json!({
                "session_id": id,
                "session_progress": status,
                "progress": [{"account_id": p.account_id, "status": status}],
            }))
            .into_response()
        }
    }
}

pub(super) async fn insights(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = sb.refuse(INSIGHTS, &headers).await {
        return r;
    }
    match pull_state(&sb, &id, false) {
        Err(r) => r.into_response(),
        Ok((_, false)) => not_ready(),
        Ok((p, true)) => data_answer(
            &sb,
            data::insights(&id, &p.link_id, p.from, p.to, &[p.account(&sb)]),
        ),
    }
}

pub(super) async fn transactions(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = sb.refuse(TRANSACTIONS, &headers).await {
        return r;
    }
    match pull_state(&sb, &id, false) {
        Err(r) => r.into_response(),
        Ok((_, false)) => not_ready(),
        Ok((p, true)) => data_answer(
            &sb,
            data::transactions_answer(&id, p.from, p.to, &[p.account(&sb)]),
        ),
    }
}

/// A data answer as the settings shape it: padded to stand in for a large document, and
/// dripped out over time like a slow upstream. The padding is made as it is sent, so even a
/// large answer starts at once.
fn data_answer(sb: &Sandbox, doc: Value) -> Response {
    let settings = sb.lock().settings.clone();
    let sending = Download::start(sb);
    if settings.data_padding_bytes == 0 && settings.data_drip_ms == 0 {
        return Json(doc).into_response();
    }
    const PIECES: u64 = 10;
    let doc = serde_json::to_vec(&doc).expect("serialises");
    // `{"padding":"xxx…",` followed by the document without its opening brace.
    let head = Bytes::from_static(br#"{"padding":""#);
    let tail = Bytes::from([&b"\","[..], &doc[1..]].concat());
    let piece = Bytes::from(vec![
        b'x';
        settings.data_padding_bytes.div_ceil(PIECES) as usize
    ]);
    let mut pieces = vec![head];
    let mut left = settings.data_padding_bytes as usize;
    while left > 0 {
        let n = left.min(piece.len());
        pieces.push(piece.slice(..n));
        left -= n;
    }
    pieces.push(tail);
    let pause = Duration::from_millis(settings.data_drip_ms / PIECES);
    let last = pieces.len() - 1;
    // The answer counts as sent once its last piece is handed over (or it is dropped), before
    // the client can have read its end.
    let mut sending = Some(sending);
    let stream =
        futures_util::stream::iter(pieces.into_iter().enumerate()).then(move |(i, bytes)| {
            let done = (i == last).then(|| sending.take());
            async move {
                if i > 0 && !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                drop(done);
                Ok::<_, std::io::Error>(bytes)
            }
        });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// A data answer being sent: counted in `downloads` while it lives.
struct Download(Sandbox);

impl Download {
    fn start(sb: &Sandbox) -> Self {
        let mut st = sb.lock();
        st.downloads += 1;
        st.downloads_peak = st.downloads_peak.max(st.downloads);
        Download(sb.clone())
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.0.lock().downloads -= 1;
    }
}

/// `POST /v1/session_data/update_webhook/` `{"webhook_url", "webhook_mode"}`.
pub(super) async fn update_webhook(
    State(sb): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = sb.refuse(UPDATE_WEBHOOK, &headers).await {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad("INVALID_REQUEST", "body must be JSON");
    };
    match body["webhook_url"]
        .as_str()
        .filter(|u| url::Url::parse(u).is_ok())
    {
        Some(u) => {
            sb.lock().webhook_urls = vec![u.to_string()];
            Json(json!({"message": "success"})).into_response()
        }
        None => bad("INVALID_URL", "webhook_url must be a URL"),
    }
}

/// Control: the user revokes a consent; further pulls answer `CONSENT_REVOKED`.
pub(super) async fn revoke(
    State(sb): State<Sandbox>,
    Path(consent_id): Path<String>,
) -> StatusCode {
    match sb.lock().consents.get_mut(&consent_id) {
        Some(c) => {
            c.revoked = true;
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

/// Control: a pull session expires before completion, with `SESSION_EXPIRY_NOTIFICATION`.
pub(super) async fn expire(
    State(sb): State<Sandbox>,
    Path(session_id): Path<String>,
) -> StatusCode {
    match sb.lock().pulls.get_mut(&session_id) {
        Some(p) => p.expired = true,
        None => return StatusCode::NOT_FOUND,
    }
    let url = sb.next_webhook_url();
    let event = json!({"session_id": session_id, "event_name": "SESSION_EXPIRY_NOTIFICATION"});
    sb.send_webhook(
        url,
        event,
        format!("msg_expiry_{session_id}"),
        Duration::ZERO,
        1,
    );
    StatusCode::NO_CONTENT
}
