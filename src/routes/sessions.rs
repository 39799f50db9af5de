//! Sessions (SPEC §2.2): login, single-use refresh with reuse detection, logout.

use actix_web::{web, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::auth::jwt::{self, TokenType};
use crate::auth::{password, AuthenticatedUser};
use crate::clock::UnixSeconds;
use crate::db::sessions::{self as repo, Refresh};
use crate::db::users;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::startup::AppState;

const BAD_LOGIN: &str = "Invalid username or password";
const BAD_REFRESH: &str = "Invalid or expired refresh token";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: SecretString,
}

fn token_pair(
    state: &AppState,
    user: UserId,
    sid: &str,
    now: UnixSeconds,
) -> Result<(serde_json::Value, String), ApiError> {
    let (access, _) = state
        .tokens
        .issue(user, sid, TokenType::Access, now)
        .map_err(ApiError::internal)?;
    let (refresh, refresh_jti) = state
        .tokens
        .issue(user, sid, TokenType::Refresh, now)
        .map_err(ApiError::internal)?;
    let body = serde_json::json!({
        "access_token": access.expose_secret(),
        "refresh_token": refresh.expose_secret(),
        "token_type": "Bearer",
        "expires_in": jwt::ACCESS_TTL,
    });
    Ok((body, refresh_jti))
}

pub async fn login(
    state: web::Data<AppState>,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let LoginBody { username, password } = body.into_inner();
    // Bound the work an anonymous caller can ask for before any hashing happens.
    if username.len() > 150 || password.expose_secret().len() > 1024 {
        return Err(ApiError::Unauthorized(BAD_LOGIN));
    }
    let user = state
        .db(move |c| users::find_by_username(c, &username))
        .await?;
    // Unknown users cost one argon2id evaluation too (against a dummy hash).
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let matches = web::block(move || password::verify(&password, stored.as_deref())).await?;
    let user = match user {
        Some(u) if matches && !u.is_disabled => u,
        _ => return Err(ApiError::Unauthorized(BAD_LOGIN)),
    };
    let user_id = UserId::from_db(user.id);
    let now = state.clock.now();
    let sid = uuid::Uuid::new_v4().to_string();
    let (body, refresh_jti) = token_pair(&state, user_id, &sid, now)?;
    state
        .db(move |c| repo::create(c, &sid, user_id, &refresh_jti, now, now + jwt::REFRESH_TTL))
        .await?;
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: SecretString,
}

pub async fn refresh(
    state: web::Data<AppState>,
    body: web::Json<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let claims = state
        .tokens
        .validate(body.refresh_token.expose_secret(), TokenType::Refresh, now)
        .map_err(|_| ApiError::Unauthorized(BAD_REFRESH))?;
    let user = claims
        .user_id()
        .ok_or(ApiError::Unauthorized(BAD_REFRESH))?;
    let (pair, next_jti) = token_pair(&state, user, &claims.sid, now)?;
    let outcome = state
        .db(move |c| repo::rotate_refresh(c, &claims.sid, user, &claims.jti, &next_jti, now))
        .await?;
    match outcome {
        Refresh::Rotated => Ok(HttpResponse::Ok().json(pair)),
        Refresh::Reused => {
            tracing::warn!(user = %user, "refresh token reuse: session revoked");
            Err(ApiError::Unauthorized(BAD_REFRESH))
        }
    }
}

pub async fn logout(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let sid = user.session_id.clone();
    state.db(move |c| repo::revoke(c, &sid, now)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": "Logged out successfully" })))
}
