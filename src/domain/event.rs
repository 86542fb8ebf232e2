//! Events: what the lender's systems are told (docs/architecture.md, "Events"). Each is
//! written in the transaction of the change it reports, and its `data` is the resource as the
//! API shows it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::string_enum;

/// What happened. Named as `string_enum!` lists them (one list for the API, the database and
/// the outbound webhooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum EventType {
    #[serde(rename = "consent_session.completed")]
    SessionCompleted,
    #[serde(rename = "consent_session.failed")]
    SessionFailed,
    #[serde(rename = "consent.active")]
    ConsentActive,
    #[serde(rename = "consent.paused")]
    ConsentPaused,
    #[serde(rename = "consent.resumed")]
    ConsentResumed,
    #[serde(rename = "consent.revoked")]
    ConsentRevoked,
    #[serde(rename = "consent.expired")]
    ConsentExpired,
    #[serde(rename = "consent.invalid")]
    ConsentInvalid,
    #[serde(rename = "pull.completed")]
    PullCompleted,
    #[serde(rename = "pull.failed")]
    PullFailed,
    #[serde(rename = "pull.expired")]
    PullExpired,
}

string_enum!(EventType {
    SessionCompleted => "consent_session.completed",
    SessionFailed => "consent_session.failed",
    ConsentActive => "consent.active",
    ConsentPaused => "consent.paused",
    ConsentResumed => "consent.resumed",
    ConsentRevoked => "consent.revoked",
    ConsentExpired => "consent.expired",
    ConsentInvalid => "consent.invalid",
    PullCompleted => "pull.completed",
    PullFailed => "pull.failed",
    PullExpired => "pull.expired",
});

/// One event, as the feed and the outbound webhooks show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub timestamp: DateTime<Utc>,
    pub data: serde_json::Value,
}

/// A new event id: `evt_` and 32 hex digits.
pub fn new_event_id() -> String {
    super::new_id("evt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_name_of_every_event_type_is_its_database_name() {
        for name in EventType::ALL {
            let t: EventType = name.parse().unwrap();
            assert_eq!(serde_json::to_value(t).unwrap(), *name);
        }
    }
}
