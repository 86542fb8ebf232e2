//! Housekeeping: consents past their tenure leave the schedule, and data past its data life
//! (Sahamati: one month; `DATA_RETENTION_DAYS`) is deleted. Pull rows stay, marked purged.

use crate::app::AppState;
use crate::domain::pull::{PULL_DEADLINE, deadline_message};
use crate::store::StoreResult;

/// How many pulls one sweep transaction expires.
const SWEEP_BATCH: u32 = 500;

/// One pass; safe to run on every instance at once (each statement is idempotent).
pub async fn run(state: &AppState) -> StoreResult<()> {
    let now = state.clock.now();
    let expired = state.store.expire_consents(now).await?;
    let older_than = now - chrono::Duration::days(i64::from(state.config.data_retention_days));
    let purged = state.store.purge_data(older_than, now).await?;
    if expired > 0 || purged > 0 {
        tracing::info!(expired, purged, "housekeeping");
    }
    Ok(())
}

/// The deadline sweep: every pull still open `PULL_DEADLINE_SECS` after it was accepted is
/// `expired`, whatever step it is stuck at, so its consent's schedule goes on and a later pull
/// covers its window. Returns how many were expired.
pub async fn expire_overdue_pulls(state: &AppState) -> StoreResult<usize> {
    let now = state.clock.now();
    let Ok(age) = chrono::Duration::from_std(state.config.pull_deadline) else {
        return Ok(0);
    };
    let message = deadline_message(state.config.pull_deadline);
    let mut total = 0;
    loop {
        let expired = state
            .store
            .expire_overdue_pulls(now - age, PULL_DEADLINE, &message, SWEEP_BATCH, now)
            .await?;
        for pull_id in &expired {
            tracing::warn!(%pull_id, "pull expired: still open at its deadline");
        }
        total += expired.len();
        if expired.len() < SWEEP_BATCH as usize {
            return Ok(total);
        }
    }
}
