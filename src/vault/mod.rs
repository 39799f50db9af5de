//! The release gate (SPEC §9.3, §9.5): the one way a stored secret is used.
//!
//! Reveal and every provider operation pass through here, in two steps:
//! 1. [`find`], on a database thread: the credential's current version, scoped by its owner
//!    or by the calling service's grant **in the SQL**; the grant must name the operation;
//!    plus what the operation needs besides (the previous version inside the webhook grace
//!    window, the provider certificate, integrity-checked).
//! 2. [`release`]: refuses what `find` refused (audited), checks the profile holds what the
//!    operation needs (409 naming it), opens the envelope, computes the answer, writes the
//!    durable audit entry (with the operation and the caller's payment reference) and only
//!    then hands the answer out. Fail closed: no entry, no answer.
//!
//! Nothing here knows the API's HTTP; the handlers in `routes::credentials` and
//! `routes::operations` are thin wrappers that authenticate, parse and shape the answer.
//! `access-token` goes on to the provider through [`crate::broker`], after the gate.

use crate::audit::{Action, Actor, Event, Outcome, Reason, RequestMeta, Target};
use crate::crypto::envelope::{self, Contents, EnvelopeError};
use crate::crypto::{Aad, Keyring};
use crate::db::{DbConn, DbError};
use crate::domain::profile::Profile;
use crate::domain::{CredentialId, Environment, Provider, UserId};
use crate::repo::credentials::{self as repo, CredentialRow, VersionRow};
use crate::repo::provider_certs::{self, CertificateRow};
use crate::repo::services;

// The vocabulary of operations lives in `domain` (the database's grants use it too).
pub mod versions;

pub use crate::domain::operation::{Operation, Operations, Reference};

/// Whose credentials a caller reaches.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// An owner, their own credentials.
    Owner(UserId),
    /// A service, through its grants.
    Service(i64),
}

/// How the caller names the credential.
#[derive(Debug, Clone)]
pub enum Address {
    Id(CredentialId),
    /// Services only: the owner's credential for a provider and environment.
    Lookup {
        owner: String,
        provider: Provider,
        environment: Environment,
    },
}

/// What [`find`] found.
#[derive(Debug)]
pub enum Lookup {
    Found(Box<Found>),
    NotFound,
    /// Intact grants cover it, but none names the operation.
    NotGranted(CredentialRow),
    /// A credential, grant or owner row failed its integrity check (edited, or written back
    /// from an older state: the verdict says which).
    Tampered(CredentialRow, crate::crypto::rowmac::Verdict),
}

#[derive(Debug)]
pub struct Found {
    pub row: CredentialRow,
    pub version: VersionRow,
    /// The version before, for `webhook-verify` while the current one is inside the grace
    /// window.
    pub previous: Option<VersionRow>,
    pub certificate: provider_certs::Found,
}

