//! Property: no request, whatever strings, numbers and dates it carries, gets a 5xx or resets
//! the connection, on either backend.

use std::sync::OnceLock;

use crate::common::*;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Every byte percent-encoded, so any string reaches the server as it is.
fn enc(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// One service for every generated case of this process (the Postgres pass has its own).
fn shared() -> &'static (tokio::runtime::Runtime, TestApp, String) {
    static SHARED: OnceLock<(tokio::runtime::Runtime, TestApp, String)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (app, consent) = rt.block_on(async {
            let app = TestApp::builder().start().await;
            let consent = app.approved_consent("cust-prop", json!({})).await;
            (app, consent)
        });
        (rt, app, consent)
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,20}",
        "[0-9+-]{1,8}-[0-9]{1,3}-[0-9]{1,3}",
        "(19|20|99)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
        Just("\u{0}".to_string()),
        Just("x".repeat(600)),
        Just(String::new()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0i64..100).prop_map(Value::from),
        text().prop_map(Value::String),
    ]
}

/// Sends every kind of request with the generated values; each must answer below 500.
async fn throw(app: &TestApp, consent: &str, s: [String; 4], n: [Value; 2]) {
    let [a, b, c, d] = &s;
    let q = |pairs: &[(&str, &str)]| {
        let mut url = url::Url::parse("http://x/").unwrap();
        url.query_pairs_mut().extend_pairs(pairs);
        url.query().unwrap_or_default().to_string()
    };
    let requests: Vec<reqwest::RequestBuilder> =
        vec![
        app.http.post(app.url("/api/v1/consent-sessions")).json(&json!({
            "link_id": a, "tenure_months": n[0], "frequency_unit": b, "frequency_value": n[1],
            "from_date": c, "to_date": d, "bank_name": b, "mobile_number": c, "use_case": d,
        })),
        app.http.get(app.url(&format!("/api/v1/consents/{}", enc(a)))),
        app.http.get(app.url(&format!(
            "/api/v1/consents?{}",
            q(&[("link_id", a), ("status", b), ("limit", c), ("cursor", d)])
        ))),
        app.http.get(app.url(&format!(
            "/api/v1/pulls?{}",
            q(&[("consent_id", a), ("status", b), ("cursor", d)])
        ))),
        app.http.get(app.url(&format!("/api/v1/pulls/{}/insights", enc(a)))),
        app.http
            .post(app.url(&format!("/api/v1/consents/{consent}/pulls")))
            .header("idempotency-key", "k".repeat(300))
            .json(&json!({"from": c, "to": d, "kind": b})),
        app.http
            .post(app.url(&format!("/api/v1/consents/{consent}/pulls")))
            .json(&json!({"from": c, "to": d})),
        app.http.get(app.url(&format!(
            "/api/v1/consents/{consent}/transactions?{}",
            q(&[("from", c), ("to", d), ("cursor", a)])
        ))),
        app.http
            .patch(app.url(&format!("/api/v1/consents/{consent}")))
            .json(&json!({"pull_interval": n[0]})),
        app.http
            .patch(app.url(&format!("/api/v1/consents/{consent}")))
            .json(&json!({"pull_interval": a})),
        app.http
            .get(app.url(&format!(
                "/bankconnect/callback?{}",
                q(&[("session_id", a), ("success", b)])
            )))
            .header("accept", "application/json"),
        app.http
            .post(app.url("/webhooks/bankconnect"))
            .header("x-webhook-timestamp", n[0].to_string())
            .header("x-webhook-signature", format!("sha256={}", enc(b)))
            .body(a.clone()),
        app.http
            .post(app.url(&format!("/api/v1/consents/{}/resume", enc(a)))),
    ];
    for r in requests {
        let r = r.bearer_auth(TOKEN).build().unwrap();
        let what = format!("{} {}", r.method(), r.url());
        let answer = app
            .http
            .execute(r)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        assert!(status.as_u16() < 500, "{what} answered {status}: {body}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn no_input_gets_a_5xx(s in [text(), text(), text(), text()], n in [number(), number()]) {
        let (rt, app, consent) = shared();
        rt.block_on(throw(app, consent, s, n));
    }
}
