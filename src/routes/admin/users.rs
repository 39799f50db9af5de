//! Users: create, list, disable and enable, role, password, allowlist, ending sessions.

use actix_web::{web, HttpResponse};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{conflict, Admin};
use crate::audit::{chain, Action, Target};
use crate::auth::password;
use crate::clock::rfc3339;
use crate::domain::{parse_allowlist, Password, Role, Username};
use crate::error::ApiError;
use crate::http::UserRequest;
use crate::repo::{throttle, users};
use crate::routes::JsonObject;
use crate::state::AppState;

#[derive(Serialize)]
struct UserView {
    id: i64,
    username: String,
    role: String,
    is_disabled: bool,
    created_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    username: String,
    password: SecretString,
    role: String,
}

pub async fn create_user(
    UserRequest { state, user, meta }: UserRequest,
    body: web::Json<JsonObject<CreateUserBody>>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminUserCreate).await?;
    let CreateUserBody {
        username,
        password,
        role,
    } = body.into_inner().0;
    let username = Username::parse(&username)?;
    let role = Role::parse(&role)?;
    let password = Password::parse(password)?;
    let hash = state
        .hasher
        .run(move || password::hash(password.secret()))
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?
        .map_err(ApiError::internal)?;
    let now = state.clock.now();
    let name = username.clone();
    let keyring = state.keyring.clone();
    let entry = admin.event(Action::AdminUserCreate);
    let id = state
        .db(move |c| {
            chain::with_entry(
                c,
                |tx| users::create(tx, &keyring, &name, &hash, role, None, now),
                |id| Some(entry.target(Target::owner(id.get()))),
            )
        })
        .await
        .map_err(conflict("A user with this username"))?;
    Ok(HttpResponse::Created().json(UserView {
        id: id.get(),
        username: username.as_str().into(),
        role: role.as_str().into(),
        is_disabled: false,
        created_at: rfc3339(now),
    }))
}

pub async fn list_users(
    UserRequest { state, user, meta }: UserRequest,
) -> Result<HttpResponse, ApiError> {
    Admin::check(&state, &user, meta, Action::AdminRead).await?;
    let rows = state.db(users::list).await?;
    let views: Vec<UserView> = rows
        .into_iter()
        .map(|u| UserView {
            id: u.id,
            username: u.username,
            role: u.role,
            is_disabled: u.is_disabled,
            created_at: rfc3339(u.created_at),
        })
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

/// One audited change to a user's row, by name: `change` runs in the entry's transaction;
/// 404 when there is no such user.
async fn change_user(
    state: &AppState,
    admin: &Admin<'_>,
    action: Action,
    username: String,
    change: impl FnOnce(
            &mut crate::db::DbConn,
            &crate::crypto::Keyring,
            &str,
        ) -> Result<Option<i64>, crate::db::DbError>
        + Send
        + 'static,
) -> Result<(), ApiError> {
    let keyring = state.keyring.clone();
    let entry = admin.event(action);
    state
        .db(move |c| {
            chain::with_entry(
                c,
                |tx| change(tx, &keyring, &username),
                |id| id.map(|id| entry.target(Target::owner(id))),
            )
        })
        .await?
        .ok_or(ApiError::NotFound("No such user"))?;
    Ok(())
}

pub async fn disable_user(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminUserDisable).await?;
    change_user(
        &state,
        &admin,
        Action::AdminUserDisable,
        path.into_inner(),
        users::disable,
    )
    .await?;
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({ "message": "User disabled; their sessions no longer work" })))
}

/// Enables a disabled user: they may log in again (sessions ended by the disable stay ended).
pub async fn enable_user(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminUserEnable).await?;
    let username = path.into_inner();
    change_user(
        &state,
        &admin,
        Action::AdminUserEnable,
        username.clone(),
        users::enable,
    )
    .await?;
    let (lock, until) = lockout_note(&state, &username).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "message": format!("User enabled; they may log in again{lock}"),
        "locked_out_until": until,
    })))
}

