//! Environment → validated [`Config`].
//!
//! Every variable is read in one place so that a misconfiguration fails at start with the
//! variable's name, not later inside a request.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
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
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
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

/// How a webhook proves it came from BankConnect (docs/bankconnect.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookVerify {
    SecretKey,
    HmacSha256,
    StandardWebhooks,
}

crate::domain::consent::string_enum!(WebhookVerify {
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
    pub log_format: LogFormat,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long a request may take until its response starts.
    pub request_timeout: Duration,
    /// Requests served at once; past this, 503 with `Retry-After` at once.
    pub max_concurrent_requests: usize,
    /// The largest webhook body read.
    pub webhook_body_limit: usize,
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
        // An empty variable means "unset": `.env` files often carry `KEY=`.
        let get = |k: &str| {
            get(k)
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

        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(err(
                    "LOG_FORMAT",
                    format!("must be `pretty` or `json`, got `{other}`"),
                ));
            }
        };

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
            log_format,
            header_read_timeout,
            request_timeout,
            max_concurrent_requests,
            webhook_body_limit,
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
    HEADER_READ_TIMEOUT_SECS,
    REQUEST_TIMEOUT_SECS,
    MAX_CONCURRENT_REQUESTS,
    WEBHOOK_BODY_LIMIT_BYTES,
];

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
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_sandbox_sqlite_with_a_generated_token() {
        let c = cfg(&[]).unwrap();
        assert!(c.is_sandbox());
        assert_eq!(c.database_url, "sqlite://data/aa-recurring.db");
        assert_eq!(
            c.callback_url(),
            "http://127.0.0.1:8080/bankconnect/callback"
        );
        assert!(c.api_token_generated);
        assert_eq!(c.api_tokens.len(), 1);
        assert_eq!(c.webhook_verify, WebhookVerify::HmacSha256);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = cfg(&[("BIND_ADDR", "nonsense")]).unwrap_err();
        assert_eq!(e.var, "BIND_ADDR");
        let e = cfg(&[("POLL_FALLBACK_AFTER_SECS", "-3")]).unwrap_err();
        assert_eq!(e.var, "POLL_FALLBACK_AFTER_SECS");
        let e = cfg(&[("WEBHOOK_VERIFY", "md5")]).unwrap_err();
        assert_eq!(e.var, "WEBHOOK_VERIFY");
        let e = cfg(&[("DATABASE_URL", "mysql://x")]).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        let e = cfg(&[("BANKCONNECT_BASE_URL", "https://x.example/bank-connect")]).unwrap_err();
        assert_eq!(e.var, "BANKCONNECT_API_KEY");
    }

    #[test]
    fn production_refuses_sandbox_and_missing_secrets() {
        let e = cfg(&[("APP_ENV", "production")]).unwrap_err();
        assert_eq!(e.var, "BANKCONNECT_BASE_URL");
        let remote = [
            ("APP_ENV", "production"),
            ("BANKCONNECT_BASE_URL", "https://x.example/bank-connect"),
            ("BANKCONNECT_API_KEY", "k"),
            ("BANKCONNECT_SERVER_HASH", "h"),
            ("WEBHOOK_VERIFY", "secret-key"),
        ];
        assert_eq!(cfg(&remote).unwrap_err().var, "WEBHOOK_SECRETS");
        let mut with_secret = remote.to_vec();
        with_secret.push(("WEBHOOK_SECRETS", "s1"));
        assert_eq!(cfg(&with_secret).unwrap_err().var, "API_TOKENS");
        with_secret.push(("API_TOKENS", "t1, t2"));
        let c = cfg(&with_secret).unwrap();
        assert!(!c.api_token_generated);
        assert_eq!(c.api_tokens.len(), 2);
    }

    #[test]
    fn every_numeric_setting_is_refused_outside_its_range() {
        for s in NUMERIC_SETTINGS {
            // REQUEST_TIMEOUT_SECS must also exceed BANKCONNECT_TIMEOUT_SECS: give it room.
            let with = |v: &str| {
                let mut pairs = vec![(s.var, v)];
                if s.var == "REQUEST_TIMEOUT_SECS" {
                    pairs.push(("BANKCONNECT_TIMEOUT_SECS", "1"));
                } else {
                    pairs.push(("REQUEST_TIMEOUT_SECS", "3600"));
                }
                cfg(&pairs)
            };
            let below = (s.min - 1).to_string();
            let above = (s.max + 1).to_string();
            for bad in [&below, &above, "4000000000000000000000", "x", "-1", "1.5"] {
                assert_eq!(with(bad).unwrap_err().var, s.var, "{} = {bad}", s.var);
            }
            for good in [s.min, s.max] {
                let r = with(&good.to_string());
                assert!(r.is_ok(), "{} = {good}: {:?}", s.var, r.err());
            }
        }
        // The bug this guards against: a retention that passed validation and then broke
        // the scheduler's date arithmetic.
        assert_eq!(
            cfg(&[("DATA_RETENTION_DAYS", "4000000000")])
                .unwrap_err()
                .var,
            "DATA_RETENTION_DAYS"
        );
        assert_eq!(
            cfg(&[
                ("BANKCONNECT_TIMEOUT_SECS", "60"),
                ("REQUEST_TIMEOUT_SECS", "60")
            ])
            .unwrap_err()
            .var,
            "REQUEST_TIMEOUT_SECS"
        );
    }

    #[test]
    fn production_needs_https_and_an_explicit_webhook_scheme() {
        let base = [
            ("APP_ENV", "production"),
            ("BANKCONNECT_BASE_URL", "https://x.example/bank-connect"),
            ("BANKCONNECT_API_KEY", "k"),
            ("BANKCONNECT_SERVER_HASH", "h"),
            ("WEBHOOK_SECRETS", "s1"),
            ("API_TOKENS", "t1"),
        ];
        assert_eq!(cfg(&base).unwrap_err().var, "WEBHOOK_VERIFY");
        let mut ok = base.to_vec();
        ok.push(("WEBHOOK_VERIFY", "secret-key"));
        assert!(cfg(&ok).is_ok());
        let mut plain = ok.clone();
        plain[1] = ("BANKCONNECT_BASE_URL", "http://x.example/bank-connect");
        assert_eq!(cfg(&plain).unwrap_err().var, "BANKCONNECT_BASE_URL");
        // Development may use a plain-HTTP stand-in.
        plain[0] = ("APP_ENV", "development");
        assert!(cfg(&plain).is_ok());
    }

    #[test]
    fn debug_output_hides_the_database_password() {
        let c = cfg(&[(
            "DATABASE_URL",
            "postgres://aa:s3cr3t-pw@db.internal:5432/aa",
        )])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(shown.contains("db.internal"));
    }

    #[test]
    fn standard_webhooks_secrets_need_the_prefix() {
        let e = cfg(&[
            ("WEBHOOK_VERIFY", "standard-webhooks"),
            ("WEBHOOK_SECRETS", "plain"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "WEBHOOK_SECRETS");
        let e = cfg(&[
            ("WEBHOOK_VERIFY", "standard-webhooks"),
            ("WEBHOOK_SECRETS", "whsec_not base64!"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "WEBHOOK_SECRETS");
        let c = cfg(&[("WEBHOOK_VERIFY", "standard-webhooks")]).unwrap();
        assert_eq!(
            c.webhook_secrets.len(),
            1,
            "the sandbox gets a secret of its own"
        );
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let c = cfg(&[
            ("API_TOKENS", "very-secret-token"),
            ("WEBHOOK_SECRETS", "hush"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret-token"));
        assert!(!shown.contains("hush"));
        assert!(!shown.contains(SANDBOX_API_KEY));
    }
}
