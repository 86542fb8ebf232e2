//! Every setting declared as a type, in sections, with clap: each is a flag of `serve` and
//! `migrate` and an environment variable, and `aa-recurring serve --help` lists every one with
//! its default. Values arrive here as text; [`super::Config::from_settings`] validates them,
//! naming the variable at fault.

use clap::Args;

use super::{ConfigError, err};

/// Every setting, as given (flags win over the environment; unset ones have their default).
/// No `Debug`: it holds secrets as text. [`super::Config`] is what gets shown.
#[derive(Args, Clone, Default)]
pub struct Settings {
    #[command(flatten)]
    pub server: ServerSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub upstream: UpstreamSettings,
    #[command(flatten)]
    pub webhook: WebhookSettings,
    #[command(flatten)]
    pub schedule: ScheduleSettings,
    #[command(flatten)]
    pub retention: RetentionSettings,
    #[command(flatten)]
    pub notify: NotifySettings,
}

#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Server")]
pub struct ServerSettings {
    /// `development` or `production` (production refuses sandbox mode, an http:// upstream, and missing WEBHOOK_VERIFY, WEBHOOK_SECRETS or API_TOKENS).
    #[arg(
        long = "app-env",
        env = "APP_ENV",
        value_name = "APP_ENV",
        default_value = "development"
    )]
    pub app_env: Option<String>,
    /// Where the server listens.
    #[arg(
        long = "bind-addr",
        env = "BIND_ADDR",
        value_name = "BIND_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub bind_addr: Option<String>,
    /// How browsers and BankConnect reach this server (builds the callback URL).
    #[arg(
        long = "public-base-url",
        env = "PUBLIC_BASE_URL",
        value_name = "PUBLIC_BASE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_base_url: Option<String>,
    /// Comma-separated bearer tokens for /api/v1 (development: one is made up and printed when unset).
    #[arg(
        long = "api-tokens",
        env = "API_TOKENS",
        value_name = "API_TOKENS",
        hide_env_values = true
    )]
    pub api_tokens: Option<String>,
    /// Where the callback sends the browser; unset: a result page of our own.
    #[arg(
        long = "frontend-return-url",
        env = "FRONTEND_RETURN_URL",
        value_name = "FRONTEND_RETURN_URL"
    )]
    pub frontend_return_url: Option<String>,
    /// `pretty` or `json`.
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        default_value = "pretty"
    )]
    pub log_format: Option<String>,
    /// Seconds a client may take to send its request headers (1-300).
    #[arg(
        long = "header-read-timeout-secs",
        env = "HEADER_READ_TIMEOUT_SECS",
        value_name = "HEADER_READ_TIMEOUT_SECS",
        default_value = "10"
    )]
    pub header_read_timeout_secs: Option<String>,
    /// Seconds a request may take until its response starts (2-3600, above BANKCONNECT_TIMEOUT_SECS).
    #[arg(
        long = "request-timeout-secs",
        env = "REQUEST_TIMEOUT_SECS",
        value_name = "REQUEST_TIMEOUT_SECS",
        default_value = "60"
    )]
    pub request_timeout_secs: Option<String>,
    /// Requests served at once; past this, 503 at once (1-100000).
    #[arg(
        long = "max-concurrent-requests",
        env = "MAX_CONCURRENT_REQUESTS",
        value_name = "MAX_CONCURRENT_REQUESTS",
        default_value = "1024"
    )]
    pub max_concurrent_requests: Option<String>,
}

#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Database")]
pub struct DatabaseSettings {
    /// `sqlite://…` (file created if missing) or `postgres://…`.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        default_value = "sqlite://data/aa-recurring.db",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Connection pool size per instance (1-1000).
    #[arg(
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        value_name = "DATABASE_MAX_CONNECTIONS",
        default_value = "10"
    )]
    pub database_max_connections: Option<String>,
    /// Seconds a request waits for a connection before 503 (1-300).
    #[arg(
        long = "database-acquire-timeout-secs",
        env = "DATABASE_ACQUIRE_TIMEOUT_SECS",
        value_name = "DATABASE_ACQUIRE_TIMEOUT_SECS",
        default_value = "5"
    )]
    pub database_acquire_timeout_secs: Option<String>,
}

