//! Telling the lender's own endpoints (docs/architecture.md, "Events"): what an endpoint is,
//! which events it wants, which secrets sign, and when a failed delivery is tried again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::event::EventType;
use super::string_enum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndpointStatus {
    Enabled,
    Disabled,
}

string_enum!(EndpointStatus { Enabled => "enabled", Disabled => "disabled" });

/// A lender's webhook endpoint. The secrets are never shown (but on creation and rotation).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    pub endpoint_id: String,
    pub url: String,
    pub description: Option<String>,
    /// `None`: every event type.
    pub event_types: Option<Vec<EventType>>,
    pub status: EndpointStatus,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub secret: String,
    #[serde(skip)]
    pub old_secret: Option<String>,
    #[serde(skip)]
    pub old_secret_until: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub failing_since: Option<DateTime<Utc>>,
}

/// How long a rotated-out secret still signs, beside the new one.
pub const OLD_SECRET_OVERLAP: chrono::Duration = chrono::Duration::hours(24);
/// An endpoint that has failed every delivery this long is disabled.
pub const FAILING_DISABLE_AFTER: chrono::Duration = chrono::Duration::days(5);

impl Endpoint {
    pub fn wants(&self, t: EventType) -> bool {
        self.event_types.as_ref().is_none_or(|ts| ts.contains(&t))
    }

    /// The secrets that sign a delivery at `now`: the current one, and the old one for a day
    /// after a rotation.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(old), Some(until)) = (&self.old_secret, self.old_secret_until)
            && until > now
        {
            secrets.push(old);
        }
        secrets
    }
}

/// A new `whsec_` secret: 32 random bytes, base64.
pub fn new_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// `NOTIFY_RETRY_SCHEDULE`: the delays between attempts, e.g. `5s,5m,30m,2h,5h,10h,10h`.
pub fn parse_retry_schedule(v: &str) -> Result<Vec<Duration>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|d| {
            if d.is_empty() {
                Err("must list at least one delay".into())
            } else if d.iter().any(|d| *d > Duration::from_secs(7 * 86_400)) {
                Err("a delay may be at most 7 days".into())
            } else {
                Ok(d)
            }
        })
}

/// What an endpoint's answer means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Any 2xx.
    Delivered,
    /// 410: the endpoint is disabled at once.
    Gone,
    /// Anything else (or no answer): try again on the schedule, or give up.
    Failed,
}

pub fn verdict(status: Option<u16>) -> Verdict {
    match status {
        Some(s) if (200..300).contains(&s) => Verdict::Delivered,
        Some(410) => Verdict::Gone,
        _ => Verdict::Failed,
    }
}

/// After `attempts` failed attempts, how long until the next, or `None` to give up.
pub fn next_delay(schedule: &[Duration], attempts: u32) -> Option<Duration> {
    schedule.get(attempts.saturating_sub(1) as usize).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_read_and_followed_then_given_up() {
        let s = parse_retry_schedule("5s,5m,30m,2h,5h,10h,10h").unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(next_delay(&s, 1), Some(Duration::from_secs(5)));
        assert_eq!(next_delay(&s, 7), Some(Duration::from_secs(36_000)));
        assert_eq!(next_delay(&s, 8), None);
        assert!(parse_retry_schedule("").is_err());
        assert!(parse_retry_schedule("5s,soon").is_err());
        assert!(parse_retry_schedule("30days").is_err());
        assert_eq!(verdict(Some(204)), Verdict::Delivered);
        assert_eq!(verdict(Some(410)), Verdict::Gone);
        assert_eq!(verdict(Some(503)), Verdict::Failed);
        assert_eq!(verdict(None), Verdict::Failed);
        assert!(new_secret().starts_with("whsec_"));
    }
}
