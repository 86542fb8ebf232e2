//! Housekeeping: the poll sweep that starts polling for pulls whose webhook is late; the
//! deadline sweep that ends every pull still open at `PULL_DEADLINE_SECS`;
//! consents past their tenure leave the schedule; data past its data life (Sahamati: one month;
//! `DATA_RETENTION_DAYS`) is deleted, pull rows staying, marked purged; and old jobs, journeys
//! and ledger rows go.

use tokio_util::sync::CancellationToken;

use crate::domain::pull::{PULL_DEADLINE, deadline_message};
use crate::scheduler::SchedulerSettings;
use crate::state::AppState;
use crate::store::{Purge, PurgeReport, StoreResult};

/// How many pulls one sweep transaction expires, or starts polling.
const SWEEP_BATCH: u32 = 500;

/// The housekeeping task: the poll sweep every `tick`, the deadline sweep every
/// `sweep_every`, the purge every `housekeeping_every` (both in the service's clock time).
pub async fn run_loop(state: AppState, settings: SchedulerSettings, shutdown: CancellationToken) {
    let mut last_purge: Option<chrono::DateTime<chrono::Utc>> = None;
    let mut last_sweep: Option<chrono::DateTime<chrono::Utc>> = None;
    loop {
        let now = state.clock.now();
        let polled = start_polling(&state).await;
        state
            .metrics
            .housekeeping("poll_sweep", now, polled.is_ok());
        if let Err(e) = polled {
            tracing::warn!(error = %e, "poll sweep failed");
        }
        if last_sweep.is_none_or(|t| now - t >= settings.sweep_every) {
            let done = expire_overdue_pulls(&state).await;
            state
                .metrics
                .housekeeping("deadline_sweep", now, done.is_ok());
            match done {
                Ok(_) => last_sweep = Some(now),
                Err(e) => tracing::warn!(error = %e, "deadline sweep failed"),
            }
        }
        if last_purge.is_none_or(|t| now - t >= settings.housekeeping_every) {
            let done = run(&state).await;
            state.metrics.housekeeping("purge", now, done.is_ok());
            match done {
                Ok(()) => last_purge = Some(now),
                Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(settings.tick) => {}
        }
    }
}

/// How many rows of each kind one purge transaction deletes.
pub const PURGE_BATCH: u32 = 500;
/// Sessions never completed are kept this long, for support questions.
pub const OPEN_SESSION_DAYS: i64 = 30;
/// Fair-use ledger rows are kept past the longest budget window (a calendar year).
pub const LEDGER_DAYS: i64 = 400;

/// One pass; safe to run on every instance at once (each statement is idempotent). Purges in
/// batches with a pause between them, so webhook intake never waits long for the writer.
pub async fn run(state: &AppState) -> StoreResult<()> {
    let now = state.clock.now();
    let expired = state.store.expire_consents(now).await?;
    let purge = Purge {
        data_before: now - chrono::Duration::days(i64::from(state.config.data_retention_days)),
        sessions_before: now - chrono::Duration::days(OPEN_SESSION_DAYS),
        ledger_before: now - chrono::Duration::days(LEDGER_DAYS),
    };
    let mut purged = PurgeReport::default();
    loop {
        let batch = state.store.purge_batch(&purge, PURGE_BATCH, now).await?;
        purged.add(batch);
        if batch.most() < u64::from(PURGE_BATCH) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if expired > 0 || purged.most() > 0 {
        tracing::info!(expired, ?purged, "housekeeping");
    }
    Ok(())
}

/// The poll sweep: a pull still `submitted` `POLL_FALLBACK_AFTER_SECS` after it was sent
/// has not heard its webhook, and gets a `poll_pull` job due now (`jobs/poll.rs`). Run every
/// tick, so polling starts at most a tick late. Returns how many pulls it started polling.
pub async fn start_polling(state: &AppState) -> StoreResult<usize> {
    let now = state.clock.now();
    let Ok(fallback) = chrono::Duration::from_std(state.config.poll_fallback_after) else {
        return Ok(0);
    };
    let mut total = 0;
    loop {
        let started = state
            .store
            .start_polling(now - fallback, SWEEP_BATCH, now)
            .await?;
        for pull_id in &started {
            tracing::info!(%pull_id, "no webhook for this pull yet: polling its session");
        }
        total += started.len();
        if started.len() < SWEEP_BATCH as usize {
            if total > 0 {
                // Late webhooks in numbers are worth an operator's look (is FinBox sending?).
                tracing::warn!(pulls = total, "webhooks late: started polling");
                state.jobs_wakeup.notify_one();
            }
            return Ok(total);
        }
    }
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