#[derive(Args, Clone, Default)]
#[command(next_help_heading = "BankConnect")]
pub struct UpstreamSettings {
    /// e.g. `https://apis.bankconnect.finbox.in/bank-connect`; unset: sandbox mode.
    #[arg(
        long = "bankconnect-base-url",
        env = "BANKCONNECT_BASE_URL",
        value_name = "BANKCONNECT_BASE_URL"
    )]
    pub bankconnect_base_url: Option<String>,
    /// The x-api-key credential (required with BANKCONNECT_BASE_URL).
    #[arg(
        long = "bankconnect-api-key",
        env = "BANKCONNECT_API_KEY",
        value_name = "BANKCONNECT_API_KEY",
        hide_env_values = true
    )]
    pub bankconnect_api_key: Option<String>,
    /// The server-hash credential (required with BANKCONNECT_BASE_URL).
    #[arg(
        long = "bankconnect-server-hash",
        env = "BANKCONNECT_SERVER_HASH",
        value_name = "BANKCONNECT_SERVER_HASH",
        hide_env_values = true
    )]
    pub bankconnect_server_hash: Option<String>,
    /// Upstream connect timeout, seconds (1-60).
    #[arg(
        long = "bankconnect-connect-timeout-secs",
        env = "BANKCONNECT_CONNECT_TIMEOUT_SECS",
        value_name = "BANKCONNECT_CONNECT_TIMEOUT_SECS",
        default_value = "5"
    )]
    pub bankconnect_connect_timeout_secs: Option<String>,
    /// A whole upstream call; for downloads, the longest silence between reads, seconds (1-300).
    #[arg(
        long = "bankconnect-timeout-secs",
        env = "BANKCONNECT_TIMEOUT_SECS",
        value_name = "BANKCONNECT_TIMEOUT_SECS",
        default_value = "30"
    )]
    pub bankconnect_timeout_secs: Option<String>,
    /// A whole Insights or Transactions download, seconds (1-3600).
    #[arg(
        long = "bankconnect-download-timeout-secs",
        env = "BANKCONNECT_DOWNLOAD_TIMEOUT_SECS",
        value_name = "BANKCONNECT_DOWNLOAD_TIMEOUT_SECS",
        default_value = "600"
    )]
    pub bankconnect_download_timeout_secs: Option<String>,
}

#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Webhooks from BankConnect")]
pub struct WebhookSettings {
    /// `secret-key`, `hmac-sha256` or `standard-webhooks` (required in production; default hmac-sha256).
    #[arg(
        long = "webhook-verify",
        env = "WEBHOOK_VERIFY",
        value_name = "WEBHOOK_VERIFY"
    )]
    pub webhook_verify: Option<String>,
    /// Comma-separated secrets; any one may match (rotation).
    #[arg(
        long = "webhook-secrets",
        env = "WEBHOOK_SECRETS",
        value_name = "WEBHOOK_SECRETS",
        hide_env_values = true
    )]
    pub webhook_secrets: Option<String>,
    /// The largest webhook body read (1024-16777216).
    #[arg(
        long = "webhook-body-limit-bytes",
        env = "WEBHOOK_BODY_LIMIT_BYTES",
        value_name = "WEBHOOK_BODY_LIMIT_BYTES",
        default_value = "262144"
    )]
    pub webhook_body_limit_bytes: Option<String>,
}

