//! The recurring scheduler: finds due consents through an index (so its cost follows what is
//! due, not how many consents exist), plans each one's gap-free window, and fires the batch in
//! one transaction that also advances `next_pull_at`, compare-and-set, so that every slot
//! fires once however many instances run.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::consent::ConsentStatus;
use crate::domain::ist;
use crate::domain::pull::{PullKind, next_window};
use crate::state::AppState;
use crate::store::{FireReport, ScheduledPull, StoreResult};

#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// How often to look for due consents.
    pub tick: Duration,
    /// How many due consents one transaction fires.
    pub batch: u32,
    /// How far a large batch's submissions are spread: 20 ms per consent, up to this.
    pub max_spread: Duration,
    /// How often housekeeping runs (in the service's clock time).
    pub housekeeping_every: chrono::Duration,
    /// How often open pulls past their deadline are expired (in the service's clock time).
    pub sweep_every: chrono::Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            batch: 1000,
            max_spread: Duration::from_secs(60),
            housekeeping_every: chrono::Duration::minutes(10),
            sweep_every: chrono::Duration::seconds(30),
        }
    }
}

pub async fn run(state: AppState, settings: SchedulerSettings, shutdown: CancellationToken) {
    loop {
        match tick(&state, &settings).await {
            Ok(r) if r.fired > 0 || r.deferred > 0 => tracing::info!(?r, "scheduler tick"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "scheduler tick failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(settings.tick) => {}
        }
    }
}

/// Fires every consent that is due now.
pub async fn tick(state: &AppState, settings: &SchedulerSettings) -> StoreResult<FireReport> {
    let now = state.clock.now();
    let today = now.with_timezone(&ist()).date_naive();
    let global_min = state
        .config
        .pull_interval_min
        .and_then(|d| chrono::Duration::from_std(d).ok());
    let mut total = FireReport::default();
    loop {
        let due = state.store.due_consents(now, settings.batch).await?;
        let n = due.len();
        if n == 0 {
            break;
        }
        let spread = settings
            .max_spread
            .min(Duration::from_millis(20) * n as u32);
        // Expired consents end here; the rest are planned together: one query for where
        // their windows start, whatever the batch size. Their fair-use counts are read once,
        // in the transaction that fires them (`ScheduleStore::fire_scheduled`).
        let mut live = Vec::with_capacity(n);
        for consent in due {
            if consent.next_pull_at.is_none() {
                continue;
            }
            if consent.expires_at <= now {
                state
                    .store
                    .set_consent_status(&consent.consent_id, ConsentStatus::Expired, now)
                    .await?;
                continue;
            }
            live.push(consent);
        }
        let since = crate::pulls::windows_since(state, &live).await?;
        let mut batch = Vec::with_capacity(live.len());
        for (consent, since) in live.into_iter().zip(since) {
            let Some(expected) = consent.next_pull_at else {
                continue;
            };
            let window = next_window(since, consent.use_case, today);
            let interval = consent.interval(global_min);
            // Keep to the consent's slots (no drift from late ticks); after a long stop, start
            // afresh from now rather than firing every missed slot.
            let next_pull_at = Some(expected + interval)
                .filter(|n| *n > now)
                .unwrap_or(now + interval);
            let limits = consent.limits();
            let kind = PullKind::default_for(consent.use_case);
            let (pull, mut job) =
                crate::pulls::plan(&consent, kind, window, now, None, String::new());
            // Spread a large batch so that a thousand consents approved together do not all
            // call the upstream in the same second.
            job.run_at = now + spread.mul_f64(rand::random::<f64>());
            batch.push(ScheduledPull {
                consent_id: consent.consent_id,
                expected,
                next_pull_at,
                limits,
                pull,
                job,
            });
        }
        let report = state.store.fire_scheduled(&batch, now).await?;
        total.fired += report.fired;
        total.deferred += report.deferred;
        total.in_flight += report.in_flight;
        total.lost += report.lost;
        if n < settings.batch as usize {
            break;
        }
    }
    state.metrics.scheduler_fired.inc_by(u64::from(total.fired));
    state
        .metrics
        .fair_use_refusals
        .inc_by(u64::from(total.deferred));
    if total.fired > 0 {
        state.jobs_wakeup.notify_one();
    }
    Ok(total)
}
