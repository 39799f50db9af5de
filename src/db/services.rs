//! Services and grants. A service reads a credential only through a live grant, and that
//! check is inside the SQL that fetches the credential: never fetch-then-check.

use diesel::prelude::*;

use super::credentials::{CredentialRow, VersionRow};
use super::schema::{
    credential_versions as cv, credentials as c, grants as g, services as s, users as u,
};
use super::{DbConn, DbError};
use crate::clock::UnixSeconds;
use crate::domain::CredentialId;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = s)]
pub struct ServiceRow {
    pub id: i64,
    pub name: String,
    pub identity: String,
    pub is_enabled: bool,
    pub allowed_cidrs: Option<String>,
    pub created_at: i64,
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
}

pub fn create_service(
    conn: &mut DbConn,
    name: &str,
    identity: &str,
    allowed_cidrs: Option<&str>,
    now: UnixSeconds,
) -> Result<ServiceRow, DbError> {
    let id = crate::domain::UserId::generate().get();
    diesel::insert_into(s::table)
        .values(NewServiceRow {
            id,
            name,
            identity,
            is_enabled: true,
            allowed_cidrs,
            created_at: now,
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
pub fn disable_service(conn: &mut DbConn, name: &str) -> Result<Option<ServiceRow>, DbError> {
    conn.transaction(|tx| {
        let n = diesel::update(s::table.filter(s::name.eq(name)))
            .set(s::is_enabled.eq(false))
            .execute(tx)?;
        if n == 0 {
            return Ok(None);
        }
        find_by_name(tx, name)
    })
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = g)]
pub struct GrantRow {
    pub id: i64,
    pub service_id: i64,
    pub owner_id: i64,
    pub provider: Option<String>,
    pub environment: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Insertable)]
#[diesel(table_name = g)]
struct NewGrantRow<'a> {
    id: i64,
    service_id: i64,
    owner_id: i64,
    provider: Option<&'a str>,
    environment: Option<&'a str>,
    created_at: i64,
    revoked_at: Option<i64>,
}

pub fn create_grant(
    conn: &mut DbConn,
    service_id: i64,
    owner_id: i64,
    provider: Option<&str>,
    environment: Option<&str>,
    now: UnixSeconds,
) -> Result<GrantRow, DbError> {
    let id = crate::domain::UserId::generate().get();
    diesel::insert_into(g::table)
        .values(NewGrantRow {
            id,
            service_id,
            owner_id,
            provider,
            environment,
            created_at: now,
            revoked_at: None,
        })
        .execute(conn)?;
    Ok(g::table
        .find(id)
        .select(GrantRow::as_select())
        .first(conn)?)
}

/// Every grant with its service's and owner's names.
pub fn list_grants(conn: &mut DbConn) -> Result<Vec<(GrantRow, String, String)>, DbError> {
    Ok(g::table
        .inner_join(s::table)
        .inner_join(u::table)
        .order(g::created_at.asc())
        .select((GrantRow::as_select(), s::name, u::username))
        .load(conn)?)
}

/// Revokes a live grant; it stops working on the next request. `None` if no live grant.
pub fn revoke_grant(
    conn: &mut DbConn,
    id: i64,
    now: UnixSeconds,
) -> Result<Option<GrantRow>, DbError> {
    conn.transaction(|tx| {
        let n = diesel::update(
            g::table
                .filter(g::id.eq(id))
                .filter(g::revoked_at.is_null()),
        )
        .set(g::revoked_at.eq(Some(now)))
        .execute(tx)?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(
            g::table.find(id).select(GrantRow::as_select()).first(tx)?,
        ))
    })
}

/// Credentials a service may read: active, not deleted, covered by one of its live grants.
macro_rules! granted {
    ($service_id:expr) => {
        c::table
            .inner_join(
                cv::table.on(cv::credential_id
                    .eq(c::id)
                    .and(cv::version.eq(c::current_version))),
            )
            .filter(c::deleted_at.is_null())
            .filter(c::is_active.eq(true))
            .filter(diesel::dsl::exists(
                g::table
                    .filter(g::service_id.eq($service_id))
                    .filter(g::revoked_at.is_null())
                    .filter(g::owner_id.eq(c::owner_id))
                    .filter(
                        g::provider
                            .is_null()
                            .or(g::provider.eq(c::provider.nullable())),
                    )
                    .filter(
                        g::environment
                            .is_null()
                            .or(g::environment.eq(c::environment.nullable())),
                    ),
            ))
    };
}

/// The credential `id` with its current envelope, if `service_id` holds a grant for it.
pub fn granted_by_id(
    conn: &mut DbConn,
    service_id: i64,
    id: CredentialId,
) -> Result<Option<(CredentialRow, VersionRow)>, DbError> {
    Ok(granted!(service_id)
        .filter(c::id.eq(id.get()))
        .select((CredentialRow::as_select(), VersionRow::as_select()))
        .first(conn)
        .optional()?)
}

/// The owner's credential for `provider` and `environment`, if `service_id` holds a grant.
pub fn granted_by_owner(
    conn: &mut DbConn,
    service_id: i64,
    owner_username: &str,
    provider: &str,
    environment: &str,
) -> Result<Option<(CredentialRow, VersionRow)>, DbError> {
    Ok(granted!(service_id)
        .filter(c::provider.eq(provider))
        .filter(c::environment.eq(environment))
        .filter(
            c::owner_id.eq_any(
                u::table
                    .filter(u::username.eq(owner_username))
                    .select(u::id),
            ),
        )
        .select((CredentialRow::as_select(), VersionRow::as_select()))
        .first(conn)
        .optional()?)
}
