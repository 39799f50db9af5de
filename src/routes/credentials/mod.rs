//! The Payment Credentials API (SPEC §2.1). Every handler takes the owner from the
//! authenticated principal and passes it to the repository, which filters by it in SQL.
//!
//! - [`changes`]: updates, rotations, rollbacks and the version history;
//! - [`reveal`]: reveal, lookup and verify, through the release gate;
//! - [`access_log`]: an owner's access log of one credential.

mod access_log;
mod changes;
mod reveal;

pub use access_log::{access_log, AccessLogQuery};
pub use changes::{admin_rotate, admin_versions, rollback, rotate, update, versions};
pub(crate) use reveal::{confirmed_with, find_for_service, grace_since};
pub use reveal::{lookup, reveal, verify, LookupQuery};

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::audit::{chain, Action, Actor, Event, Outcome, Reason, RequestMeta, Target};
use crate::clock::rfc3339;
use crate::crypto::envelope::Contents;
use crate::db::DbError;
use crate::domain::profile::{self, Profile};
use crate::domain::{ApiKey, CredentialId, Environment, PrivateKey, Provider, UserId};
use crate::error::ApiError;
use crate::http::{AuthenticatedUser, UserRequest};
use crate::repo::credentials::{self as repo, CredentialRow, NewCredential};
use crate::routes::JsonObject;
use crate::state::AppState;
use crate::vault::versions as sealing;

/// The credential as callers see it: metadata only, never key material.
#[derive(Debug, Serialize)]
pub struct CredentialView {
    id: i64,
    provider: String,
    provider_display: &'static str,
    environment: String,
    is_active: bool,
    is_live: bool,
    is_sandbox: bool,
    api_key: Option<String>,
    version: i32,
    /// The names of the provider secrets this version holds (never their values); absent
    /// for a credential without any, so two-field credentials keep their published shape.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    secrets: Vec<String>,
    /// The provider settings of this version (absent when there are none).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    settings: BTreeMap<String, String>,
    created_at: String,
    updated_at: String,
}

fn provider_of(row: &CredentialRow) -> Result<Provider, ApiError> {
    Provider::parse(&row.provider)
        .map_err(|_| ApiError::internal(anyhow::anyhow!("stored provider is unknown")))
}

fn view((row, profile): (CredentialRow, Option<String>)) -> Result<CredentialView, ApiError> {
    let provider = provider_of(&row)?;
    let profile = Profile::parse(profile.as_deref()).unwrap_or_default();
    Ok(CredentialView {
        secrets: profile.secrets,
        settings: profile.settings,
        id: row.id,
        provider_display: provider.display_name(),
        is_live: row.environment == Environment::Live.as_str(),
        is_sandbox: row.environment == Environment::Sandbox.as_str(),
        provider: row.provider,
        environment: row.environment,
        is_active: row.is_active,
        api_key: row.api_key,
        version: row.current_version,
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
    })
}

/// The audit trail of one request: who, from where, and the events it produces.
struct Trail<'a> {
    state: &'a AppState,
    actor: Actor,
    /// The calling user, when it is one (services own nothing).
    user: Option<&'a AuthenticatedUser>,
    meta: RequestMeta,
}

impl<'a> Trail<'a> {
    fn new(state: &'a AppState, user: &'a AuthenticatedUser, meta: RequestMeta) -> Self {
        Trail {
            state,
            actor: Actor::user(user),
            user: Some(user),
            meta,
        }
    }

    fn event(&self, action: Action) -> Event {
        Event::new(
            self.state.clock.now_micros(),
            self.actor.clone(),
            &self.meta,
            action,
        )
    }

    /// The caller may own credentials; an auditor's attempt is recorded as denied.
    async fn owner(&self, action: Action) -> Result<UserId, ApiError> {
        let Some(user) = self.user else {
            return Err(ApiError::Forbidden(
                crate::http::principal::SERVICE_FORBIDDEN,
            ));
        };
        match user.require_owner() {
            Ok(owner) => Ok(owner),
            Err(e) => {
                let ev = self
                    .event(action)
                    .outcome(Outcome::Denied, Some(Reason::RoleForbidden));
                self.state.audit.record_best_effort(ev).await;
                Err(e)
            }
        }
    }

