//! `GET /api/v1/consents` and `GET /api/v1/consents/{consent_id}`.

use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, Query};
use super::page::{Page, PageRequest, parse_filter};
use crate::app::AppState;
use crate::domain::consent::{Consent, ConsentStatus};
use crate::domain::fair_use::{Usage, budget_windows, usage};
use crate::store::ConsentFilter;

/// A consent as the API shows it: the stored fields plus its fair-use usage.
#[derive(Debug, Serialize)]
pub struct ConsentView {
    #[serde(flatten)]
    pub consent: Consent,
    pub usage: Usage,
}

impl ConsentView {
    pub async fn build(state: &AppState, consent: Consent) -> Result<Self, ApiError> {
        let now = state.clock.now();
        let limits = consent.limits();
        let starts: Vec<_> = budget_windows(&limits, now)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        let used = state
            .store
            .attempts_since(&consent.consent_id, &starts)
            .await?;
        let usage = usage(&limits, &used, consent.pull_blocked_until, now);
        Ok(ConsentView { consent, usage })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    link_id: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Page<ConsentView>>, ApiError> {
    let status = parse_filter(
        "INVALID_STATUS",
        "status",
        q.status.as_deref(),
        ConsentStatus::ALL,
    )?;
    let page = PageRequest::new("consent", q.limit, q.cursor.as_deref())?;
    let filter = ConsentFilter {
        link_id: q.link_id,
        status,
        after_seq: page.after_seq,
        limit: page.fetch_limit(),
    };
    let rows = state.store.list_consents(&filter).await?;
    let mut views = Vec::with_capacity(rows.len());
    for (seq, consent) in rows {
        views.push((seq, ConsentView::build(&state, consent).await?));
    }
    Ok(axum::Json(page.page(views, |v| v)))
}

pub async fn get(
    State(state): State<AppState>,
    Path(consent_id): Path<String>,
) -> Result<axum::Json<ConsentView>, ApiError> {
    let consent = state
        .store
        .get_consent(&consent_id)
        .await?
        .ok_or(ApiError::NotFound {
            code: "CONSENT_NOT_FOUND",
            what: "consent",
        })?;
    Ok(axum::Json(ConsentView::build(&state, consent).await?))
}
