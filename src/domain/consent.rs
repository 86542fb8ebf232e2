//! Consent vocabulary and the arithmetic of a consent's life.

use chrono::{DateTime, Months, Utc};
use serde::{Deserialize, Serialize};

use super::fair_use::{Limit, limits};
use super::schedule::pull_interval;
use super::{ist, string_enum};

/// Why the lender holds the consent; it decides the Sahamati limits and which data is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UseCase {
    Monitoring,
    Collections,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JourneyMode {
    OnlyRecurring,
    OnceWithRecurring,
}

/// The calendar unit in which a consent's `frequency_value` pulls are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FrequencyUnit {
    Hour,
    Day,
    Month,
    Year,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    Active,
    Paused,
    Revoked,
    Expired,
    Invalid,
}

string_enum!(UseCase { Monitoring => "monitoring", Collections => "collections" });
string_enum!(JourneyMode { OnlyRecurring => "only_recurring", OnceWithRecurring => "once_with_recurring" });
string_enum!(FrequencyUnit { Hour => "hour", Day => "day", Month => "month", Year => "year" });
string_enum!(ConsentStatus {
    Active => "active",
    Paused => "paused",
    Revoked => "revoked",
    Expired => "expired",
    Invalid => "invalid",
});

/// A stored recurring consent: one consented bank account of one borrower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Consent {
    pub consent_id: String,
    pub session_id: String,
    pub link_id: String,
    pub use_case: UseCase,
    pub journey_mode: JourneyMode,
    pub bank_name: Option<String>,
    pub masked_account_number: Option<String>,
    pub tenure_months: u32,
    pub frequency_unit: FrequencyUnit,
    pub frequency_value: u32,
    pub status: ConsentStatus,
    pub approved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub next_pull_at: Option<DateTime<Utc>>,
    /// Set when the upstream said CONSENT_OVERUSED: no pull is sent before this instant.
    pub pull_blocked_until: Option<DateTime<Utc>>,
    /// The lender's own, slower spacing of scheduled pulls, in seconds.
    pub pull_interval_secs: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Consent {
    /// Every fair-use rule this consent's pulls must keep.
    pub fn limits(&self) -> [Limit; 2] {
        limits(self.use_case, self.frequency_unit, self.frequency_value)
    }

    /// Whether a pull may be started for this consent now: it must be active and within its
    /// tenure. The API refuses with this error; a queued pull fails with it.
    pub fn pullable(&self, now: DateTime<Utc>) -> Result<(), super::ValidationError> {
        use super::invalid;
        if self.status != ConsentStatus::Active {
            return Err(invalid(
                "CONSENT_NOT_ACTIVE",
                format!("the consent is {}", self.status),
            ));
        }
        if self.expires_at <= now {
            return Err(invalid(
                "CONSENT_EXPIRED",
                format!("the consent expired at {}", self.expires_at),
            ));
        }
        Ok(())
    }

    /// The spacing of scheduled pulls, given the service-wide minimum.
    pub fn interval(&self, global_min: Option<chrono::Duration>) -> chrono::Duration {
        pull_interval(
            &self.limits(),
            global_min,
            self.pull_interval_secs.map(chrono::Duration::seconds),
        )
    }
}

/// A consent as the API (and its events) show it: the stored fields plus its fair-use usage.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConsentView {
    #[serde(flatten)]
    pub consent: Consent,
    pub usage: super::fair_use::Usage,
}

impl ConsentView {
    /// `used[i]`: pulls sent in the current period of `consent.limits()[i]`.
    pub fn new(consent: Consent, used: &[u32], now: DateTime<Utc>) -> Self {
        let usage =
            super::fair_use::usage(&consent.limits(), used, consent.pull_blocked_until, now);
        ConsentView { consent, usage }
    }
}

/// The longest tenure we accept; FinBox auto-corrects monitoring tenure above 60 months.
pub const MAX_TENURE_MONTHS: u32 = 60;
/// The most pulls per frequency unit we accept (the smallest range FinBox quotes is 1–5).
pub const MAX_FREQUENCY_VALUE: u32 = 5;

/// A consent ends `tenure_months` calendar months after approval, counted on the Indian
/// calendar. A day that does not exist in the target month is clamped to its last day
/// (approved 31 Jan, one month → 28 or 29 Feb), which never extends a consent past its tenure.
pub fn expires_at(approved_at: DateTime<Utc>, tenure_months: u32) -> DateTime<Utc> {
    let local = approved_at.with_timezone(&ist());
    local
        .checked_add_months(Months::new(tenure_months))
        .expect("tenure is bounded, so the date stays in range")
        .with_timezone(&Utc)
}

/// Keeps only the last four characters of an account number visible. Upstream already sends
/// masked numbers; this makes sure a full one can never be stored or shown by mistake.
pub fn mask_account_number(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    let keep_from = chars.len().saturating_sub(4);
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < keep_from && c.is_ascii_digit() {
                'X'
            } else {
                *c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ist_instant(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        ist()
            .with_ymd_and_hms(y, m, d, h, min, 0)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn expiry_adds_calendar_months() {
        assert_eq!(
            expires_at(ist_instant(2025, 3, 15, 10, 0), 24),
            ist_instant(2027, 3, 15, 10, 0)
        );
    }

    #[test]
    fn expiry_clamps_month_ends() {
        assert_eq!(
            expires_at(ist_instant(2025, 1, 31, 9, 0), 1),
            ist_instant(2025, 2, 28, 9, 0)
        );
        assert_eq!(
            expires_at(ist_instant(2025, 8, 31, 9, 0), 1),
            ist_instant(2025, 9, 30, 9, 0)
        );
    }

    #[test]
    fn expiry_handles_leap_years() {
        assert_eq!(
            expires_at(ist_instant(2024, 1, 31, 9, 0), 1),
            ist_instant(2024, 2, 29, 9, 0)
        );
        assert_eq!(
            expires_at(ist_instant(2024, 2, 29, 9, 0), 12),
            ist_instant(2025, 2, 28, 9, 0)
        );
        assert_eq!(
            expires_at(ist_instant(2024, 2, 29, 9, 0), 48),
            ist_instant(2028, 2, 29, 9, 0)
        );
    }

    #[test]
    fn expiry_uses_the_indian_calendar_date() {
        // 31 Jan 20:00 UTC is already 1 Feb 01:30 in IST: one month later is 1 Mar IST.
        let approved = Utc.with_ymd_and_hms(2025, 1, 31, 20, 0, 0).unwrap();
        assert_eq!(expires_at(approved, 1), ist_instant(2025, 3, 1, 1, 30));
    }

    #[test]
    fn masking_keeps_only_the_last_four() {
        assert_eq!(mask_account_number("XXXXXXXXXXX2304"), "XXXXXXXXXXX2304");
        assert_eq!(mask_account_number("123456789012"), "XXXXXXXX9012");
        assert_eq!(mask_account_number("12"), "12");
        assert_eq!(mask_account_number(""), "");
    }

    #[test]
    fn enums_round_trip_their_names() {
        for s in FrequencyUnit::ALL {
            assert_eq!(s.parse::<FrequencyUnit>().unwrap().as_str(), *s);
        }
        assert!("week".parse::<FrequencyUnit>().is_err());
        assert_eq!(ConsentStatus::Active.to_string(), "active");
    }
}
