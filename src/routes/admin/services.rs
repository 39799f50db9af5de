//! Services (clients authenticated by certificate) and revoked client certificates.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use super::{conflict, Admin};
use crate::audit::{chain, Action};
use crate::clock::rfc3339;
use crate::domain::{parse_allowlist, parse_fingerprint, ServiceIdentity, ServiceName};
use crate::error::ApiError;
use crate::http::UserRequest;
use crate::repo::services::{self as repo, ServiceRow};
use crate::routes::JsonObject;

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
    UserRequest { state, user, meta }: UserRequest,
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
    UserRequest { state, user, meta }: UserRequest,
) -> Result<HttpResponse, ApiError> {
    Admin::check(&state, &user, meta, Action::AdminRead).await?;
    let rows = state.db(repo::list_services).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(ServiceView::from).collect::<Vec<_>>()))
}

pub async fn disable_service(
    UserRequest { state, user, meta }: UserRequest,
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

// Revoked client certificates: a service's certificate taken away, whatever it names.

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
    UserRequest { state, user, meta }: UserRequest,
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
    UserRequest { state, user, meta }: UserRequest,
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