/// Step 1, on a database thread: the credential the caller may use for `operation`.
pub fn find(
    conn: &mut DbConn,
    keyring: &Keyring,
    scope: Scope,
    address: &Address,
    operation: Operation,
    grace_since: i64,
) -> Result<Lookup, DbError> {
    let found = match (scope, address) {
        (Scope::Owner(owner), Address::Id(id)) => {
            repo::get_current(conn, keyring, owner, *id)?.map(|(r, v, verdict)| match verdict {
                // The state a reveal believes (active, current version, its time) is checked
                // here, in the same statement that reads it.
                crate::crypto::rowmac::Verdict::Intact => services::Granted::Found(r, v),
                verdict => services::Granted::Tampered(r, verdict),
            })
        }
        (Scope::Owner(_), Address::Lookup { .. }) => None,
        (Scope::Service(service), Address::Id(id)) => Some(services::granted_by_id(
            conn, keyring, service, *id, operation,
        )?),
        (
            Scope::Service(service),
            Address::Lookup {
                owner,
                provider,
                environment,
            },
        ) => Some(services::granted_by_owner(
            conn,
            keyring,
            service,
            owner,
            provider.as_str(),
            environment.as_str(),
            operation,
        )?),
    };
    let (row, version) = match found {
        Some(services::Granted::Found(row, version)) => (row, version),
        Some(services::Granted::NotGranted(row)) => return Ok(Lookup::NotGranted(row)),
        Some(services::Granted::Tampered(row, verdict)) => {
            return Ok(Lookup::Tampered(row, verdict))
        }
        Some(services::Granted::None) | None => return Ok(Lookup::NotFound),
    };
    let previous = if operation == Operation::WebhookVerify
        && version.version > 1
        && version.created_at >= grace_since
    {
        match repo::version(conn, row.id, version.version - 1) {
            Ok(v) if v.environment == row.environment => Some(v),
            Ok(_) | Err(DbError::Query(diesel::result::Error::NotFound)) => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let certificate = if operation == Operation::SecurityCredential {
        provider_certs::get(conn, keyring, &row.provider, &row.environment)?
    } else {
        provider_certs::Found::None
    };
    Ok(Lookup::Found(Box::new(Found {
        row,
        version,
        previous,
        certificate,
    })))
}

/// The binding a stored version must open under: its row's owner, id, provider and
/// **environment** (never the version's own environment column), and the version's profile.
/// A version sealed for another environment, or a row whose owner, provider or environment
/// (or a version whose settings) was edited in the database, fails authentication.
pub fn aad_of<'a>(row: &'a CredentialRow, version: &'a VersionRow) -> Aad<'a> {
    Aad {
        owner_id: row.owner_id,
        credential_id: row.id,
        provider: &row.provider,
        environment: &row.environment,
        version: version.version,
        profile: version.profile.as_deref(),
    }
}

/// What an operation computes from: the opened version, and what came with it.
pub struct Opened<'a> {
    pub row: &'a CredentialRow,
    pub provider: Provider,
    pub version: i32,
    pub contents: Contents,
    pub profile: &'a Profile,
    /// The previous version's number and contents, inside the webhook grace window.
    pub previous: Option<(i32, Contents)>,
    pub certificate: Option<&'a CertificateRow>,
}

/// Why the gate said no. Every message is safe to show.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Missing, deleted, another owner's, not granted at all, or tampered: one answer.
    #[error("credential not found or not the caller's")]
    NotFound,
    #[error("the grant does not allow {0}")]
    NotGranted(&'static str),
    #[error("no such operation for this provider")]
    NoSuchOperation,
    /// What the caller must set first.
    #[error("missing: {0}")]
    Missing(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("storage failure: {0}")]
    Storage(anyhow::Error),
    #[error("audit unavailable: {0}")]
    Unavailable(anyhow::Error),
    /// The provider's token endpoint failed (`access-token`).
    #[error("provider: {0}")]
    Provider(crate::broker::Failure),
}

/// What the gate needs of the application, and nothing more: the keyring that opens
/// envelopes, the audit log it records to, the clock, and the provider-token broker.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub keyring: &'a Keyring,
    pub audit: &'a crate::audit::AuditLog,
    pub clock: &'a crate::clock::Clock,
    pub broker: &'a crate::broker::Broker,
}

/// Who asks, from where: the audit trail's half of a request.
pub struct Caller<'a> {
    /// What the gate uses of the application (never the whole of it).
    pub gate: Context<'a>,
    pub actor: Actor,
    pub meta: &'a RequestMeta,
}

impl Caller<'_> {
    fn event(&self, action: Action) -> Event {
        Event::new(
            self.gate.clock.now_micros(),
            self.actor.clone(),
            self.meta,
            action,
        )
    }

    async fn best_effort(&self, ev: Event) {
        self.gate.audit.record_best_effort(ev).await;
    }
}

fn action_of(operation: Operation) -> Action {
    match operation {
        Operation::Reveal => Action::CredentialReveal,
        _ => Action::CredentialOperation,
    }
}

/// The answer an operation computed, and the reason its audit entry records (a webhook
/// signature that did not match, say).
pub struct Answer<T> {
    pub value: T,
    pub reason: Option<Reason>,
}

