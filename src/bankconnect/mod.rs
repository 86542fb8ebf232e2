//! The typed BankConnect client. Every upstream path, header, body and date format lives in
//! this module, so a change in FinBox's API is an edit here and nowhere else.

pub mod error;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::RETRY_AFTER;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use std::io::Write;

use chrono::NaiveDate;
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::domain::pull::PullKind;
use crate::domain::session::NewSession;
use crate::metrics::Metrics;
pub use error::{BankConnectError, ConsentVerdict, ErrorClass};
use wire::{
    ConsentDetail, ConsentDetailsResponse, FetchRecurringBody, SessionBody, SessionCreated,
    SessionIdResponse, SessionStatusAnswer, to_wire_date,
};

/// Enriched data as received, gzip-compressed on the way in so that a several-MB payload
/// never sits in memory uncompressed.
#[derive(Debug)]
pub struct FetchedData {
    pub gzip: Vec<u8>,
    pub raw_size: usize,
    /// One of the client's download slots, given back when the data is dropped: a payload
    /// counts against `MAX_CONCURRENT_DOWNLOADS` until it has been stored.
    _slot: OwnedSemaphorePermit,
}

/// The client's download slots now: downloads holding a payload, and those waiting for a slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Downloads {
    pub holding: usize,
    pub waiting: usize,
}

/// The largest enriched payload we accept, uncompressed.
pub const MAX_DATA_BYTES: usize = 256 * 1024 * 1024;

/// How long the client waits: to connect, for a whole call, and for a data download (which
/// may take minutes for a large Insights answer, as long as bytes keep coming).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// A whole call; for a download, the longest wait between two reads.
    pub call: Duration,
    /// A whole download.
    pub download: Duration,
}

tokio::task_local! {
    /// The correlation id sent as `x-request-id` with every call made inside its scope: the
    /// API request's own id (set by the HTTP layer), or `job-{id}-{attempt}` for a job, so
    /// that one id finds a call in our logs and in FinBox's.
    pub static REQUEST_ID: String;
}

/// A client for one BankConnect base URL (production, UAT or the sandbox).
#[derive(Clone)]
pub struct BankConnectClient {
    http: reqwest::Client,
    base: String,
    api_key: SecretString,
    server_hash: SecretString,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    /// Bounds the payloads held in memory at once ([`FetchedData`]).
    downloads: Arc<Semaphore>,
    max_downloads: usize,
    /// Downloads waiting for a slot.
    waiting: Arc<AtomicUsize>,
}

