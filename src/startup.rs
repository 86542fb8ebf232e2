//! The wiring, above everything: migrates the store, builds the state, mounts the router
//! (and, in sandbox mode, the simulator), starts the supervised background tasks, and shuts
//! them down in order.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Upstream};
use crate::jobs::worker::{self, WorkerSettings};
use crate::scheduler::{self, SchedulerSettings};
use crate::state::AppState;
use crate::store;
use crate::supervise::supervise;

/// A running service: the HTTP server and its workers.
pub struct App {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    workers: JoinHandle<()>,
    scheduler: JoinHandle<()>,
    housekeeping: JoinHandle<()>,
}

/// How the background parts run; the defaults are production's, tests tighten them.
#[derive(Clone)]
pub struct RunOptions {
    pub workers: WorkerSettings,
    pub scheduler: SchedulerSettings,
    pub clock: Arc<dyn Clock>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            workers: WorkerSettings::default(),
            scheduler: SchedulerSettings::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl RunOptions {
    /// Production's options, with what the configuration sets.
    pub fn configured(config: &Config) -> Self {
        let mut options = Self::default();
        options.workers.lease = config.job_lease;
        options.workers.concurrency = config.max_concurrent_jobs;
        options
    }
}

impl App {
    /// Migrates the database and starts serving on `listener`.
    pub async fn start(
        config: Config,
        listener: TcpListener,
        options: RunOptions,
    ) -> anyhow::Result<App> {
        let addr = listener.local_addr()?;
        let store = store::connect(&config.database_url, &config.pool).await?;
        store.migrate().await?;

        // In sandbox mode the simulator is reached over real HTTP on our own listener, so
        // the client is exercised exactly as against the real upstream.
        let base_url = crate::operator::upstream_base(&config, addr);
        let guest = match &config.upstream {
            Upstream::Remote(_) => None,
            Upstream::Sandbox => Some(sandbox_router(
                &config,
                crate::operator::loopback(addr),
                &options,
            )?),
        };
        let state = AppState::new(config, store, &base_url, options.clock.clone())?;
        let mut router = crate::http::router(state.clone());
        if let Some(guest) = guest {
            router = router.nest("/sandbox", guest);
        }

        let shutdown = state.shutdown.clone();
        let server = tokio::spawn(crate::http::server::serve(
            listener,
            router,
            state.config.header_read_timeout,
            shutdown.clone(),
        ));
        let tasks = &state.tasks;
        let workers = {
            let (state, settings, stop) = (state.clone(), options.workers, shutdown.clone());
            supervise("workers", tasks.clone(), shutdown.clone(), move || {
                worker::run(state.clone(), settings.clone(), stop.clone())
            })
        };
        let scheduler = {
            let (state, settings, stop) =
                (state.clone(), options.scheduler.clone(), shutdown.clone());
            supervise("scheduler", tasks.clone(), shutdown.clone(), move || {
                scheduler::run(state.clone(), settings.clone(), stop.clone())
            })
        };
        let housekeeping = {
            let (state, settings, stop) = (state.clone(), options.scheduler, shutdown.clone());
            supervise("housekeeping", tasks.clone(), shutdown.clone(), move || {
                crate::housekeeping::run_loop(state.clone(), settings.clone(), stop.clone())
            })
        };
        Ok(App {
            addr,
            state,
            shutdown,
            server,
            workers,
            scheduler,
            housekeeping,
        })
    }

    /// A handle that stops the service when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until the shutdown token is cancelled, then drains: in-flight requests finish,
    /// running jobs finish or give their leases back.
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.server.await?;
        self.shutdown.cancel();
        self.workers.await?;
        self.scheduler.await?;
        self.housekeeping.await?;
        served?;
        Ok(())
    }

    /// Stops at once, as a crash would: no request or job is finished and no lease is given
    /// back. For tests of crash recovery.
    pub fn abort(self) {
        self.workers.abort();
        self.scheduler.abort();
        self.housekeeping.abort();
        self.server.abort();
    }

    /// Stops the scheduler as a crash of its supervisor would, leaving the rest running: for
    /// tests that readiness tells.
    pub fn abort_scheduler(&self) {
        self.scheduler.abort();
    }

    /// Stops the service and waits until it has drained.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// The in-process simulator for sandbox mode, mounted under `/sandbox`. It is a guest: only
/// this wiring knows it, and a build without the `sandbox` feature has no sandbox mode.
#[cfg(feature = "sandbox")]
fn sandbox_router(
    config: &Config,
    loopback: SocketAddr,
    options: &RunOptions,
) -> anyhow::Result<axum::Router> {
    use crate::sandbox::{Sandbox, SandboxConfig, WebhookTarget};
    let sandbox = Sandbox::new(SandboxConfig {
        public_url: format!(
            "{}/sandbox",
            config.public_base_url.as_str().trim_end_matches('/')
        ),
        credentials: Some((config.api_key.clone(), config.server_hash.clone())),
        webhook: WebhookTarget {
            urls: vec![format!("http://{loopback}/webhooks/bankconnect")],
            scheme: config.webhook_verify,
            secret: config.webhook_secrets[0].clone(),
        },
        clock: options.clock.clone(),
    });
    Ok(sandbox.router())
}

#[cfg(not(feature = "sandbox"))]
fn sandbox_router(
    _config: &Config,
    _loopback: SocketAddr,
    _options: &RunOptions,
) -> anyhow::Result<axum::Router> {
    anyhow::bail!(
        "BANKCONNECT_BASE_URL: required: this build has no sandbox (built without the `sandbox` feature)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_pool_runs_as_configured() {
        let config = Config::from_lookup(|k| match k {
            "MAX_CONCURRENT_JOBS" => Some("7".into()),
            "JOB_LEASE_SECS" => Some("30".into()),
            _ => None,
        })
        .unwrap();
        let options = RunOptions::configured(&config);
        assert_eq!(options.workers.concurrency, 7);
        assert_eq!(options.workers.lease, std::time::Duration::from_secs(30));
        let defaults = Config::from_lookup(|_| None).unwrap();
        assert_eq!(RunOptions::configured(&defaults).workers.concurrency, 64);
        assert_eq!(defaults.max_concurrent_downloads, 16);
    }
}
