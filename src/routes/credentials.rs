//! The Payment Credentials API (SPEC §2.1). Every handler takes the owner from the
//! authenticated principal and passes it to the repository, which filters by it in SQL.

use std::collections::BTreeMap;

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::audit::{chain, Action, Actor, Event, Outcome, Reason, RequestMeta, Target};
use crate::clock::rfc3339;
use crate::crypto::envelope::{self, Contents};
use crate::crypto::Aad;
use crate::db::DbError;
use crate::domain::profile::{self, Profile};
use crate::domain::{ApiKey, CredentialId, Environment, PrivateKey, Provider, UserId, Username};
use crate::error::ApiError;
use crate::http::principal::{bearer_token, PendingUser};
use crate::http::{AuthenticatedService, AuthenticatedUser, Caller};
use crate::repo::credentials::{
    self as repo, CredentialRow, MetadataUpdate, NewCredential, Sealed, VersionRow,
};
use crate::routes::JsonObject;
use crate::state::AppState;
use crate::vault::{self, aad_of, Address, Lookup, Operation, Scope};

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

/// The binding a new version of `row` gets (its current version and environment, and the
/// version's profile).
fn aad_for_row<'a>(row: &'a CredentialRow, profile: Option<&'a str>) -> Aad<'a> {
    Aad {
        owner_id: row.owner_id,
        credential_id: row.id,
        provider: &row.provider,
        environment: &row.environment,
        version: row.current_version,
        profile,
    }
}