    /// Records a denied attempt on an id that is missing or not the caller's, and answers
    /// exactly as for a missing id.
    async fn not_found(&self, action: Action, id: Option<CredentialId>) -> ApiError {
        let ev = self
            .event(action)
            .target(Target::requested(id))
            .outcome(Outcome::Denied, Some(Reason::NotFoundOrNotOwner));
        self.state.audit.record_best_effort(ev).await;
        ApiError::CredentialNotFound
    }

    async fn id(&self, action: Action, raw: &str) -> Result<CredentialId, ApiError> {
        match CredentialId::parse(raw) {
            Some(id) => Ok(id),
            None => Err(self.not_found(action, None).await),
        }
    }

    /// The owner (see [`owner`](Self::owner)) and the credential id a path names (see
    /// [`id`](Self::id)), in that order: an auditor is refused before the id is read.
    async fn owned(&self, action: Action, raw: &str) -> Result<(UserId, CredentialId), ApiError> {
        let owner = self.owner(action).await?;
        Ok((owner, self.id(action, raw).await?))
    }

    /// The audit entry of a change, made now and completed with its target by
    /// [`entry_of`] inside the change's own transaction.
    fn change(&self, action: Action) -> Event {
        self.event(action)
    }

    /// Fail closed: the caller gets nothing unless this entry is durably committed.
    async fn durable(&self, ev: Event) -> Result<(), ApiError> {
        self.state
            .audit
            .record(ev)
            .await
            .map(|_| ())
            .map_err(|e| ApiError::Unavailable(anyhow::anyhow!("audit entry not written: {e}")))
    }
}

/// The entry `base` records for a change to `row` (none when nothing was changed).
fn entry_of(base: Event, row: Option<&CredentialRow>) -> Option<Event> {
    row.map(|row| base.target(Target::credential(row)))
}

/// A write of a new version and its entries: the change's own, then one
/// `credential.version_shred` per version the cap shredded (SPEC §15).
fn entries_of(base: Event, written: &(Option<CredentialRow>, Vec<i32>)) -> Vec<Event> {
    let (row, shredded) = written;
    let Some(row) = row else {
        return Vec::new();
    };
    let mut entries = vec![base.clone().target(Target::credential(row))];
    for _ in shredded {
        let mut shred = base.clone().target(Target::credential(row));
        shred.action = Action::CredentialVersionShred;
        entries.push(shred.outcome(Outcome::Success, Some(Reason::MaxVersions)));
    }
    entries
}

/// Writes a new version with `write` and keeps the credential within `HAZINA_MAX_VERSIONS`,
/// in one transaction with its entries.
fn with_version_cap(
    c: &mut crate::db::DbConn,
    max: u32,
    entry: Event,
    write: impl FnOnce(&mut crate::db::DbConn) -> Result<Option<CredentialRow>, DbError>,
) -> Result<Option<CredentialRow>, DbError> {
    // The shredded version's rows are overwritten in the database file (`secure_delete`);
    // their copies in SQLite's WAL go at its next checkpoint. Unlike a DELETE, the cap does
    // not force one: a credential rotated past its cap would pay a checkpoint on every write.
    let (row, _) = chain::with_entries(
        c,
        |tx| {
            let row = write(tx)?;
            let shredded = match &row {
                Some(r) => repo::shred_beyond(tx, r, max)?,
                None => Vec::new(),
            };
            Ok((row, shredded))
        },
        |written| entries_of(entry, written),
    )?;
    Ok(row)
}

/// A request's secrets and (when given) settings.
type CheckedProfile = (
    BTreeMap<String, SecretString>,
    Option<BTreeMap<String, String>>,
);

/// The secrets and settings a request names, checked against the provider's table.
fn checked_profile(
    provider: Provider,
    secrets: Option<BTreeMap<String, SecretString>>,
    settings: Option<BTreeMap<String, String>>,
) -> Result<CheckedProfile, ApiError> {
    let secrets = secrets.unwrap_or_default();
    profile::check_secrets(provider, &secrets)?;
    if let Some(settings) = &settings {
        profile::check_settings(provider, settings)?;
    }
    Ok((secrets, settings))
}

