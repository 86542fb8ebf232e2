//! The durable job queue's vocabulary: what a job is, how it is keyed and retried, and how an
//! attempt ends. The queue knows nothing of the handlers (they are in `jobs/`), and the store
//! reads and writes these types, so both depend on this module and not on each other.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// What a job does, with everything it needs. Stored as a `kind` column and a JSON payload
/// of the variant's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// Fetch and store the consent details of an approved session.
    CaptureConsents { session_id: String },
    /// Send a pull's Fetch Recurring AA Data call, within the fair-use budget.
    SubmitPull { pull_id: String },
    /// Ask the upstream whether a submitted pull is done (the webhook's safety net).
    PollPull { pull_id: String },
    /// Act on stored webhooks: the deliveries one group commit stored together, or those
    /// that overtook their pull's submission (`PullStore::mark_submitted`). One job for a
    /// batch, because the job's own row was the largest write of intake after the delivery's.
    ProcessWebhook {
        /// Rows written before batches held one delivery, as `inbox_id`.
        #[serde(alias = "inbox_id", deserialize_with = "one_or_many")]
        inbox_ids: Vec<i64>,
    },
    /// Fetch and store a finished pull's Insights or Transactions.
    FetchPullData { pull_id: String },
    /// Deliver one event to one of the lender's endpoints.
    DeliverEvent { delivery_seq: i64 },
}

/// A list of ids, or one id on its own.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ids {
        One(i64),
        Many(Vec<i64>),
    }
    Ok(match Ids::deserialize(d)? {
        Ids::One(id) => vec![id],
        Ids::Many(ids) => ids,
    })
}

impl Task {
    /// The name in the `kind` column, metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Task::CaptureConsents { .. } => "capture_consents",
            Task::SubmitPull { .. } => "submit_pull",
            Task::PollPull { .. } => "poll_pull",
            Task::ProcessWebhook { .. } => "process_webhook",
            Task::FetchPullData { .. } => "fetch_pull_data",
            Task::DeliverEvent { .. } => "deliver_event",
        }
    }

    /// How many attempts before the job is dead. With the default backoff (capped at an
    /// hour) capturing consents keeps trying for most of a day, which outlasts an ordinary
    /// upstream outage. Polling ends at the pull's deadline, not after a number of tries.
    pub fn max_attempts(&self) -> i32 {
        match self {
            Task::CaptureConsents { .. } | Task::FetchPullData { .. } => 30,
            Task::SubmitPull { .. } | Task::ProcessWebhook { .. } => 20,
            // Polling ends at the pull's deadline, and a delivery after its retry schedule
            // (`NOTIFY_RETRY_SCHEDULE`), not after a number of tries.
            Task::PollPull { .. } | Task::DeliverEvent { .. } => 100_000,
        }
    }

    /// The pull the job works on: the pull shows the job's progress, and fails when it dies.
    pub fn pull_id(&self) -> Option<&str> {
        match self {
            Task::SubmitPull { pull_id }
            | Task::PollPull { pull_id }
            | Task::FetchPullData { pull_id } => Some(pull_id),
            Task::CaptureConsents { .. }
            | Task::ProcessWebhook { .. }
            | Task::DeliverEvent { .. } => None,
        }
    }

    /// At most one live (queued or running) job per key, so enqueueing is idempotent.
    /// Webhook processing has none: each stored delivery is processed once by construction.
    pub fn dedupe_key(&self) -> Option<String> {
        match self {
            Task::CaptureConsents { session_id } => Some(format!("capture:{session_id}")),
            Task::SubmitPull { pull_id } => Some(format!("submit:{pull_id}")),
            Task::PollPull { pull_id } => Some(format!("poll:{pull_id}")),
            Task::FetchPullData { pull_id } => Some(format!("fetch:{pull_id}")),
            Task::DeliverEvent { delivery_seq } => Some(format!("deliver:{delivery_seq}")),
            Task::ProcessWebhook { .. } => None,
        }
    }

    /// The payload column: the variant's fields, without the kind (which has its column).
    pub fn payload(&self) -> String {
        let mut value = serde_json::to_value(self).expect("tasks serialise");
        if let Some(fields) = value.as_object_mut() {
            fields.remove("kind");
        }
        value.to_string()
    }

    /// A task back from its `kind` and payload columns.
    pub fn from_row(kind: &str, payload: &str) -> Result<Task, String> {
        let mut value: serde_json::Value =
            serde_json::from_str(payload).map_err(|e| format!("bad payload: {e}"))?;
        let fields = value
            .as_object_mut()
            .ok_or_else(|| "bad payload: not an object".to_string())?;
        fields.insert("kind".into(), kind.into());
        serde_json::from_value(value).map_err(|e| format!("unknown job `{kind}`: {e}"))
    }
}

/// A job to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub task: Task,
    pub run_at: DateTime<Utc>,
}

