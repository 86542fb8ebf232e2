//! The operator's CLI (`aa-recurring consents|pulls|jobs|bankconnect|doctor`), on the same
//! configuration and database as `serve`. Every command that reads or changes a resource is
//! a request to the service's own router, in process: the same validation, use cases, fair
//! use, idempotency and error codes as the API, with no server needed. `--json` prints the
//! API's answer as is; otherwise a table for people. See README, "Operating it".

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;
use tower::ServiceExt;

use crate::config::{AppEnv, Config, Upstream, WebhookVerify};
use crate::state::AppState;
use crate::store::DynStore;

/// Where the service reaches BankConnect: the configured URL, or in sandbox mode the
/// simulator mounted on the service's own listener at `addr`.
pub fn upstream_base(config: &Config, addr: SocketAddr) -> String {
    match &config.upstream {
        Upstream::Remote(url) => url.to_string(),
        Upstream::Sandbox => format!("http://{}/sandbox", loopback(addr)),
    }
}

/// `addr`, with an unspecified IP (`0.0.0.0`) replaced by loopback, for calling ourselves.
pub fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
    } else {
        addr
    }
}

/// The service's router and state, opened on the configured database for one command.
pub struct Operator {
    pub state: AppState,
    router: axum::Router,
}

/// An answer from the router: its status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// `error: CODE: message`, for an answer that is not a success.
    pub fn error_line(&self) -> String {
        let code = self.body["error"]["code"].as_str().unwrap_or("ERROR");
        let message = self.body["error"]["message"].as_str().unwrap_or_default();
        format!("error: {code} ({}): {message}", self.status.as_u16())
    }
}

impl Operator {
    /// Opens the store and builds the state. Refuses a database whose migrations are pending:
    /// run `aa-recurring migrate` (or `serve`) first.
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        let store = crate::store::connect(&config.database_url, &config.pool).await?;
        let pending = store.pending_migrations().await?;
        if !pending.is_empty() {
            anyhow::bail!(
                "the database has migrations pending ({pending:?}): run `aa-recurring migrate` first"
            );
        }
        let base = upstream_base(&config, config.bind_addr);
        let state = AppState::new(config, store, &base, Arc::new(crate::clock::SystemClock))?;
        let router = crate::http::router(state.clone());
        Ok(Operator { state, router })
    }

    /// One request to the router, with the first API token.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Answer> {
        let token = self
            .state
            .config
            .api_tokens
            .first()
            .map(|t| t.expose_secret().to_string())
            .unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json")
            .header("x-request-id", format!("cli-{}", uuid::Uuid::new_v4()));
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string()))?,
            None => req.body(Body::empty())?,
        };
        let response = self.router.clone().oneshot(req).await?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }
}

/// A query string from the filters that are set.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

/// A value as a table cell: strings bare, nulls empty, the rest as JSON, cut to 60 characters.
fn cell(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let s = s.replace(['\n', '\r', '\t'], " ");
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else {
        s
    }
}

/// A table of `rows` with the given columns (`/`-separated paths into each row).
pub fn table(rows: &[Value], columns: &[&str]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| cell(c.split('/').fold(r, |v, k| &v[k])))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(
        columns
            .iter()
            .map(|c| c.replace('/', ".").to_uppercase())
            .collect(),
    )];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

