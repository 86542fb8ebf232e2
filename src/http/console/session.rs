//! Signing in to the console with one of `API_TOKENS`, the session cookie, and CSRF.
//!
//! The cookie holds a random secret, signed (axum-extra's `SignedCookieJar`, with a key kept
//! in the store so every instance shares it); the store keeps only the secret's SHA-256 with
//! the session's CSRF token and expiry. Signing out deletes the row, so a copied cookie is
//! dead too. A session also ends when the token that opened it leaves `API_TOKENS`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::Extension;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, Key, SameSite, SignedCookieJar};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use maud::html;
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Console, ConsoleError, FORM_LIMIT_BYTES, layout};
use crate::store::ConsoleSession;

const SESSION_COOKIE: &str = "aa_console";
/// The sign-in form's own CSRF token (double submit), before any session exists.
const SIGN_IN_COOKIE: &str = "aa_console_sign_in";
/// How long a sign-in lasts, whatever is done with it.
const SESSION_LIFE: Duration = Duration::from_secs(12 * 3600);
/// Sign-in attempts per address: a burst of this many, then one every 60/this seconds.
const SIGN_INS_PER_MINUTE: u32 = 5;
/// Addresses the limiter remembers before it forgets those that are quiet again.
const LIMITER_ADDRESSES: usize = 10_000;

/// The signed-in operator, as handlers see it.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub csrf: String,
    session_hash: String,
}

pub(super) fn sign_in_limiter() -> DefaultKeyedRateLimiter<IpAddr> {
    RateLimiter::keyed(Quota::per_minute(
        NonZeroU32::new(SIGN_INS_PER_MINUTE).expect("non-zero"),
    ))
}

/// The cookie key, made once for the whole deployment and kept in the store.
async fn key(console: &Console) -> Result<Key, ConsoleError> {
    console
        .key
        .get_or_try_init(|| async {
            let candidate = [rand::random::<[u8; 32]>(), rand::random::<[u8; 32]>()].concat();
            let stored = console
                .app
                .store
                .console_key(&hex::encode(candidate))
                .await?;
            hex::decode(stored)
                .ok()
                .and_then(|raw| Key::try_from(raw.as_slice()).ok())
                .ok_or_else(|| {
                    ConsoleError::from(crate::store::StoreError::Corrupt(
                        "console_keys.key is not a 64-byte hex key".into(),
                    ))
                })
        })
        .await
        .cloned()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Names a token without revealing it: enough to tell the configured tokens apart.
fn fingerprint(token: &str) -> String {
    sha256_hex(token)[..16].to_string()
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A cookie for the console only: HttpOnly, SameSite=Strict, and Secure when the service is
/// reached over https (`PUBLIC_BASE_URL`).
fn cookie(console: &Console, name: &'static str, value: String, life: Duration) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(console.app.config.public_base_url.scheme() == "https")
        .max_age(time::Duration::seconds(life.as_secs() as i64))
        .build()
}

/// Only a path inside the console may be returned to after signing in.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with("/console")
                && !n.starts_with("/console/login")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n
        }
        _ => "/console",
    }
}

/// Lets a signed-in operator through, with [`SignedIn`] in the request. Anyone else is sent
/// to sign in; a form without the session's CSRF token is refused.
pub(super) async fn require(
    State(console): State<Console>,
    req: Request,
    next: Next,
) -> Result<Response, ConsoleError> {
    let jar = SignedCookieJar::from_headers(req.headers(), key(&console).await?);
    let now = console.app.clock.now();
    let session = match jar.get(SESSION_COOKIE) {
        Some(c) => {
            console
                .app
                .store
                .console_session(&sha256_hex(c.value()), now)
                .await?
        }
        None => None,
    };
    let configured: Vec<String> = console
        .app
        .config
        .api_tokens
        .iter()
        .map(|t| fingerprint(t.expose_secret()))
        .collect();
    let Some(session) = session.filter(|s| configured.contains(&s.token_fingerprint)) else {
        let back = req
            .uri()
            .path_and_query()
            .map_or("/console", |p| p.as_str())
            .to_string();
        let to = if req.method() == Method::GET && back != "/console" {
            format!("/console/login?next={}", urlencode(&back))
        } else {
            "/console/login".to_string()
        };
        return Ok(Redirect::to(&to).into_response());
    };
    let operator = SignedIn {
        csrf: session.csrf_token,
        session_hash: session.session_hash,
    };
    let mut req = if req.method() == Method::POST {
        checked_form(req, &operator.csrf).await?
    } else {
        req
    };
    req.extensions_mut().insert(operator);
    Ok(next.run(req).await)
}

