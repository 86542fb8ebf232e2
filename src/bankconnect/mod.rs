//! The typed BankConnect client. Every upstream path, header, body and date format lives in
//! this module, so a change in FinBox's API is an edit here and nowhere else.

pub mod error;
pub mod wire;

use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use crate::domain::session::NewSession;
pub use error::{BankConnectError, ErrorClass};
use wire::{ConsentDetail, ConsentDetailsResponse, SessionBody, SessionCreated, to_wire_date};

/// A client for one BankConnect base URL (production, UAT or the sandbox).
#[derive(Clone)]
pub struct BankConnectClient {
    http: reqwest::Client,
    base: String,
    api_key: SecretString,
    server_hash: SecretString,
}

impl BankConnectClient {
    /// `base` is everything before `/v1`, e.g. `https://apis.bankconnect.finbox.in/bank-connect`.
    pub fn new(
        base: &str,
        api_key: SecretString,
        server_hash: SecretString,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .user_agent(concat!("aa-recurring/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            api_key,
            server_hash,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.base, path)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, BankConnectError> {
        let res = req
            .header("x-api-key", self.api_key.expose_secret())
            .header("server-hash", self.server_hash.expose_secret())
            .send()
            .await
            .map_err(transport_error)?;
        let status = res.status();
        let retry_after = res
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = res.bytes().await.map_err(transport_error)?;
        if !status.is_success() {
            return Err(error::parse_error_body(
                status,
                retry_after.as_deref(),
                &body,
            ));
        }
        serde_json::from_slice(&body).map_err(|e| BankConnectError::Decode {
            message: e.to_string(),
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
        self.send(self.http.post(self.url("session/")).json(&body))
            .await
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
        let r: ConsentDetailsResponse = self.send(req).await?;
        Ok(r.consent_details)
    }
}

fn transport_error(e: reqwest::Error) -> BankConnectError {
    BankConnectError::Transport {
        // A refused or failed connect cannot have delivered the request; anything later may have.
        maybe_sent: !e.is_connect(),
        message: e.to_string(),
    }
}
