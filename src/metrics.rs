//! Prometheus metrics, served at `/metrics`. Every family is registered here and present from
//! the start (families with a closed set of labels carry every series at 0), so an alert can
//! watch a series before its first event. The families read from the database (`jobs`,
//! `consents`, `pulls_total`) are set at each scrape through indexes and trigger-kept counts:
//! they describe the whole deployment, so they read the same on every instance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::queue::{JOB_KINDS, JobGauges, JobState};

/// Latency buckets for our own routes (seconds): a webhook intake is milliseconds, a data
/// download may take many seconds.
const HTTP_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Latency buckets for BankConnect calls (seconds), up to a long Insights download.
const UPSTREAM_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// Every BankConnect endpoint the client calls, as labelled in `bankconnect_*`.
pub const UPSTREAM_ENDPOINTS: &[&str] = &[
    "session",
    "get_recurring_consent_details",
    "fetch_recurring_aa_data",
    "session_status",
    "insights",
    "transactions",
    "update_webhook",
];
/// How a BankConnect call ended: `ok`, `not_ready` (`PROCESSING_NOT_COMPLETED`), or the class
/// of its error.
pub const UPSTREAM_OUTCOMES: &[&str] =
    &["ok", "not_ready", "transient", "permanent", "configuration"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub endpoint: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointNameLabel {
    pub endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobStateLabels {
    pub kind: String,
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PullOutcomeLabels {
    pub kind: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: String,
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    /// Webhook deliveries by outcome: accepted, duplicate, rejected.
    pub webhooks: Family<OutcomeLabel, Counter>,
    /// Finished job attempts by kind and outcome: done, retry, dead, released.
    pub jobs: Family<JobLabels, Counter>,
    /// Refused webhooks by reason, so a burst (a rotated secret, a wrong scheme) shows.
    pub webhook_rejections: Family<ReasonLabel, Counter>,
    /// Attempts to deliver an event to a lender endpoint, by outcome.
    pub notifications: Family<OutcomeLabel, Counter>,
    /// How long the oldest undelivered event of each endpoint has waited, set at each scrape.
    pub undelivered_age: Family<EndpointLabel, Gauge<f64, AtomicU64>>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: HistogramFamily<RouteLabels>,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub upstream_duration: HistogramFamily<EndpointNameLabel>,
    /// Live and dead jobs, set at each scrape.
    pub jobs_by_state: Family<JobStateLabels, Gauge>,
    /// How long the oldest due job of each kind has waited, set at each scrape.
    pub jobs_oldest_queued_age: Family<KindLabel, Gauge<f64, AtomicU64>>,
    /// Pulls that ended, by kind and outcome, set at each scrape from the database.
    pub pulls: Family<PullOutcomeLabels, Counter>,
    /// Consents by status, set at each scrape from the database.
    pub consents: Family<StatusLabel, Gauge>,
    /// Pulls refused or put off because the consent's fair-use budget was spent.
    pub fair_use_refusals: Counter,
    /// Pulls the scheduler created.
    pub scheduler_fired: Counter,
    /// Jobs stored already leased to this instance's workers and handed over in memory.
    pub job_handoffs: Counter,
    /// SQLite's writer (`store/writer.rs`), set at each scrape; zero on Postgres.
    pub sqlite_commits: Counter,
    pub sqlite_write_transactions: Counter,
    pub sqlite_writer_wait: Counter<f64, AtomicU64>,
    pub sqlite_wal: Gauge,
    /// Data downloads holding a payload, and those waiting for a slot, set at each scrape.
    pub downloads: Family<StateLabel, Gauge>,
    /// When each housekeeping task last finished a pass on this instance (the service's clock),
    /// so a stalled purge or sweep shows before data outlives its data life.
    pub housekeeping_last_success: Family<TaskLabel, Gauge<f64, AtomicU64>>,
    /// Housekeeping passes that failed, by task (each also logged at warn).
    pub housekeeping_failures: Family<TaskLabel, Counter>,
}

/// The housekeeping tasks, as labelled in `housekeeping_*`.
pub const HOUSEKEEPING_TASKS: &[&str] = &["purge", "deadline_sweep", "poll_sweep"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: String,
}

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

fn upstream_histogram() -> Histogram {
    Histogram::new(UPSTREAM_BUCKETS)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aa_recurring");
        let webhooks = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook deliveries by outcome",
            webhooks.clone(),
        );
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register(
            "job_attempts",
            "Finished job attempts by kind and outcome",
            jobs.clone(),
        );
        let webhook_rejections = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "webhook_rejections",
            "Refused webhook deliveries by reason",
            webhook_rejections.clone(),
        );
        // Every reason is present from the start, at 0, so an alert can watch each one.
        for reason in crate::webhook_auth::VerifyError::REASONS {
            let _ = webhook_rejections.get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            });
        }
        let notifications = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "notifications",
            "Attempts to deliver an event to a lender endpoint, by outcome",
            notifications.clone(),
        );
        for outcome in ["delivered", "retry", "failed", "gone"] {
            let _ = notifications.get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            });
        }
        let undelivered_age = Family::<EndpointLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "notifications_oldest_undelivered_age_seconds",
            "How long the oldest undelivered event of each endpoint has waited",
            undelivered_age.clone(),
        );
        for outcome in ["accepted", "duplicate", "rejected"] {
            let _ = webhooks.get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            });
        }

        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(http_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency until the response starts, by method and route template",
            http_duration.clone(),
        );
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "bankconnect_requests",
            "Calls to BankConnect by endpoint and outcome",
            upstream_requests.clone(),
        );
        let upstream_duration: HistogramFamily<EndpointNameLabel> =
            Family::new_with_constructor(upstream_histogram);
        registry.register(
            "bankconnect_request_duration_seconds",
            "BankConnect call latency by endpoint (a data download until its last byte)",
            upstream_duration.clone(),
        );
        for endpoint in UPSTREAM_ENDPOINTS {
            let _ = upstream_duration.get_or_create(&EndpointNameLabel {
                endpoint: endpoint.to_string(),
            });
            for outcome in UPSTREAM_OUTCOMES {
                let _ = upstream_requests.get_or_create(&UpstreamLabels {
                    endpoint: endpoint.to_string(),
                    outcome: outcome.to_string(),
                });
            }
        }
        let jobs_by_state = Family::<JobStateLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs by kind and state (queued, running, dead), across the deployment",
            jobs_by_state.clone(),
        );
        let jobs_oldest_queued_age = Family::<KindLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "jobs_oldest_queued_age_seconds",
            "How long the oldest due job of each kind has waited to run",
            jobs_oldest_queued_age.clone(),
        );
        let pulls = Family::<PullOutcomeLabels, Counter>::default();
        registry.register(
            "pulls",
            "Pulls that ended, by kind and outcome (completed, failed, expired), across the deployment",
            pulls.clone(),
        );
        for kind in crate::domain::pull::PullKind::ALL {
            for outcome in ["completed", "failed", "expired"] {
                let _ = pulls.get_or_create(&PullOutcomeLabels {
                    kind: kind.to_string(),
                    outcome: outcome.to_string(),
                });
            }
        }
        let consents = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "consents",
            "Consents by status, across the deployment",
            consents.clone(),
        );
        for status in crate::domain::consent::ConsentStatus::ALL {
            let _ = consents.get_or_create(&StatusLabel {
                status: status.to_string(),
            });
        }
        let fair_use_refusals = Counter::default();
        registry.register(
            "fair_use_refusals",
            "Pulls refused (API) or put off (scheduler, sending) because the fair-use budget was spent",
            fair_use_refusals.clone(),
        );
        let scheduler_fired = Counter::default();
        registry.register(
            "scheduler_fired",
            "Scheduled pulls the scheduler created",
            scheduler_fired.clone(),
        );
        let job_handoffs = Counter::default();
        registry.register(
            "job_handoffs",
            "Webhook processing jobs handed straight to this instance's workers as they were stored (the rest wait in the queue for a claim)",
            job_handoffs.clone(),
        );
        let sqlite_commits = Counter::default();
        registry.register(
            "sqlite_commits",
            "Commits of this process's SQLite writer, each one fsync (0 on Postgres)",
            sqlite_commits.clone(),
        );
        let sqlite_write_transactions = Counter::default();
        registry.register(
            "sqlite_write_transactions",
            "Write transactions those commits held: divided by sqlite_commits, how many share a commit",
            sqlite_write_transactions.clone(),
        );
        let sqlite_writer_wait = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "sqlite_writer_wait",
            "Time writers spent waiting for SQLite's writer, summed over writers: rising as fast as the clock means writes queue",
            prometheus_client::registry::Unit::Seconds,
            sqlite_writer_wait.clone(),
        );
        let sqlite_wal = Gauge::default();
        registry.register_with_unit(
            "sqlite_wal",
            "Size of SQLite's write-ahead log file (0 on Postgres): up to ~40 MiB under load; growing past that means checkpoints are held back, by a long read for instance",
            prometheus_client::registry::Unit::Bytes,
            sqlite_wal.clone(),
        );
        let downloads = Family::<StateLabel, Gauge>::default();
        registry.register(
            "bankconnect_downloads",
            "Insights and Transactions downloads holding a payload in memory (at most MAX_CONCURRENT_DOWNLOADS), and those waiting for a slot: waiting above 0 for long means the slots, not BankConnect, set the pace",
            downloads.clone(),
        );
        let housekeeping_last_success = Family::<TaskLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "housekeeping_last_success_timestamp_seconds",
            "When each housekeeping task last finished a pass on this instance (Unix seconds; 0 before the first)",
            housekeeping_last_success.clone(),
        );
        let housekeeping_failures = Family::<TaskLabel, Counter>::default();
        registry.register(
            "housekeeping_failures",
            "Housekeeping passes that failed, by task",
            housekeeping_failures.clone(),
        );
        for task in HOUSEKEEPING_TASKS {
            let label = TaskLabel {
                task: task.to_string(),
            };
            let _ = housekeeping_last_success.get_or_create(&label);
            let _ = housekeeping_failures.get_or_create(&label);
        }
        let metrics = Self {
            registry,
            webhooks,
            jobs,
            webhook_rejections,
            notifications,
            undelivered_age,
            http_requests,
            http_duration,
            upstream_requests,
            upstream_duration,
            jobs_by_state,
            jobs_oldest_queued_age,
            pulls,
            consents,
            fair_use_refusals,
            scheduler_fired,
            job_handoffs,
            sqlite_commits,
            sqlite_write_transactions,
            sqlite_writer_wait,
            sqlite_wal,
            downloads,
            housekeeping_last_success,
            housekeeping_failures,
        };
        metrics.set_jobs(&JobGauges::default(), chrono::Utc::now());
        metrics.set_downloads(crate::bankconnect::Downloads::default());
        metrics
    }
}