#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Telling the lender's systems")]
pub struct NotifySettings {
    /// Delays between attempts to deliver an event to an endpoint, then it is failed.
    #[arg(
        long = "notify-retry-schedule",
        env = "NOTIFY_RETRY_SCHEDULE",
        value_name = "NOTIFY_RETRY_SCHEDULE",
        default_value = "5s,5m,30m,2h,5h,10h,10h"
    )]
    pub notify_retry_schedule: Option<String>,
    /// `true` lets production send events to http:// endpoints (internal receivers).
    #[arg(
        long = "notify-allow-http",
        env = "NOTIFY_ALLOW_HTTP",
        value_name = "NOTIFY_ALLOW_HTTP",
        default_value = "false"
    )]
    pub notify_allow_http: Option<String>,
}

#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Pulls and jobs")]
pub struct ScheduleSettings {
    /// Seconds a submitted pull waits for its webhook before polling (1-86400).
    #[arg(
        long = "poll-fallback-after-secs",
        env = "POLL_FALLBACK_AFTER_SECS",
        value_name = "POLL_FALLBACK_AFTER_SECS",
        default_value = "60"
    )]
    pub poll_fallback_after_secs: Option<String>,
    /// A pull still open this many seconds after it was accepted is expired (1-2592000).
    #[arg(
        long = "pull-deadline-secs",
        env = "PULL_DEADLINE_SECS",
        value_name = "PULL_DEADLINE_SECS",
        default_value = "86400"
    )]
    pub pull_deadline_secs: Option<String>,
    /// A service-wide floor under every consent's pull spacing, seconds (1-31622400).
    #[arg(
        long = "pull-interval-min-secs",
        env = "PULL_INTERVAL_MIN_SECS",
        value_name = "PULL_INTERVAL_MIN_SECS"
    )]
    pub pull_interval_min_secs: Option<String>,
    /// Seconds a job stays with a worker that stops heartbeating (1-3600).
    #[arg(
        long = "job-lease-secs",
        env = "JOB_LEASE_SECS",
        value_name = "JOB_LEASE_SECS",
        default_value = "60"
    )]
    pub job_lease_secs: Option<String>,
    /// Jobs one instance runs at once; each holds at most one BankConnect call (1-1024).
    #[arg(
        long = "max-concurrent-jobs",
        env = "MAX_CONCURRENT_JOBS",
        value_name = "MAX_CONCURRENT_JOBS",
        default_value = "64"
    )]
    pub max_concurrent_jobs: Option<String>,
    /// Data downloads one instance holds at once, each in memory until stored (1-1024).
    #[arg(
        long = "max-concurrent-downloads",
        env = "MAX_CONCURRENT_DOWNLOADS",
        value_name = "MAX_CONCURRENT_DOWNLOADS",
        default_value = "16"
    )]
    pub max_concurrent_downloads: Option<String>,
}

#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Data life")]
pub struct RetentionSettings {
    /// Enriched data older than this many days is deleted (1-3650).
    #[arg(
        long = "data-retention-days",
        env = "DATA_RETENTION_DAYS",
        value_name = "DATA_RETENTION_DAYS",
        default_value = "30"
    )]
    pub data_retention_days: Option<String>,
}

