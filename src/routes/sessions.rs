//! Sessions (SPEC §2.2): login, single-use refresh with reuse detection, logout. Every
//! outcome is audited; a failed login names the account only when it exists.
//!
//! Logins are throttled (SPEC §7) through the database, so every node agrees: after
//! `HAZINA_LOGIN_MAX_FAILURES_ACCOUNT` failures for one name or
//! `HAZINA_LOGIN_MAX_FAILURES_ADDRESS` from one address, attempts answer 429 whatever the
//! password until an exponential backoff passes. Known and unknown names count, cost and
//! answer alike.

use actix_web::{web, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::audit::{Action, Actor, ActorKind, Event, Outcome, Reason, RequestMeta, Target};
use crate::auth::jwt::{self, TokenType};
use crate::auth::password;
use crate::clock::UnixSeconds;
use crate::domain::{UserId, Username};
use crate::error::ApiError;
use crate::http::principal::{allowed, OUTSIDE_ALLOWLIST};
use crate::http::UserRequest;
use crate::metrics::LockoutSubject;
use crate::repo::sessions::{self as repo, Refresh};
use crate::repo::{throttle, users};
use crate::routes::JsonObject;
use crate::state::AppState;

const BAD_LOGIN: &str = "Invalid username or password";
const BAD_REFRESH: &str = "Invalid or expired refresh token";
const LOCKED_OUT: &str = "Too many failed login attempts; try again later";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: SecretString,
}

/// A session's two tokens, as issued (the console keeps them in cookies; the API answers
/// them as JSON).
pub(crate) struct TokenPair {
    pub access: SecretString,
    pub refresh: SecretString,
}

impl TokenPair {
    fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "access_token": self.access.expose_secret(),
            "refresh_token": self.refresh.expose_secret(),
            "token_type": "Bearer",
            "expires_in": jwt::ACCESS_TTL,
        })
    }
}

