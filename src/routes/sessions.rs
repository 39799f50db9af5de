//! Sessions (SPEC §2.2): login, single-use refresh with reuse detection, logout. Every
//! outcome is audited; a failed login names the account only when it exists.

use actix_web::{web, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::audit::{Action, Actor, ActorKind, Event, Outcome, Reason, RequestMeta, Target};
use crate::auth::jwt::{self, TokenType};
use crate::auth::{password, AuthenticatedUser};
use crate::clock::UnixSeconds;
use crate::db::sessions::{self as repo, Refresh};
use crate::db::users;
use crate::domain::{UserId, Username};
use crate::error::ApiError;
use crate::routes::JsonObject;
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

fn user_actor(id: i64, name: Option<&str>) -> Actor {
    Actor {
        kind: ActorKind::User,
        id: Some(id),
        name: name.map(str::to_owned),
    }
}

async fn audit(
    state: &AppState,
    meta: &RequestMeta,
    actor: Actor,
    action: Action,
    f: impl FnOnce(Event) -> Event,
) {
    let ev = f(Event::new(state.clock.now_micros(), actor, meta, action));
    state.audit.record_best_effort(ev).await;
}

pub async fn login(
    state: web::Data<AppState>,
    meta: RequestMeta,
    body: web::Json<JsonObject<LoginBody>>,
) -> Result<HttpResponse, ApiError> {
    let LoginBody { username, password } = body.into_inner().0;
    // The attempted name is recorded only when it is a real account: a name that matches
    // nobody may be a password typed into the wrong field.
    let unknown = |e: Event| e.outcome(Outcome::Denied, Some(Reason::UnknownUser));
    // Bound the work an anonymous caller can ask for before any hashing happens. A name that
    // cannot be an account (bad characters, NUL, too long) is an unknown user; it still costs
    // one argon2id evaluation so it answers no faster than a real one.
    let acceptable = Username::parse(&username).is_ok() && password.expose_secret().len() <= 1024;
    if !acceptable {
        let _ = web::block(move || password::verify(&password, None)).await;
        audit(&state, &meta, Actor::anonymous(), Action::Login, unknown).await;
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
        Some(u) => {
            let reason = if matches {
                Reason::DisabledUser
            } else {
                Reason::BadPassword
            };
            let actor = user_actor(u.id, Some(&u.username));
            audit(&state, &meta, actor, Action::Login, |e| {
                e.target(Target::owner(u.id))
                    .outcome(Outcome::Denied, Some(reason))
            })
            .await;
            return Err(ApiError::Unauthorized(BAD_LOGIN));
        }
        None => {
            audit(&state, &meta, Actor::anonymous(), Action::Login, unknown).await;
            return Err(ApiError::Unauthorized(BAD_LOGIN));
        }
    };
    let user_id = UserId::from_db(user.id);
    let now = state.clock.now();
    let sid = uuid::Uuid::new_v4().to_string();
    let (body, refresh_jti) = token_pair(&state, user_id, &sid, now)?;
    state
        .db(move |c| repo::create(c, &sid, user_id, &refresh_jti, now, now + jwt::REFRESH_TTL))
        .await?;
    let actor = user_actor(user.id, Some(&user.username));
    audit(&state, &meta, actor, Action::Login, |e| {
        e.target(Target::owner(user.id))
    })
    .await;
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: SecretString,
}

pub async fn refresh(
    state: web::Data<AppState>,
    meta: RequestMeta,
    body: web::Json<JsonObject<RefreshBody>>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let RefreshBody { refresh_token } = body.into_inner().0;
    let validated = state
        .tokens
        .validate(refresh_token.expose_secret(), TokenType::Refresh, now);
    let Some((claims, user)) = validated.ok().and_then(|c| c.user_id().map(|u| (c, u))) else {
        audit(&state, &meta, Actor::anonymous(), Action::Refresh, |e| {
            e.outcome(Outcome::Denied, Some(Reason::TokenInvalid))
        })
        .await;
        return Err(ApiError::Unauthorized(BAD_REFRESH));
    };
    let (pair, next_jti) = token_pair(&state, user, &claims.sid, now)?;
    let outcome = state
        .db(move |c| repo::rotate_refresh(c, &claims.sid, user, &claims.jti, &next_jti, now))
        .await?;
    let actor = user_actor(user.get(), None);
    let target = Target::owner(user.get());
    match outcome {
        Refresh::Rotated => {
            audit(&state, &meta, actor, Action::Refresh, |e| e.target(target)).await;
            Ok(HttpResponse::Ok().json(pair))
        }
        Refresh::Reused => {
            tracing::warn!(user = %user, "refresh token reuse: session revoked");
            audit(&state, &meta, actor, Action::RefreshReuse, |e| {
                e.target(target)
                    .outcome(Outcome::Denied, Some(Reason::TokenReused))
            })
            .await;
            Err(ApiError::Unauthorized(BAD_REFRESH))
        }
    }
}

pub async fn logout(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let sid = user.session_id.clone();
    state.db(move |c| repo::revoke(c, &sid, now)).await?;
    let target = Target::owner(user.id.get());
    audit(&state, &meta, Actor::user(&user), Action::Logout, |e| {
        e.target(target)
    })
    .await;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": "Logged out successfully" })))
}
