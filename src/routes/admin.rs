//! Administration (SPEC §2.3): users, services and grants. Role `admin` only; each change is
//! audited as the admin who made it and takes effect on the next request.

use actix_web::{web, HttpResponse};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::audit::{chain, Action, Actor, Event, Outcome, Reason, RequestMeta, Target};
use crate::auth::password;
use crate::clock::rfc3339;
use crate::db::DbError;
use crate::domain::{
    parse_allowlist, parse_fingerprint, Environment, Password, Provider, Role, ServiceIdentity,
    ServiceName, Username,
};
use crate::error::ApiError;
use crate::http::AuthenticatedUser;
use crate::repo::provider_certs::set_certificate;
use crate::repo::services::{self as repo, grant_by_names, grant_target, GrantRow, ServiceRow};
use crate::repo::users;
use crate::routes::JsonObject;
use crate::state::AppState;
use crate::vault::Operations;

/// An administrator's request: the role check (a refusal is recorded) and its audit events.
pub(crate) struct Admin<'a> {
    state: &'a AppState,
    user: &'a AuthenticatedUser,
    meta: RequestMeta,
}

impl<'a> Admin<'a> {
    pub(crate) async fn check(
        state: &'a AppState,
        user: &'a AuthenticatedUser,
        meta: RequestMeta,
        action: Action,
    ) -> Result<Self, ApiError> {
        let admin = Admin { state, user, meta };
        if user.role != Role::Admin {
            let ev = admin
                .event(action)
                .outcome(Outcome::Denied, Some(Reason::RoleForbidden));
            state.audit.record_best_effort(ev).await;
            return Err(ApiError::Forbidden("Only administrators may do this"));
        }
        Ok(admin)
    }

    pub(crate) fn event(&self, action: Action) -> Event {
        Event::new(
            self.state.clock.now_micros(),
            Actor::user(self.user),
            &self.meta,
            action,
        )
    }
}

fn conflict(what: &'static str) -> impl Fn(DbError) -> ApiError {
    move |e| match e {
        DbError::Conflict => ApiError::Conflict(format!("{what} already exists")),
        other => other.into(),
    }
}

// ----- users --------------------------------------------------------------------------

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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminUserEnable).await?;
    change_user(
        &state,
        &admin,
        Action::AdminUserEnable,
        path.into_inner(),
        users::enable,
    )
    .await?;
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({ "message": "User enabled; they may log in again" })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    role: String,
}

/// Sets a user's role; it applies from their next request. The last enabled administrator
/// keeps theirs.
pub async fn set_user_role(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
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
        username,
        move |tx, keyring, name| users::set_password(tx, keyring, name, &hash, None, now),
    )
    .await?;
    Ok(HttpResponse::Ok().json(
        serde_json::json!({ "message": "Password set; every session of this user has ended" }),
    ))
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
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

// ----- services -----------------------------------------------------------------------

#[derive(Serialize)]
struct ServiceView {
    id: i64,
    name: String,
    identity: String,
    is_enabled: bool,
    allowed_cidrs: Vec<String>,
    created_at: String,
}

impl From<ServiceRow> for ServiceView {
    fn from(s: ServiceRow) -> Self {
        ServiceView {
            id: s.id,
            name: s.name,
            identity: s.identity,
            is_enabled: s.is_enabled,
            allowed_cidrs: s
                .allowed_cidrs
                .map(|l| l.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            created_at: rfc3339(s.created_at),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceBody {
    name: String,
    identity: String,
    #[serde(default)]
    allowed_cidrs: Option<Vec<String>>,
}

pub async fn create_service(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    body: web::Json<JsonObject<CreateServiceBody>>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminServiceCreate).await?;
    let body = body.into_inner().0;
    let name = ServiceName::parse(&body.name)?;
    let identity = ServiceIdentity::parse(&body.identity)?;
    let cidrs = parse_allowlist(body.allowed_cidrs.as_deref().unwrap_or_default())?;
    let now = state.clock.now();
    let keyring = state.keyring.clone();
    let entry = admin.event(Action::AdminServiceCreate);
    let row = state
        .db(move |c| {
            chain::with_entry(
                c,
                |tx| {
                    let (name, identity) = (name.as_str(), identity.as_str());
                    repo::create_service(tx, &keyring, name, identity, cidrs.as_deref(), now)
                },
                |_| Some(entry),
            )
        })
        .await
        .map_err(conflict("A service with this name or identity"))?;
    Ok(HttpResponse::Created().json(ServiceView::from(row)))
}

pub async fn list_services(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    Admin::check(&state, &user, meta, Action::AdminRead).await?;
    let rows = state.db(repo::list_services).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(ServiceView::from).collect::<Vec<_>>()))
}

pub async fn disable_service(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminServiceDisable).await?;
    let name = path.into_inner();
    let keyring = state.keyring.clone();
    let entry = admin.event(Action::AdminServiceDisable);
    let row = state
        .db(move |c| {
            chain::with_entry(
                c,
                |tx| repo::disable_service(tx, &keyring, &name),
                |row| row.as_ref().map(|_| entry),
            )
        })
        .await?
        .ok_or_else(|| ApiError::NotFound("No such service"))?;
    Ok(HttpResponse::Ok().json(ServiceView::from(row)))
}

