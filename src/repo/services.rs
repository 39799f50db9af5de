//! Services and grants. A service reads a credential only through a live grant, and that
//! check is inside the SQL that fetches the credential: never fetch-then-check. Service and
//! grant rows carry MACs (`crypto::rowmac`): a service row or grant edited or inserted in the
//! database is refused on use and never re-signed by a later change.

use diesel::prelude::*;

use super::users::{resign_each, sign};
use crate::audit::generation;
use crate::clock::UnixSeconds;
use crate::crypto::rowmac::{self, Verdict};
use crate::crypto::Keyring;
use crate::db::schema::{grants as g, services as s, users as u};
use crate::db::{DbConn, DbError};

mod grants;

pub(crate) use grants::store_grant;
pub use grants::{
    change_operations, create_grant, grant_by_names, grant_target, granted_by_id, granted_by_owner,
    list_grants, resign_grants_batch, revoke_grant, GrantChange, GrantRefused, GrantRow, Granted,
};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = s)]
pub struct ServiceRow {
    pub id: i64,
    pub name: String,
    pub identity: String,
    pub is_enabled: bool,
    pub allowed_cidrs: Option<String>,
    pub created_at: i64,
    pub mac: Option<Vec<u8>>,
    pub mac_version: Option<i32>,
    pub generation: i64,
}

impl ServiceRow {
    fn mac_row(&self) -> rowmac::Row<'_> {
        rowmac::Row::Service {
            id: self.id,
            name: &self.name,
            identity: &self.identity,
            is_enabled: self.is_enabled,
            allowed_cidrs: self.allowed_cidrs.as_deref(),
            generation: self.generation,
        }
    }

    /// The row's MAC and generation checked against the latest audit entry naming it.
    pub fn check(&self, conn: &mut DbConn, keyring: &Keyring) -> Result<Verdict, DbError> {
        let latest = generation::latest(conn, &generation::service(self.id))?;
        Ok(Verdict::of(self.intact(keyring), self.generation, latest))
    }

    pub(crate) fn intact_format1(&self, keyring: &Keyring) -> bool {
        rowmac::verify_format1(
            keyring,
            self.mac_version,
            self.mac.as_deref(),
            &self.mac_row(),
        )
    }

    /// Whether the row is as hazina last wrote it (its MAC verifies).
    pub fn intact(&self, keyring: &Keyring) -> bool {
        rowmac::verify(
            keyring,
            self.mac_version,
            self.mac.as_deref(),
            &self.mac_row(),
        )
    }
}

#[derive(Insertable)]
#[diesel(table_name = s)]
struct NewServiceRow<'a> {
    id: i64,
    name: &'a str,
    identity: &'a str,
    is_enabled: bool,
    allowed_cidrs: Option<&'a str>,
    created_at: i64,
    mac: Vec<u8>,
    mac_version: i32,
    generation: i64,
}

pub fn create_service(
    conn: &mut DbConn,
    keyring: &Keyring,
    name: &str,
    identity: &str,
    allowed_cidrs: Option<&str>,
    now: UnixSeconds,
) -> Result<ServiceRow, DbError> {
    let id = crate::domain::UserId::generate().get();
    let generation = generation::generation_for(conn, generation::service(id))?;
    let (mac, mac_version) = sign(
        keyring,
        &rowmac::Row::Service {
            id,
            name,
            identity,
            is_enabled: true,
            allowed_cidrs,
            generation,
        },
    )?;
    diesel::insert_into(s::table)
        .values(NewServiceRow {
            id,
            name,
            identity,
            is_enabled: true,
            allowed_cidrs,
            created_at: now,
            mac,
            mac_version,
            generation,
        })
        .execute(conn)?;
    Ok(s::table
        .find(id)
        .select(ServiceRow::as_select())
        .first(conn)?)
}

pub fn list_services(conn: &mut DbConn) -> Result<Vec<ServiceRow>, DbError> {
    Ok(s::table
        .order(s::name.asc())
        .select(ServiceRow::as_select())
        .load(conn)?)
}

/// What a certificate's identity resolves to.
#[derive(Debug, Clone)]
pub enum FoundService {
    Enabled(ServiceRow),
    /// The certificate's fingerprint was revoked (`services revoke-certificate`).
    Revoked,
    /// A row matched but failed its integrity check: refused (and audited by the caller).
    Tampered(ServiceRow, Verdict),
    None,
}

/// The enabled service a verified certificate names (see [`find_enabled`]), with its row's
/// integrity checked.
pub fn find_enabled_intact(
    conn: &mut DbConn,
    keyring: &Keyring,
    identity: &str,
    fingerprint: &str,
) -> Result<FoundService, DbError> {
    if is_revoked(conn, fingerprint)? {
        return Ok(FoundService::Revoked);
    }
    let fingerprint_identity = format!("sha256:{fingerprint}");
    Ok(match find_enabled(conn, identity, &fingerprint_identity)? {
        Some(row) => match row.check(conn, keyring)? {
            Verdict::Intact => FoundService::Enabled(row),
            verdict => FoundService::Tampered(row, verdict),
        },
        None => FoundService::None,
    })
}

