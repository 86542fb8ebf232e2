//! Pull use cases shared by the API and the scheduler: where a consent's next window starts,
//! and the pull with the job that will send it. The rules themselves are in `domain`; this
//! module puts them together with the store.

use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::consent::{Consent, JourneyMode};
use crate::domain::fair_use::budget;
use crate::domain::ist;
use crate::domain::pull::{Pull, PullKind};
use crate::queue::{NewJob, Task};
use crate::state::AppState;
use crate::store::{NewPull, StoreError};

/// A pull for `consent` and the job that will send it, budget-checked against the consent's
/// limits at `now`. Used by both the API and the scheduler.
pub fn plan(
    consent: &Consent,
    kind: PullKind,
    (from, to): (NaiveDate, NaiveDate),
    now: DateTime<Utc>,
    idempotency_key: Option<String>,
    request_hash: String,
) -> (NewPull, NewJob) {
    let pull = Pull::queued(&consent.consent_id, kind, from, to, now);
    let job = NewJob::new(
        Task::SubmitPull {
            pull_id: pull.pull_id.clone(),
        },
        now,
    );
    let new = NewPull {
        pull,
        idempotency_key,
        request_hash,
        budget: budget(&consent.limits(), now),
    };
    (new, job)
}

/// Where a consent's next default window starts, given the end of its last completed pull
/// (`last_completed_to`): that end, else the end of the journey's one-time fetch, else the
/// approval date.
pub async fn window_since(
    state: &AppState,
    consent: &Consent,
    last_completed_to: Option<NaiveDate>,
) -> Result<NaiveDate, StoreError> {
    Ok(match last_completed_to {
        Some(to) => to,
        None if consent.journey_mode == JourneyMode::OnceWithRecurring => state
            .store
            .get_session(&consent.session_id)
            .await?
            .and_then(|s| s.to_date)
            .unwrap_or_else(|| approved_on(consent)),
        None => approved_on(consent),
    })
}

/// [`window_since`] for many consents: one query for their last completed pulls, and a
/// session read only for a first recurring pull after a one-time pull.
pub async fn windows_since(
    state: &AppState,
    consents: &[Consent],
) -> Result<Vec<NaiveDate>, StoreError> {
    let ids: Vec<&str> = consents.iter().map(|c| c.consent_id.as_str()).collect();
    let last = state.store.last_completed_to_many(&ids).await?;
    let mut out = Vec::with_capacity(consents.len());
    for consent in consents {
        out.push(window_since(state, consent, last.get(&consent.consent_id).copied()).await?);
    }
    Ok(out)
}

fn approved_on(consent: &Consent) -> NaiveDate {
    consent.approved_at.with_timezone(&ist()).date_naive()
}
