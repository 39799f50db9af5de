//! Grants: which service may read which owner's credentials, and the grant-scoped reads
//! that check them inside the SQL. Grant rows carry MACs (`crypto::rowmac`), like services.

use diesel::prelude::*;

use crate::audit::{chain, generation, Event, Target};
use crate::clock::UnixSeconds;
use crate::crypto::rowmac::{self, Verdict};
use crate::crypto::Keyring;
use crate::db::schema::{
    credential_versions as cv, credentials as c, grants as g, services as s, users as u,
};
use crate::db::{DbConn, DbError};
use crate::domain::operation::Operations;
use crate::domain::{CredentialId, Environment, Provider};
use crate::repo::credentials::{self, CredentialRow, VersionRow};
use crate::repo::users::{self, resign_each, sign};

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
    pub mac: Option<Vec<u8>>,
    pub mac_version: Option<i32>,
    /// Canonical operations (see [`crate::domain::operation::Operations`]).
    pub operations: String,
    pub generation: i64,
}

impl GrantRow {
    fn mac_row(&self) -> rowmac::Row<'_> {
        rowmac::Row::Grant {
            id: self.id,
            service_id: self.service_id,
            owner_id: self.owner_id,
            provider: self.provider.as_deref(),
            environment: self.environment.as_deref(),
            revoked_at: self.revoked_at,
            operations: &self.operations,
            generation: self.generation,
        }
    }

    /// The row's MAC and generation checked against the latest audit entry naming it.
    pub fn check(&self, conn: &mut DbConn, keyring: &Keyring) -> Result<Verdict, DbError> {
        let latest = generation::latest(conn, &generation::grant(self.id))?;
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

    /// Whether this grant allows `operation`.
    pub fn allows(&self, operation: crate::domain::operation::Operation) -> bool {
        self.operations.split(',').any(|o| o == operation.as_str())
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
#[diesel(table_name = g)]
struct NewGrantRow<'a> {
    id: i64,
    service_id: i64,
    owner_id: i64,
    provider: Option<&'a str>,
    environment: Option<&'a str>,
    created_at: i64,
    revoked_at: Option<i64>,
    mac: Vec<u8>,
    mac_version: i32,
    operations: &'a str,
    generation: i64,
}

pub fn create_grant(
    conn: &mut DbConn,
    keyring: &Keyring,
    service_id: i64,
    owner_id: i64,
    (provider, environment): (Option<&str>, Option<&str>),
    operations: &Operations,
    now: UnixSeconds,
) -> Result<GrantRow, DbError> {
    let id = crate::domain::UserId::generate().get();
    let operations = operations.canonical();
    let generation = generation::generation_for(conn, generation::grant(id))?;
    let (mac, mac_version) = sign(
        keyring,
        &rowmac::Row::Grant {
            id,
            service_id,
            owner_id,
            provider,
            environment,
            revoked_at: None,
            operations: &operations,
            generation,
        },
    )?;
    diesel::insert_into(g::table)
        .values(NewGrantRow {
            id,
            service_id,
            owner_id,
            provider,
            environment,
            created_at: now,
            revoked_at: None,
            mac,
            mac_version,
            operations: &operations,
            generation,
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

/// The live grant `id`, locked for the rest of the transaction (the write first, so SQLite
/// takes its write lock before it reads); `None` if no live grant has this id.
fn lock_live(tx: &mut DbConn, id: i64) -> Result<Option<GrantRow>, DbError> {
    let n = diesel::update(
        g::table
            .filter(g::id.eq(id))
            .filter(g::revoked_at.is_null()),
    )
    .set(g::id.eq(g::id))
    .execute(tx)?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(
        g::table.find(id).select(GrantRow::as_select()).first(tx)?,
    ))
}

/// Revokes a live grant; it stops working on the next request. `None` if no live grant.
pub fn revoke_grant(
    conn: &mut DbConn,
    keyring: &Keyring,
    id: i64,
    now: UnixSeconds,
) -> Result<Option<GrantRow>, DbError> {
    conn.transaction(|tx| {
        let Some(mut row) = lock_live(tx, id)? else {
            return Ok(None);
        };
        // A tampered grant is revoked all the same (revoking only ever takes access away),
        // but only a genuine one is re-signed. Either way the entry names it, so an older
        // row written back later is refused.
        let genuine = row.check(tx, keyring)?.is_intact();
        row.revoked_at = Some(now);
        row.generation = generation::generation_for(tx, generation::grant(id))?;
        let (mac, mac_version) = if genuine {
            let (mac, v) = sign(keyring, &row.mac_row())?;
            (Some(mac), Some(v))
        } else {
            tracing::error!(
                grant_id = id,
                "revoking a grant that failed its integrity check"
            );
            (None, None)
        };
        diesel::update(g::table.filter(g::id.eq(id)))
            .set((
                g::revoked_at.eq(row.revoked_at),
                g::mac.eq(mac),
                g::mac_version.eq(mac_version),
                g::generation.eq(row.generation),
            ))
            .execute(tx)?;
        Ok(Some(
            g::table.find(id).select(GrantRow::as_select()).first(tx)?,
        ))
    })
}

/// What a service's grant-scoped read found.
#[derive(Debug)]
pub enum Granted {
    Found(CredentialRow, VersionRow),
    /// The SQL matched, but no matching grant (or the owner's or the credential's row) passed
    /// its integrity check: refused, and answered like a missing id (the caller audits it).
    Tampered(CredentialRow, Verdict),
    /// Intact grants cover the credential, but none allows the operation: 403, audited.
    NotGranted(CredentialRow),
    None,
}

/// Keeps `found` only if one of the live grants of `service_id` that covers it is intact and
/// allows `operation`, and its owner's row is intact and enabled.
fn with_intact_grant(
    conn: &mut DbConn,
    keyring: &Keyring,
    service_id: i64,
    operation: crate::domain::operation::Operation,
    found: Option<(CredentialRow, VersionRow)>,
) -> Result<Granted, DbError> {
    let Some((row, version)) = found else {
        return Ok(Granted::None);
    };
    // The credential's state (active, current version and its time) must be genuine and
    // current, or a database writer could re-enable it or roll it back to a leaked version.
    match credentials::check(conn, keyring, &row, Some(&version))? {
        Verdict::Intact => {}
        verdict => return Ok(Granted::Tampered(row, verdict)),
    }
    // A disabled owner's grants are inert (the SQL filtered them); the flag it read must be
    // genuine, or a database writer could revive them by clearing it.
    let owner = users::find_by_id(conn, row.owner_id)?;
    match owner {
        Some(u) => match u.check(conn, keyring)? {
            Verdict::Intact if !u.is_disabled => {}
            Verdict::Intact => return Ok(Granted::None),
            verdict => return Ok(Granted::Tampered(row, verdict)),
        },
        None => return Ok(Granted::None),
    }
    let grants: Vec<GrantRow> = g::table
        .filter(g::service_id.eq(service_id))
        .filter(g::revoked_at.is_null())
        .filter(g::owner_id.eq(row.owner_id))
        .filter(g::provider.is_null().or(g::provider.eq(&row.provider)))
        .filter(
            g::environment
                .is_null()
                .or(g::environment.eq(&row.environment)),
        )
        .select(GrantRow::as_select())
        .load(conn)?;
    let mut intact: Vec<&GrantRow> = Vec::with_capacity(grants.len());
    let mut worst = Verdict::Tampered;
    for grant in &grants {
        match grant.check(conn, keyring)? {
            Verdict::Intact => intact.push(grant),
            verdict => worst = verdict,
        }
    }
    if intact.is_empty() {
        Ok(Granted::Tampered(row, worst))
    } else if intact.iter().any(|g| g.allows(operation)) {
        Ok(Granted::Found(row, version))
    } else {
        Ok(Granted::NotGranted(row))
    }
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
            .filter(c::owner_id.eq_any(u::table.filter(u::is_disabled.eq(false)).select(u::id)))
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
    keyring: &Keyring,
    service_id: i64,
    id: CredentialId,
    operation: crate::domain::operation::Operation,
) -> Result<Granted, DbError> {
    let found = granted!(service_id)
        .filter(c::id.eq(id.get()))
        .select((CredentialRow::as_select(), VersionRow::as_select()))
        .first(conn)
        .optional()?;
    with_intact_grant(conn, keyring, service_id, operation, found)
}

/// The owner's credential for `provider` and `environment`, if `service_id` holds a grant.
pub fn granted_by_owner(
    conn: &mut DbConn,
    keyring: &Keyring,
    service_id: i64,
    owner_username: &str,
    provider: &str,
    environment: &str,
    operation: crate::domain::operation::Operation,
) -> Result<Granted, DbError> {
    let found = granted!(service_id)
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
        .optional()?;
    with_intact_grant(conn, keyring, service_id, operation, found)
}

/// Signs the grant as it is (its generation included).
pub(crate) fn store_grant(
    tx: &mut DbConn,
    keyring: &Keyring,
    row: &GrantRow,
) -> Result<(), DbError> {
    let (mac, mac_version) = sign(keyring, &row.mac_row())?;
    diesel::update(g::table.filter(g::id.eq(row.id)))
        .set((
            g::mac.eq(Some(mac)),
            g::mac_version.eq(Some(mac_version)),
            g::generation.eq(row.generation),
        ))
        .execute(tx)?;
    Ok(())
}

/// As [`super::resign_services_batch`], for grants.
pub fn resign_grants_batch(
    tx: &mut DbConn,
    keyring: &Keyring,
    target: i32,
    after: i64,
    limit: i64,
) -> Result<Option<i64>, DbError> {
    let rows: Vec<GrantRow> = g::table
        .filter(g::mac_version.lt(target))
        .filter(g::id.gt(after))
        .order(g::id.asc())
        .limit(limit)
        .select(GrantRow::as_select())
        .load(tx)?;
    resign_each(
        tx,
        keyring,
        &rows,
        "grant",
        |r| r.id,
        GrantRow::intact,
        store_grant,
    )
}

/// What a grant's audit entry names.
pub fn grant_target(grant: &GrantRow, owner_id: i64) -> Target {
    Target {
        owner_id: Some(owner_id),
        provider: grant.provider.clone(),
        environment: grant.environment.clone(),
        ..Target::default()
    }
}

/// Why [`grant_by_names`] made no grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantRefused {
    NoService,
    NoOwner,
    /// A live grant of exactly this scope exists (its id): one changes its operations
    /// rather than making a second.
    ScopeTaken(i64),
}

impl std::fmt::Display for GrantRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantRefused::NoService => f.write_str("No such service"),
            GrantRefused::NoOwner => f.write_str("No such owner"),
            GrantRefused::ScopeTaken(id) => write!(
                f,
                "A grant of this scope exists (id {id}): add the operation to it \
                 (`hazina grants update --id {id} --add-operation NAME`, or \
                 PATCH /admin/grants/{id}/)"
            ),
        }
    }
}