impl Metrics {
    pub fn webhook(&self, outcome: &str) {
        self.webhooks
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn webhook_rejected(&self, reason: &str) {
        self.webhook_rejections
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn notification(&self, outcome: &str) {
        self.notifications
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// One housekeeping pass of `task` (one of [`HOUSEKEEPING_TASKS`]) ended; `at` is when it
    /// started, so everything due by then is done.
    pub fn housekeeping(&self, task: &str, at: chrono::DateTime<chrono::Utc>, ok: bool) {
        let label = TaskLabel {
            task: task.to_string(),
        };
        if ok {
            self.housekeeping_last_success
                .get_or_create(&label)
                .set(at.timestamp_millis() as f64 / 1000.0);
        } else {
            self.housekeeping_failures.get_or_create(&label).inc();
        }
    }

    pub fn job(&self, kind: &str, outcome: &str) {
        self.jobs
            .get_or_create(&JobLabels {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Sets the undelivered-age gauges from `(endpoint, oldest pending since)`; endpoints with
    /// nothing pending drop out.
    pub fn set_undelivered(
        &self,
        oldest: &[(String, chrono::DateTime<chrono::Utc>)],
        now: chrono::DateTime<chrono::Utc>,
    ) {
        self.undelivered_age.clear();
        for (endpoint_id, since) in oldest {
            let age = (now - *since).num_milliseconds().max(0) as f64 / 1000.0;
            self.undelivered_age
                .get_or_create(&EndpointLabel {
                    endpoint_id: endpoint_id.clone(),
                })
                .set(age);
        }
    }

    /// Shows every route's request counter (at its success status) and latency at 0 from the
    /// start: `(METHOD, route template, status)`.
    pub fn known_routes(&self, routes: &[(String, String, u16)]) {
        for (method, route, status) in routes {
            let _ = self.http_requests.get_or_create(&HttpLabels {
                method: method.clone(),
                route: route.clone(),
                status: *status,
            });
            let _ = self.http_duration.get_or_create(&RouteLabels {
                method: method.clone(),
                route: route.clone(),
            });
        }
    }

    /// One HTTP request, by its route template (never the raw path).
    pub fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One BankConnect call.
    pub fn upstream_call(&self, endpoint: &str, outcome: &str, elapsed: Duration) {
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                endpoint: endpoint.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.upstream_duration
            .get_or_create(&EndpointNameLabel {
                endpoint: endpoint.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the job gauges: every kind and state is present, at 0 when it has no job.
    pub fn set_jobs(&self, gauges: &JobGauges, now: chrono::DateTime<chrono::Utc>) {
        for kind in JOB_KINDS {
            for state in [JobState::Queued, JobState::Running, JobState::Dead] {
                let n = gauges
                    .counts
                    .iter()
                    .find(|(k, s, _)| k == kind && *s == state)
                    .map_or(0, |(_, _, n)| *n);
                self.jobs_by_state
                    .get_or_create(&JobStateLabels {
                        kind: kind.to_string(),
                        state: state.to_string(),
                    })
                    .set(n);
            }
            let age = gauges
                .oldest_due
                .iter()
                .find(|(k, _)| k == kind)
                .map_or(0.0, |(_, since)| {
                    (now - *since).num_milliseconds().max(0) as f64 / 1000.0
                });
            self.jobs_oldest_queued_age
                .get_or_create(&KindLabel {
                    kind: kind.to_string(),
                })
                .set(age);
        }
    }

    /// Sets consents by status from the database's counts.
    pub fn set_consents(&self, counts: &[(String, i64)]) {
        for (status, n) in counts {
            self.consents
                .get_or_create(&StatusLabel {
                    status: status.clone(),
                })
                .set(*n);
        }
    }

    /// Sets the ended-pull counters from the database's counts (monotonic: they only grow).
    pub fn set_pulls(&self, counts: &[(String, String, i64)]) {
        for (kind, outcome, n) in counts {
            self.pulls
                .get_or_create(&PullOutcomeLabels {
                    kind: kind.clone(),
                    outcome: outcome.clone(),
                })
                .inner()
                .store((*n).max(0) as u64, Ordering::Relaxed);
        }
    }

    /// Sets the SQLite writer's counters from its totals (monotonic: they only grow).
    pub fn set_writer(&self, stats: &crate::store::WriterStats) {
        self.sqlite_commits
            .inner()
            .store(stats.commits, Ordering::Relaxed);
        self.sqlite_write_transactions
            .inner()
            .store(stats.transactions, Ordering::Relaxed);
        self.sqlite_writer_wait
            .inner()
            .store(stats.wait_seconds.to_bits(), Ordering::Relaxed);
        self.sqlite_wal
            .set(i64::try_from(stats.wal_bytes).unwrap_or(i64::MAX));
    }

    /// Sets the download gauges from the client's slots.
    pub fn set_downloads(&self, now: crate::bankconnect::Downloads) {
        for (state, n) in [("holding", now.holding), ("waiting", now.waiting)] {
            self.downloads
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