/// One resource as `field: value` lines, in the API's order.
pub fn details(v: &Value) -> String {
    match v.as_object() {
        Some(fields) => {
            let width = fields.keys().map(String::len).max().unwrap_or(0);
            fields
                .iter()
                .map(|(k, v)| {
                    let shown = match v {
                        Value::Null => "-".to_string(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    format!("{k:<width$}  {shown}")
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        None => v.to_string(),
    }
}

/// One `doctor` check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    /// A warning passes, but says what to look at.
    pub warning: bool,
    pub detail: String,
}

impl Check {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Check {
            check,
            ok: true,
            warning: false,
            detail: detail.into(),
        }
    }
    fn warn(check: &'static str, detail: impl Into<String>) -> Self {
        Check {
            warning: true,
            ..Check::ok(check, detail)
        }
    }
    fn fail(check: &'static str, detail: impl Into<String>) -> Self {
        Check {
            ok: false,
            ..Check::ok(check, detail)
        }
    }

    /// `ok    database  …`, one line per check.
    pub fn line(&self) -> String {
        let mark = match (self.ok, self.warning) {
            (false, _) => "FAIL",
            (true, true) => "warn",
            (true, false) => "ok",
        };
        format!("{mark:<4}  {:<13} {}", self.check, self.detail)
    }
}

/// Checks a deployment: the configuration, the database and its migrations, the upstream
/// credentials (a harmless authenticated call), the webhook scheme and secrets, and the
/// public base URL. Never prints a secret.
pub async fn doctor(config: Result<Config, crate::config::ConfigError>) -> Vec<Check> {
    let config = match config {
        Ok(c) => c,
        Err(e) => return vec![Check::fail("configuration", e.to_string())],
    };
    let mut checks = vec![Check::ok(
        "configuration",
        format!(
            "{} mode, {}",
            match config.app_env {
                AppEnv::Development => "development",
                AppEnv::Production => "production",
            },
            if config.is_sandbox() {
                "sandbox upstream"
            } else {
                "BankConnect upstream"
            }
        ),
    )];
    checks.extend(database_checks(&config).await);
    checks.push(upstream_check(&config).await);
    checks.push(webhook_check(&config));
    checks.push(public_url_check(&config));
    checks
}

async fn database_checks(config: &Config) -> Vec<Check> {
    let store: DynStore = match crate::store::connect(&config.database_url, &config.pool).await {
        Ok(s) => s,
        Err(e) => return vec![Check::fail("database", format!("cannot connect: {e}"))],
    };
    if let Err(e) = store.ping().await {
        return vec![Check::fail("database", format!("does not answer: {e}"))];
    }
    let kind = if config.database_url.starts_with("sqlite:") {
        "SQLite"
    } else {
        "Postgres"
    };
    let migrations = match store.pending_migrations().await {
        Ok(p) if p.is_empty() => Check::ok("migrations", "all applied"),
        Ok(p) => Check::fail(
            "migrations",
            format!("pending: {p:?} (run `aa-recurring migrate`, or start `serve`)"),
        ),
        Err(e) => Check::fail("migrations", e.to_string()),
    };
    vec![Check::ok("database", format!("{kind} answers")), migrations]
}

/// A `session_status` for a session that cannot exist: an authenticated upstream answers
/// 404 `SESSION_NOT_FOUND` (or another 4xx of its own), and refuses bad credentials with 401
/// or 403. Nothing is created or spent.
async fn upstream_check(config: &Config) -> Check {
    if config.is_sandbox() {
        return Check::warn(
            "upstream",
            "sandbox mode: BankConnect is simulated in process (no credentials to check)",
        );
    }
    let client = match crate::bankconnect::BankConnectClient::configured(
        config,
        &upstream_base(config, config.bind_addr),
        Arc::new(crate::metrics::Metrics::default()),
    ) {
        Ok(c) => c,
        Err(e) => return Check::fail("upstream", e.to_string()),
    };
    use crate::bankconnect::ErrorClass;
    match client.session_status("aa-recurring-doctor").await {
        Ok(_) => Check::ok("upstream", "credentials accepted"),
        Err(e) => match e.class() {
            ErrorClass::Configuration => {
                Check::fail("upstream", format!("credentials refused: {e}"))
            }
            ErrorClass::Transient => Check::fail("upstream", format!("unreachable: {e}")),
            ErrorClass::Permanent => Check::ok(
                "upstream",
                format!(
                    "credentials accepted (a probe for an unknown session answered {})",
                    e.code_or_kind()
                ),
            ),
        },
    }
}

fn webhook_check(config: &Config) -> Check {
    let n = config.webhook_secrets.len();
    let scheme = config.webhook_verify.as_str();
    if n == 0 {
        return Check::fail(
            "webhooks",
            format!("{scheme}: no WEBHOOK_SECRETS: every webhook would be refused"),
        );
    }
    let short = config
        .webhook_secrets
        .iter()
        .filter(|s| s.expose_secret().len() < 16)
        .count();
    let mut detail = format!("{scheme} with {n} secret(s)");
    if config.webhook_verify == WebhookVerify::SecretKey {
        detail.push_str("; secret-key sends the secret itself: prefer hmac-sha256 or standard-webhooks if BankConnect can sign");
    }
    if config.is_sandbox() {
        Check::ok("webhooks", detail)
    } else if short > 0 {
        Check::warn(
            "webhooks",
            format!("{detail}; {short} shorter than 16 characters"),
        )
    } else {
        Check::ok("webhooks", detail)
    }
}

fn public_url_check(config: &Config) -> Check {
    let url = &config.public_base_url;
    let local = matches!(
        url.host_str(),
        Some("127.0.0.1" | "localhost" | "::1" | "[::1]")
    );
    let detail = format!(
        "{url}: BankConnect posts to {}/webhooks/bankconnect",
        url.as_str().trim_end_matches('/')
    );
    match config.app_env {
        AppEnv::Production if url.scheme() != "https" => {
            Check::fail("public url", format!("{detail}; production needs https"))
        }
        AppEnv::Production if local => Check::fail(
            "public url",
            format!("{detail}; a loopback address cannot be reached by BankConnect or browsers"),
        ),
        _ if local && !config.is_sandbox() => Check::warn(
            "public url",
            format!("{detail}; a loopback address cannot be reached by BankConnect"),
        ),
        _ => Check::ok("public url", detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_line_up_and_cut_long_cells() {
        let rows = vec![
            json!({"id": "a", "usage": {"used": 1}, "note": null}),
            json!({"id": "bbbb", "usage": {"used": 22}, "note": "x".repeat(80)}),
        ];
        let t = table(&rows, &["id", "usage/used", "note"]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], format!("ID    USAGE.USED  NOTE"));
        assert_eq!(lines[1], "a     1");
        assert!(lines[2].starts_with("bbbb  22          xxx"));
        assert!(lines[2].ends_with('…'));
        assert_eq!(lines[2].chars().count(), 18 + 60);
    }

    #[test]
    fn queries_keep_only_the_filters_set_and_escape_them() {
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(
            query(&[
                ("link_id", Some("cust 1&2")),
                ("status", None),
                ("limit", Some("5"))
            ]),
            "?link_id=cust+1%262&limit=5"
        );
    }
}
