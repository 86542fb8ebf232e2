//! The worker pool that runs inside `serve`: claims due jobs, keeps their leases alive while
//! they run, and on shutdown lets them finish for a grace period before giving them back.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use futures_util::FutureExt;
use tracing::Instrument;

use super::{JobError, capture_consents, deliver, fetch_data, poll, process_webhook, submit_pull};
use crate::queue::{Handed, Job, JobOutcome, Task, retry_delay};
use crate::state::AppState;

/// Tunables of the pool; the defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub lease: Duration,
    /// How often to look for due jobs when nothing wakes the pool.
    pub poll: Duration,
    /// How long running jobs may go on after shutdown starts.
    pub grace: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: crate::config::MAX_CONCURRENT_JOBS.default as usize,
            lease: Duration::from_secs(60),
            poll: Duration::from_millis(500),
            grace: Duration::from_secs(10),
        }
    }
}

/// The most outcomes one transaction records.
const FINISH_BATCH: usize = 64;

/// Records the pool's job outcomes in batches: whatever finished together is committed in
/// one transaction (SQLite's single writer is the bottleneck of a busy service).
#[derive(Clone)]
struct Finisher(mpsc::Sender<Finished>);

/// A job's outcome, and where to say whether it was recorded.
type Finished = (i64, JobOutcome, oneshot::Sender<Result<(), String>>);