/// Seals `contents` with `settings` as the new version of `row`, under the master-key version
/// the database names active (read in the caller's transaction `tx`).
fn seal_new_version(
    tx: &mut crate::db::DbConn,
    keyring: &crate::crypto::Keyring,
    row: &CredentialRow,
    contents: &Contents,
    settings: &BTreeMap<String, String>,
) -> Result<Sealed, DbError> {
    let kek_version = crate::repo::key_versions::sealing_version(tx, keyring)?;
    let profile = Profile::of(&contents.secrets, settings).canonical();
    let envelope = envelope::seal_contents_under(
        keyring,
        kek_version,
        &aad_for_row(row, profile.as_deref()),
        contents,
    )?;
    Ok(Sealed { envelope, profile })
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

/// The provider's own key format must agree with the row's environment (checked inside the
/// write transaction, against the row as it will be).
fn check_key_matches(row: &CredentialRow, key: &SecretString) -> Result<(), DbError> {
    let provider = Provider::parse(&row.provider)?;
    let env = Environment::parse(&row.environment)?;
    Ok(provider.check_key_environment(key.expose_secret(), env)?)
}

pub async fn list(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
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
                seal_new_version(tx, &keyring, row, &contents, &settings)
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialRead;
    let trail = Trail::new(&state, &user, meta);
    let owner = trail.owner(ACTION).await?;
    let id = trail.id(ACTION, &path).await?;
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    if_match: IfMatch,
    path: web::Path<String>,
    body: web::Json<JsonObject<UpdateBody>>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialUpdate;
    let trail = Trail::new(&state, &user, meta);
    let owner = trail.owner(ACTION).await?;
    let id = trail.id(ACTION, &path).await?;
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
                          (before, previous): (&CredentialRow, &VersionRow),
                          after: &CredentialRow| {
                let contents = envelope::open_contents(
                    &keyring,
                    &aad_of(before, previous),
                    &previous.envelope(),
                )?;
                check_key_matches(after, &contents.private_key)?;
                let settings = match &settings {
                    Some(given) => {
                        profile::check_settings(Provider::parse(&after.provider)?, given)?;
                        given.clone()
                    }
                    None => stored_settings(previous)?,
                };
                seal_new_version(tx, &keyring, after, &contents, &settings)
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

pub async fn delete(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    if_match: IfMatch,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialDelete;
    let trail = Trail::new(&state, &user, meta);
    let owner = trail.owner(ACTION).await?;
    let id = trail.id(ACTION, &path).await?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateKeyBody {
    private_key: SecretString,
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

/// Where a new version's contents come from.
enum NewKey {
    /// What the caller sent; the rest carries over from the current version.
    Given {
        key: Option<PrivateKey>,
        secrets: BTreeMap<String, SecretString>,
    },
    /// The contents of an earlier version (rollback): it becomes the newest version.
    FromVersion(i32),
}

/// The settings a stored version's profile holds (a profile that does not parse is refused:
/// its version could not open anyway).
fn stored_settings(version: &VersionRow) -> Result<BTreeMap<String, String>, DbError> {
    Profile::parse(version.profile.as_deref())
        .map(|p| p.settings)
        .ok_or(DbError::Tampered("credential"))
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
                // The row must be as hazina wrote it before a new key is sealed to its
                // binding: its current version opens under the row's owner, provider and
                // environment, or nothing is written (an environment flipped in the database
                // must not make the next key sandbox-readable).
                let current = repo::version(tx, row.id, row.current_version - 1)?;
                let provider = Provider::parse(&row.provider)?;
                let (contents, settings) = match &source {
                    NewKey::Given { key, secrets } => {
                        profile::check_secrets(provider, secrets)?;
                        let settings = stored_settings(&current)?;
                        // Only what carries over is opened; a new key over a version with
                        // no secrets needs the old one's data key checked, nothing more.
                        let carried = if key.is_none() || current.profile.is_some() {
                            Some(envelope::open_contents(
                                &keyring,
                                &aad_of(row, &current),
                                &current.envelope(),
                            )?)
                        } else {
                            envelope::check_dek(
                                &keyring,
                                &aad_of(row, &current),
                                &current.envelope(),
                            )
                            .map_err(|_| DbError::Tampered("credential"))?;
                            None
                        };
                        let (old_key, mut merged) = match carried {
                            Some(c) => (Some(c.private_key), c.secrets),
                            None => (None, BTreeMap::new()),
                        };
                        let private_key = match (key, old_key) {
                            (Some(k), _) => k.secret().clone(),
                            (None, Some(old)) => old,
                            (None, None) => return Err(DbError::Tampered("credential")),
                        };
                        for (name, value) in secrets {
                            merged.insert(name.clone(), value.clone());
                        }
                        (
                            Contents {
                                private_key,
                                secrets: merged,
                            },
                            settings,
                        )
                    }
                    NewKey::FromVersion(n) => {
                        envelope::check_dek(&keyring, &aad_of(row, &current), &current.envelope())
                            .map_err(|_| DbError::Tampered("credential"))?;
                        let earlier = match repo::version(tx, row.id, *n) {
                            Err(DbError::Query(diesel::result::Error::NotFound)) => {
                                return Err(DbError::Rejected(crate::domain::ValidationError(
                                    "This credential has no such version".into(),
                                )))
                            }
                            other => other?,
                        };
                        if earlier.environment != row.environment {
                            return Err(DbError::Rejected(crate::domain::ValidationError(
                                "That version was sealed for the other environment and cannot be restored here".into(),
                            )));
                        }
                        let contents = envelope::open_contents(
                            &keyring,
                            &aad_of(row, &earlier),
                            &earlier.envelope(),
                        )?;
                        (contents, stored_settings(&earlier)?)
                    }
                };
                check_key_matches(row, &contents.private_key)?;
                seal_new_version(tx, &keyring, row, &contents, &settings)
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    if_match: IfMatch,
    path: web::Path<String>,
    body: web::Json<JsonObject<RotateBody>>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialRotate;
    let trail = Trail::new(&state, &user, meta);
    let owner = trail.owner(ACTION).await?;
    let id = trail.id(ACTION, &path).await?;
    let source = body.into_inner().0.into_new_key()?;
    let rotated = write_new_version(
        &state,
        owner,
        id,
        user.id,
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    if_match: IfMatch,
    path: web::Path<String>,
    body: web::Json<JsonObject<RollbackBody>>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialRollback;
    let trail = Trail::new(&state, &user, meta);
    let owner = trail.owner(ACTION).await?;
    let id = trail.id(ACTION, &path).await?;
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialRead;
    let trail = Trail::new(&state, &user, meta);
    let owner = trail.owner(ACTION).await?;
    let id = trail.id(ACTION, &path).await?;
    let Some((row, list)) = state.db(move |c| repo::list_versions(c, owner, id)).await? else {
        return Err(trail.not_found(ACTION, Some(id)).await);
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    if_match: IfMatch,
    path: web::Path<String>,
    body: web::Json<JsonObject<RotateBody>>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialRotate;
    let trail = Trail::new(&state, &user, meta);
    let (owner, id) = admin_owner_of(&trail, ACTION, &path).await?;
    let source = body.into_inner().0.into_new_key()?;
    let rotated = write_new_version(
        &state,
        owner,
        id,
        user.id,
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

/// An administrator lists any owner's credential versions.
pub async fn admin_versions(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialRead;
    let trail = Trail::new(&state, &user, meta);
    let (owner, id) = admin_owner_of(&trail, ACTION, &path).await?;
    let Some((row, list)) = state.db(move |c| repo::list_versions(c, owner, id)).await? else {
        return Err(trail.not_found(ACTION, Some(id)).await);
    };
    Ok(with_etag(row.current_version).json(versions_body(&row, list)))
}

#[derive(Serialize)]
struct RevealView<'a> {
    credentials_id: i64,
    provider: &'a str,
    provider_display: &'static str,
    private_key: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    secrets: BTreeMap<&'a str, &'a str>,
    message: &'static str,
}

/// The grace window's start for webhook secrets: versions made since then still let the one
/// before them validate.
pub(crate) fn grace_since(state: &AppState) -> i64 {
    state.clock.now() - i64::from(state.config.webhook_grace_seconds)
}

/// Reveal (SPEC §2.1, §2.3): an owner reveals their own key (unless owner reveal is off); a
/// service reveals a key it holds a live grant naming `reveal` for, if the credential is
/// active. Both through the release gate ([`crate::vault`]).
pub async fn reveal(
    state: web::Data<AppState>,
    req: HttpRequest,
    meta: RequestMeta,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialReveal;
    const OP: Operation = Operation::Reveal;
    let requested = CredentialId::parse(&path);
    if bearer_token(&req).is_none() {
        // Only a verified client certificate (and no token) makes a service.
        let service =
            AuthenticatedService::from_request(&req, &mut actix_web::dev::Payload::None).await?;
        let caller = vault::Caller {
            gate: state.gate(),
            actor: Actor::service(&service),
            meta: &meta,
        };
        let lookup = find_for_service(&state, &service, requested.map(Address::Id), OP, 0).await?;
        return reveal_answer(&caller, requested, lookup).await;
    }
    let keyring = state.keyring.clone();
    let (user, lookup) = confirmed_with(&req, move |c, owner| match requested {
        Some(id) => {
            vault::find(c, &keyring, Scope::Owner(owner), &Address::Id(id), OP, 0).map(Some)
        }
        None => Ok(None),
    })
    .await?;
    let trail = Trail::new(&state, &user, meta.clone());
    trail.owner(ACTION).await?;
    if !state.config.owner_reveal {
        let ev = trail
            .event(ACTION)
            .outcome(Outcome::Denied, Some(Reason::OwnerRevealDisabled));
        state.audit.record_best_effort(ev).await;
        return Err(ApiError::Forbidden(
            "Revealing private keys is reserved for services on this vault",
        ));
    }
    let caller = vault::Caller {
        gate: state.gate(),
        actor: Actor::user(&user),
        meta: &meta,
    };
    reveal_answer(&caller, requested, lookup.unwrap_or(Lookup::NotFound)).await
}

/// What a service's request finds through the gate's `find`, on a database thread; an
/// address that cannot name a row finds nothing (and is answered like a missing one).
pub(crate) async fn find_for_service(
    state: &AppState,
    service: &AuthenticatedService,
    address: Option<Address>,
    operation: Operation,
    grace_since: i64,
) -> Result<Lookup, ApiError> {
    let Some(address) = address else {
        return Ok(Lookup::NotFound);
    };
    let keyring = state.keyring.clone();
    let scope = Scope::Service(service.id);
    state
        .db(move |c| vault::find(c, &keyring, scope, &address, operation, grace_since))
        .await
        .map_err(ApiError::from)
}

/// The reveal's answer, through the gate: the key (and the provider secrets) leave only once
/// the entry is durable.
async fn reveal_answer(
    caller: &vault::Caller<'_>,
    requested: Option<CredentialId>,
    lookup: Lookup,
) -> Result<HttpResponse, ApiError> {
    let body = vault::release(caller, Operation::Reveal, None, requested, lookup, |o| {
        let body = serde_json::to_vec(&RevealView {
            credentials_id: o.row.id,
            provider: &o.row.provider,
            provider_display: o.provider.display_name(),
            private_key: o.contents.private_key.expose_secret(),
            secrets: o
                .contents
                .secrets
                .iter()
                .map(|(k, v)| (k.as_str(), v.expose_secret()))
                .collect(),
            message: "Private key retrieved successfully",
        })
        .map_err(|e| vault::Refusal::Storage(e.into()))?;
        Ok(vault::Answer {
            value: body,
            reason: None,
        })
    })
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .content_type("application/json")
        .body(body))
}

/// Authenticates the bearer-token caller and runs `query` for them in the **same** trip to
/// a blocking thread (the hot paths, reveal and verify, make one trip instead of two). The
/// query runs only once the session is confirmed live, is scoped by the token's user in its
/// SQL, and its answer is dropped unless authentication then completes.
pub(crate) async fn confirmed_with<T, F>(
    req: &HttpRequest,
    query: F,
) -> Result<(AuthenticatedUser, Option<T>), ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut crate::db::DbConn, UserId) -> Result<Option<T>, DbError> + Send + 'static,
{
    let (pending, state) = PendingUser::from_request(req).await?;
    let probe = pending.probe();
    let owner = pending.user_id();
    let now = state.clock.now();
    let keyring = state.keyring.clone();
    let (live, found) = state
        .db(move |c| {
            let live = probe.confirm(c, &keyring, now)?;
            let found = match live {
                Some(_) => query(c, owner)?,
                None => None,
            };
            Ok((live, found))
        })
        .await?;
    let user = pending.finish(&state, live).await?;
    Ok((user, found))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    pub(crate) owner: String,
    pub(crate) provider: String,
    pub(crate) environment: String,
}

impl LookupQuery {
    /// The address it names; `None` for an owner name that cannot exist (answered like a
    /// missing credential). Bad provider or environment names are 400.
    pub(crate) fn address(&self) -> Result<Option<Address>, ApiError> {
        let provider = Provider::parse(&self.provider)?;
        let environment = Environment::parse(&self.environment)?;
        Ok(Username::parse(&self.owner)
            .ok()
            .map(|owner| Address::Lookup {
                owner: owner.as_str().to_owned(),
                provider,
                environment,
            }))
    }
}

/// A service finds a granted key without knowing its id: by owner, provider and environment.
pub async fn lookup(
    state: web::Data<AppState>,
    caller: Caller,
    meta: RequestMeta,
    query: web::Query<LookupQuery>,
) -> Result<HttpResponse, ApiError> {
    let Caller::Service(service) = &caller else {
        return Err(ApiError::Forbidden(
            "This endpoint is for services; owners use /payments/credentials/provider/{provider}/",
        ));
    };
    let address = query.address()?;
    let gate = vault::Caller {
        gate: state.gate(),
        actor: Actor::service(service),
        meta: &meta,
    };
    let lookup = find_for_service(&state, service, address, Operation::Reveal, 0).await?;
    reveal_answer(&gate, None, lookup).await
}

pub async fn verify(
    state: web::Data<AppState>,
    req: HttpRequest,
    meta: RequestMeta,
    path: web::Path<String>,
    body: web::Json<JsonObject<PrivateKeyBody>>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialVerify;
    let requested = CredentialId::parse(&path);
    let keyring = state.keyring.clone();
    // A credential whose state fails its check (edited, or written back from before) is
    // answered like a missing one: its current version cannot be believed.
    let (user, found) = confirmed_with(&req, move |c, owner| match requested {
        Some(id) => Ok(repo::get_current(c, &keyring, owner, id)?
            .filter(|(_, _, verdict)| verdict.is_intact())
            .map(|(row, version, _)| (row, version))),
        None => Ok(None),
    })
    .await?;
    let trail = Trail::new(&state, &user, meta);
    trail.owner(ACTION).await?;
    let id = trail.id(ACTION, &path).await?;
    // A candidate that no stored key could equal (NUL, over the maximum length) is refused as
    // bad input; any other wrong candidate, however short, is simply not valid.
    let candidate = body.into_inner().0.private_key;
    PrivateKey::check_candidate(candidate.expose_secret())?;
    let Some((row, version)) = found else {
        return Err(trail.not_found(ACTION, Some(id)).await);
    };
    let provider = provider_of(&row)?;
    let is_valid = envelope::verify(
        &state.keyring,
        &aad_of(&row, &version),
        &version.envelope(),
        &candidate,
    )
    .map_err(ApiError::internal)?;
    // Fail closed: an answer about a secret is given only once it is on the record. A wrong
    // candidate is a denial (a security team counts guesses by it), never a success.
    let (outcome, reason) = if is_valid {
        (Outcome::Success, None)
    } else {
        (Outcome::Denied, Some(Reason::KeyMismatch))
    };
    trail
        .durable(
            trail
                .event(ACTION)
                .target(Target::credential(&row))
                .outcome(outcome, reason),
        )
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "credentials_id": row.id,
        "provider": row.provider,
        "provider_display": provider.display_name(),
        "is_valid": is_valid,
        "message": if is_valid { "Credentials verified successfully" } else { "Invalid private key" },
    })))
}

pub async fn toggle_status(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    if_match: IfMatch,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialToggle;
    let trail = Trail::new(&state, &user, meta);
    let owner = trail.owner(ACTION).await?;
    let id = trail.id(ACTION, &path).await?;
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
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogQuery {
    #[serde(default)]
    cursor: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

/// One entry of an owner's access log (SPEC §9.5): who used the credential, how, from where.
#[derive(Serialize)]
struct AccessLogEntry {
    seq: i64,
    occurred_at: String,
    actor_kind: String,
    actor_name: Option<String>,
    source_ip: Option<String>,
    action: String,
    operation: Option<String>,
    reference: Option<String>,
    outcome: String,
    reason: Option<String>,
}

impl AccessLogQuery {
    /// A page of the access log (for the console).
    pub(crate) fn page(cursor: Option<i64>, limit: i64) -> Self {
        AccessLogQuery {
            cursor,
            limit: Some(limit),
        }
    }
}

const ACCESS_LOG_MAX: i64 = 500;

/// `GET /payments/credentials/{id}/access-log/`: every audit entry about the owner's
/// credential, oldest first, with a cursor. Scoped by owner in the SQL.
pub async fn access_log(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    path: web::Path<String>,
    query: web::Query<AccessLogQuery>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialAccessLog;
    let trail = Trail::new(&state, &user, meta);
    let owner = trail.owner(ACTION).await?;
    let id = trail.id(ACTION, &path).await?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=ACCESS_LOG_MAX).contains(&limit) {
        return Err(ApiError::Invalid(format!(
            "limit must be from 1 to {ACCESS_LOG_MAX}"
        )));
    }
    let after = query.cursor.unwrap_or(0).max(0);
    let Some(rows) = state
        .db(move |c| repo::access_log(c, owner, id, after, limit))
        .await?
    else {
        return Err(trail.not_found(ACTION, Some(id)).await);
    };
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let entries: Vec<AccessLogEntry> = rows
        .into_iter()
        .map(|r| AccessLogEntry {
            seq: r.seq,
            occurred_at: crate::clock::rfc3339_micros(r.occurred_at),
            actor_kind: r.actor_kind,
            actor_name: r.actor_name,
            source_ip: r.source_ip,
            action: r.action,
            operation: r.operation,
            reference: r.reference,
            outcome: r.outcome,
            reason: r.reason,
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({ "credentials_id": id.get(), "entries": entries, "next_cursor": next_cursor })))
}
