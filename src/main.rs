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
use aa_recurring::operator::{self, Answer, Operator};
use aa_recurring::startup::{App, RunOptions};
use axum::http::Method;

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
    /// Consents: list, show, pause, resume (the same rules as the API).
    Consents(ConsentsArgs),
    /// Pulls: list, show, start (fair use and idempotency as in the API).
    Pulls(PullsArgs),
    /// The job queue: list, show, retry.
    Jobs(JobsArgs),
    /// BankConnect account settings.
    Bankconnect(BankConnectArgs),
    /// Check a deployment: configuration, database, migrations, upstream credentials,
    /// webhook scheme and public URL, one line each. Exit code 1 when any check fails.
    Doctor(DoctorArgs),
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

/// Output for every operator command.
#[derive(clap::Args)]
struct Output {
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Args)]
struct ConsentsArgs {
    #[command(subcommand)]
    action: ConsentsAction,
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    settings: Box<Settings>,
}

#[derive(Subcommand)]
enum ConsentsAction {
    /// Consents, oldest first.
    List {
        #[arg(long)]
        link_id: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One consent with its schedule and usage.
    Show { consent_id: String },
    /// Stop the consent's schedule.
    Pause { consent_id: String },
    /// Restart the consent's schedule.
    Resume { consent_id: String },
}

#[derive(clap::Args)]
struct PullsArgs {
    #[command(subcommand)]
    action: PullsAction,
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    settings: Box<Settings>,
}

#[derive(Subcommand)]
enum PullsAction {
    /// Pulls, oldest first.
    List {
        #[arg(long)]
        consent_id: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One pull with its progress.
    Show { pull_id: String },
    /// Start a pull (queued; a running `serve` sends it).
    Start {
        consent_id: String,
        /// YYYY-MM-DD; default: where the last pull ended.
        #[arg(long)]
        from: Option<String>,
        /// YYYY-MM-DD; default: today.
        #[arg(long)]
        to: Option<String>,
        /// insights or transactions; default: from the use case.
        #[arg(long)]
        kind: Option<String>,
        /// The same key with the same window returns the same pull.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

#[derive(clap::Args)]
struct JobsArgs {
    #[command(subcommand)]
    action: JobsAction,
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    settings: Box<Settings>,
}

#[derive(Subcommand)]
enum JobsAction {
    /// Jobs, oldest first.
    List {
        /// queued, running, done, cancelled or dead.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One job with its last error.
    Show { job_id: String },
    /// Run a dead or waiting job now.
    Retry { job_id: String },
}

#[derive(clap::Args)]
struct BankConnectArgs {
    #[command(subcommand)]
    action: BankConnectAction,
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    settings: Box<Settings>,
}

#[derive(Subcommand)]
enum BankConnectAction {
    /// Tell BankConnect where to send its webhooks (the documented `update_webhook` call).
    RegisterWebhook {
        /// Default: PUBLIC_BASE_URL/webhooks/bankconnect.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(clap::Args)]
struct DoctorArgs {
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    settings: Box<Settings>,
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

/// mimalloc rather than glibc's malloc: glibc's was 15–17% of the CPU under load (hyper's
/// buffers, axum's responses and every row sqlx hands over allocate; `malloc_consolidate` ran
/// whenever a block of 1 KiB or more was asked for), and with mimalloc a webhook costs ~13%
/// and a pull ~4% less CPU for 3–6 MiB more RSS (docs/benchmarks.md, "ninth session"). SQLite's
/// own C code still allocates through glibc. Built without transparent huge pages (`no_thp` in
/// Cargo.toml), which cost more than twice the RSS end to end.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Consents(args) => {
            let op = Operator::open(Config::from_settings(&args.settings)?).await?;
            let (method, path) = match &args.action {
                ConsentsAction::List {
                    link_id,
                    status,
                    limit,
                    cursor,
                } => (
                    Method::GET,
                    list_path(
                        "consents",
                        &[("link_id", link_id), ("status", status)],
                        *limit,
                        cursor,
                    ),
                ),
                ConsentsAction::Show { consent_id } => (
                    Method::GET,
                    format!("/api/v1/consents/{}", segment(consent_id)),
                ),
                ConsentsAction::Pause { consent_id } => (
                    Method::POST,
                    format!("/api/v1/consents/{}/pause", segment(consent_id)),
                ),
                ConsentsAction::Resume { consent_id } => (
                    Method::POST,
                    format!("/api/v1/consents/{}/resume", segment(consent_id)),
                ),
            };
            let answer = op.call(method, &path, None, &[]).await?;
            print_answer(
                &answer,
                args.output.json,
                &[
                    "consent_id",
                    "link_id",
                    "status",
                    "use_case",
                    "frequency_unit",
                    "usage/pulls_used",
                    "usage/pulls_allowed",
                    "next_pull_at",
                ],
            )
        }
        Command::Pulls(args) => {
            let op = Operator::open(Config::from_settings(&args.settings)?).await?;
            let answer = match &args.action {
                PullsAction::List {
                    consent_id,
                    status,
                    limit,
                    cursor,
                } => {
                    let path = list_path(
                        "pulls",
                        &[("consent_id", consent_id), ("status", status)],
                        *limit,
                        cursor,
                    );
                    op.call(Method::GET, &path, None, &[]).await?
                }
                PullsAction::Show { pull_id } => {
                    op.call(
                        Method::GET,
                        &format!("/api/v1/pulls/{}", segment(pull_id)),
                        None,
                        &[],
                    )
                    .await?
                }
                PullsAction::Start {
                    consent_id,
                    from,
                    to,
                    kind,
                    idempotency_key,
                } => {
                    let body = serde_json::json!({"from": from, "to": to, "kind": kind});
                    let headers: Vec<(&str, String)> = idempotency_key
                        .iter()
                        .map(|k| ("idempotency-key", k.clone()))
                        .collect();
                    op.call(
                        Method::POST,
                        &format!("/api/v1/consents/{}/pulls", segment(consent_id)),
                        Some(body),
                        &headers,
                    )
                    .await?
                }
            };
            print_answer(
                &answer,
                args.output.json,
                &[
                    "pull_id",
                    "consent_id",
                    "status",
                    "kind",
                    "from",
                    "to",
                    "attempts",
                    "error_code",
                    "updated_at",
                ],
            )
        }
        Command::Jobs(args) => {
            let op = Operator::open(Config::from_settings(&args.settings)?).await?;
            let (method, path) = match &args.action {
                JobsAction::List {
                    state,
                    kind,
                    limit,
                    cursor,
                } => (
                    Method::GET,
                    list_path("jobs", &[("state", state), ("kind", kind)], *limit, cursor),
                ),
                JobsAction::Show { job_id } => {
                    (Method::GET, format!("/api/v1/jobs/{}", segment(job_id)))
                }
                JobsAction::Retry { job_id } => (
                    Method::POST,
                    format!("/api/v1/jobs/{}/retry", segment(job_id)),
                ),
            };
            let answer = op.call(method, &path, None, &[]).await?;
            print_answer(
                &answer,
                args.output.json,
                &[
                    "job_id",
                    "kind",
                    "state",
                    "attempts",
                    "run_at",
                    "pull_id",
                    "last_error",
                ],
            )
        }
        Command::Bankconnect(args) => {
            let config = Config::from_settings(&args.settings)?;
            let BankConnectAction::RegisterWebhook { url } = &args.action;
            let url = url.clone().unwrap_or_else(|| {
                format!(
                    "{}/webhooks/bankconnect",
                    config.public_base_url.as_str().trim_end_matches('/')
                )
            });
            let op = Operator::open(config).await?;
            match op.state.bankconnect.update_webhook(&url).await {
                Ok(()) => {
                    if args.output.json {
                        println!(
                            "{}",
                            serde_json::json!({"webhook_url": url, "registered": true})
                        );
                    } else {
                        println!("BankConnect will send its webhooks to {url}");
                    }
                    Ok(())
                }
                Err(e) => anyhow::bail!("update_webhook failed: {e}"),
            }
        }
        Command::Doctor(args) => {
            let checks = operator::doctor(Config::from_settings(&args.settings)).await;
            if args.output.json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                for c in &checks {
                    println!("{}", c.line());
                }
            }
            if checks.iter().all(|c| c.ok) {
                Ok(())
            } else {
                anyhow::bail!(
                    "{} check(s) failed",
                    checks.iter().filter(|c| !c.ok).count()
                )
            }
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

/// `/api/v1/{resource}` with the filters that are set and the page.
fn list_path(
    resource: &str,
    filters: &[(&str, &Option<String>)],
    limit: Option<u32>,
    cursor: &Option<String>,
) -> String {
    let limit = limit.map(|l| l.to_string());
    let mut pairs: Vec<(&str, Option<&str>)> =
        filters.iter().map(|(k, v)| (*k, v.as_deref())).collect();
    pairs.push(("limit", limit.as_deref()));
    pairs.push(("cursor", cursor.as_deref()));
    format!("/api/v1/{resource}{}", operator::query(&pairs))
}

/// An id as one path segment, so that no argument can reach another route.
fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// Prints a list as a table, one resource as lines, or the JSON as is; an error answer goes
/// to stderr and fails the command.
fn print_answer(answer: &Answer, json: bool, columns: &[&str]) -> anyhow::Result<()> {
    if !answer.status.is_success() {
        if json {
            println!("{}", answer.body);
        }
        anyhow::bail!("{}", answer.error_line());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&answer.body)?);
    } else if let Some(items) = answer.body["items"].as_array() {
        println!("{}", operator::table(items, columns));
        if let Some(next) = answer.body["next_cursor"].as_str() {
            println!("(more: --cursor {next})");
        }
    } else {
        println!("{}", operator::details(&answer.body));
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_tracing(config.log_format);
    let listener = TcpListener::bind(config.bind_addr).await?;
    let banner = banner(&config);
    let options = RunOptions::configured(&config);
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
        lines.push(format!(
            "Operator console: {}/console (sign in with the token)",
            config.public_base_url.as_str().trim_end_matches('/')
        ));
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
