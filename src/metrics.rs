//! Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

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
        Self {
            registry,
            webhooks,
            jobs,
            webhook_rejections,
            notifications,
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

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