impl Settings {
    /// The value of one variable, by its name; `None` when unset.
    pub fn get(&self, var: &str) -> Option<String> {
        let value = match var {
            "APP_ENV" => &self.server.app_env,
            "BIND_ADDR" => &self.server.bind_addr,
            "PUBLIC_BASE_URL" => &self.server.public_base_url,
            "API_TOKENS" => &self.server.api_tokens,
            "FRONTEND_RETURN_URL" => &self.server.frontend_return_url,
            "LOG_FORMAT" => &self.server.log_format,
            "HEADER_READ_TIMEOUT_SECS" => &self.server.header_read_timeout_secs,
            "REQUEST_TIMEOUT_SECS" => &self.server.request_timeout_secs,
            "MAX_CONCURRENT_REQUESTS" => &self.server.max_concurrent_requests,
            "DATABASE_URL" => &self.database.database_url,
            "DATABASE_MAX_CONNECTIONS" => &self.database.database_max_connections,
            "DATABASE_ACQUIRE_TIMEOUT_SECS" => &self.database.database_acquire_timeout_secs,
            "BANKCONNECT_BASE_URL" => &self.upstream.bankconnect_base_url,
            "BANKCONNECT_API_KEY" => &self.upstream.bankconnect_api_key,
            "BANKCONNECT_SERVER_HASH" => &self.upstream.bankconnect_server_hash,
            "BANKCONNECT_CONNECT_TIMEOUT_SECS" => &self.upstream.bankconnect_connect_timeout_secs,
            "BANKCONNECT_TIMEOUT_SECS" => &self.upstream.bankconnect_timeout_secs,
            "BANKCONNECT_DOWNLOAD_TIMEOUT_SECS" => &self.upstream.bankconnect_download_timeout_secs,
            "WEBHOOK_VERIFY" => &self.webhook.webhook_verify,
            "WEBHOOK_SECRETS" => &self.webhook.webhook_secrets,
            "WEBHOOK_BODY_LIMIT_BYTES" => &self.webhook.webhook_body_limit_bytes,
            "POLL_FALLBACK_AFTER_SECS" => &self.schedule.poll_fallback_after_secs,
            "PULL_DEADLINE_SECS" => &self.schedule.pull_deadline_secs,
            "PULL_INTERVAL_MIN_SECS" => &self.schedule.pull_interval_min_secs,
            "JOB_LEASE_SECS" => &self.schedule.job_lease_secs,
            "MAX_CONCURRENT_JOBS" => &self.schedule.max_concurrent_jobs,
            "MAX_CONCURRENT_DOWNLOADS" => &self.schedule.max_concurrent_downloads,
            "DATA_RETENTION_DAYS" => &self.retention.data_retention_days,
            "NOTIFY_RETRY_SCHEDULE" => &self.notify.notify_retry_schedule,
            "NOTIFY_ALLOW_HTTP" => &self.notify.notify_allow_http,
            _ => return None,
        };
        value.clone()
    }

    /// Settings from any lookup of variable names (the process environment, or a test's map),
    /// with the same defaults as the command line.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        use clap::{CommandFactory, FromArgMatches, Parser};
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        // The lookup is the only source: clap must not read the process environment itself.
        let cmd = Only::command();
        let mut argv = vec!["aa-recurring".to_string()];
        for arg in cmd.get_arguments() {
            if let (Some(long), Some(var)) = (arg.get_long(), arg.get_env())
                && let Some(value) = var.to_str().and_then(&get)
            {
                argv.push(format!("--{long}={value}"));
            }
        }
        let cmd = cmd.mut_args(|a| a.env(None::<&'static str>));
        let matches = cmd
            .try_get_matches_from(argv)
            .expect("every setting is text, so any value parses");
        Only::from_arg_matches(&matches)
            .expect("the matches come from this command")
            .settings
    }
}

/// A numeric setting with its default and the range it must fall in. Every one is listed in
/// [`NUMERIC_SETTINGS`], which the README's table follows.
#[derive(Debug, Clone, Copy)]
pub struct NumericSetting {
    pub var: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
}

impl NumericSetting {
    const fn new(var: &'static str, default: u64, min: u64, max: u64) -> Self {
        Self {
            var,
            default,
            min,
            max,
        }
    }

