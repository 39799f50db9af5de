//! Grants: which service may use which owner's credentials, for which operations.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use super::{conflict, Admin};
use crate::audit::{chain, Action, Target};
use crate::clock::rfc3339;
use crate::domain::{Environment, Provider};
use crate::error::ApiError;
use crate::http::UserRequest;
use crate::repo::services::{self as repo, grant_by_names, GrantChange, GrantRefused, GrantRow};
use crate::routes::JsonObject;
use crate::vault::Operations;

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
    UserRequest { state, user, meta }: UserRequest,
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
            grant_by_names(
                c,
                &keyring,
                &service,
                &owner,
                (provider, environment),
                &operations,
                now,
                entry,
            )
        })
        .await
        .map_err(conflict("A live grant with this scope"))?
        .map_err(refused)?;
    Ok(HttpResponse::Created().json(grant_view(grant, body.service, body.owner)))
}

/// The answer to a grant that was not made.
fn refused(why: GrantRefused) -> ApiError {
    match why {
        GrantRefused::NoService => ApiError::NotFound("No such service"),
        GrantRefused::NoOwner => ApiError::NotFound("No such owner"),
        taken @ GrantRefused::ScopeTaken(_) => ApiError::Conflict(taken.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateGrantBody {
    #[serde(default)]
    add_operations: Vec<String>,
    #[serde(default)]
    remove_operations: Vec<String>,
}

/// Adds operations to a live grant and takes others away (SPEC §9.5): the grant keeps its
/// id and scope, is re-signed, and the change is audited in the same transaction.
pub async fn update_grant(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
    body: web::Json<JsonObject<UpdateGrantBody>>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::AdminGrantUpdate).await?;
    let id: i64 = path
        .parse()
        .map_err(|_| ApiError::NotFound("No such live grant"))?;
    let body = body.into_inner().0;
    let add = Operations::parse_set(&body.add_operations)?;
    let remove = Operations::parse_set(&body.remove_operations)?;
    if add.is_empty() && remove.is_empty() {
        return Err(ApiError::Invalid(
            "Name an operation in add_operations or remove_operations".into(),
        ));
    }
    let keyring = state.keyring.clone();
    let entry = admin.event(Action::AdminGrantUpdate);
    let changed = state
        .db(move |c| repo::change_operations(c, &keyring, id, (&add, &remove), entry))
        .await?;
    match changed {
        GrantChange::Changed(grant, service, owner) => {
            Ok(HttpResponse::Ok().json(grant_view(grant, service, owner)))
        }
        GrantChange::NoLiveGrant => Err(ApiError::NotFound("No such live grant")),
        GrantChange::Refused(e) => Err(e.into()),
    }
}

pub async fn list_grants(
    UserRequest { state, user, meta }: UserRequest,
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
    UserRequest { state, user, meta }: UserRequest,
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
