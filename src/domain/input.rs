//! Rules for what clients send: the error a broken rule gives, API dates and the lender's
//! customer id. Shared by every request parser, so one input means one answer everywhere.

use chrono::{DateTime, Datelike, NaiveDate, Utc};

/// A rule the input broke: a stable machine-readable code and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ValidationError {
    pub code: &'static str,
    pub message: String,
}

pub fn invalid(code: &'static str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        code,
        message: message.into(),
    }
}

/// The earliest date the API takes. With four-digit years the latest is 9999-12-31, so date
/// arithmetic on any accepted date (a day later, six months earlier) stays in range.
pub const EARLIEST_API_YEAR: i32 = 1900;

/// Parses an API date (`YYYY-MM-DD`, from 1900-01-01 to 9999-12-31); `field` names the input
/// in the error.
pub fn parse_api_date(field: &str, v: &str) -> Result<NaiveDate, ValidationError> {
    let b = v.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    shaped
        .then(|| NaiveDate::parse_from_str(v, "%Y-%m-%d").ok())
        .flatten()
        .filter(|d| d.year() >= EARLIEST_API_YEAR)
        .ok_or_else(|| {
            invalid(
                "INVALID_DATE_FORMAT",
                format!(
                    "{field} must be a date as YYYY-MM-DD from {EARLIEST_API_YEAR}-01-01 to 9999-12-31, got `{}`",
                    v.escape_debug()
                ),
            )
        })
}

/// Parses an API instant (RFC 3339, e.g. `2026-11-25T10:00:00Z`); `field` names the input.
pub fn parse_api_instant(field: &str, v: &str) -> Result<DateTime<Utc>, ValidationError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            invalid(
                "INVALID_INSTANT",
                format!(
                    "{field} must be an RFC 3339 instant such as 2026-11-25T10:00:00Z, got `{}`",
                    v.escape_debug()
                ),
            )
        })
}

/// The longest `link_id` BankConnect takes.
pub const MAX_LINK_ID_CHARS: usize = 500;

/// A lender's customer id: 1 to 500 characters, none of them control characters (they would
/// be sent to BankConnect and stored, and Postgres refuses NUL in text).
pub fn validate_link_id(link_id: &str) -> Result<(), ValidationError> {
    if link_id.trim().is_empty() {
        return Err(invalid("INVALID_LINK_ID", "link_id is required"));
    }
    if link_id.chars().count() > MAX_LINK_ID_CHARS {
        return Err(invalid(
            "INVALID_LINK_ID",
            format!("link_id must be at most {MAX_LINK_ID_CHARS} characters"),
        ));
    }
    if link_id.chars().any(char::is_control) {
        return Err(invalid(
            "INVALID_LINK_ID",
            "link_id must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_and_oddly_written_dates_never_reach_date_arithmetic() {
        for bad in [
            "-262143-01-01",
            "+262142-12-31",
            "0001-01-01",
            "1899-12-31",
            "2025-1-01",
            "2025-01-1 ",
            "2025\u{0}01-01",
            "",
        ] {
            assert_eq!(
                parse_api_date("to", bad).unwrap_err().code,
                "INVALID_DATE_FORMAT",
                "{bad:?}"
            );
        }
        assert!(parse_api_date("to", "1900-01-01").is_ok());
        assert!(parse_api_date("to", "9999-12-31").is_ok());
    }
}