impl BankConnectClient {
    /// `base` is everything before `/v1`, e.g. `https://apis.bankconnect.finbox.in/bank-connect`;
    /// at most `max_downloads` payloads are held at once.
    pub fn new(
        base: &str,
        api_key: SecretString,
        server_hash: SecretString,
        timeouts: Timeouts,
        max_downloads: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.call)
            // The credentials go with every call: a redirect must not carry them elsewhere.
            // A 3xx is an answer like any other (a permanent error).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aa-recurring/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            api_key,
            server_hash,
            timeouts,
            metrics,
            downloads: Arc::new(Semaphore::new(max_downloads)),
            max_downloads,
            waiting: Arc::default(),
        })
    }

    /// How many downloads hold a slot and how many wait for one (`/metrics`).
    pub fn downloads(&self) -> Downloads {
        Downloads {
            holding: self.max_downloads - self.downloads.available_permits(),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Runs one call and counts it in `bankconnect_requests_total{endpoint,outcome}` and
    /// `bankconnect_request_duration_seconds{endpoint}`.
    async fn observed<T>(
        &self,
        endpoint: &'static str,
        call: impl Future<Output = Result<T, BankConnectError>>,
    ) -> Result<T, BankConnectError> {
        let started = Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_not_ready() => "not_ready",
            Err(e) => match e.class() {
                ErrorClass::Transient => "transient",
                ErrorClass::Permanent => "permanent",
                ErrorClass::Configuration => "configuration",
            },
        };
        self.metrics
            .upstream_call(endpoint, outcome, started.elapsed());
        result
    }

    /// A client with the configured credentials and timeouts, talking to `base`.
    pub fn configured(
        config: &crate::config::Config,
        base: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        Self::new(
            base,
            config.api_key.clone(),
            config.server_hash.clone(),
            Timeouts {
                connect: config.upstream_connect_timeout,
                call: config.upstream_timeout,
                download: config.upstream_download_timeout,
            },
            config.max_concurrent_downloads,
            metrics,
        )
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.base, path)
    }

    /// Sends with the auth headers; a non-success answer becomes an error.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BankConnectError> {
        let req = match REQUEST_ID.try_with(Clone::clone) {
            Ok(id) => req.header("x-request-id", id),
            Err(_) => req,
        };
        let res = req
            .header("x-api-key", self.api_key.expose_secret())
            .header("server-hash", self.server_hash.expose_secret())
            .send()
            .await
            .map_err(transport_error)?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let retry_after = res
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = res.bytes().await.map_err(transport_error)?;
        Err(error::parse_error_body(
            status,
            retry_after.as_deref(),
            std::time::SystemTime::now(),
            &body,
        ))
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, BankConnectError> {
        let body = self
            .exchange(req.timeout(self.timeouts.call))
            .await?
            .bytes()
            .await
            .map_err(transport_error)?;
        serde_json::from_slice(&body).map_err(|e| BankConnectError::Decode {
            message: e.to_string(),
        })
    }

    /// Fetch Recurring AA Data: starts a pull and answers the new session's id. Not
    /// idempotent: every accepted call spends one use of the consent.
    pub async fn fetch_recurring_aa_data(
        &self,
        consent_id: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<String, BankConnectError> {
        let body = FetchRecurringBody {
            consent_id,
            date_time_range_from: to_wire_date(from),
            date_time_range_to: to_wire_date(to),
        };
        let call = self.send::<SessionIdResponse>(
            self.http
                .post(self.url("account_aggregator/fetch_recurring_aa_data/"))
                .json(&body),
        );
        Ok(self
            .observed("fetch_recurring_aa_data", call)
            .await?
            .session_id)
    }

    /// `session_status`: `None` while processing is under way (the upstream's 400
    /// `PROCESSING_NOT_COMPLETED`), else each account's outcome.
    pub async fn session_status(
        &self,
        session_id: &str,
    ) -> Result<Option<SessionStatusAnswer>, BankConnectError> {
        let path = format!("session_data/{}/session_status/", path_segment(session_id));
        let call = self.send(self.http.get(self.url(&path)));
        match self.observed("session_status", call).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_not_ready() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Insights or Transactions of a finished session, streamed into gzip.
    pub async fn fetch_data(
        &self,
        session_id: &str,
        kind: PullKind,
    ) -> Result<FetchedData, BankConnectError> {
        let endpoint = match kind {
            PullKind::Insights => "insights",
            PullKind::Transactions => "transactions",
        };
        // Waiting for a slot is not part of the call's duration.
        let slot = {
            self.waiting.fetch_add(1, Ordering::Relaxed);
            // Counted down however the wait ends, a job stopped at shutdown included.
            scopeguard::defer! { self.waiting.fetch_sub(1, Ordering::Relaxed); }
            self.downloads
                .clone()
                .acquire_owned()
                .await
                .expect("the download semaphore is never closed")
        };
        self.observed(endpoint, self.download(session_id, kind, slot))
            .await
    }

    async fn download(
        &self,
        session_id: &str,
        kind: PullKind,
        slot: OwnedSemaphorePermit,
    ) -> Result<FetchedData, BankConnectError> {
        let path = format!(
            "session_data/{}/{}/",
            path_segment(session_id),
            kind.as_str()
        );
        let mut res = self
            .exchange(
                self.http
                    .get(self.url(&path))
                    .timeout(self.timeouts.download),
            )
            .await?;
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        let mut raw_size = 0usize;
        while let Some(chunk) = res.chunk().await.map_err(transport_error)? {
            raw_size += chunk.len();
            if raw_size > MAX_DATA_BYTES {
                return Err(BankConnectError::Decode {
                    message: format!("{kind} payload larger than {MAX_DATA_BYTES} bytes"),
                });
            }
            gz.write_all(&chunk).expect("writing to a Vec cannot fail");
        }
        let gzip = gz.finish().expect("writing to a Vec cannot fail");
        Ok(FetchedData {
            gzip,
            raw_size,
            _slot: slot,
        })
    }

    /// Session API with the recurring parameters: starts the user's consent journey.
    pub async fn create_session(
        &self,
        s: &NewSession,
        redirect_url: &str,
    ) -> Result<SessionCreated, BankConnectError> {
        let body = SessionBody {
            link_id: &s.link_id,
            api_key: self.api_key.expose_secret(),
            redirect_url,
            mode: "aa",
            bank_name: s.bank_name.as_deref(),
            from_date: s.from_date.map(to_wire_date),
            to_date: s.to_date.map(to_wire_date),
            mobile_number: s.mobile_number.as_deref(),
            aa_journey_mode: s.journey_mode.as_str(),
            aa_recurring_tenure_month_count: s.tenure_months,
            aa_recurring_frequency_unit: s.frequency_unit.as_str(),
            aa_recurring_frequency_value: s.frequency_value,
        };
        let call = self.send(self.http.post(self.url("session/")).json(&body));
        self.observed("session", call).await
    }

    /// Get Recurring Consent Details: one entry per consented account. Read-only upstream, so
    /// calling it again after a failure is safe.
    pub async fn get_recurring_consent_details(
        &self,
        session_id: &str,
    ) -> Result<Vec<ConsentDetail>, BankConnectError> {
        let req = self
            .http
            .post(self.url("account_aggregator/get_recurring_consent_details/"))
            .query(&[("session_id", session_id)]);
        let call = self.send::<ConsentDetailsResponse>(req);
        Ok(self
            .observed("get_recurring_consent_details", call)
            .await?
            .consent_details)
    }

    /// `update_webhook`: tells BankConnect where to send its webhooks (once per account;
    /// `aa-recurring bankconnect register-webhook`).
    pub async fn update_webhook(&self, webhook_url: &str) -> Result<(), BankConnectError> {
        let body = wire::UpdateWebhookBody {
            webhook_url,
            webhook_mode: 1,
        };
        let call = self.send::<serde_json::Value>(
            self.http
                .post(self.url("session_data/update_webhook/"))
                .json(&body),
        );
        self.observed("update_webhook", call).await.map(drop)
    }
}

/// Session ids come from the upstream; keep them from altering the path.
fn path_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

fn transport_error(e: reqwest::Error) -> BankConnectError {
    BankConnectError::Transport {
        // A refused or failed connect cannot have delivered the request; anything later may have.
        maybe_sent: !e.is_connect(),
        message: e.to_string(),
    }
}