/// What enabling a user or resetting their password leaves in force: a login lockout of
/// their account, said in words (empty when there is none) and as a time.
async fn lockout_note(
    state: &AppState,
    username: &str,
) -> Result<(String, Option<String>), ApiError> {
    let (keyring, name, now) = (
        state.keyring.clone(),
        username.to_owned(),
        state.clock.now(),
    );
    let until = state
        .db(move |c| throttle::account_locked_until(c, &keyring, &name, now))
        .await?;
    Ok(match until {
        None => (String::new(), None),
        Some(t) => (
            format!(
                " once the login lockout of their account ends at {}; \
                 POST /admin/users/{username}/unlock/ lifts it now",
                rfc3339(t)
            ),
            Some(rfc3339(t)),
        ),
    })
}

/// Lifts the login lockout of a user's account (SPEC §7): their next sign-in checks the
/// password at once. Addresses keep their own limits. Audited whether or not a lockout held.
pub async fn unlock_user(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminUserUnlock).await?;
    let username = path.into_inner();
    let (keyring, now) = (state.keyring.clone(), state.clock.now());
    let entry = admin.event(Action::AdminUserUnlock);
    let (_, was_locked) = state
        .db(move |c| throttle::unlock_user(c, &keyring, &username, now, entry))
        .await?
        .ok_or(ApiError::NotFound("No such user"))?;
    let message = if was_locked {
        "Lockout lifted; they may sign in now"
    } else {
        "No login lockout held this user; nothing to lift"
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "message": message,
        "was_locked_out": was_locked,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    role: String,
}

/// Sets a user's role; it applies from their next request. The last enabled administrator
/// keeps theirs.
pub async fn set_user_role(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
    body: web::Json<JsonObject<RoleBody>>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminUserRole).await?;
    let username = path.into_inner();
    let role = Role::parse(&body.into_inner().0.role)?;
    change_user(
        &state,
        &admin,
        Action::AdminUserRole,
        username.clone(),
        move |tx, keyring, name| users::set_role(tx, keyring, name, role),
    )
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "username": username, "role": role.as_str() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    password: SecretString,
}

/// Resets a user's password (they forgot it, or it leaked): every session of theirs ends.
pub async fn set_user_password(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
    body: web::Json<JsonObject<PasswordBody>>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminUserPassword).await?;
    let username = path.into_inner();
    let password = Password::parse(body.into_inner().0.password)?;
    let hash = state
        .hasher
        .run(move || password::hash(password.secret()))
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?
        .map_err(ApiError::internal)?;
    let now = state.clock.now();
    change_user(
        &state,
        &admin,
        Action::AdminUserPassword,
        username.clone(),
        move |tx, keyring, name| users::set_password(tx, keyring, name, &hash, None, now),
    )
    .await?;
    let (lock, until) = lockout_note(&state, &username).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "message": format!("Password set; every session of this user has ended{lock}"),
        "locked_out_until": until,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowlistBody {
    /// CIDR ranges the user may call from; empty = any address.
    allowed_cidrs: Vec<String>,
}

/// Sets a user's IP allowlist; it applies from their next request (sessions stay, but a
/// request from outside answers 403).
pub async fn set_user_allowlist(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
    body: web::Json<JsonObject<AllowlistBody>>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminUserAllowlist).await?;
    let username = path.into_inner();
    let cidrs = parse_allowlist(&body.into_inner().0.allowed_cidrs)?;
    let stored = cidrs.clone();
    change_user(
        &state,
        &admin,
        Action::AdminUserAllowlist,
        username.clone(),
        move |tx, keyring, name| users::set_allowed_cidrs(tx, keyring, name, stored.as_deref()),
    )
    .await?;
    let allowed: Vec<&str> = cidrs.as_deref().map_or(vec![], |l| l.split(',').collect());
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "username": username,
        "allowed_cidrs": allowed,
    })))
}

/// Ends every live session of a user: their access tokens answer 401 from the next request
/// and their refresh tokens no longer refresh. The account stays enabled.
pub async fn revoke_user_sessions(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminSessionsRevoke).await?;
    let username = path.into_inner();
    let now = state.clock.now();
    let entry = admin.event(Action::AdminSessionsRevoke);
    let keyring = state.keyring.clone();
    let (_, ended) = state
        .db(move |c| {
            chain::with_entry(
                c,
                |tx| users::end_sessions(tx, &keyring, &username, now),
                |found| found.map(|(id, _)| entry.target(Target::owner(id))),
            )
        })
        .await?
        .ok_or_else(|| ApiError::NotFound("No such user"))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "message": "Sessions revoked",
        "revoked": ended,
    })))
}
