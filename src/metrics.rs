//! Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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
        Self {
            registry,
            webhooks,
            jobs,
            webhook_rejections,
            notifications,
            undelivered_age,
        }
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

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
