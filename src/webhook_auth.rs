//! Webhook authenticity, always over the raw body and in constant time, with any of several
//! secrets allowed to match (rotation). See docs/bankconnect.md §5.

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::WebhookVerify;

type HmacSha256 = Hmac<Sha256>;

/// How far a signed timestamp may be from now, either way.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("malformed header {0}")]
    Malformed(&'static str),
    #[error("timestamp outside the {TOLERANCE_SECS} s tolerance")]
    Stale,
    #[error("no secret matches the signature")]
    Mismatch,
}

impl VerifyError {
    /// Every reason category [`VerifyError::reason`] gives.
    pub const REASONS: [&'static str; 4] = [
        "missing_header",
        "malformed_header",
        "stale_timestamp",
        "bad_signature",
    ];

    /// The reason's category, for logs and the refusal counter.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Missing(_) => "missing_header",
            VerifyError::Malformed(_) => "malformed_header",
            VerifyError::Stale => "stale_timestamp",
            VerifyError::Mismatch => "bad_signature",
        }
    }
}

/// How many `v1,` entries of a Standard Webhooks signature header are looked at: enough for a
/// sender mid-rotation, few enough that a header of thousands costs nothing.
pub const MAX_SIGNATURES: usize = 5;

/// True when `presented` equals any of `secrets`. Every secret is compared, so the time taken
/// does not say which one (if any) matched; SHA-256 digests are compared rather than the
/// bytes, so it does not tell a secret's length either.
pub fn matches_any<'a>(presented: &str, secrets: impl IntoIterator<Item = &'a str>) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let mut ok = subtle::Choice::from(0);
    for s in secrets {
        ok |= presented.ct_eq(&Sha256::digest(s.as_bytes()));
    }
    ok.into()
}

/// A verified delivery. `id` is the sender's event id when the scheme carries one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub id: Option<String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    headers
        .get(name)
        .ok_or(VerifyError::Missing(name))?
        .to_str()
        .map_err(|_| VerifyError::Malformed(name))
}

/// The signed timestamp header, as sent, once it is known to be fresh.
fn timestamp<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    now: i64,
) -> Result<&'a str, VerifyError> {
    let raw = header(headers, name)?.trim();
    let ts: i64 = raw.parse().map_err(|_| VerifyError::Malformed(name))?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(VerifyError::Stale);
    }
    Ok(raw)
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m
}

/// The key bytes of a Standard Webhooks secret (`whsec_` + base64).
fn standard_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()
}

/// Checks a delivery against `secrets` under `scheme`; `now` is unix seconds.
pub fn verify(
    scheme: WebhookVerify,
    secrets: &[&str],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Verified, VerifyError> {
    match scheme {
        WebhookVerify::SecretKey => {
            let presented = header(headers, "x-secret-key")?;
            if matches_any(presented, secrets.iter().copied()) {
                Ok(Verified { id: None })
            } else {
                Err(VerifyError::Mismatch)
            }
        }
        WebhookVerify::HmacSha256 => {
            let ts = timestamp(headers, "x-webhook-timestamp", now)?;
            let sig = header(headers, "x-webhook-signature")?;
            let hex_sig = sig
                .strip_prefix("sha256=")
                .ok_or(VerifyError::Malformed("x-webhook-signature"))?;
            let want =
                hex::decode(hex_sig).map_err(|_| VerifyError::Malformed("x-webhook-signature"))?;
            let ok = secrets.iter().any(|s| {
                mac(s.as_bytes(), &[ts.as_bytes(), b".", body])
                    .verify_slice(&want)
                    .is_ok()
            });
            if ok {
                Ok(Verified { id: None })
            } else {
                Err(VerifyError::Mismatch)
            }
        }
        WebhookVerify::StandardWebhooks => {
            let id = header(headers, "webhook-id")?;
            let ts = timestamp(headers, "webhook-timestamp", now)?;
            let sigs = header(headers, "webhook-signature")?;
            let candidates: Vec<Vec<u8>> = sigs
                .split(' ')
                .filter_map(|entry| entry.strip_prefix("v1,"))
                .take(MAX_SIGNATURES)
                .filter_map(|b64| STANDARD.decode(b64).ok())
                .collect();
            if candidates.is_empty() {
                return Err(VerifyError::Malformed("webhook-signature"));
            }
            // One MAC per secret, compared with each candidate.
            let mut ok = subtle::Choice::from(0);
            for s in secrets {
                let Some(key) = standard_key(s) else { continue };
                let tag = mac(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body])
                    .finalize()
                    .into_bytes();
                for c in &candidates {
                    ok |= tag.as_slice().ct_eq(c.as_slice());
                }
            }
            if bool::from(ok) {
                Ok(Verified {
                    id: Some(id.to_string()),
                })
            } else {
                Err(VerifyError::Mismatch)
            }
        }
    }
}