/// `If-Match: "<version>"` (optimistic concurrency on writes). Absent → `None`; a value that
/// names no version → 400.
pub struct IfMatch(pub Option<i32>);

impl actix_web::FromRequest for IfMatch {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let parsed = match req.headers().get(actix_web::http::header::IF_MATCH) {
            None => Ok(IfMatch(None)),
            Some(v) => v
                .to_str()
                .ok()
                .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
                .and_then(|s| s.parse::<i32>().ok())
                .filter(|v| *v >= 1)
                .map(|v| IfMatch(Some(v)))
                .ok_or_else(|| {
                    ApiError::Invalid("If-Match must name a credential version, e.g. \"3\"".into())
                }),
        };
        std::future::ready(parsed)
    }
}

/// A credential answer with its version as the entity tag, for `If-Match`.
fn with_etag(version: i32) -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::Ok();
    res.insert_header((actix_web::http::header::ETAG, format!("\"{version}\"")));
    res
}

pub async fn list(
    UserRequest { state, user, meta }: UserRequest,
) -> Result<HttpResponse, ApiError> {
    let owner = Trail::new(&state, &user, meta)
        .owner(Action::CredentialRead)
        .await?;
    let rows = state
        .db(move |c| repo::list_with_profiles(c, owner))
        .await?;
    let views = rows.into_iter().map(view).collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(views))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    provider: String,
    api_key: String,
    private_key: SecretString,
    #[serde(default)]
    environment: Option<String>,
    /// Provider secrets (SPEC §9.1), sealed with the private key.
    #[serde(default)]
    secrets: Option<BTreeMap<String, SecretString>>,
    /// Provider settings, bound to the version.
    #[serde(default)]
    settings: Option<BTreeMap<String, String>>,
}

pub async fn create(
    UserRequest { state, user, meta }: UserRequest,
    body: web::Json<JsonObject<CreateBody>>,
) -> Result<HttpResponse, ApiError> {
    let trail = Trail::new(&state, &user, meta);
    let owner = trail.owner(Action::CredentialCreate).await?;
    let body = body.into_inner().0;
    let provider = Provider::parse(&body.provider)?;
    let environment = Environment::parse(body.environment.as_deref().unwrap_or("sandbox"))?;
    let api_key = ApiKey::parse(body.api_key)?;
    let key = PrivateKey::parse(body.private_key)?;
    provider.check_key_environment(key.secret().expose_secret(), environment)?;
    provider.check_key_environment(api_key.as_str(), environment)?;
    let (secrets, settings) = checked_profile(provider, body.secrets, body.settings)?;
    let settings = settings.unwrap_or_default();
    let contents = Contents {
        private_key: key.secret().clone(),
        secrets,
    };

    let id = CredentialId::generate();
    let now = state.clock.now();
    let keyring = state.keyring.clone();
    let entry = trail.change(Action::CredentialCreate);
    let row = state
        .db(move |c| {
            let seal = |tx: &mut crate::db::DbConn, row: &CredentialRow| {
                sealing::seal_new_version(tx, &keyring, row, &contents, &settings)
            };
            let new = NewCredential {
                id,
                owner,
                provider: provider.as_str(),
                environment: environment.as_str(),
                api_key: api_key.as_str(),
            };
            let row = chain::with_entry(
                c,
                |tx| repo::create(tx, &keyring, new, &seal, now),
                |row| entry_of(entry, Some(row)),
            )?;
            repo::with_profile(c, row)
        })
        .await
        .map_err(|e| match e {
            DbError::Conflict => ApiError::Conflict(format!(
                "Payment credentials for {} ({}) already exist",
                provider.display_name(),
                environment.as_str()
            )),
            other => other.into(),
        })?;
    Ok(HttpResponse::Created().json(view(row)?))
}

