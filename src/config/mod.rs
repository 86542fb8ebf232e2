//! Environment → validated [`Config`]. The variables are declared in [`settings`].
//!
//! Every variable is read in one place so that a misconfiguration fails at start with the
//! variable's name, not later inside a request.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

pub mod settings;
pub use settings::*;
use url::Url;

/// Connection pool sizing, from `DATABASE_MAX_CONNECTIONS` and `DATABASE_ACQUIRE_TIMEOUT_SECS`.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a request waits for a connection before failing with 503.
    pub acquire_timeout: std::time::Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// A configuration problem, always naming the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: String,
    pub message: String,
}

fn err(var: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT`: `pretty` or `json`.
    pub fn parse(v: &str) -> Result<Self, ConfigError> {
        match v.trim() {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(err(
                "LOG_FORMAT",
                format!("must be `pretty` or `json`, got `{other}`"),
            )),
        }
    }
}

/// How a webhook proves it came from BankConnect (docs/bankconnect.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookVerify {
    SecretKey,
    HmacSha256,
    StandardWebhooks,
}

crate::domain::string_enum!(WebhookVerify {
    SecretKey => "secret-key",
    HmacSha256 => "hmac-sha256",
    StandardWebhooks => "standard-webhooks",
});

impl WebhookVerify {
    /// The secret the sandbox signs with when none is configured (the service, in sandbox
    /// mode, accepts the same one).
    pub fn sandbox_secret(self) -> &'static str {
        match self {
            WebhookVerify::StandardWebhooks => SANDBOX_STANDARD_WEBHOOK_SECRET,
            _ => SANDBOX_WEBHOOK_SECRET,
        }
    }
}

/// Where the upstream is. Sandbox mode mounts the simulator in-process and talks to it over HTTP.
#[derive(Debug, Clone)]
pub enum Upstream {
    Sandbox,
    Remote(Url),
}

/// `DATABASE_URL`, whose `Debug` hides the password (configs get logged).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl std::ops::Deref for DatabaseUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for DatabaseUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("REDACTED"));
                write!(f, "{:?}", url.as_str())
            }
            Ok(_) => write!(f, "{:?}", self.0),
            Err(_) => f.write_str("\"(unparsable URL, not shown)\""),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: DatabaseUrl,
    pub bind_addr: SocketAddr,
    pub public_base_url: Url,
    pub upstream: Upstream,
    pub api_key: SecretString,
    pub server_hash: SecretString,
    pub upstream_connect_timeout: Duration,
    /// A whole upstream call; for data downloads, the longest wait between two reads.
    pub upstream_timeout: Duration,
    /// The longest a data download may take in all.
    pub upstream_download_timeout: Duration,
    pub webhook_verify: WebhookVerify,
    pub webhook_secrets: Vec<SecretString>,
    pub api_tokens: Vec<SecretString>,
    /// True when no `API_TOKENS` were set and a development token was made up at start.
    pub api_token_generated: bool,
    pub frontend_return_url: Option<Url>,
    pub app_env: AppEnv,
    pub poll_fallback_after: Duration,
    pub pull_deadline: Duration,
    pub data_retention_days: u32,
    /// A service-wide floor under every consent's pull spacing (never a ceiling).
    pub pull_interval_min: Option<Duration>,
    pub pool: PoolSettings,
    /// How long a worker holds a job without a heartbeat before another instance may take it.
    pub job_lease: Duration,
    /// Jobs this instance runs at once: what bounds its BankConnect calls in flight.
    pub max_concurrent_jobs: usize,
    /// Data downloads this instance holds at once: what bounds the payloads in its memory
    /// (each is held, compressed, until it is stored).
    pub max_concurrent_downloads: usize,
    pub log_format: LogFormat,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long a request may take until its response starts.
    pub request_timeout: Duration,
    /// Requests served at once; past this, 503 with `Retry-After` at once.
    pub max_concurrent_requests: usize,
    /// The largest webhook body read.
    pub webhook_body_limit: usize,
    /// Delays between attempts to deliver an event to a lender endpoint.
    pub notify_retry_schedule: Vec<Duration>,
    /// Whether endpoints may be `http://` (always in development; in production only when set).
    pub notify_allow_http: bool,
}

/// The credentials the in-process sandbox expects when none are configured.
pub const SANDBOX_API_KEY: &str = "sandbox-api-key";
pub const SANDBOX_SERVER_HASH: &str = "sandbox-server-hash";
pub const SANDBOX_WEBHOOK_SECRET: &str = "sandbox-webhook-secret";
/// `whsec_` + base64 of "sandbox-webhook-secret".
pub const SANDBOX_STANDARD_WEBHOOK_SECRET: &str = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA==";

/// The path BankConnect sends the browser back to; also the `redirect_url` we register.
pub const CALLBACK_PATH: &str = "/bankconnect/callback";