// ----- revoked client certificates ------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeCertificateBody {
    fingerprint: String,
}

#[derive(Serialize)]
struct RevokedCertificateView {
    fingerprint: String,
    revoked_at: String,
}

/// Revokes one client certificate by fingerprint: every later request it makes answers 403,
/// on every node, whatever service it names. Idempotent; audited in the same transaction.
pub async fn revoke_certificate(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    body: web::Json<JsonObject<RevokeCertificateBody>>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminCertificateRevoke).await?;
    let fingerprint = parse_fingerprint(&body.into_inner().0.fingerprint)?;
    let now = state.clock.now();
    let entry = admin.event(Action::AdminCertificateRevoke);
    let stored = fingerprint.clone();
    state
        .db(move |c| {
            chain::with_entry(
                c,
                |tx| repo::revoke_certificate(tx, &stored, now),
                |newly| newly.then_some(entry),
            )
        })
        .await?;
    Ok(HttpResponse::Ok().json(RevokedCertificateView {
        fingerprint,
        revoked_at: rfc3339(now),
    }))
}

pub async fn list_revoked_certificates(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    Admin::check(&state, &user, meta, Action::AdminRead).await?;
    let rows = state.db(repo::revoked_certificates).await?;
    let views: Vec<RevokedCertificateView> = rows
        .into_iter()
        .map(|(fingerprint, at)| RevokedCertificateView {
            fingerprint,
            revoked_at: rfc3339(at),
        })
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

// ----- grants -------------------------------------------------------------------------

#[derive(Serialize)]
struct GrantView {
    id: i64,
    service: String,
    owner: String,
    provider: Option<String>,
    environment: Option<String>,
    operations: Vec<String>,
    /// What the operations give away beyond their names (`stk-password` discloses the
    /// passkey); absent when nothing does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<&'static str>,
    created_at: String,
    revoked_at: Option<String>,
}

fn grant_view(g: GrantRow, service: String, owner: String) -> GrantView {
    GrantView {
        id: g.id,
        service,
        owner,
        operations: Operations::names(&g.operations)
            .into_iter()
            .map(String::from)
            .collect(),
        warnings: Operations::warnings(&g.operations),
        provider: g.provider,
        environment: g.environment,
        created_at: rfc3339(g.created_at),
        revoked_at: g.revoked_at.map(rfc3339),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGrantBody {
    service: String,
    owner: String,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    /// What the grant allows (SPEC §9.5); default `["reveal"]`.
    #[serde(default)]
    operations: Option<Vec<String>>,
}

pub async fn create_grant(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    body: web::Json<JsonObject<CreateGrantBody>>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminGrantCreate).await?;
    let body = body.into_inner().0;
    let provider = body.provider.as_deref().map(Provider::parse).transpose()?;
    let environment = body
        .environment
        .as_deref()
        .map(Environment::parse)
        .transpose()?;
    let operations = match &body.operations {
        Some(names) if names.is_empty() => {
            return Err(ApiError::Invalid(
                "operations must name at least one operation".into(),
            ))
        }
        Some(names) => Operations::parse(names)?,
        None => Operations::legacy(),
    };
    let (service, owner) = (body.service.clone(), body.owner.clone());
    let now = state.clock.now();
    let keyring = state.keyring.clone();
    let entry = admin.event(Action::AdminGrantCreate);
    let (grant, _) = state
        .db(move |c| {
            chain::with_entry(
                c,
                |tx| {
                    grant_by_names(
                        tx,
                        &keyring,
                        &service,
                        &owner,
                        (provider, environment),
                        &operations,
                        now,
                    )
                },
                |made| {
                    let (grant, owner_id) = made.as_ref().ok()?;
                    Some(entry.target(grant_target(grant, *owner_id)))
                },
            )
        })
        .await
        .map_err(conflict("A live grant with this scope"))?
        .map_err(ApiError::NotFound)?;
    Ok(HttpResponse::Created().json(grant_view(grant, body.service, body.owner)))
}

pub async fn list_grants(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    Admin::check(&state, &user, meta, Action::AdminRead).await?;
    let rows = state.db(repo::list_grants).await?;
    let views: Vec<GrantView> = rows
        .into_iter()
        .map(|(g, service, owner)| grant_view(g, service, owner))
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

pub async fn revoke_grant(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminGrantRevoke).await?;
    let id: i64 = path
        .parse()
        .map_err(|_| ApiError::NotFound("No such live grant"))?;
    let now = state.clock.now();
    let keyring = state.keyring.clone();
    let entry = admin.event(Action::AdminGrantRevoke);
    let grant = state
        .db(move |c| {
            chain::with_entry(
                c,
                |tx| repo::revoke_grant(tx, &keyring, id, now),
                |grant| {
                    grant
                        .as_ref()
                        .map(|g| entry.target(Target::owner(g.owner_id)))
                },
            )
        })
        .await?
        .ok_or(ApiError::NotFound("No such live grant"))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": "Grant revoked", "id": grant.id })))
}

// ----- provider certificates (SPEC §9.2) ------------------------------------------------

#[derive(Serialize)]
struct ProviderCertificateView {
    provider: String,
    environment: String,
    sha256: String,
    subject: String,
    not_before: String,
    not_after: String,
    updated_at: String,
    updated_by: String,
    /// Whether the stored row passed its integrity check (a failed one is never used).
    intact: bool,
}

fn certificate_view(
    row: crate::repo::provider_certs::CertificateRow,
    keyring: &crate::crypto::Keyring,
) -> ProviderCertificateView {
    ProviderCertificateView {
        intact: row.intact(keyring),
        provider: row.provider,
        environment: row.environment,
        sha256: row.sha256,
        subject: row.subject,
        not_before: rfc3339(row.not_before),
        not_after: rfc3339(row.not_after),
        updated_at: rfc3339(row.updated_at),
        updated_by: row.updated_by,
    }
}

/// The provider and environment a certificate path names: only M-Pesa takes one.
fn certificate_slot(path: &(String, String)) -> Result<(Provider, Environment), ApiError> {
    let provider = Provider::parse(&path.0)?;
    if provider != Provider::Mpesa {
        return Err(ApiError::Invalid(
            "Only mpesa takes a provider certificate (for the SecurityCredential)".into(),
        ));
    }
    Ok((provider, Environment::parse(&path.1)?))
}

/// `PUT /admin/provider-certificates/{provider}/{environment}/` with a PEM body.
pub async fn set_provider_certificate(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::AdminProviderCertificateSet;
    let admin = Admin::check(&state, &user, meta, ACTION).await?;
    let (provider, environment) = certificate_slot(&path)?;
    let pem = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::Invalid("The body must be one PEM certificate".into()))?;
    let keyring = state.keyring.clone();
    let now = state.clock.now();
    let entry = admin.event(ACTION);
    let actor = user.username.as_str().to_owned();
    let row = state
        .db(move |c| {
            set_certificate(
                c,
                &keyring,
                (provider, environment),
                &pem,
                &actor,
                entry,
                now,
            )
        })
        .await?;
    Ok(HttpResponse::Ok().json(certificate_view(row, &state.keyring)))
}

pub async fn list_provider_certificates(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    Admin::check(&state, &user, meta, Action::AdminRead).await?;
    let rows = state.db(crate::repo::provider_certs::list).await?;
    let views: Vec<ProviderCertificateView> = rows
        .into_iter()
        .map(|r| certificate_view(r, &state.keyring))
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

/// `DELETE /admin/provider-certificates/{provider}/{environment}/`.
pub async fn delete_provider_certificate(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::AdminProviderCertificateDelete;
    let admin = Admin::check(&state, &user, meta, ACTION).await?;
    let (provider, environment) = certificate_slot(&path)?;
    let entry = admin.event(ACTION).target(Target {
        provider: Some(provider.as_str().into()),
        environment: Some(environment.as_str().into()),
        ..Target::default()
    });
    let removed = state
        .db(move |c| {
            chain::with_entry(
                c,
                |tx| {
                    crate::repo::provider_certs::delete(tx, provider.as_str(), environment.as_str())
                },
                |removed| removed.then_some(entry),
            )
        })
        .await?;
    if !removed {
        return Err(ApiError::NotFound("No such provider certificate"));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": "Provider certificate removed" })))
}