impl NewJob {
    pub fn new(task: Task, run_at: DateTime<Utc>) -> Self {
        NewJob { task, run_at }
    }
}

/// Where a job stands. `queued` and `running` are live; `done`, `cancelled` (its work was
/// overtaken, e.g. the webhook beat the fallback poll) and `dead` (out of attempts, or a fatal
/// error) are ended. Only a dead or waiting job can be retried by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Cancelled,
    Dead,
}

crate::domain::string_enum!(JobState {
    Queued => "queued",
    Running => "running",
    Done => "done",
    Cancelled => "cancelled",
    Dead => "dead",
});

/// Every job kind, for filters, metrics and the spec.
pub const JOB_KINDS: &[&str] = &[
    "capture_consents",
    "submit_pull",
    "poll_pull",
    "process_webhook",
    "fetch_pull_data",
    "deliver_event",
];

/// A job as operators see it (`GET /api/v1/jobs`, `aa-recurring jobs`). The payload holds
/// ids only, never bank data or secrets.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    pub job_id: i64,
    pub kind: String,
    pub state: JobState,
    pub payload: serde_json::Value,
    /// The pull the job works on, if any.
    pub pull_id: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    /// When a queued job runs next.
    pub run_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What an operator's retry did.
#[derive(Debug, Clone)]
pub enum RetryOutcome {
    /// Queued to run now, with its attempts counted afresh when it was dead.
    Retried(JobRecord),
    NotFound,
    /// Running, done or cancelled: nothing to retry.
    NotRetryable(JobRecord),
    /// Its pull has ended (a dead job fails its pull): a new pull covers the window again.
    PullEnded {
        job: JobRecord,
        pull_status: String,
    },
    /// Another live job already does the same work (same dedupe key).
    Duplicate(JobRecord),
}

/// Live and dead jobs by kind and state, and how long the oldest due job has waited, for
/// `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct JobGauges {
    pub counts: Vec<(String, JobState, i64)>,
    /// `(kind, run_at)` of the oldest queued job that is due, per kind.
    pub oldest_due: Vec<(String, DateTime<Utc>)>,
}

/// A claimed job, leased to this worker until its lease expires.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    /// The `kind` column as stored (for metrics and logs, even when `task` cannot be read).
    pub kind: String,
    /// The task, or why its row could not be read (the job is then dead at once).
    pub task: Result<Task, String>,
    /// Attempts so far, this one included.
    pub attempts: i32,
    pub max_attempts: i32,
}

/// How a claimed job ends this attempt.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    Done,
    Retry {
        run_at: DateTime<Utc>,
        error: String,
    },
    Dead {
        error: String,
    },
    /// Given back unfinished (shutdown): runs again at once, and this attempt does not count.
    Release,
}

impl JobOutcome {
    /// As labelled in `job_attempts_total`.
    pub fn label(&self) -> &'static str {
        match self {
            JobOutcome::Done => "done",
            JobOutcome::Retry { .. } => "retry",
            JobOutcome::Dead { .. } => "dead",
            JobOutcome::Release => "released",
        }
    }
}

/// Jobs this process stores already leased to its own worker pool and hands over in memory,
/// so the pool needs neither a claim nor a read of what the job is about. Today that is
/// webhook processing: the intake hands over the job of each batch it commits, with the
/// bodies. The row is a running job like a claimed one, so if this process dies first, its
/// lease runs out and any worker claims it
/// (docs/architecture.md, "The flow of one pull").
pub struct Handoff {
    /// The lease owner of this process's worker pool.
    owner: String,
    /// Batches the pool may still take; none until the pool opens the lane, so nothing is
    /// leased to a pool that is not running.
    slots: Arc<Semaphore>,
    /// The pool's lease, in milliseconds, set when it opens the lane.
    lease_ms: std::sync::atomic::AtomicU64,
    tx: mpsc::UnboundedSender<Handed>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Handed>>>,
}

/// A place in the hand-over lane, taken before storing so that jobs are leased only when the
/// pool can start them at once; given back when the batch ends or is not leased after all.
pub type HandoffSlot = OwnedSemaphorePermit;

/// The pool's end of the hand-over lane, held while the pool runs.
pub type HandoffLane = tokio::sync::OwnedMutexGuard<mpsc::UnboundedReceiver<Handed>>;

/// A leased job handed to the pool: one committed batch of webhooks' processing, with the
/// `(inbox id, body)` of each delivery, which the job would otherwise read back.
pub struct Handed {
    pub job: Job,
    pub webhooks: Vec<(i64, bytes::Bytes)>,
    pub slot: HandoffSlot,
}