/// The enabled service a verified certificate names: by its identity (SAN URI or DNS name)
/// first, else by its fingerprint (`sha256:<hex>`), so the answer is always the same service.
pub fn find_enabled(
    conn: &mut DbConn,
    identity: &str,
    fingerprint_identity: &str,
) -> Result<Option<ServiceRow>, DbError> {
    for candidate in [identity, fingerprint_identity] {
        let found = s::table
            .filter(s::identity.eq(candidate))
            .filter(s::is_enabled.eq(true))
            .select(ServiceRow::as_select())
            .first(conn)
            .optional()?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

pub fn find_by_name(conn: &mut DbConn, name: &str) -> Result<Option<ServiceRow>, DbError> {
    Ok(s::table
        .filter(s::name.eq(name))
        .select(ServiceRow::as_select())
        .first(conn)
        .optional()?)
}

/// Disables a service; its next request is refused. `None` if there is no such service.
pub fn disable_service(
    conn: &mut DbConn,
    keyring: &Keyring,
    name: &str,
) -> Result<Option<ServiceRow>, DbError> {
    conn.transaction(|tx| {
        // The write first, so SQLite takes its write lock before it reads.
        let n = diesel::update(s::table.filter(s::name.eq(name)))
            .set(s::id.eq(s::id))
            .execute(tx)?;
        if n == 0 {
            return Ok(None);
        }
        let Some(mut row) = find_by_name(tx, name)? else {
            return Ok(None);
        };
        if !row.check(tx, keyring)?.is_intact() {
            return Err(DbError::Tampered("service"));
        }
        row.is_enabled = false;
        row.generation = generation::generation_for(tx, generation::service(row.id))?;
        store_service(tx, keyring, &row)?;
        find_by_name(tx, name)
    })
}

pub(crate) fn store_service(
    tx: &mut DbConn,
    keyring: &Keyring,
    row: &ServiceRow,
) -> Result<(), DbError> {
    let (mac, mac_version) = sign(keyring, &row.mac_row())?;
    diesel::update(s::table.filter(s::id.eq(row.id)))
        .set((
            s::is_enabled.eq(row.is_enabled),
            s::mac.eq(Some(mac)),
            s::mac_version.eq(Some(mac_version)),
            s::generation.eq(row.generation),
        ))
        .execute(tx)?;
    Ok(())
}

/// Re-signs, under `target`, up to `limit` services whose MAC was made under an older version
/// and whose id is above `after`; a row that fails its integrity check is left as it is. The
/// last id looked at, or `None` when there is nothing left.
pub fn resign_services_batch(
    tx: &mut DbConn,
    keyring: &Keyring,
    target: i32,
    after: i64,
    limit: i64,
) -> Result<Option<i64>, DbError> {
    let rows: Vec<ServiceRow> = s::table
        .filter(s::mac_version.lt(target))
        .filter(s::id.gt(after))
        .order(s::id.asc())
        .limit(limit)
        .select(ServiceRow::as_select())
        .load(tx)?;
    resign_each(
        tx,
        keyring,
        &rows,
        "service",
        |r| r.id,
        ServiceRow::intact,
        store_service,
    )
}

/// Rows of the authorization tables whose MAC depends on master-key version `version`.
pub fn signed_under(conn: &mut DbConn, version: i32) -> Result<i64, DbError> {
    let users: i64 = u::table
        .filter(u::mac_version.eq(version))
        .count()
        .get_result(conn)?;
    let services: i64 = s::table
        .filter(s::mac_version.eq(version))
        .count()
        .get_result(conn)?;
    let grants: i64 = g::table
        .filter(g::mac_version.eq(version))
        .count()
        .get_result(conn)?;
    Ok(users + services + grants)
}

/// Whether the certificate with this fingerprint (lowercase hex SHA-256) was revoked: its
/// row, or the audit entry that revoked it (SPEC §14: deleting the row un-revokes nothing).
pub fn is_revoked(conn: &mut DbConn, fingerprint: &str) -> Result<bool, DbError> {
    use crate::db::schema::revoked_certificates as r;
    Ok(diesel::select(
        diesel::dsl::exists(r::table.filter(r::fingerprint.eq(fingerprint))).or(
            diesel::dsl::exists(
                crate::db::schema::audit_subjects::table.filter(
                    crate::db::schema::audit_subjects::subject
                        .eq(generation::revoked_cert(fingerprint)),
                ),
            ),
        ),
    )
    .get_result(conn)?)
}

/// Revokes the certificate with this fingerprint; `false` if it was revoked already.
pub fn revoke_certificate(
    conn: &mut DbConn,
    fingerprint: &str,
    now: UnixSeconds,
) -> Result<bool, DbError> {
    let inserted = diesel::sql_query(
        "INSERT INTO revoked_certificates (fingerprint, revoked_at) VALUES ($1, $2) \
         ON CONFLICT (fingerprint) DO NOTHING",
    )
    .bind::<diesel::sql_types::Text, _>(fingerprint)
    .bind::<diesel::sql_types::BigInt, _>(now)
    .execute(conn)?;
    if inserted == 1 {
        // The revocation's entry names the fingerprint: the log remembers it.
        generation::record(conn, generation::revoked_cert(fingerprint))?;
    }
    Ok(inserted == 1)
}

/// Every revoked certificate: (fingerprint, revoked at).
pub fn revoked_certificates(conn: &mut DbConn) -> Result<Vec<(String, i64)>, DbError> {
    use crate::db::schema::revoked_certificates as r;
    Ok(r::table
        .order(r::revoked_at.asc())
        .select((r::fingerprint, r::revoked_at))
        .load(conn)?)
}
