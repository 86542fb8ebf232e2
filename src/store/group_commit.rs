//! Group commit for webhook intake. Deliveries that arrive together are stored together: one
//! transaction (one fsync on SQLite) for up to [`MAX_BATCH`] of them, and each delivery is
//! acknowledged only after the commit that holds it. A single writer with one commit per
//! request tops out at a few thousand a second; batching lifts that by the batch size.

use std::num::NonZeroU32;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, oneshot};

use super::{DynStore, Lease, NewWebhook, Recorded, StoreError, StoreResult, WebhookReceipt};
use crate::queue::{Handed, Handoff};

/// The most deliveries one transaction commits.
pub const MAX_BATCH: usize = 64;
/// Deliveries waiting for a commit; a full queue makes new ones wait (backpressure).
const QUEUE: usize = 4096;
/// Duplicate and rejected deliveries recorded for the console, per second and instance.
const RECEIPTS_PER_SECOND: u32 = 20;

struct Pending {
    webhook: NewWebhook,
    received_at: DateTime<Utc>,
    reply: oneshot::Sender<StoreResult<Recorded>>,
}

/// The handle request handlers use. Cheap to clone.
#[derive(Clone)]
pub struct WebhookIntake {
    queue: mpsc::Sender<Pending>,
    store: DynStore,
    receipts: Arc<DefaultDirectRateLimiter>,
}

impl WebhookIntake {
    /// Starts the committing task, which hands processing jobs to this process's worker pool
    /// through `handoff` while it has room. It ends when the last handle is dropped.
    pub fn start(store: DynStore, handoff: Arc<Handoff>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(commit_loop(store.clone(), handoff, rx));
        let per_second = NonZeroU32::new(RECEIPTS_PER_SECOND).expect("non-zero");
        Self {
            queue,
            store,
            receipts: Arc::new(RateLimiter::direct(Quota::per_second(per_second))),
        }
    }

    /// Records a delivery that was not stored as new (a duplicate or a rejection) for the
    /// console, without making the sender wait. At most `RECEIPTS_PER_SECOND` are written
    /// per instance, so a flood of forged deliveries cannot take the writer from genuine
    /// ones; the rest are still counted in `webhooks_total` and logged. Returns whether it
    /// will be written.
    pub fn note(&self, receipt: WebhookReceipt) -> bool {
        if self.receipts.check().is_err() {
            return false;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.record_webhook_receipt(&receipt).await {
                tracing::warn!(error = %e, outcome = %receipt.outcome, "webhook receipt not recorded");
            }
        });
        true
    }

    /// Stores a delivery, with the processing job of the batch it is committed in. Returns
    /// once committed. While this process's worker pool has room for another batch, the
    /// batch's job is stored leased to it and handed over with the bodies after the commit,
    /// by the committing task, so a caller that stops waiting cannot strand it; otherwise it
    /// is queued.
    pub async fn record(
        &self,
        webhook: NewWebhook,
        received_at: DateTime<Utc>,
    ) -> StoreResult<Recorded> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Batch {
            unavailable: true,
            message: "webhook intake is stopping".into(),
        };
        self.queue
            .send(Pending {
                webhook,
                received_at,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn commit_loop(store: DynStore, handoff: Arc<Handoff>, mut rx: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Take whatever else is already waiting, without waiting for more.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let at = batch
            .iter()
            .map(|p| p.received_at)
            .max()
            .unwrap_or_else(Utc::now);
        let (webhooks, replies): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|p| (p.webhook, p.reply)).unzip();
        // While the pool has room for another batch, this one's jobs are leased to it.
        let slot = handoff.slot();
        let lease = slot.as_ref().map(|_| Lease {
            owner: handoff.owner(),
            until: at + handoff.lease(),
        });
        match store.record_webhooks(&webhooks, lease, at).await {
            Ok(recorded) => {
                for (reply, r) in replies.into_iter().zip(&recorded.each) {
                    let _ = reply.send(Ok(*r));
                }
                // A slot not used (nothing new, or not leased) goes back as it drops.
                if let (Some(job), Some(slot)) = (recorded.leased, slot) {
                    let webhooks = webhooks
                        .into_iter()
                        .zip(recorded.each)
                        .filter_map(|(w, r)| match r {
                            Recorded::Leased { inbox_id } => Some((inbox_id, w.body)),
                            _ => None,
                        })
                        .collect();
                    handoff.hand(Handed {
                        job,
                        webhooks,
                        slot,
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, deliveries = replies.len(), "webhook batch not committed");
                let unavailable = e.is_unavailable();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Batch {
                        unavailable,
                        message: e.to_string(),
                    }));
                }
            }
        }
    }
}