pub async fn get_one(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialRead;
    let trail = Trail::new(&state, &user, meta);
    let (owner, id) = trail.owned(ACTION, &path).await?;
    let Some(found) = state
        .db(move |c| {
            repo::get(c, owner, id)?
                .map(|row| repo::with_profile(c, row))
                .transpose()
        })
        .await?
    else {
        return Err(trail.not_found(ACTION, Some(id)).await);
    };
    Ok(with_etag(found.0.current_version).json(view(found)?))
}

pub async fn delete(
    UserRequest { state, user, meta }: UserRequest,
    if_match: IfMatch,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialDelete;
    let trail = Trail::new(&state, &user, meta);
    let (owner, id) = trail.owned(ACTION, &path).await?;
    let now = state.clock.now();
    let entry = trail.change(ACTION);
    let keyring = state.keyring.clone();
    let Some(row) = state
        .db(move |c| {
            let deleted = chain::with_entry(
                c,
                |tx| repo::delete(tx, &keyring, owner, id, if_match.0, now),
                |row| entry_of(entry, row.as_ref()),
            )?;
            // Committed: now the copies the engine keeps (SQLite's WAL) go too, on the same
            // trip. A busy checkpoint is retried and logged, never a failed delete.
            if deleted.is_some() {
                crate::db::wal::checkpoint_after_shred(c);
            }
            Ok(deleted)
        })
        .await?
    else {
        return Err(trail.not_found(ACTION, Some(id)).await);
    };
    state.broker.forget(row.id);
    let provider = provider_of(&row)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "message": format!(
            "Payment credentials for {} have been successfully deleted",
            provider.display_name()
        )
    })))
}

pub async fn toggle_status(
    UserRequest { state, user, meta }: UserRequest,
    if_match: IfMatch,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialToggle;
    let trail = Trail::new(&state, &user, meta);
    let (owner, id) = trail.owned(ACTION, &path).await?;
    let now = state.clock.now();
    let entry = trail.change(ACTION);
    let keyring = state.keyring.clone();
    let Some(row) = state
        .db(move |c| {
            chain::with_entry(
                c,
                |tx| repo::toggle_active(tx, &keyring, owner, id, if_match.0, now),
                |row| entry_of(entry, row.as_ref()),
            )?
            .map(|row| repo::with_profile(c, row))
            .transpose()
        })
        .await?
    else {
        return Err(trail.not_found(ACTION, Some(id)).await);
    };
    state.broker.forget(row.0.id);
    let provider = provider_of(&row.0)?;
    let state_word = if row.0.is_active {
        "activated"
    } else {
        "deactivated"
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "message": format!("Payment credentials for {} have been {state_word}", provider.display_name()),
        "credentials": view(row)?,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderQuery {
    #[serde(default)]
    environment: Option<String>,
}

pub async fn by_provider(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
    query: web::Query<ProviderQuery>,
) -> Result<HttpResponse, ApiError> {
    let trail = Trail::new(&state, &user, meta);
    let owner = trail.owner(Action::CredentialRead).await?;
    let provider = Provider::parse(&path)?;
    let environment = query
        .environment
        .as_deref()
        .map(Environment::parse)
        .transpose()?;
    let mut rows = state
        .db(move |c| {
            repo::by_provider_with_profiles(
                c,
                owner,
                provider.as_str(),
                environment.map(Environment::as_str),
            )
        })
        .await?;
    match rows.len() {
        0 => {
            let ev = trail
                .event(Action::CredentialRead)
                .target(Target {
                    owner_id: Some(owner.get()),
                    provider: Some(provider.as_str().into()),
                    environment: environment.map(|e| e.as_str().into()),
                    ..Target::default()
                })
                .outcome(Outcome::Denied, Some(Reason::NotFoundOrNotOwner));
            state.audit.record_best_effort(ev).await;
            Err(ApiError::CredentialNotFound)
        }
        1 => Ok(HttpResponse::Ok().json(view(rows.remove(0))?)),
        _ => Err(ApiError::Invalid(format!(
            "Both sandbox and live credentials exist for {}; choose one with ?environment=",
            provider.display_name()
        ))),
    }
}