/// Reads a posted form's `csrf` field and compares it with the session's; the body is put
/// back for the handler.
async fn checked_form(req: Request, csrf: &str) -> Result<Request, ConsoleError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, FORM_LIMIT_BYTES)
        .await
        .map_err(|_| ConsoleError::Api(super::ApiError::PayloadTooLarge))?;
    let presented = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !same(&presented, csrf) {
        tracing::warn!(path = %parts.uri.path(), "console form without this session's CSRF token refused");
        return Err(ConsoleError::Forbidden(
            "This form was not sent from a page of this session (its CSRF token is missing or wrong). Reload the page and try again.",
        ));
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct SignInQuery {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    signed_out: Option<String>,
}

/// `GET /console/login`.
pub(super) async fn sign_in_form(
    State(console): State<Console>,
    axum::extract::Query(q): axum::extract::Query<SignInQuery>,
) -> Result<Response, ConsoleError> {
    let jar = SignedCookieJar::new(key(&console).await?);
    let token = random_token();
    let notice = q.signed_out.is_some().then_some("You are signed out.");
    let page = sign_in_page(&token, q.next.as_deref(), notice, None);
    let jar = jar.add(cookie(&console, SIGN_IN_COOKIE, token, SESSION_LIFE));
    Ok((jar, page).into_response())
}

fn sign_in_page(
    csrf: &str,
    next: Option<&str>,
    notice: Option<&str>,
    error: Option<&str>,
) -> maud::Markup {
    layout::bare(
        "Sign in",
        html! {
            h1 { "Sign in to aa-recurring" }
            @if let Some(n) = notice { div.alert.ok role="status" { (n) } }
            @if let Some(e) = error { div.alert.error role="alert" id="sign-in-error" { (e) } }
            form.stack method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(safe_next(next));
                label for="token" { "API token" }
                input id="token" name="token" type="password" autocomplete="current-password"
                    required autofocus aria-describedby=[error.map(|_| "sign-in-error")];
                p.hint { "Any of the service's API_TOKENS." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /console/login`: a limited number of attempts per address, each checked in
/// constant time against every configured token.
pub(super) async fn sign_in(
    State(console): State<Console>,
    connection: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    axum_extra::extract::Form(form): axum_extra::extract::Form<SignInForm>,
) -> Result<Response, ConsoleError> {
    let address = connection.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.0.ip());
    if let Err(not_until) = console.sign_ins.check_key(&address) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        tracing::warn!(%address, "console sign-in refused: too many attempts");
        return Err(ConsoleError::TooManySignIns(wait.as_secs().max(1)));
    }
    if console.sign_ins.len() > LIMITER_ADDRESSES {
        console.sign_ins.retain_recent();
    }
    let jar = SignedCookieJar::from_headers(&headers, key(&console).await?);
    let expected = jar.get(SIGN_IN_COOKIE).map(|c| c.value().to_string());
    if !expected.is_some_and(|e| !form.csrf.is_empty() && same(&e, &form.csrf)) {
        return Err(ConsoleError::Forbidden(
            "This sign-in form has expired or was not ours. Open the sign-in page again.",
        ));
    }
    let token = form.token.trim();
    let tokens = &console.app.config.api_tokens;
    if token.is_empty()
        || !crate::webhook_auth::matches_any(token, tokens.iter().map(|t| t.expose_secret()))
    {
        tracing::warn!(%address, "console sign-in with a token that is not configured");
        let fresh = random_token();
        let page = sign_in_page(
            &fresh,
            form.next.as_deref(),
            None,
            Some("That token is not one of this service's API tokens."),
        );
        let jar = jar.add(cookie(&console, SIGN_IN_COOKIE, fresh, SESSION_LIFE));
        return Ok((axum::http::StatusCode::UNAUTHORIZED, jar, page).into_response());
    }
    let now = console.app.clock.now();
    let secret = random_token();
    console
        .app
        .store
        .create_console_session(&ConsoleSession {
            session_hash: sha256_hex(&secret),
            token_fingerprint: fingerprint(token),
            csrf_token: random_token(),
            created_at: now,
            expires_at: now + chrono::Duration::from_std(SESSION_LIFE).expect("fits"),
        })
        .await?;
    tracing::info!(%address, "console sign-in");
    let jar = jar
        .remove(Cookie::build(SIGN_IN_COOKIE).path("/console"))
        .add(cookie(&console, SESSION_COOKIE, secret, SESSION_LIFE));
    Ok((jar, Redirect::to(safe_next(form.next.as_deref()))).into_response())
}

/// `POST /console/logout`: the session row is deleted, so the cookie is dead everywhere.
pub(super) async fn sign_out(
    State(console): State<Console>,
    Extension(operator): Extension<SignedIn>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    console
        .app
        .store
        .end_console_session(&operator.session_hash)
        .await?;
    let jar = SignedCookieJar::from_headers(&headers, key(&console).await?)
        .remove(Cookie::build(SESSION_COOKIE).path("/console"));
    Ok((jar, Redirect::to("/console/login?signed_out=1")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_returned_to() {
        assert_eq!(
            safe_next(Some("/console/consents?status=active")),
            "/console/consents?status=active"
        );
        assert_eq!(safe_next(Some("https://evil.example/console")), "/console");
        assert_eq!(safe_next(Some("//evil.example")), "/console");
        assert_eq!(safe_next(Some("/console//evil.example")), "/console");
        assert_eq!(safe_next(Some("/console\\@evil")), "/console");
        assert_eq!(safe_next(Some("/console/login")), "/console");
        assert_eq!(safe_next(Some("/api/v1/consents")), "/console");
        assert_eq!(safe_next(None), "/console");
    }

    #[test]
    fn fingerprints_name_tokens_without_revealing_them() {
        let f = fingerprint("st-token");
        assert_eq!(f.len(), 16);
        assert!(!f.contains("st-token"));
        assert_ne!(f, fingerprint("st-token2"));
    }

    #[test]
    fn the_limiter_refuses_past_its_burst() {
        let limiter = sign_in_limiter();
        let a = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        for _ in 0..SIGN_INS_PER_MINUTE {
            assert!(limiter.check_key(&a).is_ok());
        }
        assert!(limiter.check_key(&a).is_err());
        assert!(
            limiter.check_key(&b).is_ok(),
            "another address has its own budget"
        );
    }
}