/// Step 2: refuse, or open, compute, record durably, and only then answer.
pub async fn release<T>(
    caller: &Caller<'_>,
    operation: Operation,
    reference: Option<Reference>,
    requested: Option<CredentialId>,
    lookup: Lookup,
    compute: impl FnOnce(&Opened<'_>) -> Result<Answer<T>, Refusal>,
) -> Result<T, Refusal> {
    let mut admitted = admit(caller, operation, reference, requested, lookup).await?;
    let opened = admitted.open(caller).await?;
    let answer = compute(&opened)?;
    drop(opened);
    admitted.record(caller, answer.reason).await?;
    Ok(answer.value)
}

/// A credential the gate let through for one operation: found, granted, holding what the
/// operation needs; not yet opened.
pub struct Admitted {
    operation: Operation,
    reference: Option<String>,
    pub row: CredentialRow,
    version: VersionRow,
    previous: Option<VersionRow>,
    certificate: Option<CertificateRow>,
    /// Parsed in `admit` when the operation needs a secret or setting; else at `open`.
    profile: Option<Profile>,
    pub provider: Provider,
}

/// Refuses what `find` refused (audited), then checks the profile holds what `operation`
/// needs (409 naming it) and that its provider certificate is intact.
pub async fn admit(
    caller: &Caller<'_>,
    operation: Operation,
    reference: Option<Reference>,
    requested: Option<CredentialId>,
    lookup: Lookup,
) -> Result<Admitted, Refusal> {
    let action = action_of(operation);
    let reference = reference.map(Reference::into_inner);
    let with_op = |ev: Event| match operation {
        Operation::Reveal => ev,
        op => ev.operation(op.as_str(), reference.clone()),
    };
    let found = match lookup {
        Lookup::Found(found) => found,
        Lookup::NotFound => {
            let ev = caller
                .event(action)
                .target(Target::requested(requested))
                .outcome(Outcome::Denied, Some(Reason::NotFoundOrNotOwner));
            caller.best_effort(with_op(ev)).await;
            return Err(Refusal::NotFound);
        }
        Lookup::Tampered(row, verdict) => {
            let ev = caller
                .event(Action::IntegrityViolation)
                .target(Target::credential(&row))
                .outcome(Outcome::Denied, Some(Reason::of_verdict(verdict)));
            caller.best_effort(with_op(ev)).await;
            return Err(Refusal::NotFound);
        }
        Lookup::NotGranted(row) => {
            let ev = caller
                .event(action)
                .target(Target::credential(&row))
                .outcome(Outcome::Denied, Some(Reason::OperationNotGranted));
            caller.best_effort(with_op(ev)).await;
            return Err(Refusal::NotGranted(operation.as_str()));
        }
    };
    let Found {
        row,
        version,
        previous,
        certificate,
    } = *found;
    let provider = Provider::parse(&row.provider)
        .map_err(|_| Refusal::Storage(anyhow::anyhow!("stored provider is unknown")))?;
    if !operation.applies_to(provider) {
        return Err(Refusal::NoSuchOperation);
    }

    // What the operation needs must be there: said by the profile, before anything opens.
    let (secrets, settings) = operation.needs(provider);
    let profile = if secrets.is_empty() && settings.is_empty() {
        // Nothing to check here; the profile is bound by the AAD and read when it opens.
        None
    } else {
        match Profile::parse(version.profile.as_deref()) {
            Some(p) => Some(p),
            None => {
                return Err(
                    open_refused(caller, action, &row, &EnvelopeError::Authentication).await,
                )
            }
        }
    };
    let needed = profile.as_ref();
    for name in secrets {
        if !needed.is_some_and(|p| p.has_secret(name)) {
            return Err(Refusal::Missing(format!(
                "This credential has no {name}; set it with a rotation (secrets.{name}) first"
            )));
        }
    }
    for name in settings {
        if !needed.is_some_and(|p| p.settings.contains_key(*name)) {
            return Err(Refusal::Missing(format!(
                "This credential has no {name}; set it in its settings first"
            )));
        }
    }
    let certificate = match (certificate, operation) {
        (provider_certs::Found::Intact(c), _) => Some(c),
        (provider_certs::Found::Tampered(_), _) => {
            let ev = caller
                .event(Action::IntegrityViolation)
                .target(Target::credential(&row))
                .outcome(Outcome::Denied, Some(Reason::RowTampered));
            caller.best_effort(with_op(ev)).await;
            return Err(Refusal::Missing(format!(
                "The {} {} provider certificate failed its integrity check; an administrator must install it again",
                provider.as_str(),
                row.environment
            )));
        }
        (provider_certs::Found::None, Operation::SecurityCredential) => {
            return Err(Refusal::Missing(format!(
                "No {} {} provider certificate is installed; an administrator must install it (PUT /admin/provider-certificates/{}/{}/)",
                provider.as_str(),
                row.environment,
                provider.as_str(),
                row.environment
            )));
        }
        (provider_certs::Found::None, _) => None,
    };
    Ok(Admitted {
        operation,
        reference,
        row,
        version,
        previous,
        certificate,
        profile,
        provider,
    })
}

impl Admitted {
    fn with_op(&self, ev: Event) -> Event {
        match self.operation {
            Operation::Reveal => ev,
            op => ev.operation(op.as_str(), self.reference.clone()),
        }
    }

    /// The version's envelope, opened (a failure is audited: tampering or storage).
    pub async fn open(&mut self, caller: &Caller<'_>) -> Result<Opened<'_>, Refusal> {
        let action = action_of(self.operation);
        if self.profile.is_none() {
            match Profile::parse(self.version.profile.as_deref()) {
                Some(p) => self.profile = Some(p),
                None => {
                    return Err(open_refused(
                        caller,
                        action,
                        &self.row,
                        &EnvelopeError::Authentication,
                    )
                    .await)
                }
            }
        }
        let keyring = &caller.gate.keyring;
        let row = &self.row;
        let contents = match envelope::open_contents(
            keyring,
            &aad_of(row, &self.version),
            &self.version.envelope(),
        ) {
            Ok(c) => c,
            Err(e) => return Err(open_refused(caller, action, row, &e).await),
        };
        // The previous version only ever widens what validates inside the grace window: if
        // it does not open, the current one alone decides.
        let previous = self.previous.as_ref().and_then(|p| {
            envelope::open_contents(keyring, &aad_of(row, p), &p.envelope())
                .ok()
                .map(|c| (p.version, c))
        });
        let Some(profile) = self.profile.as_ref() else {
            return Err(open_refused(caller, action, row, &EnvelopeError::Authentication).await);
        };
        Ok(Opened {
            row,
            provider: self.provider,
            version: self.version.version,
            contents,
            profile,
            previous,
            certificate: self.certificate.as_ref(),
        })
    }

    /// The durable success entry. Fail closed: the answer leaves only once it is written.
    pub async fn record(&self, caller: &Caller<'_>, reason: Option<Reason>) -> Result<(), Refusal> {
        let ev = caller
            .event(action_of(self.operation))
            .target(Target::credential(&self.row))
            .outcome(Outcome::Success, reason);
        caller
            .gate
            .audit
            .record(self.with_op(ev))
            .await
            .map(|_| ())
            .map_err(|e| Refusal::Unavailable(anyhow::anyhow!("audit entry not written: {e}")))
    }

    /// A failed use, best effort (the caller gets an error either way).
    pub async fn record_failure(&self, caller: &Caller<'_>, reason: Reason) {
        let ev = caller
            .event(action_of(self.operation))
            .target(Target::credential(&self.row))
            .outcome(Outcome::Error, Some(reason));
        caller.best_effort(self.with_op(ev)).await;
    }
}

/// The `access-token` operation (SPEC §9.4): through the gate like every operation, then the
/// broker's cached token, or the one exchange in flight for the credential.
///
/// A cached token is handed out only for a row and version byte-identical to the ones that
/// were opened (their AAD authenticated) when it was exchanged: the broker's slot is bound to
/// a hash of the owner, id, provider, environment, version, profile, envelope and `api_key`
/// ([`binding_of`]). A row edited in the database (its owner, say) has another binding, so it
/// is opened again, and refused as tampered, before any token leaves. The entry is durable
/// before the token is handed out; the token itself is never in it.
pub async fn access_token(
    caller: &Caller<'_>,
    reference: Option<Reference>,
    requested: Option<CredentialId>,
    lookup: Lookup,
) -> Result<std::sync::Arc<crate::broker::Issued>, Refusal> {
    let mut admitted = admit(caller, Operation::AccessToken, reference, requested, lookup).await?;
    if !admitted.row.is_active {
        return Err(Refusal::Missing(
            "This credential is inactive; activate it before asking for a provider token".into(),
        ));
    }
    let Some(key) = admitted.row.api_key.clone() else {
        return Err(Refusal::Missing(
            "This credential has no api_key (the provider's key or username); set it first".into(),
        ));
    };
    let environment = Environment::parse(&admitted.row.environment)
        .map_err(|_| Refusal::Storage(anyhow::anyhow!("stored environment is unknown")))?;
    let broker = &caller.gate.broker;
    let now = caller.gate.clock.now();
    let binding = binding_of(&admitted.row, &admitted.version, &key);
    let asked = match broker.cached(admitted.row.id, &binding, admitted.provider, now) {
        Some(issued) => Ok(issued),
        None => {
            let opened = admitted.open(caller).await?;
            let asked = broker
                .token(crate::broker::Ask {
                    credential_id: opened.row.id,
                    binding,
                    provider: opened.provider,
                    environment,
                    key: &key,
                    secret: &opened.contents.private_key,
                    now,
                })
                .await;
            drop(opened);
            asked
        }
    };
    match asked {
        Ok(issued) => {
            admitted.record(caller, None).await?;
            Ok(issued)
        }
        Err(failure) => {
            let reason = match failure {
                crate::broker::Failure::RateLimited(_) => Reason::ProviderRateLimited,
                crate::broker::Failure::Timeout => Reason::ProviderTimeout,
                _ => Reason::ProviderError,
            };
            admitted.record_failure(caller, reason).await;
            Err(Refusal::Provider(failure))
        }
    }
}

/// What a provider token is bound to: SHA-256 over every stored field that decides what the
/// token is for and that the envelope's AAD authenticates (owner, id, provider, environment,
/// version, profile), the envelope itself, and the `api_key` the exchange sends, each
/// length-prefixed so no two rows encode alike.
pub fn binding_of(row: &CredentialRow, version: &VersionRow, api_key: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"hazina/token-binding/v1");
    field(&row.owner_id.to_be_bytes());
    field(&row.id.to_be_bytes());
    field(row.provider.as_bytes());
    field(row.environment.as_bytes());
    field(&version.version.to_be_bytes());
    field(version.profile.as_deref().unwrap_or("").as_bytes());
    field(&version.format.to_be_bytes());
    field(&version.kek_version.to_be_bytes());
    field(&version.wrapped_dek);
    field(&version.ciphertext);
    field(api_key.as_bytes());
    h.finalize().into()
}

/// A stored version that did not open: a failed authentication means the row, its envelope
/// or its profile was edited outside hazina (tampering, audited as such); anything else is a
/// storage failure (a missing master-key version, a malformed blob).
async fn open_refused(
    caller: &Caller<'_>,
    action: Action,
    row: &CredentialRow,
    error: &EnvelopeError,
) -> Refusal {
    let (action, outcome, reason) = match error {
        EnvelopeError::Authentication => (
            Action::IntegrityViolation,
            Outcome::Denied,
            Reason::RowTampered,
        ),
        _ => (action, Outcome::Error, Reason::StorageFailure),
    };
    let ev = caller
        .event(action)
        .target(Target::credential(row))
        .outcome(outcome, Some(reason));
    caller.best_effort(ev).await;
    Refusal::Storage(anyhow::anyhow!("stored version did not open: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_parse_and_have_a_canonical_form() {
        let ops = Operations::parse(&["webhook-verify", "reveal", "reveal"]).unwrap();
        assert_eq!(ops.canonical(), "reveal,webhook-verify");
        assert_eq!(
            Operations::parse::<&str>(&[]).unwrap().canonical(),
            "reveal"
        );
        assert!(Operations::parse(&["delete"]).is_err());
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
        }
    }

    #[test]
    fn references_follow_their_pattern() {
        for ok in [
            "ws_CO_191220191020363925",
            "order-1/2:3.4_5",
            &"a".repeat(64),
        ] {
            assert!(Reference::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "has space",
            &"a".repeat(65),
            "semi;colon",
            "ünï",
            "a\nb",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn operations_exist_only_for_their_providers() {
        assert!(Operation::StkPassword.applies_to(Provider::Mpesa));
        assert!(!Operation::StkPassword.applies_to(Provider::KopoKopo));
        assert!(Operation::WebhookVerify.applies_to(Provider::JPay));
        assert!(!Operation::WebhookVerify.applies_to(Provider::Mpesa));
        assert!(!Operation::AccessToken.applies_to(Provider::InstaSend));
    }
}
