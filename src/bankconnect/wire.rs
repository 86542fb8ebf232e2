//! BankConnect's wire formats, exactly as its docs spell them. Nothing outside this module
//! names an upstream field or formats an upstream date.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// BankConnect dates are `DD/MM/YYYY` (docs/bankconnect.md §3).
const WIRE_DATE: &str = "%d/%m/%Y";

pub fn to_wire_date(d: NaiveDate) -> String {
    d.format(WIRE_DATE).to_string()
}

pub fn parse_wire_date(s: &str) -> Option<NaiveDate> {
    // chrono accepts single-digit days and months for %d/%m; the wire format is fixed width.
    if s.len() != 10 {
        return None;
    }
    NaiveDate::parse_from_str(s, WIRE_DATE).ok()
}

/// `POST /v1/session/` body. `api_key` travels in the body as well as the header, because the
/// Session API documents both.
#[derive(Debug, Serialize)]
pub struct SessionBody<'a> {
    pub link_id: &'a str,
    pub api_key: &'a str,
    pub redirect_url: &'a str,
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile_number: Option<&'a str>,
    pub aa_journey_mode: &'static str,
    pub aa_recurring_tenure_month_count: u32,
    pub aa_recurring_frequency_unit: &'static str,
    pub aa_recurring_frequency_value: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SessionCreated {
    pub session_id: String,
    pub redirect_url: String,
}

#[derive(Debug, Deserialize)]
pub struct ConsentDetailsResponse {
    pub consent_details: Vec<ConsentDetail>,
}

/// One consented account. Only `consent_id` is relied on; the rest falls back to what the
/// journey asked for when missing.
#[derive(Debug, Clone, Deserialize)]
pub struct ConsentDetail {
    pub consent_id: String,
    #[serde(default)]
    pub bank_name: Option<String>,
    #[serde(default)]
    pub masked_account_number: Option<String>,
    #[serde(default)]
    pub tenure_month_count: Option<u32>,
    #[serde(default)]
    pub frequency_unit: Option<String>,
    #[serde(default)]
    pub frequency_value: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_day_month_year() {
        let d = NaiveDate::from_ymd_opt(2025, 10, 10).unwrap();
        assert_eq!(to_wire_date(d), "10/10/2025");
        let d = NaiveDate::from_ymd_opt(2025, 1, 2).unwrap();
        assert_eq!(to_wire_date(d), "02/01/2025");
        assert_eq!(parse_wire_date("02/01/2025"), Some(d));
    }

    #[test]
    fn bad_wire_dates_are_refused() {
        assert_eq!(parse_wire_date("2025-01-02"), None);
        assert_eq!(parse_wire_date("2/1/2025"), None);
        assert_eq!(parse_wire_date("31/02/2025"), None);
        assert_eq!(parse_wire_date("29/02/2023"), None);
        assert!(parse_wire_date("29/02/2024").is_some());
        assert_eq!(parse_wire_date(""), None);
    }

    #[test]
    fn consent_details_parse_the_documented_sample() {
        let r: ConsentDetailsResponse = serde_json::from_str(
            r#"{"consent_details": [{"consent_id": "8d5fa22b-216a-54e2-90da-65d1c67c8964", "bank_name": "hdfc",
                "masked_account_number": "XXXXXXXXXXX2304", "tenure_month_count": 24,
                "frequency_unit": "day", "frequency_value": 3}]}"#,
        )
        .unwrap();
        assert_eq!(r.consent_details[0].tenure_month_count, Some(24));
        assert_eq!(r.consent_details[0].frequency_unit.as_deref(), Some("day"));
    }
}

/// `POST /v1/account_aggregator/fetch_recurring_aa_data/` body.
#[derive(Debug, Serialize)]
pub struct FetchRecurringBody<'a> {
    pub consent_id: &'a str,
    pub date_time_range_from: String,
    pub date_time_range_to: String,
}

/// `POST /v1/session_data/update_webhook/`; mode 1 is the only one documented.
#[derive(Debug, Serialize)]
pub struct UpdateWebhookBody<'a> {
    pub webhook_url: &'a str,
    pub webhook_mode: u8,
}

