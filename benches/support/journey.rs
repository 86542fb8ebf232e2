//! What the benches share: a borrower through the consent journey against the sandbox.

use serde_json::{Value, json};

/// One borrower through the journey: session, the SDK page, approve; the consent's id.
pub async fn journey(http: &reqwest::Client, base: &str, token: &str, link_id: &str) -> String {
    let s: Value = http
        .post(format!("{base}/api/v1/consent-sessions"))
        .bearer_auth(token)
        .json(&json!({"link_id": link_id, "tenure_months": 12,
                      "frequency_unit": "month", "frequency_value": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page = http
        .get(s["redirect_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let approve = page
        .split("action=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .find(|a| a.ends_with("/approve"))
        .expect("an approve form")
        .to_string();
    let cb: Value = http
        .post(approve)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    cb["consents"][0]["consent_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no consent: {cb}"))
        .to_string()
}
