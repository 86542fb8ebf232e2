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

/// One transaction of an Insights or Transactions answer, with what identifies and orders it.
#[derive(Debug, Clone, PartialEq)]
pub struct WireTransaction {
    /// The upstream's `hash`: the same transaction has the same hash in every pull.
    pub hash: String,
    /// `date` as sent: `YYYY-MM-DD HH:MM:SS`.
    pub date: String,
    pub body: serde_json::Value,
}

impl WireTransaction {
    /// A transaction with no `hash` is keyed by a hash of its own JSON.
    fn from_json(body: serde_json::Value) -> Self {
        use sha2::{Digest, Sha256};
        let hash = body["hash"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| hex::encode(Sha256::digest(body.to_string().as_bytes())));
        let date = body["date"].as_str().unwrap_or_default().to_string();
        WireTransaction { hash, date, body }
    }
}

/// Hands every account's transactions in an enriched-data answer to `each` as they are
/// parsed, skipping the rest of the document, so a large answer is never held parsed whole.
/// Insights nest them under `accounts[].data.transactions`; the Transactions answer (its shape
/// is not public) is read the same way if they sit at `accounts[].transactions`. An error from
/// `each` stops the parse and comes back as the parse's error; what `each` took before an
/// error in the document stays taken.
pub fn for_each_transaction(
    reader: impl std::io::Read,
    mut each: impl FnMut(WireTransaction) -> Result<(), String>,
) -> Result<(), serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
    streaming::Payload(&mut each).deserialize(&mut de)?;
    de.end()
}

/// The serde visitors of [`for_each_transaction`]: each level reads the keys it knows and
/// skips every other value without building it.
mod streaming {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::WireTransaction;

    pub(super) type Each<'f> = dyn FnMut(WireTransaction) -> Result<(), String> + 'f;

    /// Which object of the document a visitor reads.
    #[derive(Clone, Copy)]
    enum Level {
        /// The document: `accounts`.
        Payload,
        /// An account: `data` and `transactions`.
        Account,
        /// An account's `data` (Insights): `transactions`.
        Data,
    }

    /// The whole answer.
    pub(super) struct Payload<'a, 'f>(pub &'a mut Each<'f>);

    impl<'de> DeserializeSeed<'de> for Payload<'_, '_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Object(self.0, Level::Payload))
        }
    }

    /// An object at `Level`; `null` reads as empty.
    struct Object<'a, 'f>(&'a mut Each<'f>, Level);

    impl<'de> DeserializeSeed<'de> for Object<'_, '_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Object<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let Object(each, level) = self;
            while let Some(key) = map.next_key::<String>()? {
                match (level, key.as_str()) {
                    (Level::Payload, "accounts") => {
                        map.next_value_seed(List(each, Items::Accounts))?
                    }
                    (Level::Account, "data") => map.next_value_seed(Object(each, Level::Data))?,
                    (Level::Account | Level::Data, "transactions") => {
                        map.next_value_seed(List(each, Items::Transactions))?
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }

    /// What a list holds.
    #[derive(Clone, Copy)]
    enum Items {
        Accounts,
        Transactions,
    }

    /// A list of `Items`; `null` reads as empty.
    struct List<'a, 'f>(&'a mut Each<'f>, Items);

    impl<'de> DeserializeSeed<'de> for List<'_, '_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for List<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list")
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let List(each, items) = self;
            match items {
                Items::Accounts => {
                    while seq
                        .next_element_seed(Object(&mut *each, Level::Account))?
                        .is_some()
                    {}
                }
                Items::Transactions => {
                    while let Some(t) = seq.next_element::<serde_json::Value>()? {
                        each(WireTransaction::from_json(t)).map_err(de::Error::custom)?;
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod data_tests {
    use super::*;

    fn all(doc: &[u8]) -> Result<Vec<WireTransaction>, serde_json::Error> {
        let mut out = vec![];
        for_each_transaction(doc, |t| {
            out.push(t);
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn transactions_are_read_from_both_shapes() {
        let insights = br#"{"session_id": "s", "accounts": [{"account_id": "a1", "data": {"transactions": [
            {"hash": "h1", "date": "2025-01-02 10:00:00", "amount": 5}], "monthly_analysis": {}}}]}"#;
        let t = all(insights).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].hash.as_str(), t[0].date.as_str()),
            ("h1", "2025-01-02 10:00:00")
        );
        assert_eq!(t[0].body["amount"], 5);
        let txns = br#"{"accounts": [{"account_id": "a2", "transactions": [{"date": "2025-01-03 00:00:00", "amount": 1}]}]}"#;
        let t = all(txns).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].hash.len(), 64, "a missing hash is derived");
        assert!(all(b"not json").is_err());
        assert!(all(br#"{"accounts": []} trailing"#).is_err());
    }

    #[test]
    fn everything_but_the_transactions_is_skipped_and_null_is_empty() {
        for doc in [
            &br#"{}"#[..],
            br#"{"accounts": null}"#,
            br#"{"accounts": [{"data": null, "transactions": null}]}"#,
        ] {
            assert_eq!(
                all(doc).unwrap(),
                vec![],
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
        // Only `accounts[].transactions` and `accounts[].data.transactions` are transactions.
        let doc = br#"{"transactions": [{"hash": "top"}], "accounts": [{"account_id": "a",
            "data": {"monthly_analysis": {"transactions": [{"hash": "deep"}]}, "transactions": [{"hash": "h1"}]},
            "eod_balances": {"2025-01-01": 5}, "transactions": [{"hash": "h2"}]}], "padding": "xxxx"}"#;
        let hashes: Vec<String> = all(doc).unwrap().into_iter().map(|t| t.hash).collect();
        assert_eq!(hashes, ["h1", "h2"]);
    }

    #[test]
    fn transactions_are_handed_over_before_the_document_ends() {
        // Two transactions, then the connection breaks: both were seen before the error.
        let head = br#"{"accounts": [{"transactions": [{"hash": "h1"}, {"hash": "h2"}, {"hash": "#;
        let broken = std::io::Read::chain(&head[..], FailingReader);
        let mut seen = vec![];
        let read = for_each_transaction(broken, |t| {
            seen.push(t.hash);
            Ok(())
        });
        assert!(read.is_err());
        assert_eq!(seen, ["h1", "h2"]);
        // An error from the receiver stops the parse at once.
        let mut taken = 0;
        let doc = br#"{"accounts": [{"transactions": [{"hash": "h1"}, {"hash": "h2"}, {"hash": "h3"}]}]}"#;
        let read = for_each_transaction(&doc[..], |_| {
            taken += 1;
            Err("full".into())
        });
        assert!(read.unwrap_err().to_string().contains("full"));
        assert_eq!(taken, 1);
    }

    struct FailingReader;

    impl std::io::Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("connection reset"))
        }
    }
}
