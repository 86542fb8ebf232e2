//! Resource ids taken from paths, queries and the callback.
//!
//! Every id this service issues or receives is short and printable. Anything else (a NUL byte,
//! a control character, a kilobyte of text) cannot name a resource. So it is answered at the
//! edge, as the resource's 404, and never sent to the database: Postgres refuses NUL in text,
//! and that refusal must not surface as a 500.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;

/// The longest id we look up.
pub const MAX_ID_LEN: usize = 255;

/// Whether `s` could be an id at all.
pub fn plausible_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control)
}

/// Declares a path extractor for one resource's id that answers that resource's 404 for an
/// implausible id (or a path that does not decode).
macro_rules! path_id {
    ($name:ident, $code:literal, $what:literal) => {
        #[doc = concat!("The `", $what, "` id in the path; see the module docs.")]
        pub struct $name(pub String);

        impl $name {
            pub fn not_found() -> ApiError {
                ApiError::NotFound {
                    code: $code,
                    what: $what,
                }
            }
        }

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
                match Path::<String>::from_request_parts(parts, state).await {
                    Ok(Path(id)) if plausible_id(&id) => Ok($name(id)),
                    _ => Err($name::not_found()),
                }
            }
        }
    };
}

path_id!(ConsentId, "CONSENT_NOT_FOUND", "consent");
path_id!(PullId, "PULL_NOT_FOUND", "pull");
path_id!(SessionId, "SESSION_NOT_FOUND", "consent session");
path_id!(EventId, "EVENT_NOT_FOUND", "event");
path_id!(EndpointId, "ENDPOINT_NOT_FOUND", "webhook endpoint");
path_id!(JobPath, "JOB_NOT_FOUND", "job");

/// A job's id in the path: a positive integer, else the job's 404.
pub struct JobId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let JobPath(id) = JobPath::from_request_parts(parts, state).await?;
        match id.parse::<i64>() {
            Ok(n) if n > 0 => Ok(JobId(n)),
            _ => Err(JobPath::not_found()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_printable() {
        assert!(plausible_id("pull_0123abcd"));
        assert!(plausible_id("8d5fa22b-216a-54e2-90da-65d1c67c8964"));
        assert!(!plausible_id(""));
        assert!(!plausible_id("a\0b"));
        assert!(!plausible_id("a\nb"));
        assert!(!plausible_id(&"x".repeat(MAX_ID_LEN + 1)));
    }
}