fn token_pair(
    state: &AppState,
    user: UserId,
    sid: &str,
    now: UnixSeconds,
) -> Result<(TokenPair, String), ApiError> {
    let (access, _) = state
        .tokens
        .issue(user, sid, TokenType::Access, now)
        .map_err(ApiError::internal)?;
    let (refresh, refresh_jti) = state
        .tokens
        .issue(user, sid, TokenType::Refresh, now)
        .map_err(ApiError::internal)?;
    Ok((TokenPair { access, refresh }, refresh_jti))
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

/// The throttled subjects of one login attempt (see [`crate::repo::throttle`]).
struct Subjects {
    /// `account:` + HMAC-SHA-256 of the attempted name under a keyring-derived key: known
    /// and unknown names count alike, and the table never holds a name (which may be a
    /// password typed into the wrong field) or an unkeyed hash of one.
    account: String,
    /// `address:` + the source address (IPv6 by its /64); the TCP peer only.
    address: Option<String>,
    /// `source:` + HMAC-SHA-256 of the name and the address, under the same key: the pair
    /// a successful sign-in makes known (SPEC §15), which then meets a limit of its own.
    source: Option<String>,
}

impl Subjects {
    fn of(
        state: &AppState,
        username: &str,
        ip: Option<std::net::IpAddr>,
    ) -> Result<Self, ApiError> {
        let no_key = || ApiError::internal(anyhow::anyhow!("no active master key"));
        let keyring = &state.keyring;
        let address = ip.map(|ip| crate::limits::address_key(ip).to_string());
        let source = match &address {
            Some(a) => Some(throttle::source_subject(keyring, username, a).ok_or_else(no_key)?),
            None => None,
        };
        Ok(Subjects {
            account: throttle::account_subject(keyring, username).ok_or_else(no_key)?,
            address: address.map(|a| format!("address:{a}")),
            source,
        })
    }
}

/// Admits one login attempt through the throttle (see [`crate::repo::throttle`]): the check
/// and the count are one transaction, before the password is hashed, so concurrent guesses
/// at one account get no more password checks than its limit. A blocked attempt answers 429
/// whatever the password, identically for known and unknown names, and is audited at most
/// once per subject per minute. What [`throttle::succeeded`] needs to take the attempt back.
async fn admit_attempt(
    state: &AppState,
    meta: &RequestMeta,
    subjects: &Subjects,
    username: &str,
    now: UnixSeconds,
) -> Result<throttle::Undo, ApiError> {
    let abuse = &state.config.abuse;
    let account = subjects.account.clone();
    let source = subjects.source.clone();
    let max_account = abuse.login_max_failures_account;
    let address = subjects
        .address
        .clone()
        .map(|a| (a, abuse.login_max_failures_address));
    let backoff = i64::from(abuse.login_backoff_seconds);
    let sweep = state.limits.login_cleanup_due(now);
    let admission = state
        .db(move |c| {
            // A source that signed in to this account within 30 days meets a limit of its
            // own in place of the account's: failures from elsewhere never lock it out
            // (SPEC §15). It still meets its address's limit.
            let own = match source {
                Some(s) if throttle::is_known_source(c, &s, now)? => s,
                _ => account,
            };
            let mut limits = vec![(own, max_account)];
            limits.extend(address);
            let limits: Vec<throttle::Limit<'_>> = limits
                .iter()
                .map(|(subject, max_failures)| throttle::Limit {
                    subject,
                    max_failures: *max_failures,
                })
                .collect();
            let admission = throttle::admit(c, &limits, backoff, now)?;
            if sweep {
                throttle::forget_stale(c, now)?;
            }
            Ok(admission)
        })
        .await?;
    let (blocked, undo) = match admission {
        throttle::Admission::Admitted { blocked, undo } => (blocked, undo),
        throttle::Admission::Blocked(until) => {
            return Err(refuse_locked(state, meta, subjects, username, now, until).await)
        }
    };
    for (subject, until) in blocked {
        let kind = if subject.starts_with("address:") {
            LockoutSubject::Address
        } else {
            LockoutSubject::Account
        };
        state.metrics.login_lockout(kind);
        tracing::warn!(
            subject = if kind == LockoutSubject::Account {
                "account"
            } else {
                "address"
            },
            seconds = until - now,
            "failed logins: lockout started"
        );
    }
    Ok(undo)
}

/// The answer to an attempt while locked out (audited at most once per subject per minute;
/// the entry names the account when it exists, the answer never does).
async fn refuse_locked(
    state: &AppState,
    meta: &RequestMeta,
    subjects: &Subjects,
    username: &str,
    now: UnixSeconds,
    until: UnixSeconds,
) -> ApiError {
    state.metrics.login_throttled();
    if state
        .limits
        .once_per_minute(format!("login:{}", subjects.account))
    {
        let name = username.to_owned();
        let user = match Username::parse(&name) {
            Ok(_) => state
                .db(move |c| users::find_by_username(c, &name))
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        };
        let (actor, target) = match &user {
            Some(u) => (user_actor(u.id, Some(&u.username)), Target::owner(u.id)),
            None => (Actor::anonymous(), Target::default()),
        };
        audit(state, meta, actor, Action::Login, |e| {
            e.target(target)
                .outcome(Outcome::Denied, Some(Reason::LockedOut))
        })
        .await;
    }
    ApiError::TooManyRequests {
        message: LOCKED_OUT,
        retry_after: u64::try_from(until - now).unwrap_or(1),
    }
}

pub async fn login(
    state: web::Data<AppState>,
    meta: RequestMeta,
    body: web::Json<JsonObject<LoginBody>>,
) -> Result<HttpResponse, ApiError> {
    let LoginBody { username, password } = body.into_inner().0;
    let pair = sign_in(&state, &meta, username, password).await?;
    Ok(HttpResponse::Ok().json(pair.body()))
}

/// Signs a user in (the API's login and the console's): throttled, audited, and bound to the
/// user's allowlist; a new session row and its tokens.
pub(crate) async fn sign_in(
    state: &AppState,
    meta: &RequestMeta,
    username: String,
    password: SecretString,
) -> Result<TokenPair, ApiError> {
    let now = state.clock.now();
    let subjects = Subjects::of(state, &username, meta.source_ip)?;
    let undo = admit_attempt(state, meta, &subjects, &username, now).await?;
    // The attempted name is recorded only when it is a real account: a name that matches
    // nobody may be a password typed into the wrong field.
    let unknown = |e: Event| e.outcome(Outcome::Denied, Some(Reason::UnknownUser));
    // Bound the work an anonymous caller can ask for before any hashing happens. A name that
    // cannot be an account (bad characters, NUL, too long) is an unknown user; it still costs
    // one argon2id evaluation so it answers no faster than a real one.
    let acceptable = Username::parse(&username).is_ok() && password.expose_secret().len() <= 1024;
    if !acceptable {
        let _ = state
            .hasher
            .run(move || password::verify(&password, None))
            .await;
        audit(state, meta, Actor::anonymous(), Action::Login, unknown).await;
        return Err(ApiError::Unauthorized(BAD_LOGIN));
    }
    let keyring = state.keyring.clone();
    let found = state
        .db(move |c| {
            let user = users::find_by_username(c, &username)?;
            let verdict = match &user {
                Some(u) => Some(u.check(c, &keyring)?),
                None => None,
            };
            Ok::<_, crate::db::DbError>((user, verdict))
        })
        .await?;
    let (user, verdict) = found;
    // A row edited outside hazina (a planted password hash, a role, a cleared flag), or an
    // older one written back (a reset password restored), is never believed: the attempt
    // fails like a wrong password, and the violation is audited.
    let verdict = verdict.unwrap_or(crate::crypto::rowmac::Verdict::Intact);
    let tampered = !verdict.is_intact();
    // Unknown users cost one argon2id evaluation too (against a dummy hash).
    let stored = user
        .as_ref()
        .filter(|_| !tampered)
        .map(|u| u.password_hash.clone());
    let matches = state
        .hasher
        .run(move || password::verify(&password, stored.as_deref()))
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    let user = match user {
        Some(u) if tampered => {
            let actor = user_actor(u.id, Some(&u.username));
            audit(state, meta, actor, Action::IntegrityViolation, |e| {
                e.target(Target::owner(u.id))
                    .outcome(Outcome::Denied, Some(Reason::of_verdict(verdict)))
            })
            .await;
            return Err(ApiError::Unauthorized(BAD_LOGIN));
        }
        Some(u) if matches && !u.is_disabled => u,
        Some(u) => {
            let reason = if matches {
                Reason::DisabledUser
            } else {
                Reason::BadPassword
            };
            let actor = user_actor(u.id, Some(&u.username));
            audit(state, meta, actor, Action::Login, |e| {
                e.target(Target::owner(u.id))
                    .outcome(Outcome::Denied, Some(reason))
            })
            .await;
            return Err(ApiError::Unauthorized(BAD_LOGIN));
        }
        None => {
            audit(state, meta, Actor::anonymous(), Action::Login, unknown).await;
            return Err(ApiError::Unauthorized(BAD_LOGIN));
        }
    };
    // The user's IP allowlist applies to signing in too, not only to the requests after.
    if !allowed(user.allowed_cidrs.as_deref(), meta.source_ip) {
        let actor = user_actor(user.id, Some(&user.username));
        audit(state, meta, actor, Action::Login, |e| {
            e.target(Target::owner(user.id))
                .outcome(Outcome::Denied, Some(Reason::OutsideAllowlist))
        })
        .await;
        return Err(ApiError::Forbidden(OUTSIDE_ALLOWLIST));
    }
    let user_id = UserId::from_db(user.id);
    let sid = uuid::Uuid::new_v4().to_string();
    let (pair, refresh_jti) = token_pair(state, user_id, &sid, now)?;
    // A success forgives the account's failures and the source's (not the address's: see
    // repo::throttle), and makes the source known to the account.
    let Subjects {
        account, source, ..
    } = subjects;
    let actor = user_actor(user.id, Some(&user.username));
    let entry = Event::new(state.clock.now_micros(), actor, meta, Action::Login)
        .target(Target::owner(user.id));
    let keyring = state.keyring.clone();
    // The session and the login's entry commit together: the session's generation names it.
    state
        .db(move |c| {
            let forgive: Vec<&str> = [Some(account.as_str()), source.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            throttle::succeeded(c, &forgive, &undo)?;
            if let Some(source) = &source {
                throttle::remember_source(c, source, &account, now)?;
            }
            crate::audit::chain::with_entry(
                c,
                |tx| {
                    let expires = now + jwt::REFRESH_TTL;
                    repo::create(tx, &keyring, &sid, user_id, &refresh_jti, now, expires)
                },
                |_| Some(entry),
            )
        })
        .await?;
    Ok(pair)
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
    let RefreshBody { refresh_token } = body.into_inner().0;
    let pair = renew(&state, &meta, &refresh_token).await?;
    Ok(HttpResponse::Ok().json(pair.body()))
}

/// Spends a refresh token for a new pair (the API's refresh and the console's): each works
/// once, and a spent one presented again ends its whole session.
pub(crate) async fn renew(
    state: &AppState,
    meta: &RequestMeta,
    refresh_token: &SecretString,
) -> Result<TokenPair, ApiError> {
    let now = state.clock.now();
    let validated = state
        .tokens
        .validate(refresh_token.expose_secret(), TokenType::Refresh, now);
    let Some((claims, user)) = validated.ok().and_then(|c| c.user_id().map(|u| (c, u))) else {
        // A token that does not verify names no one: audited once per source per minute.
        if state.limits.audit_denial(Reason::TokenInvalid, meta) {
            audit(state, meta, Actor::anonymous(), Action::Refresh, |e| {
                e.outcome(Outcome::Denied, Some(Reason::TokenInvalid))
            })
            .await;
        }
        return Err(ApiError::Unauthorized(BAD_REFRESH));
    };
    // The user's IP allowlist applies to refreshing too: checked before the token is spent.
    let account = state.db(move |c| users::find_by_id(c, user.get())).await?;
    if let Some(account) = account.filter(|a| !allowed(a.allowed_cidrs.as_deref(), meta.source_ip))
    {
        let actor = user_actor(account.id, Some(&account.username));
        audit(state, meta, actor, Action::Refresh, |e| {
            e.target(Target::owner(account.id))
                .outcome(Outcome::Denied, Some(Reason::OutsideAllowlist))
        })
        .await;
        return Err(ApiError::Forbidden(OUTSIDE_ALLOWLIST));
    }
    let (pair, next_jti) = token_pair(state, user, &claims.sid, now)?;
    let at = state.clock.now_micros();
    let meta_for_entry = meta.clone();
    // The swap (or the revocation it leads to) and its entry commit together.
    let (outcome, _) = state
        .db({
            let keyring = state.keyring.clone();
            move |c| {
                let presented = (claims.jti.as_str(), claims.key_version);
                crate::audit::chain::with_entry(
                    c,
                    |tx| {
                        repo::rotate_refresh(
                            tx,
                            &keyring,
                            &claims.sid,
                            user,
                            presented,
                            &next_jti,
                            now,
                        )
                    },
                    |(outcome, username)| {
                        let actor = user_actor(user.get(), username.as_deref());
                        let (action, refused) = match outcome {
                            Refresh::Rotated => (Action::Refresh, None),
                            Refresh::Reused => (Action::RefreshReuse, Some(Reason::TokenReused)),
                            Refresh::Tampered => {
                                (Action::IntegrityViolation, Some(Reason::RowTampered))
                            }
                            Refresh::KeyRetired => (Action::Refresh, Some(Reason::TokenInvalid)),
                        };
                        let e = Event::new(at, actor, &meta_for_entry, action)
                            .target(Target::owner(user.get()));
                        Some(match refused {
                            None => e,
                            Some(reason) => e.outcome(Outcome::Denied, Some(reason)),
                        })
                    },
                )
            }
        })
        .await?;
    match outcome {
        Refresh::Rotated => Ok(pair),
        Refresh::Reused => {
            tracing::warn!(user = %user, "refresh token reuse: session revoked");
            Err(ApiError::Unauthorized(BAD_REFRESH))
        }
        Refresh::Tampered | Refresh::KeyRetired => Err(ApiError::Unauthorized(BAD_REFRESH)),
    }
}

pub async fn logout(
    UserRequest { state, user, meta }: UserRequest,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let sid = user.session_id.clone();
    let entry = Event::new(
        state.clock.now_micros(),
        Actor::user(&user),
        &meta,
        Action::Logout,
    )
    .target(Target::owner(user.id.get()));
    let keyring = state.keyring.clone();
    state
        .db(move |c| {
            crate::audit::chain::with_entry(
                c,
                |tx| repo::revoke(tx, &keyring, &sid, now),
                |_| Some(entry),
            )
        })
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": "Logged out successfully" })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordBody {
    old_password: SecretString,
    new_password: SecretString,
}

/// The answer to a wrong current password.
pub const WRONG_PASSWORD: &str = "The current password is wrong";

/// `POST /users/password/`: the caller changes their own password. The current one is
/// required (a stolen access token alone cannot take the account over); every other session
/// of theirs ends (this one stays), and the change is audited.
pub async fn change_password(
    UserRequest { state, user, meta }: UserRequest,
    body: web::Json<JsonObject<ChangePasswordBody>>,
) -> Result<HttpResponse, ApiError> {
    let ChangePasswordBody {
        old_password,
        new_password,
    } = body.into_inner().0;
    let new_password = crate::domain::Password::parse(new_password)?;
    let id = user.id.get();
    let stored = state
        .db(move |c| users::find_by_id(c, id))
        .await?
        .filter(|row| row.intact(&state.keyring))
        .ok_or(ApiError::InvalidToken)?;
    // A wrong current password counts against the account's login throttle, like a wrong
    // password at sign-in: a stolen session is no unthrottled password oracle (SPEC §15).
    let now = state.clock.now();
    let subjects = Subjects::of(&state, &user.username, meta.source_ip)?;
    let undo = admit_attempt(&state, &meta, &subjects, &user.username, now).await?;
    let hash = stored.password_hash.clone();
    let (matches, new_hash) = state
        .hasher
        .run(move || {
            let matches = password::verify(&old_password, Some(&hash));
            let new_hash = matches
                .then(|| password::hash(new_password.secret()))
                .transpose();
            (matches, new_hash)
        })
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    let actor = Actor::user(&user);
    if !matches {
        audit(&state, &meta, actor, Action::UserPasswordChange, |e| {
            e.target(Target::owner(id))
                .outcome(Outcome::Denied, Some(Reason::BadPassword))
        })
        .await;
        return Err(ApiError::Forbidden(WRONG_PASSWORD));
    }
    let new_hash = new_hash
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no hash for a matching password")))?;
    let keyring = state.keyring.clone();
    let username = user.username.clone();
    let sid = user.session_id.clone();
    let entry = Event::new(
        state.clock.now_micros(),
        actor,
        &meta,
        Action::UserPasswordChange,
    )
    .target(Target::owner(id));
    let account = subjects.account;
    state
        .db(move |c| {
            throttle::succeeded(c, &[&account], &undo)?;
            crate::audit::chain::with_entry(
                c,
                |tx| users::set_password(tx, &keyring, &username, &new_hash, Some(&sid), now),
                |changed| changed.map(|_| entry),
            )
        })
        .await?
        .ok_or(ApiError::InvalidToken)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "message": "Password changed; your other sessions have ended"
    })))
}
