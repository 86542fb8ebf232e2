//! Bearer tokens for `/api/v1`: any configured token may match (rotation), compared in
//! constant time so response timing does not leak a token's prefix.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::AppState;

pub async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized)?;
    if token_matches(
        presented,
        state.config.api_tokens.iter().map(|t| t.expose_secret()),
    ) {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// True when `presented` equals any of `tokens`. Every token is compared, so the time taken
/// does not say which one (if any) matched.
pub fn token_matches<'a>(presented: &str, tokens: impl Iterator<Item = &'a str>) -> bool {
    let mut ok = subtle::Choice::from(0);
    for t in tokens {
        ok |= presented.as_bytes().ct_eq(t.as_bytes());
    }
    ok.into()
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn any_token_may_match() {
        let tokens = ["alpha", "beta"];
        assert!(token_matches("beta", tokens.iter().copied()));
        assert!(token_matches("alpha", tokens.iter().copied()));
        assert!(!token_matches("alph", tokens.iter().copied()));
        assert!(!token_matches("", tokens.iter().copied()));
        assert!(!token_matches("alpha", std::iter::empty()));
    }
}
