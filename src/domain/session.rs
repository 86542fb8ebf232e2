//! Starting a recurring-consent journey: what a caller may ask for, checked before any
//! upstream call so that a mistake costs one clear 422 and nothing else.

use chrono::{DateTime, Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::consent::{FrequencyUnit, JourneyMode, MAX_FREQUENCY_VALUE, MAX_TENURE_MONTHS, UseCase};
use super::input::{ValidationError, invalid, parse_api_date, validate_link_id};

/// The body of `POST /api/v1/consent-sessions` as received; every field is optional here so
/// that a missing one gets its own error code rather than a generic parse error.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub link_id: Option<String>,
    pub use_case: Option<String>,
    pub journey_mode: Option<String>,
    pub tenure_months: Option<i64>,
    pub frequency_unit: Option<String>,
    pub frequency_value: Option<i64>,
    pub from_date: Option<String>,
    pub to_date: Option<String>,
    pub bank_name: Option<String>,
    pub mobile_number: Option<String>,
}

/// A journey request that passed every local rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewSession {
    pub link_id: String,
    pub use_case: UseCase,
    pub journey_mode: JourneyMode,
    pub tenure_months: u32,
    pub frequency_unit: FrequencyUnit,
    pub frequency_value: u32,
    pub from_date: Option<NaiveDate>,
    pub to_date: Option<NaiveDate>,
    pub bank_name: Option<String>,
    pub mobile_number: Option<String>,
}

/// Where a journey stands. `capturing`: the browser came back approved and the consent
/// details are being fetched (a durable job finishes this if the upstream is down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Pending,
    Capturing,
    Completed,
    Abandoned,
    Failed,
}

super::string_enum!(SessionStatus {
    Pending => "pending",
    Capturing => "capturing",
    Completed => "completed",
    Abandoned => "abandoned",
    Failed => "failed",
});

