//! The credentials repository. Every function takes the owner first and filters by it in
//! SQL: nothing here fetches by id alone and checks afterwards. A row of another owner and
//! a missing row are the same `None`.

use diesel::prelude::*;

use super::schema::{credential_versions as cv, credentials as c};
use super::{DbConn, DbError};
use crate::clock::UnixSeconds;
use crate::crypto::Envelope;
use crate::domain::{CredentialId, UserId};

/// Credential metadata: never key material.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = c)]
pub struct CredentialRow {
    pub id: i64,
    pub owner_id: i64,
    pub provider: String,
    pub environment: String,
    pub api_key: Option<String>,
    pub is_active: bool,
    pub current_version: i32,
    pub created_at: i64,
    pub updated_at: i64,
}

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

    fn new(cred: &CredentialRow, sealed: Sealed, now: UnixSeconds, actor: UserId) -> Self {
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

#[derive(Insertable)]
#[diesel(table_name = c)]
struct NewCredentialRow<'a> {
    id: i64,
    owner_id: i64,
    provider: &'a str,
    environment: &'a str,
    api_key: Option<&'a str>,
    is_active: bool,
    current_version: i32,
    created_at: i64,
    updated_at: i64,
}

/// What a create needs; `seal` seals version 1 for exactly this row.
pub struct NewCredential<'a> {
    pub id: CredentialId,
    pub owner: UserId,
    pub provider: &'a str,
    pub environment: &'a str,
    pub api_key: &'a str,
}

/// Rows not deleted, of this owner, with this id.
macro_rules! owned {
    ($owner:expr, $id:expr) => {
        c::table
            .filter(c::owner_id.eq($owner.get()))
            .filter(c::id.eq($id.get()))
            .filter(c::deleted_at.is_null())
    };
}

pub fn get(
    conn: &mut DbConn,
    owner: UserId,
    id: CredentialId,
) -> Result<Option<CredentialRow>, DbError> {
    Ok(owned!(owner, id)
        .select(CredentialRow::as_select())
        .first(conn)
        .optional()?)
}

/// The credential with its current envelope, for reveal and verify.
pub fn get_current(
    conn: &mut DbConn,
    owner: UserId,
    id: CredentialId,
) -> Result<Option<(CredentialRow, VersionRow)>, DbError> {
    Ok(owned!(owner, id)
        .inner_join(
            cv::table.on(cv::credential_id
                .eq(c::id)
                .and(cv::version.eq(c::current_version))),
        )
        .select((CredentialRow::as_select(), VersionRow::as_select()))
        .first(conn)
        .optional()?)
}

pub fn create(
    conn: &mut DbConn,
    new: NewCredential<'_>,
    seal: &Seal<'_>,
    now: UnixSeconds,
) -> Result<CredentialRow, DbError> {
    conn.transaction(|tx| {
        diesel::insert_into(c::table)
            .values(NewCredentialRow {
                id: new.id.get(),
                owner_id: new.owner.get(),
                provider: new.provider,
                environment: new.environment,
                api_key: Some(new.api_key),
                is_active: true,
                current_version: 1,
                created_at: now,
                updated_at: now,
            })
            .execute(tx)?;
        let row = owned!(new.owner, new.id)
            .select(CredentialRow::as_select())
            .first(tx)?;
        let sealed = seal(tx, &row)?;
        insert_version(tx, VersionRow::new(&row, sealed, now, new.owner))?;
        Ok(row)
    })
}

/// Changes to a credential's metadata. A new environment needs the secret re-sealed, which
/// `reseal` does from the previous envelope for the new binding (it becomes a new version).
pub struct MetadataUpdate<'a> {
    pub api_key: Option<&'a str>,
    pub environment: Option<&'a str>,
    /// New settings were given: they are bound to a version, so a new one is sealed.
    pub settings: bool,
}

/// Re-seals a version for the row it will belong to: `(transaction, (row before, its current
/// version), row after) → envelope`.
pub type Reseal<'a> = dyn Fn(&mut DbConn, (&CredentialRow, &VersionRow), &CredentialRow) -> Result<Sealed, DbError>
    + 'a;