    /// The value of the variable, or the default when unset; refused outside the range.
    pub fn parse(&self, v: Option<&str>) -> Result<u64, ConfigError> {
        let Some(v) = v else {
            return Ok(self.default);
        };
        match v.parse::<u64>() {
            Ok(n) if (self.min..=self.max).contains(&n) => Ok(n),
            _ => Err(err(
                self.var,
                format!(
                    "must be a whole number from {} to {}, got `{v}`",
                    self.min, self.max
                ),
            )),
        }
    }
}

const DAY_SECS: u64 = 86_400;
pub const POLL_FALLBACK_AFTER_SECS: NumericSetting =
    NumericSetting::new("POLL_FALLBACK_AFTER_SECS", 60, 1, DAY_SECS);
pub const PULL_DEADLINE_SECS: NumericSetting =
    NumericSetting::new("PULL_DEADLINE_SECS", DAY_SECS, 1, 30 * DAY_SECS);
pub const BANKCONNECT_CONNECT_TIMEOUT_SECS: NumericSetting =
    NumericSetting::new("BANKCONNECT_CONNECT_TIMEOUT_SECS", 5, 1, 60);
pub const BANKCONNECT_TIMEOUT_SECS: NumericSetting =
    NumericSetting::new("BANKCONNECT_TIMEOUT_SECS", 30, 1, 300);
pub const BANKCONNECT_DOWNLOAD_TIMEOUT_SECS: NumericSetting =
    NumericSetting::new("BANKCONNECT_DOWNLOAD_TIMEOUT_SECS", 600, 1, 3600);
pub const DATA_RETENTION_DAYS: NumericSetting =
    NumericSetting::new("DATA_RETENTION_DAYS", 30, 1, 3650);
pub const PULL_INTERVAL_MIN_SECS: NumericSetting =
    NumericSetting::new("PULL_INTERVAL_MIN_SECS", 0, 1, 366 * DAY_SECS);
pub const DATABASE_MAX_CONNECTIONS: NumericSetting =
    NumericSetting::new("DATABASE_MAX_CONNECTIONS", 10, 1, 1000);
pub const DATABASE_ACQUIRE_TIMEOUT_SECS: NumericSetting =
    NumericSetting::new("DATABASE_ACQUIRE_TIMEOUT_SECS", 5, 1, 300);
pub const JOB_LEASE_SECS: NumericSetting = NumericSetting::new("JOB_LEASE_SECS", 60, 1, 3600);
pub const MAX_CONCURRENT_JOBS: NumericSetting =
    NumericSetting::new("MAX_CONCURRENT_JOBS", 64, 1, 1024);
pub const MAX_CONCURRENT_DOWNLOADS: NumericSetting =
    NumericSetting::new("MAX_CONCURRENT_DOWNLOADS", 16, 1, 1024);
pub const HEADER_READ_TIMEOUT_SECS: NumericSetting =
    NumericSetting::new("HEADER_READ_TIMEOUT_SECS", 10, 1, 300);
pub const REQUEST_TIMEOUT_SECS: NumericSetting =
    NumericSetting::new("REQUEST_TIMEOUT_SECS", 60, 2, 3600);
pub const MAX_CONCURRENT_REQUESTS: NumericSetting =
    NumericSetting::new("MAX_CONCURRENT_REQUESTS", 1024, 1, 100_000);
pub const WEBHOOK_BODY_LIMIT_BYTES: NumericSetting = NumericSetting::new(
    "WEBHOOK_BODY_LIMIT_BYTES",
    256 * 1024,
    1024,
    16 * 1024 * 1024,
);

/// Every numeric setting, with its default and range.
pub const NUMERIC_SETTINGS: &[NumericSetting] = &[
    POLL_FALLBACK_AFTER_SECS,
    PULL_DEADLINE_SECS,
    BANKCONNECT_CONNECT_TIMEOUT_SECS,
    BANKCONNECT_TIMEOUT_SECS,
    BANKCONNECT_DOWNLOAD_TIMEOUT_SECS,
    DATA_RETENTION_DAYS,
    PULL_INTERVAL_MIN_SECS,
    DATABASE_MAX_CONNECTIONS,
    DATABASE_ACQUIRE_TIMEOUT_SECS,
    JOB_LEASE_SECS,
    MAX_CONCURRENT_JOBS,
    MAX_CONCURRENT_DOWNLOADS,
    HEADER_READ_TIMEOUT_SECS,
    REQUEST_TIMEOUT_SECS,
    MAX_CONCURRENT_REQUESTS,
    WEBHOOK_BODY_LIMIT_BYTES,
];