/// A journey we started; only these may come back through the callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub session_id: String,
    pub link_id: String,
    pub use_case: UseCase,
    pub journey_mode: JourneyMode,
    pub tenure_months: u32,
    pub frequency_unit: FrequencyUnit,
    pub frequency_value: u32,
    pub from_date: Option<NaiveDate>,
    pub to_date: Option<NaiveDate>,
    pub bank_name: Option<String>,
    pub status: SessionStatus,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Session {
    /// The record of a journey the upstream just opened. The mobile number is not kept: it is
    /// only needed to pre-fill the journey.
    pub fn started(session_id: String, s: &NewSession, now: DateTime<Utc>) -> Self {
        Session {
            session_id,
            link_id: s.link_id.clone(),
            use_case: s.use_case,
            journey_mode: s.journey_mode,
            tenure_months: s.tenure_months,
            frequency_unit: s.frequency_unit,
            frequency_value: s.frequency_value,
            from_date: s.from_date,
            to_date: s.to_date,
            bank_name: s.bank_name.clone(),
            status: SessionStatus::Pending,
            error_code: None,
            error_message: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// How far back an AA one-time fetch may reach.
pub const MAX_LOOKBACK_MONTHS: u32 = 14;

fn one_of<T: std::str::FromStr>(
    code: &'static str,
    field: &str,
    v: Option<&str>,
    default: T,
    all: &[&str],
) -> Result<T, ValidationError> {
    match v {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| {
            invalid(
                code,
                format!("{field} must be one of {}, got `{s}`", all.join(", ")),
            )
        }),
    }
}

/// Checks a journey request against our rules; `today` is the Indian calendar date.
pub fn validate(req: SessionRequest, today: NaiveDate) -> Result<NewSession, ValidationError> {
    let link_id = req.link_id.unwrap_or_default();
    validate_link_id(&link_id)?;

    let use_case = one_of(
        "INVALID_USE_CASE",
        "use_case",
        req.use_case.as_deref(),
        UseCase::Monitoring,
        UseCase::ALL,
    )?;
    let journey_mode = one_of(
        "INVALID_JOURNEY_MODE",
        "journey_mode",
        req.journey_mode.as_deref(),
        JourneyMode::OnlyRecurring,
        JourneyMode::ALL,
    )?;

    let tenure_months = match req.tenure_months {
        None => return Err(invalid("INVALID_TENURE", "tenure_months is required")),
        Some(t) if (1..=MAX_TENURE_MONTHS as i64).contains(&t) => t as u32,
        Some(t) => {
            return Err(invalid(
                "INVALID_TENURE",
                format!("tenure_months must be 1 to {MAX_TENURE_MONTHS}, got {t}"),
            ));
        }
    };

    let frequency_unit = match req.frequency_unit.as_deref() {
        None => {
            return Err(invalid(
                "INVALID_FREQUENCY_UNIT",
                "frequency_unit is required",
            ));
        }
        Some(u) => one_of(
            "INVALID_FREQUENCY_UNIT",
            "frequency_unit",
            Some(u),
            FrequencyUnit::Day,
            FrequencyUnit::ALL,
        )?,
    };
    let frequency_value = match req.frequency_value {
        None => {
            return Err(invalid(
                "INVALID_FREQUENCY_VALUE",
                "frequency_value is required",
            ));
        }
        Some(v) if (1..=MAX_FREQUENCY_VALUE as i64).contains(&v) => v as u32,
        Some(v) => {
            return Err(invalid(
                "INVALID_FREQUENCY_VALUE",
                format!("frequency_value must be 1 to {MAX_FREQUENCY_VALUE}, got {v}"),
            ));
        }
    };

    let from_date = req
        .from_date
        .as_deref()
        .map(|v| parse_api_date("from_date", v))
        .transpose()?;
    let to_date = req
        .to_date
        .as_deref()
        .map(|v| parse_api_date("to_date", v))
        .transpose()?;
    match (from_date, to_date) {
        (None, None) => {}
        (Some(from), Some(to)) => {
            if from > to {
                return Err(invalid(
                    "INVALID_DATE_RANGE",
                    "from_date must not be after to_date",
                ));
            }
            if to > today {
                return Err(invalid(
                    "INVALID_DATE_RANGE",
                    "to_date must not be in the future",
                ));
            }
            let earliest = today - Months::new(MAX_LOOKBACK_MONTHS);
            if from < earliest {
                return Err(invalid(
                    "INVALID_DATE_RANGE",
                    format!(
                        "from_date must be within {MAX_LOOKBACK_MONTHS} months of today ({earliest} or later)"
                    ),
                ));
            }
        }
        _ => {
            return Err(invalid(
                "INVALID_DATE_RANGE",
                "from_date and to_date must be given together",
            ));
        }
    }

    let bank_name = req
        .bank_name
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty());
    if bank_name
        .as_ref()
        .is_some_and(|b| b.chars().count() > 50 || b.chars().any(char::is_control))
    {
        return Err(invalid(
            "INVALID_BANK_NAME",
            "bank_name must be at most 50 characters, none of them control characters",
        ));
    }

    let mobile_number = req
        .mobile_number
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty());
    if let Some(m) = &mobile_number
        && !(m.len() == 10
            && m.bytes().all(|b| b.is_ascii_digit())
            && !m.starts_with(['0', '1', '2', '3', '4', '5']))
    {
        return Err(invalid(
            "INVALID_MOBILE_NUMBER",
            "mobile_number must be a 10-digit Indian mobile number starting with 6 to 9",
        ));
    }

    Ok(NewSession {
        link_id,
        use_case,
        journey_mode,
        tenure_months,
        frequency_unit,
        frequency_value,
        from_date,
        to_date,
        bank_name,
        mobile_number,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 11, 10).unwrap()
    }

    fn good() -> SessionRequest {
        SessionRequest {
            link_id: Some("cust-1".into()),
            tenure_months: Some(12),
            frequency_unit: Some("month".into()),
            frequency_value: Some(5),
            ..Default::default()
        }
    }

    fn code(req: SessionRequest) -> &'static str {
        validate(req, today()).unwrap_err().code
    }

    #[test]
    fn defaults_fill_use_case_and_journey_mode() {
        let s = validate(good(), today()).unwrap();
        assert_eq!(s.use_case, UseCase::Monitoring);
        assert_eq!(s.journey_mode, JourneyMode::OnlyRecurring);
        assert_eq!(s.tenure_months, 12);
    }

    #[test]
    fn each_rule_has_its_own_code() {
        assert_eq!(
            code(SessionRequest {
                link_id: None,
                ..good()
            }),
            "INVALID_LINK_ID"
        );
        assert_eq!(
            code(SessionRequest {
                link_id: Some("x".repeat(501)),
                ..good()
            }),
            "INVALID_LINK_ID"
        );
        for bad in ["cust\u{0}1", "cust\n1", "\u{7f}", " "] {
            assert_eq!(
                code(SessionRequest {
                    link_id: Some(bad.into()),
                    ..good()
                }),
                "INVALID_LINK_ID",
                "{bad:?}"
            );
        }
        assert!(
            validate(
                SessionRequest {
                    link_id: Some("ü".repeat(500)),
                    ..good()
                },
                today()
            )
            .is_ok()
        );
        assert_eq!(
            code(SessionRequest {
                bank_name: Some("hd\u{0}fc".into()),
                ..good()
            }),
            "INVALID_BANK_NAME"
        );
        assert_eq!(
            code(SessionRequest {
                use_case: Some("lending".into()),
                ..good()
            }),
            "INVALID_USE_CASE"
        );
        assert_eq!(
            code(SessionRequest {
                journey_mode: Some("once".into()),
                ..good()
            }),
            "INVALID_JOURNEY_MODE"
        );
        assert_eq!(
            code(SessionRequest {
                tenure_months: Some(0),
                ..good()
            }),
            "INVALID_TENURE"
        );
        assert_eq!(
            code(SessionRequest {
                tenure_months: Some(61),
                ..good()
            }),
            "INVALID_TENURE"
        );
        assert_eq!(
            code(SessionRequest {
                frequency_unit: Some("week".into()),
                ..good()
            }),
            "INVALID_FREQUENCY_UNIT"
        );
        assert_eq!(
            code(SessionRequest {
                frequency_value: Some(6),
                ..good()
            }),
            "INVALID_FREQUENCY_VALUE"
        );
        assert_eq!(
            code(SessionRequest {
                frequency_value: Some(0),
                ..good()
            }),
            "INVALID_FREQUENCY_VALUE"
        );
        assert_eq!(
            code(SessionRequest {
                bank_name: Some("b".repeat(51)),
                ..good()
            }),
            "INVALID_BANK_NAME"
        );
        assert_eq!(
            code(SessionRequest {
                mobile_number: Some("12345".into()),
                ..good()
            }),
            "INVALID_MOBILE_NUMBER"
        );
        assert_eq!(
            code(SessionRequest {
                mobile_number: Some("5876543210".into()),
                ..good()
            }),
            "INVALID_MOBILE_NUMBER"
        );
        assert!(
            validate(
                SessionRequest {
                    mobile_number: Some("9876543210".into()),
                    ..good()
                },
                today()
            )
            .is_ok()
        );
    }

    #[test]
    fn bounds_are_inclusive() {
        assert!(
            validate(
                SessionRequest {
                    tenure_months: Some(60),
                    frequency_value: Some(1),
                    ..good()
                },
                today()
            )
            .is_ok()
        );
        assert!(
            validate(
                SessionRequest {
                    tenure_months: Some(1),
                    ..good()
                },
                today()
            )
            .is_ok()
        );
    }

    #[test]
    fn dates_are_iso_and_ordered() {
        let with = |f: &str, t: &str| SessionRequest {
            from_date: Some(f.into()),
            to_date: Some(t.into()),
            ..good()
        };
        assert_eq!(
            code(with("10/10/2025", "2025-11-01")),
            "INVALID_DATE_FORMAT"
        );
        assert_eq!(
            code(with("2025-02-30", "2025-11-01")),
            "INVALID_DATE_FORMAT"
        );
        assert_eq!(code(with("2025-11-02", "2025-11-01")), "INVALID_DATE_RANGE");
        assert_eq!(code(with("2025-11-01", "2025-11-11")), "INVALID_DATE_RANGE");
        assert_eq!(code(with("2024-09-09", "2025-11-01")), "INVALID_DATE_RANGE");
        assert_eq!(
            code(SessionRequest {
                from_date: Some("2025-10-01".into()),
                ..good()
            }),
            "INVALID_DATE_RANGE"
        );
        let ok = validate(with("2024-09-10", "2025-11-10"), today()).unwrap();
        assert_eq!(ok.from_date, NaiveDate::from_ymd_opt(2024, 9, 10));
    }
}
