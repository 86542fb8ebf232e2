//! `GET /api/v1/consents` and `GET /api/v1/consents/{consent_id}`.

use axum::extract::{Path, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, Query};
use crate::app::AppState;
use crate::domain::consent::{Consent, ConsentStatus, FrequencyUnit};
use crate::domain::session::invalid;
use crate::store::ConsentFilter;

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

/// A consent as the API shows it: the stored fields plus its fair-use usage.
#[derive(Debug, Serialize)]
pub struct ConsentView {
    #[serde(flatten)]
    pub consent: Consent,
    pub usage: Usage,
}

/// How much of the consent's fair-use budget the current calendar window has used.
#[derive(Debug, Serialize)]
pub struct Usage {
    pub window: FrequencyUnit,
    pub pulls_allowed: u32,
    pub pulls_used: u32,
}

impl From<Consent> for ConsentView {
    fn from(consent: Consent) -> Self {
        let usage = Usage {
            window: consent.frequency_unit,
            pulls_allowed: consent.frequency_value,
            // No pull has been sent for any consent before pulls exist.
            pulls_used: 0,
        };
        ConsentView { consent, usage }
    }
}

#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    link_id: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("consent:{seq}"))
}

fn decode_cursor(c: &str) -> Option<i64> {
    let raw = URL_SAFE_NO_PAD.decode(c).ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("consent:")?
        .parse()
        .ok()
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Page<ConsentView>>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<ConsentStatus>().map_err(|_| {
                invalid(
                    "INVALID_STATUS",
                    format!(
                        "status must be one of {}, got `{s}`",
                        ConsentStatus::ALL.join(", ")
                    ),
                )
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid("INVALID_LIMIT", format!("limit must be 1 to {MAX_PAGE}")).into());
    }
    let after_seq = q
        .cursor
        .as_deref()
        .map(|c| {
            decode_cursor(c).ok_or_else(|| {
                ApiError::bad_request("INVALID_CURSOR", "cursor is not one this API gave out")
            })
        })
        .transpose()?;
    let filter = ConsentFilter {
        link_id: q.link_id,
        status,
        after_seq,
        // One extra row says whether another page exists.
        limit: limit + 1,
    };
    let mut rows = state.store.list_consents(&filter).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|(seq, _)| encode_cursor(*seq))
    } else {
        None
    };
    Ok(axum::Json(Page {
        items: rows.into_iter().map(|(_, c)| c.into()).collect(),
        next_cursor,
    }))
}

pub async fn get(
    State(state): State<AppState>,
    Path(consent_id): Path<String>,
) -> Result<axum::Json<ConsentView>, ApiError> {
    state
        .store
        .get_consent(&consent_id)
        .await?
        .map(|c| axum::Json(c.into()))
        .ok_or(ApiError::NotFound {
            code: "CONSENT_NOT_FOUND",
            what: "consent",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("42"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("pull:42")), None);
    }
}
