//! Bearer tokens for `/api/v1`: any configured token may match (rotation), compared in
//! constant time so response timing does not leak a token's prefix.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use secrecy::ExposeSecret;

use super::error::ApiError;
use crate::state::AppState;
use crate::webhook_auth::matches_any;

pub async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or(ApiError::Unauthorized)?;
    if matches_any(
        presented,
        state.config.api_tokens.iter().map(|t| t.expose_secret()),
    ) {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is case-insensitive
/// (RFC 9110, section 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use crate::webhook_auth::matches_any as token_matches;

    #[test]
    fn any_token_may_match() {
        let tokens = ["alpha", "beta"];
        assert!(token_matches("beta", tokens.iter().copied()));
        assert!(token_matches("alpha", tokens.iter().copied()));
        assert!(!token_matches("alph", tokens.iter().copied()));
        assert!(!token_matches("", tokens.iter().copied()));
        assert!(!token_matches("alpha", std::iter::empty()));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        use super::bearer_token;
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
