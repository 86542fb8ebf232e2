//! Housekeeping: consents past their tenure leave the schedule, and data past its data life
//! (Sahamati: one month; `DATA_RETENTION_DAYS`) is deleted. Pull rows stay, marked purged.

use crate::app::AppState;
use crate::store::StoreResult;

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
