//! The credentials repository. Every function takes the owner first and filters by it in
//! SQL: nothing here fetches by id alone and checks afterwards. A row of another owner and
//! a missing row are the same `None`.
//!
//! A credential's state — owner, provider, environment, api key, active flag, current
//! version, deletion, and when the current version was written — carries a MAC with its
//! generation (SPEC §14), checked by [`check`] wherever a secret is released (the release
//! gate's `find`, through [`get_current`] and `services::granted_*`) and before every change
//! ([`lock_row`]): a flipped `is_active`, a `current_version` pointed back at a leaked
//! version, a version's time moved into the webhook grace window, or an older row written
//! back, is refused and never re-signed.

use diesel::prelude::*;

use crate::audit::generation;
use crate::clock::UnixSeconds;
use crate::crypto::rowmac::{self, Verdict};
use crate::crypto::Keyring;
use crate::db::schema::{credential_versions as cv, credentials as c};
use crate::db::{DbConn, DbError};
use crate::domain::{CredentialId, UserId};

/// Rows not deleted, of this owner, with this id.
macro_rules! owned {
    ($owner:expr, $id:expr) => {
        c::table
            .filter(c::owner_id.eq($owner.get()))
            .filter(c::id.eq($id.get()))
            .filter(c::deleted_at.is_null())
    };
}

mod versions;

use versions::insert_version;

pub use versions::{
    add_version, count_by_kek_version, list_versions, shred_beyond, version, Seal, Sealed,
    VersionMeta, VersionRow,
};

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
    pub deleted_at: Option<i64>,
    pub generation: i64,
    pub mac: Option<Vec<u8>>,
    pub mac_version: Option<i32>,
}

impl crate::audit::Target {
    /// The credential a change or a use acted on.
    pub fn credential(row: &CredentialRow) -> Self {
        crate::audit::Target {
            credential_id: Some(row.id),
            owner_id: Some(row.owner_id),
            provider: Some(row.provider.clone()),
            environment: Some(row.environment.clone()),
        }
    }
}

impl CredentialRow {
    fn mac_row(&self, version_created_at: Option<i64>) -> rowmac::Row<'_> {
        rowmac::Row::Credential {
            id: self.id,
            owner_id: self.owner_id,
            provider: &self.provider,
            environment: &self.environment,
            api_key: self.api_key.as_deref(),
            is_active: self.is_active,
            current_version: self.current_version,
            deleted_at: self.deleted_at,
            version_created_at,
            generation: self.generation,
        }
    }

    /// The check of the row's MAC (given its current version's time) and generation.
    pub fn verdict(
        &self,
        keyring: &Keyring,
        version_created_at: Option<i64>,
        latest: Option<i64>,
    ) -> Verdict {
        let mac_ok = rowmac::verify(
            keyring,
            self.mac_version,
            self.mac.as_deref(),
            &self.mac_row(version_created_at),
        );
        Verdict::of(mac_ok, self.generation, latest)
    }
}

/// Checks `row` (with its current version, when the caller read it) against its MAC and the
/// latest audit entry naming it.
pub fn check(
    conn: &mut DbConn,
    keyring: &Keyring,
    row: &CredentialRow,
    current: Option<&VersionRow>,
) -> Result<Verdict, DbError> {
    let created_at = match current {
        Some(v) => Some(v.created_at),
        None => current_version_time(conn, row)?,
    };
    let latest = generation::latest(conn, &generation::credential(row.id))?;
    Ok(row.verdict(keyring, created_at, latest))
}

/// When the row's current version was written; `None` once shredded.
fn current_version_time(conn: &mut DbConn, row: &CredentialRow) -> Result<Option<i64>, DbError> {
    Ok(cv::table
        .filter(cv::credential_id.eq(row.id))
        .filter(cv::version.eq(row.current_version))
        .select(cv::created_at)
        .first::<i64>(conn)
        .optional()?)
}

