//! `aa-recurring`: serve (default) | migrate | sandbox.

#[cfg(feature = "sandbox")]
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use aa_recurring::config::{Config, LogFormat, Settings};
use aa_recurring::startup::{App, RunOptions};

#[derive(Parser)]
#[command(
    name = "aa-recurring",
    version,
    about = "FinBox BankConnect AA recurring pulls for lenders"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server and the job workers (the default). Every setting is a flag or an
    /// environment variable (a `.env` file is read too).
    Serve(Box<Settings>),
    /// Apply pending database migrations and exit.
    Migrate(Box<Settings>),
    /// Print the OpenAPI 3.1 description of the HTTP API (what `/openapi.json` serves).
    Openapi,
    /// Run the BankConnect simulator alone (for load tests and separate-process setups).
    #[cfg(feature = "sandbox")]
    Sandbox(SandboxArgs),
}

/// `aa-recurring sandbox`: the simulator's own options.
#[cfg(feature = "sandbox")]
#[derive(clap::Args)]
struct SandboxArgs {
    /// Where the simulator listens.
    #[arg(long, default_value = "127.0.0.1:9090")]
    bind: SocketAddr,
    /// How browsers reach it (defaults to http://BIND).
    #[arg(long)]
    public_url: Option<String>,
    /// Require this x-api-key (default: accept any non-empty one).
    #[arg(long, env = "SANDBOX_API_KEY")]
    api_key: Option<String>,
    /// Require this server-hash (default: accept any non-empty one).
    #[arg(long, env = "SANDBOX_SERVER_HASH")]
    server_hash: Option<String>,
    /// Where pull webhooks go, comma-separated for several instances (taken in turn);
    /// can also be set through the update_webhook API.
    #[arg(long, env = "SANDBOX_WEBHOOK_URL", value_delimiter = ',')]
    webhook_url: Vec<String>,
    /// How webhooks are signed: secret-key, hmac-sha256 or standard-webhooks.
    #[arg(long, env = "WEBHOOK_VERIFY", default_value = "hmac-sha256")]
    webhook_verify: String,
    /// The secret webhooks are signed with (default: the first of WEBHOOK_SECRETS, else the
    /// sandbox's own).
    #[arg(
        long,
        env = "WEBHOOK_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    webhook_secret: Vec<String>,
    /// `pretty` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    log_format: String,
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn main() -> ExitCode {
    // Before parsing: clap reads the environment, and `.env` belongs to it.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aa-recurring: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or_else(|| {
        Command::Serve(Box::new(Settings::from_lookup(|k| std::env::var(k).ok())))
    });
    match command {
        Command::Serve(settings) => serve(Config::from_settings(&settings)?).await,
        Command::Migrate(settings) => {
            let config = Config::from_settings(&settings)?;
            init_tracing(config.log_format);
            let store = aa_recurring::store::connect(&config.database_url, &config.pool).await?;
            store.migrate().await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Openapi => {
            println!("{}", aa_recurring::http::spec().to_pretty_json()?);
            Ok(())
        }
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => sandbox(args).await,
    }
}

/// `aa-recurring sandbox`: the simulator alone, as a guest of this binary.
#[cfg(feature = "sandbox")]
async fn sandbox(args: SandboxArgs) -> anyhow::Result<()> {
    let SandboxArgs {
        bind,
        public_url,
        api_key,
        server_hash,
        webhook_url,
        webhook_verify,
        webhook_secret,
        log_format,
    } = args;
    use aa_recurring::sandbox::{Sandbox, SandboxConfig, WebhookTarget};

    init_tracing(LogFormat::parse(&log_format)?);
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let credentials = match (api_key, server_hash) {
        (Some(k), Some(h)) => Some((k.into(), h.into())),
        (None, None) => None,
        _ => anyhow::bail!("--api-key and --server-hash go together"),
    };
    let scheme: aa_recurring::config::WebhookVerify = webhook_verify.parse().map_err(|_| {
        anyhow::anyhow!(
            "--webhook-verify must be one of {}, got `{webhook_verify}`",
            aa_recurring::config::WebhookVerify::ALL.join(", ")
        )
    })?;
    let secret = webhook_secret
        .into_iter()
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| scheme.sandbox_secret().to_string());
    let sandbox = Sandbox::new(SandboxConfig {
        public_url: public_url.unwrap_or_else(|| format!("http://{addr}")),
        credentials,
        webhook: WebhookTarget {
            urls: webhook_url,
            scheme,
            secret: secret.into(),
        },
        clock: std::sync::Arc::new(aa_recurring::clock::SystemClock),
    });
    eprintln!("BankConnect sandbox listening on http://{addr} (use it as BANKCONNECT_BASE_URL)");
    axum::serve(listener, sandbox.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_tracing(config.log_format);
    let listener = TcpListener::bind(config.bind_addr).await?;
    let banner = banner(&config);
    let mut options = RunOptions::default();
    options.workers.lease = config.job_lease;
    let app = App::start(config, listener, options).await?;
    if let Some(banner) = banner {
        eprintln!("{banner}");
    }
    tracing::info!(addr = %app.addr, "listening");
    let token: CancellationToken = app.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    app.wait().await
}

/// The loud notice for sandbox mode and for a made-up development token.
fn banner(config: &Config) -> Option<String> {
    let mut lines = vec![];
    if config.is_sandbox() {
        lines.push("SANDBOX MODE: BankConnect is simulated in-process under /sandbox.".to_string());
        lines.push(
            "No real bank data is fetched. Set BANKCONNECT_BASE_URL to use FinBox.".to_string(),
        );
    }
    if config.api_token_generated {
        let token = config.api_tokens[0].expose_secret();
        lines.push(format!(
            "Development API token (made up for this run): {token}"
        ));
        lines.push(format!("  export TOKEN={token}"));
    }
    if lines.is_empty() {
        return None;
    }
    let rule = "=".repeat(78);
    Some(format!("{rule}\n{}\n{rule}", lines.join("\n")))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