impl Finisher {
    /// Runs until the last handle is dropped.
    fn start(state: AppState, owner: String) -> Self {
        let (queue, mut rx) = mpsc::channel::<Finished>(256);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(FINISH_BATCH);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < FINISH_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (outcomes, replies): (Vec<_>, Vec<_>) =
                    batch.drain(..).map(|(id, o, r)| ((id, o), r)).unzip();
                let result = state
                    .store
                    .finish_jobs(&owner, &outcomes, state.clock.now())
                    .await
                    .map_err(|e| e.to_string());
                for reply in replies {
                    let _ = reply.send(result.clone());
                }
            }
        });
        Finisher(queue)
    }

    /// Records one outcome; returns once it is committed (or failed with its batch).
    async fn finish(&self, job_id: i64, outcome: JobOutcome) -> Result<(), String> {
        let stopped = || "the finisher stopped".to_string();
        let (reply, answer) = oneshot::channel();
        self.0
            .send((job_id, outcome, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

pub async fn run(state: AppState, settings: WorkerSettings, shutdown: CancellationToken) {
    let owner = state.handoff.owner().to_string();
    let finisher = Finisher::start(state.clone(), owner.clone());
    // Claimed jobs, at most `concurrency`; and batches of webhook jobs handed over by this
    // process's intake, at most `concurrency` more (the hand-over lane's slots bound them).
    let mut running = JoinSet::new();
    let mut handed = JoinSet::new();
    let mut lane = state
        .handoff
        .open(settings.concurrency, settings.lease)
        .await;
    let mut poll = tokio::time::interval(settings.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Claims take the writer too: while jobs run, claim only once a quarter of the slots
    // are free, so a busy pool claims in batches rather than one job at a time.
    let claim_at = (settings.concurrency / 4).max(1);
    let mut claim = true;
    loop {
        let free = settings.concurrency.saturating_sub(running.len());
        if claim && free > 0 && (running.is_empty() || free >= claim_at) {
            let now = state.clock.now();
            let lease_until = now + settings.lease;
            match state
                .store
                .claim_jobs(&owner, now, lease_until, free as u32)
                .await
            {
                Ok(jobs) => {
                    for job in jobs {
                        let span = job_span(&job);
                        running.spawn(
                            run_one(
                                state.clone(),
                                settings.clone(),
                                owner.clone(),
                                finisher.clone(),
                                job,
                                shutdown.clone(),
                            )
                            .instrument(span),
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming jobs failed"),
            }
        }
        // A handed job needs no claim, so only the queue's signals lead to one.
        claim = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = state.jobs_wakeup.notified() => true,
            _ = poll.tick() => true,
            Some(_) = running.join_next(), if !running.is_empty() => true,
            Some(h) = lane.recv() => {
                handed.spawn(run_handed(&state, &settings, &finisher, h, &shutdown));
                false
            }
            Some(_) = handed.join_next(), if !handed.is_empty() => false,
        };
    }
    // Nothing more is handed over; what already was runs within the grace period like the
    // rest (a hand-over that lands after this waits for its lease to run out and is claimed).
    state.handoff.close();
    while let Ok(h) = lane.try_recv() {
        handed.spawn(run_handed(&state, &settings, &finisher, h, &shutdown));
    }
    // Each running job finishes or releases itself within the grace period.
    while running.join_next().await.is_some() {}
    while handed.join_next().await.is_some() {}
}

/// A handed webhook job runs its batch (`process_webhook::run_batch`) from the bodies it was
/// handed, and holds its place in the hand-over lane until it ends. It is database work only,
/// so it has no heartbeat: it is given half a lease, and if it has not finished by then it is
/// retried; at shutdown, if it has not finished within the grace period it is given back.
fn run_handed(
    state: &AppState,
    settings: &WorkerSettings,
    finisher: &Finisher,
    handed: Handed,
    shutdown: &CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (state, finisher, shutdown) = (state.clone(), finisher.clone(), shutdown.clone());
    let (limit, grace) = (settings.lease / 2, settings.grace);
    state.metrics.job_handoffs.inc();
    let span = tracing::info_span!(
        "handed job",
        job_id = handed.job.id,
        kind = %handed.job.kind,
        deliveries = handed.webhooks.len()
    );
    async move {
        let Handed {
            job,
            webhooks,
            slot,
        } = handed;
        let work = std::panic::AssertUnwindSafe(process_webhook::run_batch(&state, &webhooks))
            .catch_unwind();
        let outcome = tokio::select! {
            done = tokio::time::timeout(limit, work) => outcome_of(&state, &job, match done {
                Ok(Ok(results)) => process_webhook::outcome(results),
                Ok(Err(panic)) => {
                    let message = crate::supervise::panic_message(&*panic);
                    tracing::error!(job_id = job.id, %message, "webhook batch panicked");
                    Err(panicked(&message))
                }
                Err(_) => Err(JobError::Retry {
                    message: format!("not finished within {limit:?}"),
                    after: None,
                }),
            }),
            _ = grace_over(&shutdown, grace) => JobOutcome::Release,
        };
        if ended(&state, &job, &outcome).await
            && let Err(e) = finisher.finish(job.id, outcome).await
        {
            // The lease will expire and the job run again: processing is idempotent.
            tracing::warn!(job_id = job.id, error = %e, "recording the handed job's outcome failed");
        }
        drop(slot);
    }
    .instrument(span)
}

/// Every log line of a job carries its id, kind and what it is about.
fn job_span(job: &Job) -> tracing::Span {
    let (pull_id, session_id, inbox_ids) = match &job.task {
        Ok(Task::CaptureConsents { session_id }) => (None, Some(session_id.as_str()), None),
        Ok(Task::ProcessWebhook { inbox_ids }) => {
            (None, None, Some(tracing::field::debug(inbox_ids)))
        }
        Ok(task) => (task.pull_id(), None, None),
        Err(_) => (None, None, None),
    };
    tracing::info_span!(
        "job",
        job_id = job.id,
        kind = %job.kind,
        attempt = job.attempts,
        pull_id,
        session_id,
        inbox_ids
    )
}

async fn run_one(
    state: AppState,
    settings: WorkerSettings,
    owner: String,
    finisher: Finisher,
    job: Job,
    shutdown: CancellationToken,
) {
    let outcome = if job.attempts > job.max_attempts {
        // Its leases kept expiring (a crash loop): stop trying.
        JobOutcome::Dead {
            error: "lease expired on the last attempt".into(),
        }
    } else {
        // A panic in a handler is one failed attempt, not a lost job or a dead worker.
        let correlation = format!("job-{}-{}", job.id, job.attempts);
        let work = std::panic::AssertUnwindSafe(
            crate::bankconnect::REQUEST_ID.scope(correlation, dispatch(&state, &job)),
        )
            .catch_unwind()
            .map(|r| {
                r.unwrap_or_else(|panic| {
                    let message = crate::supervise::panic_message(&*panic);
                    tracing::error!(job_id = job.id, kind = %job.kind, %message, "job handler panicked");
                    Err(panicked(&message))
                })
            });
        tokio::pin!(work);
        let mut heartbeat = tokio::time::interval(settings.lease / 3);
        heartbeat.tick().await;
        let grace_over = grace_over(&shutdown, settings.grace);
        tokio::pin!(grace_over);
        loop {
            tokio::select! {
                result = &mut work => break outcome_of(&state, &job, result),
                _ = heartbeat.tick() => {
                    let until = state.clock.now() + settings.lease;
                    match state.store.extend_lease(job.id, &owner, until).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(job_id = job.id, "lease lost; another worker owns the job now");
                            return;
                        }
                        Err(e) => tracing::warn!(job_id = job.id, error = %e, "heartbeat failed"),
                    }
                }
                _ = &mut grace_over => break JobOutcome::Release,
            }
        }
    };
    if !ended(&state, &job, &outcome).await {
        return;
    }
    if let Err(e) = finisher.finish(job.id, outcome).await {
        // The lease will expire and another attempt will run: handlers are idempotent.
        tracing::warn!(job_id = job.id, error = %e, "recording the job's outcome failed");
    }
}

/// Counts an attempt's outcome; a dead job's work ends visibly (`on_dead`) before the job is
/// recorded dead. False when that could not be written now: the outcome is not recorded, the
/// lease runs out and the next claim tries again.
async fn ended(state: &AppState, job: &Job, outcome: &JobOutcome) -> bool {
    state.metrics.job(&job.kind, outcome.label());
    if let JobOutcome::Dead { error } = outcome {
        tracing::error!(job_id = job.id, kind = %job.kind, attempts = job.attempts, %error, "job is dead");
        if let Err(e) = super::on_dead(state, job, error).await {
            tracing::warn!(job_id = job.id, error = %e, "ending the dead job's work failed; will retry");
            return false;
        }
    }
    true
}

/// A panic in a handler is one failed attempt, not a lost job or a dead worker.
fn panicked(message: &str) -> JobError {
    JobError::Retry {
        message: format!("the handler panicked: {message}"),
        after: None,
    }
}

/// Ready once `grace` has passed after shutdown began: running work is given back then.
async fn grace_over(shutdown: &CancellationToken, grace: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(grace).await;
}

async fn dispatch(state: &AppState, job: &Job) -> Result<(), JobError> {
    match &job.task {
        Err(why) => Err(JobError::Fatal(why.clone())),
        Ok(Task::CaptureConsents { session_id }) => capture_consents::run(state, session_id).await,
        Ok(Task::SubmitPull { pull_id }) => submit_pull::run(state, pull_id).await,
        Ok(Task::PollPull { pull_id }) => poll::run(state, pull_id).await,
        Ok(Task::ProcessWebhook { inbox_ids }) => process_webhook::run(state, inbox_ids).await,
        Ok(Task::FetchPullData { pull_id }) => fetch_data::run(state, pull_id).await,
        Ok(Task::DeliverEvent { delivery_seq }) => deliver::run(state, *delivery_seq).await,
    }
}

fn outcome_of(state: &AppState, job: &Job, result: Result<(), JobError>) -> JobOutcome {
    match result {
        Ok(()) => JobOutcome::Done,
        Err(JobError::Fatal(error)) => JobOutcome::Dead { error },
        Err(JobError::Retry { message, .. }) if job.attempts >= job.max_attempts => {
            JobOutcome::Dead { error: message }
        }
        Err(JobError::Retry { message, after }) => {
            let delay = retry_delay(job.attempts, after);
            tracing::info!(job_id = job.id, kind = %job.kind, attempt = job.attempts, ?delay, error = %message, "job will retry");
            JobOutcome::Retry {
                run_at: state.clock.now() + delay,
                error: message,
            }
        }
    }
}
