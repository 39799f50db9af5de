//! The write side of the release gate: every new version of a credential is opened and
//! sealed here, inside the write's own transaction, and nowhere else.
//!
//! ## Guarantees
//! - A new version is sealed under a fresh data key, bound (associated data) to the row's
//!   owner, credential, provider, environment, version number and profile, under the
//!   master-key version the database names active ([`seal_new_version`]).
//! - Before a new key is sealed to a row's binding, the row's current version must open (or
//!   its data key unwrap) under that binding: a row edited in the database (an environment
//!   flipped, say) is refused as tampered, so the next key can never be sealed to a binding
//!   its writer did not choose ([`next_version`], [`reseal`]).
//! - The provider's own key format must agree with the row's environment, checked against
//!   the row as it will be.
//! - Only what carries over is opened: a new private key over a version with no provider
//!   secrets only checks the old data key.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};

use super::aad_of;
use crate::crypto::envelope::{self, Contents, EnvelopeError};
use crate::crypto::{Aad, Keyring};
use crate::db::{DbConn, DbError};
use crate::domain::profile::{self, Profile};
use crate::domain::{Environment, PrivateKey, Provider, ValidationError};
use crate::repo::credentials::{self as repo, CredentialRow, Sealed, VersionRow};

/// Where a new version's contents come from.
pub enum NewKey {
    /// What the caller sent; the rest carries over from the current version.
    Given {
        key: Option<PrivateKey>,
        secrets: BTreeMap<String, SecretString>,
    },
    /// The contents of an earlier version (rollback): it becomes the newest version.
    FromVersion(i32),
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
pub fn seal_new_version(
    tx: &mut DbConn,
    keyring: &Keyring,
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

/// The settings a stored version's profile holds (a profile that does not parse is refused:
/// its version could not open anyway).
fn stored_settings(version: &VersionRow) -> Result<BTreeMap<String, String>, DbError> {
    Profile::parse(version.profile.as_deref())
        .map(|p| p.settings)
        .ok_or(DbError::Tampered("credential"))
}

/// The provider's own key format must agree with the row's environment (checked inside the
/// write transaction, against the row as it will be).
fn check_key_matches(row: &CredentialRow, key: &SecretString) -> Result<(), DbError> {
    let provider = Provider::parse(&row.provider)?;
    let env = Environment::parse(&row.environment)?;
    Ok(provider.check_key_environment(key.expose_secret(), env)?)
}

/// A refusal of the change, inside its transaction (nothing is written).
fn rejected(message: &str) -> DbError {
    DbError::Rejected(ValidationError(message.into()))
}

/// The next version of `row` (a rotation or a rollback), sealed: its contents from `source`,
/// what is not given carried over from the current version.
pub fn next_version(
    tx: &mut DbConn,
    keyring: &Keyring,
    row: &CredentialRow,
    source: &NewKey,
) -> Result<Sealed, DbError> {
    // The row must be as hazina wrote it before a new key is sealed to its binding: its
    // current version opens under the row's owner, provider and environment, or nothing is
    // written (an environment flipped in the database must not make the next key
    // sandbox-readable).
    let current = repo::version(tx, row.id, row.current_version - 1)?;
    let provider = Provider::parse(&row.provider)?;
    let (contents, settings) = match source {
        NewKey::Given { key, secrets } => {
            profile::check_secrets(provider, secrets)?;
            let settings = stored_settings(&current)?;
            // Only what carries over is opened; a new key over a version with no secrets
            // needs the old one's data key checked, nothing more.
            let carried = if key.is_none() || current.profile.is_some() {
                Some(envelope::open_contents(
                    keyring,
                    &aad_of(row, &current),
                    &current.envelope(),
                )?)
            } else {
                envelope::check_dek(keyring, &aad_of(row, &current), &current.envelope())
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
            envelope::check_dek(keyring, &aad_of(row, &current), &current.envelope())
                .map_err(|_| DbError::Tampered("credential"))?;
            let earlier = match repo::version(tx, row.id, *n) {
                Err(DbError::Query(diesel::result::Error::NotFound)) => {
                    return Err(rejected("This credential has no such version"))
                }
                other => other?,
            };
            if earlier.environment != row.environment {
                return Err(rejected(
                    "That version was sealed for the other environment and cannot be restored here",
                ));
            }
            let contents =
                envelope::open_contents(keyring, &aad_of(row, &earlier), &earlier.envelope())?;
            (contents, stored_settings(&earlier)?)
        }
    };
    check_key_matches(row, &contents.private_key)?;
    seal_new_version(tx, keyring, row, &contents, &settings)
}

/// A metadata change that moves the binding (a new environment or new settings): the
/// secrets of `previous` (the version `before` held) re-sealed as the new version of
/// `after`; the provider's own key format must agree with the new environment.
pub fn reseal(
    tx: &mut DbConn,
    keyring: &Keyring,
    (before, previous): (&CredentialRow, &VersionRow),
    after: &CredentialRow,
    settings: Option<&BTreeMap<String, String>>,
) -> Result<Sealed, DbError> {
    let contents =
        envelope::open_contents(keyring, &aad_of(before, previous), &previous.envelope())?;
    check_key_matches(after, &contents.private_key)?;
    let settings = match settings {
        Some(given) => {
            profile::check_settings(Provider::parse(&after.provider)?, given)?;
            given.clone()
        }
        None => stored_settings(previous)?,
    };
    seal_new_version(tx, keyring, after, &contents, &settings)
}

/// Whether `candidate` is `version`'s private key (a keyed HMAC compared in constant time;
/// nothing is decrypted).
pub fn matches(
    keyring: &Keyring,
    row: &CredentialRow,
    version: &VersionRow,
    candidate: &SecretString,
) -> Result<bool, EnvelopeError> {
    envelope::verify(
        keyring,
        &aad_of(row, version),
        &version.envelope(),
        candidate,
    )
}
