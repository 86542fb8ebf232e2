//! The state every handler, job and background task shares: configuration, the store, the
//! upstream client, the clock and the in-process signals. It sits below `http`, `jobs`, the
//! scheduler and housekeeping, and above the store, domain and client; `startup` builds it.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bankconnect::BankConnectClient;
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::Handoff;
use crate::store::DynStore;
use crate::store::group_commit::WebhookIntake;
use crate::supervise::TaskHealth;

/// What every handler and job needs. One pointer: axum clones the state for every extractor
/// of every request, and cloning a dozen `Arc`s (and a `CancellationToken`, which takes a
/// lock) per clone showed up at the top of the intake profile.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub bankconnect: BankConnectClient,
    pub clock: Arc<dyn Clock>,
    /// Wakes the worker pool when a job is enqueued in this process.
    pub jobs_wakeup: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// Group commit for webhook deliveries.
    pub webhooks: WebhookIntake,
    /// Jobs stored already leased to this process's worker pool, handed over in memory.
    pub handoff: Arc<Handoff>,
    /// Which background tasks are down; `/readyz` is 503 while any is.
    pub tasks: Arc<TaskHealth>,
    /// Delivers events to the lender's endpoints: 10 s in all, no redirects.
    pub notify_http: reqwest::Client,
    /// Cancelled when the service starts to drain; `/readyz` is 503 from then on.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// The state every handler, job and scheduler tick works with, talking to BankConnect at
    /// `upstream` (everything before `/v1`).
    pub fn new(
        config: Config,
        store: DynStore,
        upstream: &str,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let bankconnect = BankConnectClient::configured(&config, upstream, metrics.clone())?;
        let handoff = Arc::new(Handoff::new());
        Ok(AppState(Arc::new(Shared {
            config: Arc::new(config),
            webhooks: WebhookIntake::start(store.clone(), handoff.clone()),
            handoff,
            store,
            bankconnect,
            clock,
            jobs_wakeup: Arc::new(Notify::new()),
            metrics,
            tasks: Arc::new(TaskHealth::default()),
            notify_http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("aa-recurring/", env!("CARGO_PKG_VERSION")))
                .build()?,
            shutdown: CancellationToken::new(),
        })))
    }
}