pub fn update_metadata(
    conn: &mut DbConn,
    owner: UserId,
    id: CredentialId,
    update: MetadataUpdate<'_>,
    expected: Option<i32>,
    reseal: &Reseal<'_>,
    now: UnixSeconds,
) -> Result<Option<CredentialRow>, DbError> {
    conn.transaction(|tx| {
        let Some(before) = lock_row(tx, owner, id, now)? else {
            return Ok(None);
        };
        check_expected(expected, before.current_version)?;
        if let Some(api_key) = update.api_key {
            diesel::update(owned!(owner, id))
                .set(c::api_key.eq(api_key))
                .execute(tx)?;
        }
        // A new environment or new settings change the binding: the secrets are re-sealed
        // as a new version.
        let new_env = update.environment.filter(|env| *env != before.environment);
        if new_env.is_none() && !update.settings {
            return Ok(Some(reload(tx, owner, id)?));
        }
        diesel::update(owned!(owner, id))
            .set((
                c::environment.eq(new_env.unwrap_or(&before.environment)),
                c::current_version.eq(c::current_version + 1),
            ))
            .execute(tx)?;
        let after = reload(tx, owner, id)?;
        let previous = version(tx, before.id, before.current_version)?;
        let sealed = reseal(tx, (&before, &previous), &after)?;
        insert_version(tx, VersionRow::new(&after, sealed, now, owner))?;
        Ok(Some(after))
    })
}

/// Seals a new version for the row as it will be (its `current_version` is the new version),
/// with the connection of the enclosing transaction: the master-key version to wrap under is
/// read there (see `key_versions::sealing_version`), as are any extra rows.
pub type Seal<'a> = dyn Fn(&mut DbConn, &CredentialRow) -> Result<Sealed, DbError> + 'a;

/// Writes a new version of the private key. The version number is taken inside the
/// transaction after the row is locked, so concurrent rotations form a gap-free sequence.
pub fn add_version(
    conn: &mut DbConn,
    owner: UserId,
    id: CredentialId,
    actor: UserId,
    expected: Option<i32>,
    seal: &Seal<'_>,
    now: UnixSeconds,
) -> Result<Option<CredentialRow>, DbError> {
    conn.transaction(|tx| {
        let n = diesel::update(owned!(owner, id))
            .set((
                c::current_version.eq(c::current_version + 1),
                c::updated_at.eq(now),
            ))
            .execute(tx)?;
        if n == 0 {
            return Ok(None);
        }
        let row = reload(tx, owner, id)?;
        check_expected(expected, row.current_version - 1)?;
        let sealed = seal(tx, &row)?;
        insert_version(tx, VersionRow::new(&row, sealed, now, actor))?;
        Ok(Some(row))
    })
}

/// Optimistic concurrency: a write that names the version it read fails (rolling back) when
/// the credential has moved on since.
fn check_expected(expected: Option<i32>, current: i32) -> Result<(), DbError> {
    match expected {
        Some(e) if e != current => Err(DbError::Stale(current)),
        _ => Ok(()),
    }
}

fn insert_version(tx: &mut DbConn, row: VersionRow) -> Result<(), DbError> {
    let kek_version = row.kek_version;
    diesel::insert_into(cv::table).values(row).execute(tx)?;
    super::keys::bump_wear(tx, kek_version, 1)
}

/// The row with its current version's profile (what metadata shows of secrets and
/// settings); a deleted credential has none.
pub fn with_profile(
    conn: &mut DbConn,
    row: CredentialRow,
) -> Result<(CredentialRow, Option<String>), DbError> {
    let profile = cv::table
        .filter(cv::credential_id.eq(row.id))
        .filter(cv::version.eq(row.current_version))
        .select(cv::profile)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten();
    Ok((row, profile))
}

/// The owner's credentials with their current version's profile, in one query (a static
/// one: its prepared statement is cached; this is the list endpoint's hot path).
pub fn list_with_profiles(
    conn: &mut DbConn,
    owner: UserId,
) -> Result<Vec<(CredentialRow, Option<String>)>, DbError> {
    let rows: Vec<(CredentialRow, Option<String>)> = c::table
        .left_join(
            cv::table.on(cv::credential_id
                .eq(c::id)
                .and(cv::version.eq(c::current_version))),
        )
        .filter(c::owner_id.eq(owner.get()))
        .filter(c::deleted_at.is_null())
        .order((c::created_at.asc(), c::id.asc()))
        .select((CredentialRow::as_select(), cv::profile.nullable()))
        .load(conn)?;
    Ok(rows)
}