/// The live grant of exactly this scope, if there is one.
fn live_in_scope(
    conn: &mut DbConn,
    service_id: i64,
    owner_id: i64,
    (provider, environment): (Option<&str>, Option<&str>),
) -> Result<Option<i64>, DbError> {
    let mut query = g::table
        .filter(g::service_id.eq(service_id))
        .filter(g::owner_id.eq(owner_id))
        .filter(g::revoked_at.is_null())
        .select(g::id)
        .into_boxed();
    query = match provider {
        Some(p) => query.filter(g::provider.eq(p)),
        None => query.filter(g::provider.is_null()),
    };
    query = match environment {
        Some(e) => query.filter(g::environment.eq(e)),
        None => query.filter(g::environment.is_null()),
    };
    Ok(query.first(conn).optional()?)
}

/// Creates a grant by names, with `entry` (completed with the grant's target) in the same
/// transaction; shared by the API and the CLI.
#[allow(clippy::too_many_arguments)]
pub fn grant_by_names(
    conn: &mut DbConn,
    keyring: &Keyring,
    service: &str,
    owner: &str,
    scope: (Option<Provider>, Option<Environment>),
    operations: &Operations,
    now: i64,
    entry: Event,
) -> Result<Result<(GrantRow, i64), GrantRefused>, DbError> {
    chain::with_entry(
        conn,
        |tx| create_by_names(tx, keyring, service, owner, scope, operations, now),
        |made| {
            let (grant, owner_id) = made.as_ref().ok()?;
            Some(entry.target(grant_target(grant, *owner_id)))
        },
    )
}

