//! Provider certificates (SPEC §9.2): Safaricom's public certificate per environment.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::Admin;
use crate::audit::{chain, Action, Target};
use crate::clock::rfc3339;
use crate::domain::{Environment, Provider};
use crate::error::ApiError;
use crate::http::UserRequest;
use crate::repo::provider_certs::set_certificate;

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

/// `PUT /admin/provider-certificates/{provider}/{environment}/` with a PEM or DER body.
pub async fn set_provider_certificate(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::AdminProviderCertificateSet;
    let admin = Admin::check(&state, &user, meta, ACTION).await?;
    let (provider, environment) = certificate_slot(&path)?;
    let pem = crate::providers::compute::certificate_pem(&body).map_err(ApiError::Invalid)?;
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
    UserRequest { state, user, meta }: UserRequest,
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
    UserRequest { state, user, meta }: UserRequest,
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
