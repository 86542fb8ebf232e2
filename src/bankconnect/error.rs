//! What can go wrong talking to BankConnect, and whether trying again can help.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

/// An upstream failure. `Api` is an answer BankConnect gave; `Transport` is one we never got.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BankConnectError {
    /// An error answer. `code` is the documented `error.code`, or `None` when the body only
    /// had a `detail` or was not JSON at all (then `message` holds its first bytes).
    #[error("BankConnect answered {status}{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Api {
        status: u16,
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Connect failure, timeout or broken connection. `maybe_sent` is true when the request
    /// may have reached the upstream (so a non-idempotent call may have taken effect).
    #[error("BankConnect unreachable: {message}")]
    Transport { message: String, maybe_sent: bool },
    /// A success status whose body is not what the docs describe.
    #[error("BankConnect sent an unexpected body: {message}")]
    Decode { message: String },
}

/// What a documented Fetch Recurring AA Data refusal says about the consent itself
/// (docs/bankconnect.md §3). Other codes (`INVALID_DATE_RANGE`, `INVALID_SESSION_ID`) concern only
/// the pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentVerdict {
    /// `CONSENT_REVOKED`: the user revoked it; stop for good.
    Revoked,
    /// `INVALID_CONSENT_ID`: unknown or not linked upstream; stop for good.
    Invalid,
    /// `CONSENT_OVERUSED`: no more pulls until the next frequency window.
    Overused,
}

/// How an error should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying later: 5xx, 429, timeouts, connection errors.
    Transient,
    /// Retrying the same request gives the same answer.
    Permanent,
    /// Our credentials or plan are wrong: an operator must act; never retried blindly.
    Configuration,
}

/// How much of an unrecognised body is kept for the error message.
const BODY_PREFIX_BYTES: usize = 256;

impl BankConnectError {
    pub fn class(&self) -> ErrorClass {
        match self {
            BankConnectError::Api { status, .. } => classify_status(*status),
            BankConnectError::Transport { .. } => ErrorClass::Transient,
            BankConnectError::Decode { .. } => ErrorClass::Permanent,
        }
    }

    /// The documented error code, if the upstream sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            BankConnectError::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// What the error says about the consent, if it is one of the documented refusals.
    pub fn consent_verdict(&self) -> Option<ConsentVerdict> {
        match self.code()? {
            "CONSENT_REVOKED" => Some(ConsentVerdict::Revoked),
            "INVALID_CONSENT_ID" => Some(ConsentVerdict::Invalid),
            "CONSENT_OVERUSED" => Some(ConsentVerdict::Overused),
            _ => None,
        }
    }