impl Handoff {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Handoff {
            owner: format!("worker-{}", uuid::Uuid::new_v4().simple()),
            slots: Arc::new(Semaphore::new(0)),
            lease_ms: std::sync::atomic::AtomicU64::new(0),
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// A place for one more handed batch, if the pool runs and has one free.
    pub fn slot(&self) -> Option<HandoffSlot> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Gives jobs stored leased to [`Handoff::owner`] to the pool.
    pub fn hand(&self, handed: Handed) {
        // The receiver lives as long as this `Handoff`; were it gone, the job's lease would
        // run out and a claim would run it.
        let _ = self.tx.send(handed);
    }

    /// How long a handed job's first lease lasts: the pool's, which heartbeats it from there.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The pool's end of the lane, with `places` slots and the pool's `lease` the first time.
    /// A restarted pool (after a panic) takes the lane over with whatever was handed
    /// meanwhile.
    pub async fn open(&self, places: usize, lease: Duration) -> HandoffLane {
        let lane = self.rx.clone().lock_owned().await;
        let ms = lease.as_millis().try_into().unwrap_or(u64::MAX);
        if self.lease_ms.swap(ms, std::sync::atomic::Ordering::SeqCst) == 0 {
            self.slots.add_permits(places);
        }
        lane
    }

    /// No more hand-overs (the pool is stopping): later jobs are stored queued.
    pub fn close(&self) {
        self.slots.close();
    }
}

impl Default for Handoff {
    fn default() -> Self {
        Self::new()
    }
}

/// The error code of a pull or session whose job died (see docs/architecture.md, "Every pull
/// ends").
pub const JOB_FAILED: &str = "JOB_FAILED";

pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest wait between two attempts; also the longest upstream `Retry-After` honoured.
pub const BACKOFF_CAP: Duration = Duration::from_secs(3600);

/// Exponential backoff with full jitter: a uniformly random wait up to `base * 2^(attempt-1)`,
/// capped, and never less than a tenth of that bound so that retries do not bunch at zero.
/// `unit` is a random number in [0, 1).
pub fn backoff(attempt: i32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 30) as u32;
    let bound = base.saturating_mul(1u32 << exp.min(20)).min(cap);
    let frac = 0.1 + 0.9 * unit.clamp(0.0, 1.0);
    bound.mul_f64(frac)
}

/// When a failed attempt should run again: `after` if the failure said (an upstream
/// `Retry-After`, or a known wait), else the backoff.
pub fn retry_delay(attempt: i32, after: Option<Duration>) -> Duration {
    after.unwrap_or_else(|| backoff(attempt, BACKOFF_BASE, BACKOFF_CAP, rand::random::<f64>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(1, b, cap, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(3, b, cap, 0.999_999).as_millis(), 3999);
        assert_eq!(backoff(40, b, cap, 0.999_999).as_secs(), 59);
        assert_eq!(backoff(40, b, cap, 0.0), Duration::from_secs(6));
        assert_eq!(backoff(1, b, cap, 0.0), Duration::from_millis(100));
    }

    #[test]
    fn backoff_is_safe_for_odd_attempts() {
        let b = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(0, b, cap, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(-5, b, cap, 0.0), Duration::from_millis(100));
        assert!(backoff(i32::MAX, b, cap, 1.0) <= cap);
    }

    #[test]
    fn retry_after_wins_over_backoff() {
        assert_eq!(
            retry_delay(5, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert!(retry_delay(1, None) <= Duration::from_secs(1));
    }

    #[test]
    fn tasks_round_trip_their_rows_and_own_their_keys() {
        let tasks = [
            Task::CaptureConsents {
                session_id: "s1".into(),
            },
            Task::SubmitPull {
                pull_id: "p1".into(),
            },
            Task::PollPull {
                pull_id: "p1".into(),
            },
            Task::ProcessWebhook {
                inbox_ids: vec![7, 9],
            },
            Task::FetchPullData {
                pull_id: "p1".into(),
            },
        ];
        for t in &tasks {
            assert_eq!(Task::from_row(t.kind(), &t.payload()).unwrap(), *t);
            assert!(!t.payload().contains("kind"));
        }
        // Rows written before batches (one delivery a job) read as a batch of one.
        assert_eq!(
            Task::from_row("process_webhook", r#"{"inbox_id":7}"#).unwrap(),
            Task::ProcessWebhook { inbox_ids: vec![7] }
        );
        assert_eq!(tasks[3].payload(), r#"{"inbox_ids":[7,9]}"#);
        assert_eq!(tasks[0].dedupe_key().as_deref(), Some("capture:s1"));
        assert_eq!(tasks[2].dedupe_key().as_deref(), Some("poll:p1"));
        assert_eq!(tasks[3].dedupe_key(), None);
        assert_eq!(tasks[4].pull_id(), Some("p1"));
        assert_eq!(tasks[0].pull_id(), None);
        assert!(Task::from_row("sweep_floor", "{}").is_err());
        assert!(Task::from_row("poll_pull", "[1]").is_err());
    }
}