/// Headers that make a delivery pass [`verify`]; the sandbox signs with this.
pub fn sign(
    scheme: WebhookVerify,
    secret: &str,
    id: &str,
    now: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    match scheme {
        WebhookVerify::SecretKey => vec![("x-secret-key", secret.to_string())],
        WebhookVerify::HmacSha256 => {
            let ts = now.to_string();
            let sig = hex::encode(
                mac(secret.as_bytes(), &[ts.as_bytes(), b".", body])
                    .finalize()
                    .into_bytes(),
            );
            vec![
                ("x-webhook-timestamp", ts),
                ("x-webhook-signature", format!("sha256={sig}")),
            ]
        }
        WebhookVerify::StandardWebhooks => {
            let ts = now.to_string();
            let key = standard_key(secret).unwrap_or_default();
            let sig = STANDARD.encode(
                mac(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body])
                    .finalize()
                    .into_bytes(),
            );
            vec![
                ("webhook-id", id.to_string()),
                ("webhook-timestamp", ts),
                ("webhook-signature", format!("v1,{sig}")),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    // The published Standard Webhooks test vector.
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1614265330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn standard_webhooks_test_vector_passes() {
        let h = headers(&[
            ("webhook-id", SW_ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", SW_SIG),
        ]);
        let v = verify(
            WebhookVerify::StandardWebhooks,
            &[SW_SECRET],
            &h,
            SW_BODY,
            SW_TS,
        )
        .unwrap();
        assert_eq!(v.id.as_deref(), Some(SW_ID));
        // Our signer produces the same signature.
        let signed = sign(
            WebhookVerify::StandardWebhooks,
            SW_SECRET,
            SW_ID,
            SW_TS,
            SW_BODY,
        );
        assert_eq!(signed[2].1, SW_SIG);
    }

    #[test]
    fn standard_webhooks_rejects_tampering_staleness_and_wrong_secrets() {
        let h = headers(&[
            ("webhook-id", SW_ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", SW_SIG),
        ]);
        let s = WebhookVerify::StandardWebhooks;
        assert_eq!(
            verify(s, &[SW_SECRET], &h, br#"{"test": 2432232315}"#, SW_TS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(s, &[SW_SECRET], &h, SW_BODY, SW_TS + 301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(s, &[SW_SECRET], &h, SW_BODY, SW_TS - 301),
            Err(VerifyError::Stale)
        );
        assert!(verify(s, &[SW_SECRET], &h, SW_BODY, SW_TS + 300).is_ok());
        assert_eq!(
            verify(s, &["whsec_dGhpcyBpcyBub3QgaXQ="], &h, SW_BODY, SW_TS),
            Err(VerifyError::Mismatch)
        );
        // Rotation: any secret may match, and a list of signatures may hold the right one.
        assert!(
            verify(
                s,
                &["whsec_dGhpcyBpcyBub3QgaXQ=", SW_SECRET],
                &h,
                SW_BODY,
                SW_TS
            )
            .is_ok()
        );
        let multi = headers(&[
            ("webhook-id", SW_ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", &format!("v1,Zm9v {SW_SIG}")),
        ]);
        assert!(verify(s, &[SW_SECRET], &multi, SW_BODY, SW_TS).is_ok());
        // Only the first few entries are looked at: a right signature behind thousands of
        // wrong ones is not searched for.
        let flood = format!("{} {SW_SIG}", vec!["v1,Zm9v"; 5000].join(" "));
        let flooded = headers(&[
            ("webhook-id", SW_ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", &flood),
        ]);
        let started = std::time::Instant::now();
        assert_eq!(
            verify(s, &[SW_SECRET], &flooded, SW_BODY, SW_TS),
            Err(VerifyError::Mismatch)
        );
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        let missing = headers(&[("webhook-id", SW_ID), ("webhook-timestamp", "1614265330")]);
        assert_eq!(
            verify(s, &[SW_SECRET], &missing, SW_BODY, SW_TS),
            Err(VerifyError::Missing("webhook-signature"))
        );
    }

    #[test]
    fn hmac_sha256_matches_an_independent_computation() {
        // Python: hmac.new(b"topsecret", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest()
        let h = headers(&[
            ("x-webhook-timestamp", "1700000000"),
            (
                "x-webhook-signature",
                "sha256=6a939b0c71853d606167625a15168ee9188c6a511c773ef4f42d307f3849e50f",
            ),
        ]);
        let expected = sign(
            WebhookVerify::HmacSha256,
            "topsecret",
            "",
            1700000000,
            br#"{"a":1}"#,
        );
        assert_eq!(expected[1].1, h["x-webhook-signature"].to_str().unwrap());
        assert!(
            verify(
                WebhookVerify::HmacSha256,
                &["other", "topsecret"],
                &h,
                br#"{"a":1}"#,
                1700000100
            )
            .is_ok()
        );
        assert_eq!(
            verify(
                WebhookVerify::HmacSha256,
                &["topsecret"],
                &h,
                br#"{"a":2}"#,
                1700000100
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                WebhookVerify::HmacSha256,
                &["topsecret"],
                &h,
                br#"{"a":1}"#,
                1700000301
            ),
            Err(VerifyError::Stale)
        );
        let bad = headers(&[
            ("x-webhook-timestamp", "1700000000"),
            ("x-webhook-signature", "md5=00"),
        ]);
        assert_eq!(
            verify(
                WebhookVerify::HmacSha256,
                &["topsecret"],
                &bad,
                b"",
                1700000000
            ),
            Err(VerifyError::Malformed("x-webhook-signature"))
        );
        let none = headers(&[]);
        assert_eq!(
            verify(
                WebhookVerify::HmacSha256,
                &["topsecret"],
                &none,
                b"",
                1700000000
            ),
            Err(VerifyError::Missing("x-webhook-timestamp"))
        );
    }

    #[test]
    fn secret_key_compares_the_header() {
        let h = headers(&[("x-secret-key", "s2")]);
        assert!(verify(WebhookVerify::SecretKey, &["s1", "s2"], &h, b"{}", 0).is_ok());
        assert_eq!(
            verify(WebhookVerify::SecretKey, &["s1"], &h, b"{}", 0),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(WebhookVerify::SecretKey, &[], &h, b"{}", 0),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(WebhookVerify::SecretKey, &["s1"], &headers(&[]), b"{}", 0),
            Err(VerifyError::Missing("x-secret-key"))
        );
    }
}