    /// The upstream's "processing is not finished yet": not a failure, ask again later.
    pub fn is_not_ready(&self) -> bool {
        self.code() == Some(super::wire::PROCESSING_NOT_COMPLETED)
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BankConnectError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A code to record and show: the upstream's own, or one naming the failure's kind.
    pub fn code_or_kind(&self) -> String {
        match self {
            BankConnectError::Api { code: Some(c), .. } => c.clone(),
            BankConnectError::Api { status, .. } => format!("HTTP_{status}"),
            BankConnectError::Transport { .. } => "UPSTREAM_UNREACHABLE".into(),
            BankConnectError::Decode { .. } => "UPSTREAM_BAD_RESPONSE".into(),
        }
    }
}

fn classify_status(status: u16) -> ErrorClass {
    match status {
        401..=403 => ErrorClass::Configuration,
        408 | 429 => ErrorClass::Transient,
        s if s >= 500 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

#[derive(Deserialize)]
struct Documented {
    error: DocumentedError,
}

#[derive(Deserialize)]
struct DocumentedError {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Detail {
    detail: String,
}

/// The longest `Retry-After` honoured: the job queue's backoff cap. A larger one (by mistake
/// or malice) would park a job for years.
pub const MAX_RETRY_AFTER: Duration = crate::queue::BACKOFF_CAP;

/// A `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110, section 10.2.3), capped
/// at [`MAX_RETRY_AFTER`]. A date in the past means "now".
pub fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    let delay = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs.min(MAX_RETRY_AFTER.as_secs())),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Turns a non-success answer into an error: the documented `{"error": {code, message}}`
/// first, then `{"detail": …}`, else the status and the first bytes of the body.
pub fn parse_error_body(
    status: StatusCode,
    retry_after: Option<&str>,
    now: std::time::SystemTime,
    body: &[u8],
) -> BankConnectError {
    let retry_after = retry_after.and_then(|v| parse_retry_after(v, now));
    let status = status.as_u16();
    if let Ok(d) = serde_json::from_slice::<Documented>(body) {
        return BankConnectError::Api {
            status,
            code: Some(d.error.code),
            message: d.error.message,
            retry_after,
        };
    }
    if let Ok(d) = serde_json::from_slice::<Detail>(body) {
        return BankConnectError::Api {
            status,
            code: None,
            message: d.detail,
            retry_after,
        };
    }
    let end = body.len().min(BODY_PREFIX_BYTES);
    BankConnectError::Api {
        status,
        code: None,
        message: String::from_utf8_lossy(&body[..end]).into_owned(),
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_shape_keeps_code_and_message() {
        let e = parse_error_body(
            StatusCode::BAD_REQUEST,
            None,
            std::time::SystemTime::now(),
            br#"{"error":{"code":"INVALID_SESSION_ID","message":"Session is invalid"}}"#,
        );
        assert_eq!(e.code(), Some("INVALID_SESSION_ID"));
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert!(e.to_string().contains("Session is invalid"));
    }

    #[test]
    fn detail_shape_is_the_fallback() {
        let e = parse_error_body(
            StatusCode::UNAUTHORIZED,
            None,
            std::time::SystemTime::now(),
            br#"{"detail":"Authentication credentials were not provided."}"#,
        );
        assert_eq!(e.code(), None);
        assert_eq!(e.class(), ErrorClass::Configuration);
        assert!(e.to_string().contains("credentials were not provided"));
        assert_eq!(e.code_or_kind(), "HTTP_401");
    }

    #[test]
    fn anything_else_keeps_status_and_a_prefix() {
        let body = format!("<html>{}</html>", "x".repeat(1000));
        let e = parse_error_body(
            StatusCode::BAD_GATEWAY,
            Some("7"),
            std::time::SystemTime::now(),
            body.as_bytes(),
        );
        match &e {
            BankConnectError::Api {
                status,
                code,
                message,
                retry_after,
            } => {
                assert_eq!(*status, 502);
                assert!(code.is_none());
                assert_eq!(message.len(), BODY_PREFIX_BYTES);
                assert!(message.starts_with("<html>"));
                assert_eq!(*retry_after, Some(Duration::from_secs(7)));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(e.class(), ErrorClass::Transient);
    }

    #[test]
    fn retry_after_is_capped_and_takes_both_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("100000000000", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now),
            None,
            "not a number and not a date: ignored"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past: now"
        );
        assert_eq!(
            parse_retry_after("Sun, 21 Oct 2035 07:28:00 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn classes_follow_the_status() {
        assert_eq!(classify_status(500), ErrorClass::Transient);
        assert_eq!(classify_status(503), ErrorClass::Transient);
        assert_eq!(classify_status(429), ErrorClass::Transient);
        assert_eq!(classify_status(402), ErrorClass::Configuration);
        assert_eq!(classify_status(403), ErrorClass::Configuration);
        assert_eq!(classify_status(400), ErrorClass::Permanent);
        assert_eq!(classify_status(404), ErrorClass::Permanent);
        let t = BankConnectError::Transport {
            message: "timeout".into(),
            maybe_sent: true,
        };
        assert_eq!(t.class(), ErrorClass::Transient);
    }

    #[test]
    fn documented_refusals_say_what_happened_to_the_consent() {
        let refusal = |code: &str| BankConnectError::Api {
            status: 400,
            code: Some(code.into()),
            message: String::new(),
            retry_after: None,
        };
        assert_eq!(
            refusal("CONSENT_REVOKED").consent_verdict(),
            Some(ConsentVerdict::Revoked)
        );
        assert_eq!(
            refusal("INVALID_CONSENT_ID").consent_verdict(),
            Some(ConsentVerdict::Invalid)
        );
        assert_eq!(
            refusal("CONSENT_OVERUSED").consent_verdict(),
            Some(ConsentVerdict::Overused)
        );
        assert_eq!(refusal("INVALID_DATE_RANGE").consent_verdict(), None);
        assert_eq!(refusal("INVALID_SESSION_ID").consent_verdict(), None);
    }

    #[test]
    fn a_body_that_is_not_utf8_does_not_panic() {
        let e = parse_error_body(
            StatusCode::BAD_REQUEST,
            None,
            std::time::SystemTime::now(),
            &[0xff, 0xfe, 0x00],
        );
        assert!(matches!(
            e,
            BankConnectError::Api {
                status: 400,
                code: None,
                ..
            }
        ));
    }
}
