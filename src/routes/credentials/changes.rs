//! A credential's versions: metadata updates that move its binding, rotations, rollbacks and
//! the version history (SPEC §2.1, §4). Every new version is opened and sealed by the gate's
//! write side ([`crate::vault::versions`]), in the write's own transaction, with its entry.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::audit::{Action, Event, Outcome, Reason};
use crate::clock::rfc3339;
use crate::db::DbError;
use crate::domain::{ApiKey, CredentialId, Environment, PrivateKey, UserId};
use crate::error::ApiError;
use crate::http::UserRequest;
use crate::repo::credentials::{self as repo, CredentialRow, MetadataUpdate, VersionRow};
use crate::routes::JsonObject;
use crate::state::AppState;
use crate::vault::versions::{self as sealing, NewKey};

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    /// Replaces the version's settings (a new version is sealed: they are bound to it).
    #[serde(default)]
    settings: Option<BTreeMap<String, String>>,
}

pub async fn update(
    UserRequest { state, user, meta }: UserRequest,
    if_match: IfMatch,
    path: web::Path<String>,
    body: web::Json<JsonObject<UpdateBody>>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialUpdate;
    let trail = Trail::new(&state, &user, meta);
    let (owner, id) = trail.owned(ACTION, &path).await?;
    let body = body.into_inner().0;
    if body.api_key.is_none() && body.environment.is_none() && body.settings.is_none() {
        return Err(ApiError::Invalid(
            "Provide api_key, environment and/or settings to update".into(),
        ));
    }
    let api_key = body.api_key.map(ApiKey::parse).transpose()?;
    let environment = body
        .environment
        .as_deref()
        .map(Environment::parse)
        .transpose()?;
    let settings = body.settings;
    let keyring = state.keyring.clone();
    let max_versions = state.config.max_versions;
    let now = state.clock.now();
    let entry = trail.change(ACTION);
    let updated = state
        .db(move |c| {
            // A new environment or new settings change the binding, so the secrets are
            // re-sealed as a new version; the provider's own key format must agree with the
            // new environment.
            let reseal = |tx: &mut crate::db::DbConn,
                          before: (&CredentialRow, &VersionRow),
                          after: &CredentialRow| {
                sealing::reseal(tx, &keyring, before, after, settings.as_ref())
            };
            let update = MetadataUpdate {
                api_key: api_key.as_ref().map(ApiKey::as_str),
                environment: environment.map(Environment::as_str),
                settings: settings.is_some(),
            };
            with_version_cap(c, max_versions, entry, |tx| {
                repo::update_metadata(tx, &keyring, owner, id, update, if_match.0, &reseal, now)
            })?
            .map(|row| repo::with_profile(c, row))
            .transpose()
        })
        .await
        .map_err(|e| match e {
            DbError::Conflict => ApiError::Conflict(
                "Payment credentials for this provider and environment already exist".into(),
            ),
            other => other.into(),
        })?;
    let Some(found) = updated else {
        return Err(trail.not_found(ACTION, Some(id)).await);
    };
    // A new key, environment or settings: the provider token was issued for the old ones.
    state.broker.forget(found.0.id);
    Ok(HttpResponse::Ok().json(view(found)?))
}

/// A rotation: a new private key and/or new provider secrets; what is not given carries over
/// from the current version, resealed under the new version's data key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    #[serde(default, deserialize_with = "present")]
    private_key: Option<SecretString>,
    #[serde(default, deserialize_with = "present")]
    secrets: Option<BTreeMap<String, SecretString>>,
}

/// An optional field that, when present, must hold a value: `null` is the wrong type (as it
/// was when the field was required), not "absent".
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

impl RotateBody {
    fn into_new_key(self) -> Result<NewKey, ApiError> {
        if self.private_key.is_none() && self.secrets.as_ref().is_none_or(|s| s.is_empty()) {
            return Err(ApiError::Invalid(
                "Missing required field: private_key".into(),
            ));
        }
        Ok(NewKey::Given {
            key: self.private_key.map(PrivateKey::parse).transpose()?,
            secrets: self.secrets.unwrap_or_default(),
        })
    }
}

/// Writes a new version of `owner`'s credential `id` as `actor`: a fresh DEK, the row's
/// current binding, the version number taken under the row lock.
async fn write_new_version(
    state: &AppState,
    owner: UserId,
    id: CredentialId,
    actor: UserId,
    expected: Option<i32>,
    source: NewKey,
    entry: Event,
) -> Result<Option<(CredentialRow, Option<String>)>, ApiError> {
    let keyring = state.keyring.clone();
    let max_versions = state.config.max_versions;
    let now = state.clock.now();
    state
        .db(move |c| {
            let seal = |tx: &mut crate::db::DbConn, row: &CredentialRow| {
                sealing::next_version(tx, &keyring, row, &source)
            };
            with_version_cap(c, max_versions, entry, |tx| {
                repo::add_version(tx, &keyring, owner, id, actor, expected, &seal, now)
            })?
            .map(|row| repo::with_profile(c, row))
            .transpose()
        })
        .await
        .inspect(|written| {
            // The provider token was issued for the version this one replaces.
            if let Some((row, _)) = written {
                state.broker.forget(row.id);
            }
        })
        .map_err(ApiError::from)
}

