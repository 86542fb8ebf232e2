//! The one error type of the HTTP surface: every failure becomes
//! `{"error": {"code", "message"}}` with a fitting status.

use std::time::Duration;

use axum::extract::FromRequest;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::bankconnect::{BankConnectError, ErrorClass};
use crate::domain::ValidationError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// Well-formed input that breaks a rule (422).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Input we cannot read at all (400).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    UnsupportedMediaType { message: String },
    #[error("{what} not found")]
    NotFound {
        code: &'static str,
        what: &'static str,
    },
    /// The request is valid but the resource's state does not allow it now (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The consent's fair-use budget is spent (409), until `next_pull_allowed_at`.
    #[error(
        "the consent's fair-use budget for this window is spent; the next pull is allowed at {}",
        next_pull_allowed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )]
    FairUseLimit {
        next_pull_allowed_at: chrono::DateTime<chrono::Utc>,
        retry_after: Duration,
    },
    #[error("this route does not take that method")]
    MethodNotAllowed,
    /// A webhook whose authenticity could not be established.
    #[error("webhook refused: {0}")]
    BadSignature(#[from] crate::webhook_auth::VerifyError),
    #[error("the body is larger than this route takes")]
    PayloadTooLarge,
    /// The service cannot take the request now; `retry_after` says when to try again (503).
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        retry_after: Duration,
    },
    #[error("internal error")]
    Internal,
    #[error(transparent)]
    Upstream(#[from] BankConnectError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, String) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED".into()),
            ApiError::Invalid(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.code.into()),
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, (*code).into()),
            ApiError::UnsupportedMediaType { .. } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE".into(),
            ),
            ApiError::NotFound { code, .. } => (StatusCode::NOT_FOUND, (*code).into()),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, (*code).into()),
            ApiError::FairUseLimit { .. } => (
                StatusCode::CONFLICT,
                crate::domain::fair_use::FAIR_USE_LIMIT.into(),
            ),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED".into())
            }
            ApiError::BadSignature(_) => (StatusCode::UNAUTHORIZED, "INVALID_SIGNATURE".into()),
            ApiError::Upstream(e) => match e.class() {
                ErrorClass::Transient => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UPSTREAM_UNAVAILABLE".into(),
                ),
                ErrorClass::Configuration => {
                    (StatusCode::BAD_GATEWAY, "UPSTREAM_AUTH_FAILED".into())
                }
                ErrorClass::Permanent => (
                    StatusCode::BAD_GATEWAY,
                    format!("UPSTREAM_{}", e.code_or_kind()),
                ),
            },
            ApiError::PayloadTooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE".into())
            }
            ApiError::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, (*code).into()),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL".into()),
            ApiError::Store(e) if e.is_unavailable() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "DATABASE_UNAVAILABLE".into(),
            ),
            // A value the database refused (Postgres takes no NUL in text, say): the edge
            // checks should have caught it, but it is still the caller's input, not our fault.
            ApiError::Store(e) if e.is_invalid_input() => {
                (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_INPUT".into())
            }
            ApiError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL".into()),
        }
    }
}

impl ApiError {
    /// The status, code and message the API answers with; the console shows the same.
    pub fn describe(&self) -> (StatusCode, String, String) {
        let (status, code) = self.status_and_code();
        let message = match self {
            ApiError::Invalid(e) => e.message.clone(),
            ApiError::Store(e) if e.is_invalid_input() => {
                tracing::warn!(error = %e, "the database refused a value of the request");
                "a value of the request is not acceptable".to_string()
            }
            // Internal details go to the log, not to the caller.
            ApiError::Store(e) if !e.is_unavailable() => {
                tracing::error!(error = %e, "store error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        (status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.describe();
        if status.is_server_error() {
            tracing::warn!(%status, %code, %message, "request failed");
        }
        let retry_after = match &self {
            ApiError::Unavailable { retry_after, .. }
            | ApiError::FairUseLimit { retry_after, .. } => Some(retry_after.as_secs().max(1)),
            ApiError::Store(e) if e.is_unavailable() => Some(1),
            _ => None,
        };
        let mut error = json!({"code": code, "message": message});
        if let ApiError::FairUseLimit {
            next_pull_allowed_at,
            ..
        } = &self
        {
            error["next_pull_allowed_at"] = json!(next_pull_allowed_at);
        }
        let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge;
        }
        match r {
            JsonRejection::JsonDataError(e) => ApiError::Invalid(ValidationError {
                code: "INVALID_BODY",
                message: e.body_text(),
            }),
            JsonRejection::MissingJsonContentType(e) => ApiError::UnsupportedMediaType {
                message: e.body_text(),
            },
            other => ApiError::bad_request("INVALID_JSON", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request("INVALID_QUERY", r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::bad_request("UNREADABLE_BODY", r.body_text())
        }
    }
}

/// The raw body, whose rejections (too large, broken) speak our error shape.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Ok(RawBody(axum::body::Bytes::from_request(req, state).await?))
    }
}

/// `axum::Json` whose rejections speak our error shape.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// `axum::extract::Query` whose rejections speak our error shape.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);
