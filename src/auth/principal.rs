//! Who is calling. The only source of identity is a verified bearer token (and, for
//! services, a verified client certificate); no request header ever sets or changes it.

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

use super::jwt::{Claims, TokenType};
use crate::db::sessions;
use crate::domain::{Role, UserId};
use crate::error::ApiError;
use crate::startup::AppState;

pub const UNAUTHENTICATED: &str = "Authentication credentials were not provided or are invalid";

/// A user authenticated by a live access token.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser {
    pub id: UserId,
    pub username: String,
    pub role: Role,
    pub session_id: String,
}

impl AuthenticatedUser {
    /// Callers that may own credentials (users and admins). Auditors never touch secrets.
    pub fn require_owner(&self) -> Result<UserId, ApiError> {
        match self.role {
            Role::User | Role::Admin => Ok(self.id),
            Role::Auditor => Err(ApiError::Forbidden(
                "Auditors cannot access payment credentials",
            )),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header, if well formed.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

impl FromRequest for AuthenticatedUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let claims: Result<Claims, ApiError> = match (&state, bearer_token(req)) {
            (Some(state), Some(token)) => state
                .tokens
                .validate(token, TokenType::Access, state.clock.now())
                .map_err(|_| ApiError::Unauthorized(UNAUTHENTICATED)),
            (None, _) => Err(ApiError::internal(anyhow::anyhow!(
                "application state missing"
            ))),
            (_, None) => Err(ApiError::Unauthorized(UNAUTHENTICATED)),
        };
        Box::pin(async move {
            let claims = claims?;
            let state = state
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))?;
            let user = claims
                .user_id()
                .ok_or(ApiError::Unauthorized(UNAUTHENTICATED))?;
            let sid = claims.sid.clone();
            let now = state.clock.now();
            let live = state
                .db(move |c| sessions::live(c, &sid, user, now))
                .await?
                .ok_or(ApiError::Unauthorized(UNAUTHENTICATED))?;
            let role =
                Role::parse(&live.role).map_err(|_| ApiError::Unauthorized(UNAUTHENTICATED))?;
            Ok(AuthenticatedUser {
                id: user,
                username: live.username,
                role,
                session_id: claims.sid,
            })
        })
    }
}
