//! A credential's versions: the stored envelopes, each sealed for the environment of its
//! credential, written only inside the transaction that moves `current_version` (so
//! concurrent rotations form a gap-free sequence), and shredded beyond the version cap.

use diesel::prelude::*;

use crate::clock::UnixSeconds;
use crate::crypto::{Envelope, Keyring};
use crate::db::schema::{credential_versions as cv, credentials as c};
use crate::db::{DbConn, DbError};
use crate::domain::{CredentialId, UserId};

use super::{check_expected, get, lock_row, reload, store_state, CredentialRow};

/// One stored envelope and the environment it was sealed for.
#[derive(Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = cv)]
pub struct VersionRow {
    pub credential_id: i64,
    pub version: i32,
    pub environment: String,
    pub format: i32,
    pub kek_version: i32,
    pub wrapped_dek: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub verifier: Vec<u8>,
    pub created_at: i64,
    pub created_by: i64,
    /// The version's profile (envelope format 2), canonical JSON; `None` for format 1.
    pub profile: Option<String>,
}

/// A newly sealed version: its envelope and the profile its binding carries.
pub struct Sealed {
    pub envelope: Envelope,
    pub profile: Option<String>,
}

impl std::fmt::Debug for VersionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionRow")
            .field("credential_id", &self.credential_id)
            .field("version", &self.version)
            .field("kek_version", &self.kek_version)
            .finish_non_exhaustive()
    }
}

impl VersionRow {
    pub fn envelope(&self) -> Envelope {
        Envelope {
            format: self.format,
            kek_version: self.kek_version,
            wrapped_dek: self.wrapped_dek.clone(),
            ciphertext: self.ciphertext.clone(),
            verifier: self.verifier.clone(),
        }
    }

    pub(super) fn new(
        cred: &CredentialRow,
        sealed: Sealed,
        now: UnixSeconds,
        actor: UserId,
    ) -> Self {
        let env = sealed.envelope;
        VersionRow {
            credential_id: cred.id,
            version: cred.current_version,
            environment: cred.environment.clone(),
            format: env.format,
            kek_version: env.kek_version,
            wrapped_dek: env.wrapped_dek,
            ciphertext: env.ciphertext,
            verifier: env.verifier,
            created_at: now,
            created_by: actor.get(),
            profile: sealed.profile,
        }
    }
}

/// Seals a new version for the row as it will be (its `current_version` is the new version),
/// with the connection of the enclosing transaction: the master-key version to wrap under is
/// read there (see `key_versions::sealing_version`), as are any extra rows.
pub type Seal<'a> = dyn Fn(&mut DbConn, &CredentialRow) -> Result<Sealed, DbError> + 'a;

/// Writes a new version of the private key. The version number is taken inside the
/// transaction after the row is locked, so concurrent rotations form a gap-free sequence.
#[allow(clippy::too_many_arguments)]
pub fn add_version(
    conn: &mut DbConn,
    keyring: &Keyring,
    owner: UserId,
    id: CredentialId,
    actor: UserId,
    expected: Option<i32>,
    seal: &Seal<'_>,
    now: UnixSeconds,
) -> Result<Option<CredentialRow>, DbError> {
    conn.transaction(|tx| {
        let Some(before) = lock_row(tx, keyring, owner, id, now)? else {
            return Ok(None);
        };
        check_expected(expected, before.current_version)?;
        diesel::update(owned!(owner, id))
            .set(c::current_version.eq(c::current_version + 1))
            .execute(tx)?;
        let row = reload(tx, owner, id)?;
        let sealed = seal(tx, &row)?;
        insert_version(tx, keyring, VersionRow::new(&row, sealed, now, actor))?;
        Ok(Some(store_state(tx, keyring, row)?))
    })
}

/// Keeps at most `max` versions of `row`'s credential (SPEC §15): the oldest versions that
/// are not current are shredded (their rows, with the wrapped keys, deleted) in the caller's
/// transaction. The versions shredded, oldest first; none while the credential is within
/// its cap.
pub fn shred_beyond(tx: &mut DbConn, row: &CredentialRow, max: u32) -> Result<Vec<i32>, DbError> {
    let versions: Vec<i32> = cv::table
        .filter(cv::credential_id.eq(row.id))
        .order(cv::version.asc())
        .select(cv::version)
        .load(tx)?;
    let excess = versions.len().saturating_sub(max as usize);
    let doomed: Vec<i32> = versions
        .into_iter()
        .filter(|v| *v != row.current_version)
        .take(excess)
        .collect();
    if !doomed.is_empty() {
        diesel::delete(
            cv::table
                .filter(cv::credential_id.eq(row.id))
                .filter(cv::version.eq_any(&doomed)),
        )
        .execute(tx)?;
    }
    Ok(doomed)
}

pub(super) fn insert_version(
    tx: &mut DbConn,
    keyring: &Keyring,
    row: VersionRow,
) -> Result<(), DbError> {
    let kek_version = row.kek_version;
    diesel::insert_into(cv::table).values(row).execute(tx)?;
    crate::repo::keys::bump_wear(tx, keyring, kek_version, 1)
}

/// One version's metadata (never key material).
#[derive(Debug, Clone, Queryable)]
pub struct VersionMeta {
    pub version: i32,
    pub environment: String,
    pub kek_version: i32,
    pub created_at: i64,
    pub created_by: i64,
    pub created_by_name: Option<String>,
}

/// The versions of the owner's credential, newest first; `None` if it is not theirs.
pub fn list_versions(
    conn: &mut DbConn,
    owner: UserId,
    id: CredentialId,
) -> Result<Option<(CredentialRow, Vec<VersionMeta>)>, DbError> {
    use crate::db::schema::users as u;
    let Some(row) = get(conn, owner, id)? else {
        return Ok(None);
    };
    let versions = cv::table
        .left_join(u::table.on(u::id.eq(cv::created_by)))
        .filter(cv::credential_id.eq(row.id))
        .order(cv::version.desc())
        .select((
            cv::version,
            cv::environment,
            cv::kek_version,
            cv::created_at,
            cv::created_by,
            u::username.nullable(),
        ))
        .load(conn)?;
    Ok(Some((row, versions)))
}

/// Version `version` of a credential whose id came from an owner-scoped (or grant-scoped)
/// row already read in this transaction.
pub fn version(tx: &mut DbConn, credential_id: i64, version: i32) -> Result<VersionRow, DbError> {
    Ok(cv::table
        .filter(cv::credential_id.eq(credential_id))
        .filter(cv::version.eq(version))
        .select(VersionRow::as_select())
        .first(tx)?)
}

/// How many stored versions each master-key version protects (for `keys status`).
pub fn count_by_kek_version(conn: &mut DbConn) -> Result<Vec<(i32, i64)>, DbError> {
    Ok(cv::table
        .group_by(cv::kek_version)
        .select((cv::kek_version, diesel::dsl::count_star()))
        .order(cv::kek_version.asc())
        .load(conn)?)
}
