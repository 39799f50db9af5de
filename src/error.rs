//! The one place that maps failures to what the caller sees. The error kind picks the
//! status and the public message; the cause chain is logged once (inside the request span,
//! so with its request id) and never reaches the body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::db::DbError;
use crate::domain::ValidationError;

pub const NOT_FOUND: &str = "Payment credentials not found or access denied";
pub const TOO_MANY_REQUESTS: &str = "Too many requests; retry later";
pub const UNAUTHENTICATED: &str = "Authentication credentials were not provided or are invalid";
pub const HEADERS_TOO_LARGE: &str = "Request header fields are too large";
/// An access token that verified but has expired (also the RFC 6750 `error_description`).
pub const TOKEN_EXPIRED: &str = "The access token expired";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A credential that is missing, deleted, or not the caller's: one answer for all.
    #[error("credential not found or not the caller's")]
    CredentialNotFound,
    #[error("no such route")]
    RouteNotFound,
    /// A missing administrative object (user, service, grant), by its public message.
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("unauthenticated: {0}")]
    Unauthorized(&'static str),
    /// A bearer token was presented and is not good: malformed, badly signed, revoked, not an
    /// access token (RFC 6750 `invalid_token`).
    #[error("invalid bearer token")]
    InvalidToken,
    /// A bearer token that verifies but has expired: the client should refresh it.
    #[error("expired bearer token")]
    TokenExpired,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// A rate limit or a login throttle; `retry_after` (seconds) goes out as `Retry-After`.
    #[error("too many requests: {message}")]
    TooManyRequests {
        message: &'static str,
        retry_after: u64,
    },
    /// `If-Match` named a version the credential has moved past.
    #[error("precondition failed; current version {0}")]
    PreconditionFailed(i32),
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// A provider's token endpoint failed: 502 with its status, if it answered.
    #[error("bad gateway: {0}")]
    BadGateway(crate::broker::Failure),
    /// A provider's token endpoint did not answer in time: 504.
    #[error("gateway timeout")]
    GatewayTimeout,
    /// A provider said 429: no call is made for `retry_after` seconds; 503 with `Retry-After`.
    #[error("provider backoff: {retry_after} s")]
    ProviderBackoff { retry_after: u64 },
    #[error("service unavailable: {0}")]
    Unavailable(anyhow::Error),
    /// This node refuses on purpose, and says why (for the operator and the auditor): 503
    /// with `reason`, a closed code, and `detail`, which names nothing secret.
    #[error("not ready: {reason}: {detail}")]
    NotReady {
        reason: &'static str,
        detail: String,
    },
    #[error("internal error: {0}")]
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }

    /// What the caller is told (never the cause).
    pub fn public_message(&self) -> String {
        match self {
            ApiError::CredentialNotFound => NOT_FOUND.into(),
            ApiError::RouteNotFound => "Not found".into(),
            ApiError::MethodNotAllowed => "Method not allowed".into(),
            ApiError::Invalid(m) | ApiError::Conflict(m) => m.clone(),
            ApiError::Unauthorized(m) | ApiError::Forbidden(m) | ApiError::NotFound(m) => {
                (*m).into()
            }
            ApiError::InvalidToken => UNAUTHENTICATED.into(),
            ApiError::TokenExpired => TOKEN_EXPIRED.into(),
            ApiError::PayloadTooLarge => "Request body is too large".into(),
            ApiError::HeadersTooLarge => HEADERS_TOO_LARGE.into(),
            ApiError::TooManyRequests { message, .. } => (*message).into(),
            ApiError::PreconditionFailed(v) => {
                format!("The credential has changed since that version; its current version is {v}")
            }
            ApiError::NotImplemented(m) => (*m).into(),
            ApiError::BadGateway(_) => PROVIDER_FAILED.into(),
            ApiError::GatewayTimeout => {
                "The provider's token endpoint did not answer in time; try again".into()
            }
            ApiError::ProviderBackoff { retry_after } => format!(
                "The provider is rate limiting token requests; hazina will not ask it again for {retry_after} s"
            ),
            ApiError::Unavailable(_) => "Service temporarily unavailable; try again".into(),
            ApiError::NotReady { detail, .. } => format!("Not ready: {detail}"),
            ApiError::Internal(_) => "Internal server error".into(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::CredentialNotFound | ApiError::RouteNotFound | ApiError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) | ApiError::InvalidToken | ApiError::TokenExpired => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::ProviderBackoff { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unavailable(_) | ApiError::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Internal(cause) | ApiError::Unavailable(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
            }
            other => tracing::debug!(error = %other, "request refused"),
        }
        let mut res = HttpResponse::build(self.status_code());
        match self {
            // RFC 6750 §3: no error code when no token came; `invalid_token` when one did.
            ApiError::Unauthorized(_) => {
                res.insert_header(("WWW-Authenticate", "Bearer"));
            }
            ApiError::InvalidToken => {
                res.insert_header(("WWW-Authenticate", r#"Bearer error="invalid_token""#));
            }
            ApiError::TokenExpired => {
                res.insert_header((
                    "WWW-Authenticate",
                    format!(r#"Bearer error="invalid_token", error_description="{TOKEN_EXPIRED}""#),
                ));
            }
            ApiError::TooManyRequests { retry_after, .. }
            | ApiError::ProviderBackoff { retry_after } => {
                res.insert_header(("Retry-After", (*retry_after).max(1).to_string()));
            }
            _ => {}
        }
        match self {
            // The provider's status helps whoever must fix the stored credentials (a 401
            // means the key or secret is wrong); the provider's body is never passed on.
            ApiError::TokenExpired => res.json(json!({
                "error": TOKEN_EXPIRED,
                "code": "token_expired",
            })),
            ApiError::NotReady { reason, .. } => res.json(json!({
                "error": self.public_message(),
                "reason": reason,
            })),
            ApiError::BadGateway(crate::broker::Failure::Status(status)) => res.json(json!({
                "error": self.public_message(),
                "provider_status": status,
            })),
            _ => res.json(json!({ "error": self.public_message() })),
        }
    }
}

/// The answer when a provider's token endpoint failed (its status, if any, goes beside it).
pub const PROVIDER_FAILED: &str = "The provider's token endpoint failed; try again later";

/// The answer to a service whose grant does not name the operation.
pub const OPERATION_NOT_GRANTED: &str = "This service's grant does not allow this operation";

impl From<crate::vault::Refusal> for ApiError {
    fn from(r: crate::vault::Refusal) -> Self {
        use crate::vault::Refusal;
        match r {
            Refusal::NotFound => ApiError::CredentialNotFound,
            Refusal::NotGranted(_) => ApiError::Forbidden(OPERATION_NOT_GRANTED),
            Refusal::NoSuchOperation => {
                ApiError::NotFound("No such operation for this credential's provider")
            }
            Refusal::Missing(m) => ApiError::Conflict(m),
            Refusal::Invalid(m) => ApiError::Invalid(m),
            Refusal::Provider(crate::broker::Failure::Timeout) => ApiError::GatewayTimeout,
            Refusal::Provider(crate::broker::Failure::RateLimited(retry_after)) => {
                ApiError::ProviderBackoff { retry_after }
            }
            Refusal::Provider(failure) => ApiError::BadGateway(failure),
            Refusal::Storage(e) => ApiError::Internal(e),
            Refusal::Unavailable(e) => ApiError::Unavailable(e),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Invalid(e.0)
    }
}

/// The answer when a stored record fails its integrity check on a write.
pub const TAMPERED: &str =
    "A stored record failed its integrity check; nothing was changed (see the audit log)";

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Conflict => {
                ApiError::Conflict("A record with these values already exists".into())
            }
            DbError::Pool(e) => ApiError::Unavailable(e.into()),
            s @ DbError::Stopping(_) => ApiError::Unavailable(s.into()),
            DbError::Rejected(v) => ApiError::Invalid(v.0),
            DbError::Stale(current) => ApiError::PreconditionFailed(current),
            k @ DbError::KeyState(_) => ApiError::Unavailable(k.into()),
            DbError::Archived(through) => ApiError::Invalid(format!(
                "That needs audit entries 1 to {through}, which were archived; verify it against the archive file"
            )),
            DbError::Tampered(what) => {
                tracing::error!(
                    row = what,
                    "a row failed its integrity check; nothing was changed"
                );
                ApiError::Conflict(TAMPERED.into())
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::repo::key_versions::KeyStateError> for ApiError {
    fn from(e: crate::repo::key_versions::KeyStateError) -> Self {
        use crate::repo::key_versions::KeyStateError as K;
        match e {
            K::Conflict(m) => ApiError::Conflict(m),
            K::Invalid(m) => ApiError::Invalid(m),
            K::Keyring(crate::crypto::KeyringError::NotAFile) => ApiError::Conflict(
                "The keyring comes from HAZINA_KEYRING_DATA: add a version there, restart every node, then resume with `hazina keys rotate --resume`"
                    .into(),
            ),
            K::Db(db) => db.into(),
            mismatch @ K::Mismatch(_) => ApiError::Unavailable(mismatch.into()),
            other => ApiError::internal(other),
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::Unavailable(anyhow::anyhow!("blocking pool: {e}"))
    }
}

/// A safe, short description of a JSON body that failed to parse: never echoes values
/// (a mistyped field could hold a secret).
pub fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => "Malformed JSON body".into(),
        Category::Data => {
            let msg = e.to_string();
            for prefix in ["unknown field", "missing field", "duplicate field"] {
                if let Some(rest) = msg.strip_prefix(prefix) {
                    let name: String = rest
                        .trim_start()
                        .trim_start_matches('`')
                        .chars()
                        .take_while(|c| *c != '`')
                        .take(64)
                        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let what = match prefix {
                        "unknown field" => "Unknown field",
                        "missing field" => "Missing required field",
                        _ => "Duplicate field",
                    };
                    return format!("{what}: {name}");
                }
            }
            "Invalid request body: a field has the wrong type or value".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        private_key: String,
    }

    fn describe(raw: &str) -> String {
        describe_json_error(&serde_json::from_str::<Body>(raw).unwrap_err())
    }

    #[test]
    fn json_errors_name_fields_but_never_echo_values() {
        assert_eq!(describe("{"), "Malformed JSON body");
        assert_eq!(
            describe(r#"{"private_key":"x","owner_id":1}"#),
            "Unknown field: owner_id"
        );
        assert_eq!(describe("{}"), "Missing required field: private_key");
        let typed = describe(r#"{"private_key": 123456789012345}"#);
        assert!(!typed.contains("123456789012345"), "{typed}");
    }

    #[test]
    fn internal_errors_have_generic_bodies() {
        let e = ApiError::internal(anyhow::anyhow!("SELECT * FROM credentials /var/lib/x.db"));
        assert_eq!(e.public_message(), "Internal server error");
        assert_eq!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