/// The owner's credentials for `provider` (and `environment`, if given), with profiles.
pub fn by_provider_with_profiles(
    conn: &mut DbConn,
    owner: UserId,
    provider: &str,
    environment: Option<&str>,
) -> Result<Vec<(CredentialRow, Option<String>)>, DbError> {
    let mut q = c::table
        .left_join(
            cv::table.on(cv::credential_id
                .eq(c::id)
                .and(cv::version.eq(c::current_version))),
        )
        .filter(c::owner_id.eq(owner.get()))
        .filter(c::provider.eq(provider))
        .filter(c::deleted_at.is_null())
        .select((CredentialRow::as_select(), cv::profile.nullable()))
        .into_boxed();
    if let Some(e) = environment {
        q = q.filter(c::environment.eq(e));
    }
    let rows: Vec<(CredentialRow, Option<String>)> = q.order(c::environment.asc()).load(conn)?;
    Ok(rows)
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
    use super::schema::users as u;
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

/// The owner of credential `id`, for administrators acting on any owner's credential (the
/// role check happened before; every further query is scoped by this owner).
pub fn owner_of(conn: &mut DbConn, id: CredentialId) -> Result<Option<UserId>, DbError> {
    Ok(c::table
        .filter(c::id.eq(id.get()))
        .filter(c::deleted_at.is_null())
        .select(c::owner_id)
        .first::<i64>(conn)
        .optional()?
        .map(UserId::from_db))
}

pub fn toggle_active(
    conn: &mut DbConn,
    owner: UserId,
    id: CredentialId,
    expected: Option<i32>,
    now: UnixSeconds,
) -> Result<Option<CredentialRow>, DbError> {
    conn.transaction(|tx| {
        let Some(before) = lock_row(tx, owner, id, now)? else {
            return Ok(None);
        };
        check_expected(expected, before.current_version)?;
        diesel::update(owned!(owner, id))
            .set(c::is_active.eq(!before.is_active))
            .execute(tx)?;
        Ok(Some(reload(tx, owner, id)?))
    })
}

/// Crypto-shredding: every version's wrapped DEK and ciphertext are deleted; the credential
/// row stays as a tombstone with its metadata (no api key) for the audit trail.
pub fn delete(
    conn: &mut DbConn,
    owner: UserId,
    id: CredentialId,
    expected: Option<i32>,
    now: UnixSeconds,
) -> Result<Option<CredentialRow>, DbError> {
    conn.transaction(|tx| {
        let Some(row) = lock_row(tx, owner, id, now)? else {
            return Ok(None);
        };
        check_expected(expected, row.current_version)?;
        diesel::update(owned!(owner, id))
            .set((
                c::deleted_at.eq(Some(now)),
                c::is_active.eq(false),
                c::api_key.eq(None::<String>),
            ))
            .execute(tx)?;
        diesel::delete(cv::table.filter(cv::credential_id.eq(row.id))).execute(tx)?;
        Ok(Some(row))
    })
}

/// Takes the row's write lock with a write (so SQLite takes its write lock first and
/// PostgreSQL locks the row), then reads it.
fn lock_row(
    tx: &mut DbConn,
    owner: UserId,
    id: CredentialId,
    now: UnixSeconds,
) -> Result<Option<CredentialRow>, DbError> {
    let n = diesel::update(owned!(owner, id))
        .set(c::updated_at.eq(now))
        .execute(tx)?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(reload(tx, owner, id)?))
}

fn reload(tx: &mut DbConn, owner: UserId, id: CredentialId) -> Result<CredentialRow, DbError> {
    Ok(owned!(owner, id)
        .select(CredentialRow::as_select())
        .first(tx)?)
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

/// The audit entries about the owner's credential `id` after `after`, oldest first, at most
/// `limit`; `None` if the credential is not theirs. The owner is checked in the same SQL.
pub fn access_log(
    conn: &mut DbConn,
    owner: UserId,
    id: CredentialId,
    after: i64,
    limit: i64,
) -> Result<Option<Vec<crate::audit::chain::AuditRow>>, DbError> {
    use super::schema::audit_log as log;
    if get(conn, owner, id)?.is_none() {
        return Ok(None);
    }
    Ok(Some(
        log::table
            .filter(log::credential_id.eq(id.get()))
            .filter(log::seq.gt(after))
            .filter(diesel::dsl::exists(
                c::table
                    .filter(c::id.eq(id.get()))
                    .filter(c::owner_id.eq(owner.get())),
            ))
            .order(log::seq.asc())
            .limit(limit)
            .select(crate::audit::chain::AuditRow::as_select())
            .load(conn)?,
    ))
}
