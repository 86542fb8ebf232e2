//! The configuration's rules, variable by variable.

use super::*;
use std::collections::HashMap;

fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn defaults_are_sandbox_sqlite_with_a_generated_token() {
    let c = cfg(&[]).unwrap();
    assert!(c.is_sandbox());
    assert_eq!(c.database_url, "sqlite://data/aa-recurring.db");
    assert_eq!(
        c.callback_url(),
        "http://127.0.0.1:8080/bankconnect/callback"
    );
    assert!(c.api_token_generated);
    assert_eq!(c.api_tokens.len(), 1);
    assert_eq!(c.webhook_verify, WebhookVerify::HmacSha256);
}

#[test]
fn errors_name_the_variable() {
    let e = cfg(&[("BIND_ADDR", "nonsense")]).unwrap_err();
    assert_eq!(e.var, "BIND_ADDR");
    let e = cfg(&[("POLL_FALLBACK_AFTER_SECS", "-3")]).unwrap_err();
    assert_eq!(e.var, "POLL_FALLBACK_AFTER_SECS");
    let e = cfg(&[("WEBHOOK_VERIFY", "md5")]).unwrap_err();
    assert_eq!(e.var, "WEBHOOK_VERIFY");
    let e = cfg(&[("DATABASE_URL", "mysql://x")]).unwrap_err();
    assert_eq!(e.var, "DATABASE_URL");
    let e = cfg(&[("BANKCONNECT_BASE_URL", "https://x.example/bank-connect")]).unwrap_err();
    assert_eq!(e.var, "BANKCONNECT_API_KEY");
}

#[test]
fn production_refuses_sandbox_and_missing_secrets() {
    let e = cfg(&[("APP_ENV", "production")]).unwrap_err();
    assert_eq!(e.var, "BANKCONNECT_BASE_URL");
    let remote = [
        ("APP_ENV", "production"),
        ("BANKCONNECT_BASE_URL", "https://x.example/bank-connect"),
        ("BANKCONNECT_API_KEY", "k"),
        ("BANKCONNECT_SERVER_HASH", "h"),
        ("WEBHOOK_VERIFY", "secret-key"),
    ];
    assert_eq!(cfg(&remote).unwrap_err().var, "WEBHOOK_SECRETS");
    let mut with_secret = remote.to_vec();
    with_secret.push(("WEBHOOK_SECRETS", "s1"));
    assert_eq!(cfg(&with_secret).unwrap_err().var, "API_TOKENS");
    with_secret.push(("API_TOKENS", "t1, t2"));
    let c = cfg(&with_secret).unwrap();
    assert!(!c.api_token_generated);
    assert_eq!(c.api_tokens.len(), 2);
}

#[test]
fn every_numeric_setting_is_refused_outside_its_range() {
    for s in NUMERIC_SETTINGS {
        // REQUEST_TIMEOUT_SECS must also exceed BANKCONNECT_TIMEOUT_SECS: give it room.
        let with = |v: &str| {
            let mut pairs = vec![(s.var, v)];
            if s.var == "REQUEST_TIMEOUT_SECS" {
                pairs.push(("BANKCONNECT_TIMEOUT_SECS", "1"));
            } else {
                pairs.push(("REQUEST_TIMEOUT_SECS", "3600"));
            }
            cfg(&pairs)
        };
        let below = (s.min - 1).to_string();
        let above = (s.max + 1).to_string();
        for bad in [&below, &above, "4000000000000000000000", "x", "-1", "1.5"] {
            assert_eq!(with(bad).unwrap_err().var, s.var, "{} = {bad}", s.var);
        }
        for good in [s.min, s.max] {
            let r = with(&good.to_string());
            assert!(r.is_ok(), "{} = {good}: {:?}", s.var, r.err());
        }
    }
    // The bug this guards against: a retention that passed validation and then broke
    // the scheduler's date arithmetic.
    assert_eq!(
        cfg(&[("DATA_RETENTION_DAYS", "4000000000")])
            .unwrap_err()
            .var,
        "DATA_RETENTION_DAYS"
    );
    assert_eq!(
        cfg(&[
            ("BANKCONNECT_TIMEOUT_SECS", "60"),
            ("REQUEST_TIMEOUT_SECS", "60")
        ])
        .unwrap_err()
        .var,
        "REQUEST_TIMEOUT_SECS"
    );
}

#[test]
fn production_needs_https_and_an_explicit_webhook_scheme() {
    let base = [
        ("APP_ENV", "production"),
        ("BANKCONNECT_BASE_URL", "https://x.example/bank-connect"),
        ("BANKCONNECT_API_KEY", "k"),
        ("BANKCONNECT_SERVER_HASH", "h"),
        ("WEBHOOK_SECRETS", "s1"),
        ("API_TOKENS", "t1"),
    ];
    assert_eq!(cfg(&base).unwrap_err().var, "WEBHOOK_VERIFY");
    let mut ok = base.to_vec();
    ok.push(("WEBHOOK_VERIFY", "secret-key"));
    assert!(cfg(&ok).is_ok());
    let mut plain = ok.clone();
    plain[1] = ("BANKCONNECT_BASE_URL", "http://x.example/bank-connect");
    assert_eq!(cfg(&plain).unwrap_err().var, "BANKCONNECT_BASE_URL");
    // Development may use a plain-HTTP stand-in.
    plain[0] = ("APP_ENV", "development");
    assert!(cfg(&plain).is_ok());
}

#[test]
fn debug_output_hides_the_database_password() {
    let c = cfg(&[(
        "DATABASE_URL",
        "postgres://aa:s3cr3t-pw@db.internal:5432/aa",
    )])
    .unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cr3t-pw"), "{shown}");
    assert!(shown.contains("db.internal"));
}

#[test]
fn standard_webhooks_secrets_need_the_prefix() {
    let e = cfg(&[
        ("WEBHOOK_VERIFY", "standard-webhooks"),
        ("WEBHOOK_SECRETS", "plain"),
    ])
    .unwrap_err();
    assert_eq!(e.var, "WEBHOOK_SECRETS");
    let e = cfg(&[
        ("WEBHOOK_VERIFY", "standard-webhooks"),
        ("WEBHOOK_SECRETS", "whsec_not base64!"),
    ])
    .unwrap_err();
    assert_eq!(e.var, "WEBHOOK_SECRETS");
    let c = cfg(&[("WEBHOOK_VERIFY", "standard-webhooks")]).unwrap();
    assert_eq!(
        c.webhook_secrets.len(),
        1,
        "the sandbox gets a secret of its own"
    );
}

#[test]
fn debug_output_never_shows_secrets() {
    let c = cfg(&[
        ("API_TOKENS", "very-secret-token"),
        ("WEBHOOK_SECRETS", "hush"),
    ])
    .unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("very-secret-token"));
    assert!(!shown.contains("hush"));
    assert!(!shown.contains(SANDBOX_API_KEY));
}