/// Signs the row as this change leaves it: the generation of the change's audit entry
/// (inside `audit::chain::with_entry`, like every signing).
pub fn store_state(
    tx: &mut DbConn,
    keyring: &Keyring,
    mut row: CredentialRow,
) -> Result<CredentialRow, DbError> {
    row.generation = generation::generation_for(tx, generation::credential(row.id))?;
    let version_created_at = current_version_time(tx, &row)?;
    let (mac, mac_version) = write_mac(tx, keyring, &row, version_created_at)?;
    row.mac = Some(mac);
    row.mac_version = Some(mac_version);
    Ok(row)
}

/// Signs `row` as it is (its generation included) under the active version, and stores the
/// MAC and the generation.
fn write_mac(
    tx: &mut DbConn,
    keyring: &Keyring,
    row: &CredentialRow,
    version_created_at: Option<i64>,
) -> Result<(Vec<u8>, i32), DbError> {
    let (mac, mac_version) = super::users::sign(keyring, &row.mac_row(version_created_at))?;
    diesel::update(c::table.filter(c::id.eq(row.id)))
        .set((
            c::generation.eq(row.generation),
            c::mac.eq(Some(&mac)),
            c::mac_version.eq(Some(mac_version)),
        ))
        .execute(tx)?;
    Ok((mac, mac_version))
}