#[derive(Debug, Deserialize)]
pub struct SessionIdResponse {
    pub session_id: String,
}

/// One account's outcome, as `session_status` and `ENRICHMENT_NOTIFICATION` report it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct AccountStatus {
    #[serde(default)]
    pub account_id: Option<String>,
    #[serde(default)]
    pub bank_name: Option<String>,
    #[serde(default)]
    pub account_status: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
}

impl AccountStatus {
    pub fn completed(&self) -> bool {
        self.account_status.as_deref() == Some("completed")
    }
}

/// `GET /v1/session_data/<id>/session_status/` once processing has finished.
#[derive(Debug, Clone, Deserialize)]
pub struct SessionStatusAnswer {
    #[serde(default)]
    pub insights_available: Option<bool>,
    #[serde(default)]
    pub accounts: Vec<AccountStatus>,
}

/// The fields of a webhook this service acts on; everything else is kept as received.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookEvent {
    #[serde(default)]
    pub event_name: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub accounts: Vec<AccountStatus>,
}

pub const ENRICHMENT_NOTIFICATION: &str = "ENRICHMENT_NOTIFICATION";
pub const SESSION_EXPIRY_NOTIFICATION: &str = "SESSION_EXPIRY_NOTIFICATION";
/// "Not yet": the answer of status and data endpoints while processing is under way.
pub const PROCESSING_NOT_COMPLETED: &str = "PROCESSING_NOT_COMPLETED";

#[derive(Deserialize)]
struct DataPayload {
    #[serde(default)]
    accounts: Vec<DataAccount>,
}

#[derive(Deserialize)]
struct DataAccount {
    #[serde(default)]
    account_id: Option<String>,
    /// Insights nest transactions under `data`.
    #[serde(default)]
    data: Option<DataInner>,
    /// The Transactions answer (shape not public) is read the same way if they sit here.
    #[serde(default)]
    transactions: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct DataInner {
    #[serde(default)]
    transactions: Vec<serde_json::Value>,
}

/// One transaction of an Insights or Transactions answer, with what identifies and orders it.
#[derive(Debug, Clone, PartialEq)]
pub struct WireTransaction {
    pub account_id: Option<String>,
    /// The upstream's `hash`: the same transaction has the same hash in every pull.
    pub hash: String,
    /// `date` as sent: `YYYY-MM-DD HH:MM:SS`.
    pub date: String,
    pub body: serde_json::Value,
}

/// Reads every account's transactions out of an enriched-data answer, skipping the rest of
/// the document. A transaction with no `hash` is keyed by a hash of its own JSON.
pub fn transactions_in(
    reader: impl std::io::Read,
) -> Result<Vec<WireTransaction>, serde_json::Error> {
    use sha2::{Digest, Sha256};
    let payload: DataPayload = serde_json::from_reader(std::io::BufReader::new(reader))?;
    let mut out = vec![];
    for account in payload.accounts {
        let nested = account.data.map(|d| d.transactions).unwrap_or_default();
        for t in nested.into_iter().chain(account.transactions) {
            let hash = t["hash"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| hex::encode(Sha256::digest(t.to_string().as_bytes())));
            let date = t["date"].as_str().unwrap_or_default().to_string();
            out.push(WireTransaction {
                account_id: account.account_id.clone(),
                hash,
                date,
                body: t,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod data_tests {
    use super::*;

    #[test]
    fn transactions_are_read_from_both_shapes() {
        let insights = br#"{"session_id": "s", "accounts": [{"account_id": "a1", "data": {"transactions": [
            {"hash": "h1", "date": "2025-01-02 10:00:00", "amount": 5}], "monthly_analysis": {}}}]}"#;
        let t = transactions_in(&insights[..]).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].hash.as_str(), t[0].date.as_str()),
            ("h1", "2025-01-02 10:00:00")
        );
        assert_eq!(t[0].account_id.as_deref(), Some("a1"));
        let txns = br#"{"accounts": [{"account_id": "a2", "transactions": [{"date": "2025-01-03 00:00:00", "amount": 1}]}]}"#;
        let t = transactions_in(&txns[..]).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].hash.len(), 64, "a missing hash is derived");
        assert!(transactions_in(&b"not json"[..]).is_err());
    }
}