impl Config {
    /// Reads the process environment (after `.env`, if present).
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds a config from any lookup, so tests can pass a map instead of mutating the
    /// process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_settings(&Settings::from_lookup(get))
    }

    /// Validates the settings as given (on the command line or in the environment).
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        // An empty variable means "unset": `.env` files often carry `KEY=`.
        let get = |k: &str| {
            settings
                .get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };

        let app_env = match get("APP_ENV").as_deref() {
            None | Some("development") => AppEnv::Development,
            Some("production") => AppEnv::Production,
            Some(other) => {
                return Err(err(
                    "APP_ENV",
                    format!("must be `development` or `production`, got `{other}`"),
                ));
            }
        };

        let database_url =
            get("DATABASE_URL").unwrap_or_else(|| "sqlite://data/aa-recurring.db".to_string());
        if !database_url.starts_with("sqlite:") && !database_url.starts_with("postgres") {
            return Err(err(
                "DATABASE_URL",
                "must start with `sqlite://` or `postgres://`",
            ));
        }

        let bind_addr = get("BIND_ADDR")
            .unwrap_or_else(|| "127.0.0.1:8080".to_string())
            .parse::<SocketAddr>()
            .map_err(|e| {
                err(
                    "BIND_ADDR",
                    format!("must be host:port, e.g. 127.0.0.1:8080 ({e})"),
                )
            })?;

        let public_base_url = parse_url(
            "PUBLIC_BASE_URL",
            &get("PUBLIC_BASE_URL").unwrap_or_else(|| "http://127.0.0.1:8080".to_string()),
        )?;
        // BankConnect caps `redirect_url` at 200 characters.
        let callback_len =
            public_base_url.as_str().trim_end_matches('/').len() + CALLBACK_PATH.len();
        if callback_len > 200 {
            return Err(err(
                "PUBLIC_BASE_URL",
                "too long: the callback URL built from it must fit BankConnect's 200-character redirect_url",
            ));
        }

        let upstream = match get("BANKCONNECT_BASE_URL") {
            None => Upstream::Sandbox,
            Some(v) => Upstream::Remote(parse_url("BANKCONNECT_BASE_URL", &v)?),
        };
        let sandbox = matches!(upstream, Upstream::Sandbox);
        let secret =
            |var: &'static str, sandbox_default: &str| -> Result<SecretString, ConfigError> {
                match get(var) {
                    Some(v) => Ok(v.into()),
                    None if sandbox => Ok(sandbox_default.into()),
                    None => Err(err(var, "required when BANKCONNECT_BASE_URL is set")),
                }
            };
        let api_key = secret("BANKCONNECT_API_KEY", SANDBOX_API_KEY)?;
        let server_hash = secret("BANKCONNECT_SERVER_HASH", SANDBOX_SERVER_HASH)?;

        let webhook_verify = match get("WEBHOOK_VERIFY") {
            None => WebhookVerify::HmacSha256,
            Some(v) => v.parse().map_err(|_| {
                err(
                    "WEBHOOK_VERIFY",
                    format!(
                        "must be one of {}, got `{v}`",
                        WebhookVerify::ALL.join(", ")
                    ),
                )
            })?,
        };
        let mut webhook_secrets = split_list(get("WEBHOOK_SECRETS"));
        if webhook_verify == WebhookVerify::StandardWebhooks {
            use base64::Engine;
            for s in &webhook_secrets {
                let key = s
                    .strip_prefix("whsec_")
                    .map(|k| base64::engine::general_purpose::STANDARD.decode(k));
                if !matches!(key, Some(Ok(_))) {
                    return Err(err(
                        "WEBHOOK_SECRETS",
                        "standard-webhooks secrets must be `whsec_` followed by base64",
                    ));
                }
            }
        }
        // The in-process sandbox signs its webhooks; it needs a secret we both know.
        if sandbox && webhook_secrets.is_empty() {
            webhook_secrets.push(webhook_verify.sandbox_secret().to_string());
        }

        let mut api_tokens = split_list(get("API_TOKENS"));
        let mut api_token_generated = false;
        if api_tokens.is_empty() && app_env == AppEnv::Development {
            api_tokens.push(format!("dev-{}", uuid::Uuid::new_v4().simple()));
            api_token_generated = true;
        }

        let frontend_return_url = get("FRONTEND_RETURN_URL")
            .map(|v| parse_url("FRONTEND_RETURN_URL", &v))
            .transpose()?;

        let number = |setting: &NumericSetting| -> Result<u64, ConfigError> {
            setting.parse(get(setting.var).as_deref())
        };
        let secs = |setting: &NumericSetting| number(setting).map(Duration::from_secs);
        let poll_fallback_after = secs(&POLL_FALLBACK_AFTER_SECS)?;
        let pull_deadline = secs(&PULL_DEADLINE_SECS)?;
        let upstream_connect_timeout = secs(&BANKCONNECT_CONNECT_TIMEOUT_SECS)?;
        let upstream_timeout = secs(&BANKCONNECT_TIMEOUT_SECS)?;
        let upstream_download_timeout = secs(&BANKCONNECT_DOWNLOAD_TIMEOUT_SECS)?;
        let data_retention_days = number(&DATA_RETENTION_DAYS)? as u32;
        let pull_interval_min = get(PULL_INTERVAL_MIN_SECS.var)
            .is_some()
            .then(|| secs(&PULL_INTERVAL_MIN_SECS))
            .transpose()?;
        let pool = PoolSettings {
            max_connections: number(&DATABASE_MAX_CONNECTIONS)? as u32,
            acquire_timeout: secs(&DATABASE_ACQUIRE_TIMEOUT_SECS)?,
        };
        let job_lease = secs(&JOB_LEASE_SECS)?;
        let max_concurrent_jobs = number(&MAX_CONCURRENT_JOBS)? as usize;
        let max_concurrent_downloads = number(&MAX_CONCURRENT_DOWNLOADS)? as usize;
        let header_read_timeout = secs(&HEADER_READ_TIMEOUT_SECS)?;
        let request_timeout = secs(&REQUEST_TIMEOUT_SECS)?;
        if request_timeout <= upstream_timeout {
            return Err(err(
                REQUEST_TIMEOUT_SECS.var,
                "must be longer than BANKCONNECT_TIMEOUT_SECS, or requests that call BankConnect are cut off before it answers",
            ));
        }
        let max_concurrent_requests = number(&MAX_CONCURRENT_REQUESTS)? as usize;
        let webhook_body_limit = number(&WEBHOOK_BODY_LIMIT_BYTES)? as usize;
        let notify_retry_schedule = crate::domain::notify::parse_retry_schedule(
            &get("NOTIFY_RETRY_SCHEDULE").unwrap_or_else(|| "5s,5m,30m,2h,5h,10h,10h".into()),
        )
        .map_err(|e| err("NOTIFY_RETRY_SCHEDULE", e))?;
        let notify_allow_http = match get("NOTIFY_ALLOW_HTTP").as_deref() {
            None | Some("false") => app_env == AppEnv::Development,
            Some("true") => true,
            Some(other) => {
                return Err(err(
                    "NOTIFY_ALLOW_HTTP",
                    format!("must be `true` or `false`, got `{other}`"),
                ));
            }
        };

        let log_format = get("LOG_FORMAT")
            .map(|v| LogFormat::parse(&v))
            .transpose()?
            .unwrap_or(LogFormat::Pretty);

        if app_env == AppEnv::Production {
            if sandbox {
                return Err(err(
                    "BANKCONNECT_BASE_URL",
                    "required in production: sandbox mode is refused",
                ));
            }
            if let Upstream::Remote(url) = &upstream
                && url.scheme() != "https"
            {
                return Err(err(
                    "BANKCONNECT_BASE_URL",
                    "must be https:// in production: the API key and server hash travel with every call",
                ));
            }

            if webhook_secrets.is_empty() {
                return Err(err("WEBHOOK_SECRETS", "required in production"));
            }
            if api_tokens.is_empty() {
                return Err(err("API_TOKENS", "required in production"));
            }
            // FinBox documents `secret-key`; a default that differs from what the sender does
            // would refuse every real webhook and leave the service quietly polling.
            if get("WEBHOOK_VERIFY").is_none() {
                return Err(err(
                    "WEBHOOK_VERIFY",
                    "required in production: say how BankConnect's webhooks prove who sent them (secret-key is what FinBox documents)",
                ));
            }
        }

        Ok(Config {
            database_url: DatabaseUrl(database_url),
            bind_addr,
            public_base_url,
            upstream,
            api_key,
            server_hash,
            upstream_connect_timeout,
            upstream_timeout,
            upstream_download_timeout,
            webhook_verify,
            webhook_secrets: webhook_secrets.into_iter().map(Into::into).collect(),
            api_tokens: api_tokens.into_iter().map(Into::into).collect(),
            api_token_generated,
            frontend_return_url,
            app_env,
            poll_fallback_after,
            pull_deadline,
            data_retention_days,
            pull_interval_min,
            pool,
            job_lease,
            max_concurrent_jobs,
            max_concurrent_downloads,
            log_format,
            header_read_timeout,
            request_timeout,
            max_concurrent_requests,
            webhook_body_limit,
            notify_retry_schedule,
            notify_allow_http,
        })
    }

    pub fn is_sandbox(&self) -> bool {
        matches!(self.upstream, Upstream::Sandbox)
    }

    /// The absolute callback URL registered with BankConnect as `redirect_url`.
    pub fn callback_url(&self) -> String {
        format!(
            "{}{}",
            self.public_base_url.as_str().trim_end_matches('/'),
            CALLBACK_PATH
        )
    }
}

fn parse_url(var: &'static str, v: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(v).map_err(|e| err(var, format!("not a valid URL ({e})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(err(var, "must be an http:// or https:// URL"));
    }
    Ok(url)
}

fn split_list(v: Option<String>) -> Vec<String> {
    v.map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests;