/// Signs a credential's state at generation 0 (the one-time upgrade only, `repo::integrity`).
pub(crate) fn store_upgraded(
    tx: &mut DbConn,
    keyring: &Keyring,
    mut row: CredentialRow,
) -> Result<(), DbError> {
    row.generation = 0;
    let version_created_at = current_version_time(tx, &row)?;
    write_mac(tx, keyring, &row, version_created_at).map(|_| ())
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

/// The credential with its current envelope, for reveal and verify, and the verdict of its
/// integrity check (read in the same statement: one indexed lookup of the latest audit entry
/// naming it).
pub fn get_current(
    conn: &mut DbConn,
    keyring: &Keyring,
    owner: UserId,
    id: CredentialId,
) -> Result<Option<(CredentialRow, VersionRow, Verdict)>, DbError> {
    let subject = generation::credential(id.get());
    let found: Option<(CredentialRow, VersionRow, Option<i64>)> =
        crate::per_backend!(conn, |conn| owned!(owner, id)
            .inner_join(
                cv::table.on(cv::credential_id
                    .eq(c::id)
                    .and(cv::version.eq(c::current_version))),
            )
            .select((
                CredentialRow::as_select(),
                VersionRow::as_select(),
                crate::latest_generation!(&subject),
            ))
            .first(conn)
            .optional())?;
    Ok(found.map(|(row, version, latest)| {
        let verdict = row.verdict(keyring, Some(version.created_at), latest);
        (row, version, verdict)
    }))
}

pub fn create(
    conn: &mut DbConn,
    keyring: &Keyring,
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
        insert_version(tx, keyring, VersionRow::new(&row, sealed, now, new.owner))?;
        store_state(tx, keyring, row)
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

#[allow(clippy::too_many_arguments)]
pub fn update_metadata(
    conn: &mut DbConn,
    keyring: &Keyring,
    owner: UserId,
    id: CredentialId,
    update: MetadataUpdate<'_>,
    expected: Option<i32>,
    reseal: &Reseal<'_>,
    now: UnixSeconds,
) -> Result<Option<CredentialRow>, DbError> {
    conn.transaction(|tx| {
        let Some(before) = lock_row(tx, keyring, owner, id, now)? else {
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
            let row = reload(tx, owner, id)?;
            return Ok(Some(store_state(tx, keyring, row)?));
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
        insert_version(tx, keyring, VersionRow::new(&after, sealed, now, owner))?;
        Ok(Some(store_state(tx, keyring, after)?))
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
    keyring: &Keyring,
    owner: UserId,
    id: CredentialId,
    expected: Option<i32>,
    now: UnixSeconds,
) -> Result<Option<CredentialRow>, DbError> {
    conn.transaction(|tx| {
        let Some(before) = lock_row(tx, keyring, owner, id, now)? else {
            return Ok(None);
        };
        check_expected(expected, before.current_version)?;
        diesel::update(owned!(owner, id))
            .set(c::is_active.eq(!before.is_active))
            .execute(tx)?;
        let row = reload(tx, owner, id)?;
        Ok(Some(store_state(tx, keyring, row)?))
    })
}

/// Crypto-shredding: every version's wrapped DEK and ciphertext are deleted; the credential
/// row stays as a tombstone with its metadata (no api key) for the audit trail.
pub fn delete(
    conn: &mut DbConn,
    keyring: &Keyring,
    owner: UserId,
    id: CredentialId,
    expected: Option<i32>,
    now: UnixSeconds,
) -> Result<Option<CredentialRow>, DbError> {
    conn.transaction(|tx| {
        let Some(row) = lock_row(tx, keyring, owner, id, now)? else {
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
        let tombstone = c::table
            .filter(c::id.eq(row.id))
            .select(CredentialRow::as_select())
            .first(tx)?;
        store_state(tx, keyring, tombstone)?;
        Ok(Some(row))
    })
}

/// Takes the row's write lock with a write (so SQLite takes its write lock first and
/// PostgreSQL locks the row), reads it and checks it: a row edited or written back outside
/// hazina is `Tampered`, left as it is and never re-signed.
fn lock_row(
    tx: &mut DbConn,
    keyring: &Keyring,
    owner: UserId,
    id: CredentialId,
    now: UnixSeconds,
) -> Result<Option<CredentialRow>, DbError> {
    // The write first (`updated_at` is not signed), so SQLite takes its write lock up front.
    let n = diesel::update(owned!(owner, id))
        .set(c::updated_at.eq(now))
        .execute(tx)?;
    if n == 0 {
        return Ok(None);
    }
    let before = reload(tx, owner, id)?;
    if !check(tx, keyring, &before, None)?.is_intact() {
        return Err(DbError::Tampered("credential"));
    }
    Ok(Some(before))
}

fn reload(tx: &mut DbConn, owner: UserId, id: CredentialId) -> Result<CredentialRow, DbError> {
    Ok(owned!(owner, id)
        .select(CredentialRow::as_select())
        .first(tx)?)
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
    use crate::db::schema::audit_log as log;
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

/// Re-signs, under `target`, up to `limit` credential states whose MAC was made under an
/// older master-key version and whose id is above `after`, keeping their generation (a
/// rotation changes no fact). A row that fails its check is left as it is. The last id
/// looked at, or `None` when there is nothing left.
pub fn resign_batch(
    tx: &mut DbConn,
    keyring: &Keyring,
    target: i32,
    after: i64,
    limit: i64,
) -> Result<Option<i64>, DbError> {
    let rows: Vec<CredentialRow> = c::table
        .filter(c::mac_version.lt(target))
        .filter(c::id.gt(after))
        .order(c::id.asc())
        .limit(limit)
        .select(CredentialRow::as_select())
        .load(tx)?;
    let mut timed = Vec::with_capacity(rows.len());
    for row in rows {
        let created_at = current_version_time(tx, &row)?;
        timed.push((row, created_at));
    }
    super::users::resign_each(
        tx,
        keyring,
        &timed,
        "credential",
        |(row, _)| row.id,
        |(row, created_at), keyring| {
            rowmac::verify(
                keyring,
                row.mac_version,
                row.mac.as_deref(),
                &row.mac_row(*created_at),
            )
        },
        |tx, keyring, (row, created_at)| write_mac(tx, keyring, row, *created_at).map(|_| ()),
    )
}

/// Credential states signed under master-key version `version`.
pub fn signed_under(conn: &mut DbConn, version: i32) -> Result<i64, DbError> {
    Ok(c::table
        .filter(c::mac_version.eq(version))
        .count()
        .get_result(conn)?)
}
