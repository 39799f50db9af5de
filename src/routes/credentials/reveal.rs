//! Reveal, lookup and verify: the paths by which a key leaves, or is checked against a
//! candidate, through the release gate ([`crate::vault`]); an answer is given only once its
//! audit entry is durable.

use std::collections::BTreeMap;

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::audit::{Action, Actor, Outcome, Reason, RequestMeta, Target};
use crate::db::DbError;
use crate::domain::{CredentialId, Environment, PrivateKey, Provider, UserId, Username};
use crate::error::ApiError;
use crate::http::principal::{bearer_token, PendingUser};
use crate::http::{AuthenticatedService, AuthenticatedUser, Caller};
use crate::repo::credentials as repo;
use crate::routes::JsonObject;
use crate::state::AppState;
use crate::vault::versions as sealing;
use crate::vault::{self, Address, Lookup, Operation, Scope};

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateKeyBody {
    private_key: SecretString,
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
    let is_valid =
        sealing::matches(&state.keyring, &row, &version, &candidate).map_err(ApiError::internal)?;
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