pub async fn rotate(
    UserRequest { state, user, meta }: UserRequest,
    if_match: IfMatch,
    path: web::Path<String>,
    body: web::Json<JsonObject<RotateBody>>,
) -> Result<HttpResponse, ApiError> {
    let trail = Trail::new(&state, &user, meta);
    let target = trail.owned(Action::CredentialRotate, &path).await?;
    rotate_key(&trail, target, user.id, if_match, body.into_inner().0).await
}

/// Writes `body`'s key as a new version of the credential `target` names, by `actor`: the
/// rotation an owner or an administrator asked for.
async fn rotate_key(
    trail: &Trail<'_>,
    (owner, id): (UserId, CredentialId),
    actor: UserId,
    if_match: IfMatch,
    body: RotateBody,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialRotate;
    let source = body.into_new_key()?;
    let rotated = write_new_version(
        trail.state,
        owner,
        id,
        actor,
        if_match.0,
        source,
        trail.change(ACTION),
    )
    .await?;
    let Some(row) = rotated else {
        return Err(trail.not_found(ACTION, Some(id)).await);
    };
    Ok(with_etag(row.0.current_version).json(serde_json::json!({
        "message": "Private key updated successfully",
        "credentials": view(row)?,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    version: i32,
}

/// Rolls back to an earlier version's key, which becomes a new version (history is never
/// rewritten).
pub async fn rollback(
    UserRequest { state, user, meta }: UserRequest,
    if_match: IfMatch,
    path: web::Path<String>,
    body: web::Json<JsonObject<RollbackBody>>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialRollback;
    let trail = Trail::new(&state, &user, meta);
    let (owner, id) = trail.owned(ACTION, &path).await?;
    let version = body.into_inner().0.version;
    if version < 1 {
        return Err(ApiError::Invalid(
            "This credential has no such version".into(),
        ));
    }
    let rolled = write_new_version(
        &state,
        owner,
        id,
        user.id,
        if_match.0,
        NewKey::FromVersion(version),
        trail.change(ACTION),
    )
    .await?;
    let Some(row) = rolled else {
        return Err(trail.not_found(ACTION, Some(id)).await);
    };
    Ok(with_etag(row.0.current_version).json(serde_json::json!({
        "message": format!("Private key rolled back to version {version}"),
        "credentials": view(row)?,
    })))
}

#[derive(Serialize)]
struct VersionView {
    version: i32,
    environment: String,
    created_at: String,
    created_by: VersionAuthor,
    is_current: bool,
    master_key_version: i32,
}

#[derive(Serialize)]
struct VersionAuthor {
    id: i64,
    username: Option<String>,
}

fn versions_body(row: &CredentialRow, versions: Vec<repo::VersionMeta>) -> serde_json::Value {
    let list: Vec<VersionView> = versions
        .into_iter()
        .map(|v| VersionView {
            is_current: v.version == row.current_version,
            version: v.version,
            environment: v.environment,
            created_at: rfc3339(v.created_at),
            created_by: VersionAuthor {
                id: v.created_by,
                username: v.created_by_name,
            },
            master_key_version: v.kek_version,
        })
        .collect();
    serde_json::json!({ "credentials_id": row.id, "current_version": row.current_version, "versions": list })
}

/// A credential's versions, newest first: metadata only.
pub async fn versions(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let trail = Trail::new(&state, &user, meta);
    let target = trail.owned(Action::CredentialRead, &path).await?;
    versions_of(&trail, target).await
}

/// The version history of the credential `target` names (metadata only).
async fn versions_of(
    trail: &Trail<'_>,
    (owner, id): (UserId, CredentialId),
) -> Result<HttpResponse, ApiError> {
    let found = trail
        .state
        .db(move |c| repo::list_versions(c, owner, id))
        .await?;
    let Some((row, list)) = found else {
        return Err(trail.not_found(Action::CredentialRead, Some(id)).await);
    };
    Ok(with_etag(row.current_version).json(versions_body(&row, list)))
}

/// Administrators act on any owner's credential; the owner is looked up once, then every
/// query is scoped by it as usual. Non-admins get 403 (recorded).
async fn admin_owner_of(
    trail: &Trail<'_>,
    action: Action,
    raw: &str,
) -> Result<(UserId, CredentialId), ApiError> {
    let is_admin = trail
        .user
        .is_some_and(|u| u.role == crate::domain::Role::Admin);
    if !is_admin {
        let ev = trail
            .event(action)
            .outcome(Outcome::Denied, Some(Reason::RoleForbidden));
        trail.state.audit.record_best_effort(ev).await;
        return Err(ApiError::Forbidden("Only administrators may do this"));
    }
    let id = trail.id(action, raw).await?;
    match trail.state.db(move |c| repo::owner_of(c, id)).await? {
        Some(owner) => Ok((owner, id)),
        None => Err(trail.not_found(action, Some(id)).await),
    }
}

/// An administrator rotates any owner's credential key (audited as the administrator).
pub async fn admin_rotate(
    UserRequest { state, user, meta }: UserRequest,
    if_match: IfMatch,
    path: web::Path<String>,
    body: web::Json<JsonObject<RotateBody>>,
) -> Result<HttpResponse, ApiError> {
    let trail = Trail::new(&state, &user, meta);
    let target = admin_owner_of(&trail, Action::CredentialRotate, &path).await?;
    rotate_key(&trail, target, user.id, if_match, body.into_inner().0).await
}

/// An administrator lists any owner's credential versions.
pub async fn admin_versions(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let trail = Trail::new(&state, &user, meta);
    let target = admin_owner_of(&trail, Action::CredentialRead, &path).await?;
    versions_of(&trail, target).await
}