fn create_by_names(
    conn: &mut DbConn,
    keyring: &Keyring,
    service: &str,
    owner: &str,
    (provider, environment): (Option<Provider>, Option<Environment>),
    operations: &Operations,
    now: i64,
) -> Result<Result<(GrantRow, i64), GrantRefused>, DbError> {
    let Some(svc) = super::find_by_name(conn, service)? else {
        return Ok(Err(GrantRefused::NoService));
    };
    let Some(owner) = users::find_by_username(conn, owner)? else {
        return Ok(Err(GrantRefused::NoOwner));
    };
    let scope = (
        provider.map(Provider::as_str),
        environment.map(Environment::as_str),
    );
    // Named before the insert, whose unique index stays the guard against two writers.
    if let Some(id) = live_in_scope(conn, svc.id, owner.id, scope)? {
        return Ok(Err(GrantRefused::ScopeTaken(id)));
    }
    // Never grant to (or over) a row that was edited outside hazina.
    if !svc.intact(keyring) {
        return Err(DbError::Tampered("service"));
    }
    if !owner.intact(keyring) {
        return Err(DbError::Tampered("user"));
    }
    let grant = create_grant(conn, keyring, svc.id, owner.id, scope, operations, now)?;
    Ok(Ok((grant, owner.id)))
}

/// What [`change_operations`] did.
#[derive(Debug)]
pub enum GrantChange {
    /// The grant as it now is, with its service's and owner's names.
    Changed(GrantRow, String, String),
    NoLiveGrant,
    /// The change would leave the grant allowing nothing.
    Refused(crate::domain::ValidationError),
}

/// Joins `add` to a live grant's operations and takes `remove` away, re-signed, in one
/// transaction with `entry` (completed with the grant's target; none when nothing changed).
/// A grant edited outside hazina is refused, never widened.
pub fn change_operations(
    conn: &mut DbConn,
    keyring: &Keyring,
    id: i64,
    (add, remove): (&Operations, &Operations),
    entry: Event,
) -> Result<GrantChange, DbError> {
    chain::with_entry(
        conn,
        |tx| change_in(tx, keyring, id, add, remove),
        |change| match change {
            GrantChange::Changed(grant, ..) => {
                Some(entry.target(grant_target(grant, grant.owner_id)))
            }
            _ => None,
        },
    )
}

fn change_in(
    conn: &mut DbConn,
    keyring: &Keyring,
    id: i64,
    add: &Operations,
    remove: &Operations,
) -> Result<GrantChange, DbError> {
    conn.transaction(|tx| {
        let Some(mut row) = lock_live(tx, id)? else {
            return Ok(GrantChange::NoLiveGrant);
        };
        if !row.check(tx, keyring)?.is_intact() {
            return Err(DbError::Tampered("grant"));
        }
        let operations = match Operations::changed(&row.operations, add, remove) {
            Ok(ops) => ops.canonical(),
            Err(e) => return Ok(GrantChange::Refused(e)),
        };
        row.operations = operations;
        row.generation = generation::generation_for(tx, generation::grant(id))?;
        let (mac, mac_version) = sign(keyring, &row.mac_row())?;
        diesel::update(g::table.filter(g::id.eq(id)))
            .set((
                g::operations.eq(&row.operations),
                g::mac.eq(mac),
                g::mac_version.eq(mac_version),
                g::generation.eq(row.generation),
            ))
            .execute(tx)?;
        let (row, service, owner) = g::table
            .inner_join(s::table)
            .inner_join(u::table)
            .filter(g::id.eq(id))
            .select((GrantRow::as_select(), s::name, u::username))
            .first(tx)?;
        Ok(GrantChange::Changed(row, service, owner))
    })
}
