//! Users repository. A user's role, password hash, disabled flag and allowlist are covered by
//! the row's MAC (`crypto::rowmac`): every change verifies the MAC it replaces, and every use
//! checks it (see [`UserRow::verdict`]). The MAC binds the row's generation (SPEC §14): a
//! genuine older row written back is refused too.

use diesel::prelude::*;

use crate::audit::generation;
use crate::clock::UnixSeconds;
use crate::crypto::rowmac::{self, Verdict};
use crate::crypto::Keyring;
use crate::db::schema::users as u;
use crate::db::{DbConn, DbError};
use crate::domain::{Role, UserId, Username};

#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = u)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub is_disabled: bool,
    pub created_at: i64,
    pub allowed_cidrs: Option<String>,
    pub mac: Option<Vec<u8>>,
    pub mac_version: Option<i32>,
    /// The audit entry of the row's last change (SPEC §14).
    pub generation: i64,
}

impl UserRow {
    fn mac_row(&self) -> rowmac::Row<'_> {
        rowmac::Row::User {
            id: self.id,
            username: &self.username,
            password_hash: &self.password_hash,
            role: &self.role,
            is_disabled: self.is_disabled,
            allowed_cidrs: self.allowed_cidrs.as_deref(),
            generation: self.generation,
        }
    }

    /// Whether the row's MAC verifies (the row is one hazina wrote, perhaps an older one).
    pub fn intact(&self, keyring: &Keyring) -> bool {
        rowmac::verify(
            keyring,
            self.mac_version,
            self.mac.as_deref(),
            &self.mac_row(),
        )
    }

    /// Whether the row is as hazina last wrote it: its MAC verifies and `latest` (the latest
    /// audit entry naming it) is its generation.
    pub fn verdict(&self, keyring: &Keyring, latest: Option<i64>) -> Verdict {
        Verdict::of(self.intact(keyring), self.generation, latest)
    }

    /// [`UserRow::verdict`], reading the latest entry naming the row. Checked here on every
    /// login, refresh and change of the row; a request's session check reads it in its own
    /// query (`sessions::live`).
    pub fn check(&self, conn: &mut DbConn, keyring: &Keyring) -> Result<Verdict, DbError> {
        let latest = generation::latest(conn, &generation::user(self.id))?;
        Ok(self.verdict(keyring, latest))
    }

    /// Format 1 (the one-time upgrade only).
    pub(crate) fn intact_format1(&self, keyring: &Keyring) -> bool {
        rowmac::verify_format1(
            keyring,
            self.mac_version,
            self.mac.as_deref(),
            &self.mac_row(),
        )
    }
}

/// The MAC of a row's authorization fields under the active master-key version.
pub(crate) fn sign(keyring: &Keyring, row: &rowmac::Row<'_>) -> Result<(Vec<u8>, i32), DbError> {
    let version = keyring.active_version();
    let mac = rowmac::sign(keyring, version, row).ok_or(DbError::KeyState(
        "the keyring lacks its own active master-key version",
    ))?;
    Ok((mac, version as i32))
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("is_disabled", &self.is_disabled)
            .finish_non_exhaustive()
    }
}

#[derive(Insertable)]
#[diesel(table_name = u)]
struct NewUserRow<'a> {
    id: i64,
    username: &'a str,
    password_hash: &'a str,
    role: &'a str,
    is_disabled: bool,
    created_at: i64,
    allowed_cidrs: Option<&'a str>,
    mac: Vec<u8>,
    mac_version: i32,
    generation: i64,
}

/// Creates a user (with an allowlist, or none); `Conflict` when the username is taken.
pub fn create(
    conn: &mut DbConn,
    keyring: &Keyring,
    username: &Username,
    password_hash: &str,
    role: Role,
    allowed_cidrs: Option<&str>,
    now: UnixSeconds,
) -> Result<UserId, DbError> {
    let id = UserId::generate();
    let generation = generation::generation_for(conn, generation::user(id.get()))?;
    let (mac, mac_version) = sign(
        keyring,
        &rowmac::Row::User {
            id: id.get(),
            username: username.as_str(),
            password_hash,
            role: role.as_str(),
            is_disabled: false,
            allowed_cidrs,
            generation,
        },
    )?;
    diesel::insert_into(u::table)
        .values(NewUserRow {
            id: id.get(),
            username: username.as_str(),
            password_hash,
            role: role.as_str(),
            is_disabled: false,
            created_at: now,
            allowed_cidrs,
            mac,
            mac_version,
            generation,
        })
        .execute(conn)?;
    Ok(id)
}

/// Locks the user's row (a write first, so SQLite takes its write lock and PostgreSQL locks
/// the row), reads it and checks its MAC and generation: `None` if there is no such user,
/// `Tampered` if the row was edited outside hazina or written back from an older state (it is
/// then left as it is, never re-signed).
fn lock_intact(
    tx: &mut DbConn,
    keyring: &Keyring,
    username: &str,
) -> Result<Option<UserRow>, DbError> {
    let n = diesel::update(u::table.filter(u::username.eq(username)))
        .set(u::id.eq(u::id))
        .execute(tx)?;
    if n == 0 {
        return Ok(None);
    }
    let row = u::table
        .filter(u::username.eq(username))
        .select(UserRow::as_select())
        .first(tx)?;
    if !row.check(tx, keyring)?.is_intact() {
        return Err(DbError::Tampered("user"));
    }
    Ok(Some(row))
}

/// Writes a changed row's authorization fields with a fresh MAC and the generation of the
/// change's audit entry.
fn rewrite(tx: &mut DbConn, keyring: &Keyring, row: &UserRow) -> Result<(), DbError> {
    let mut row = row.clone();
    row.generation = generation::generation_for(tx, generation::user(row.id))?;
    store(tx, keyring, &row)
}

/// Writes the row as it is (its generation included) with a MAC under the active version:
/// a change's last step, or a master-key rotation's re-signing (which changes no fact).
pub(crate) fn store(tx: &mut DbConn, keyring: &Keyring, row: &UserRow) -> Result<(), DbError> {
    let (mac, mac_version) = sign(keyring, &row.mac_row())?;
    diesel::update(u::table.filter(u::id.eq(row.id)))
        .set((
            u::password_hash.eq(&row.password_hash),
            u::role.eq(&row.role),
            u::is_disabled.eq(row.is_disabled),
            u::allowed_cidrs.eq(row.allowed_cidrs.as_deref()),
            u::mac.eq(Some(mac)),
            u::mac_version.eq(Some(mac_version)),
            u::generation.eq(row.generation),
        ))
        .execute(tx)?;
    Ok(())
}

/// Changes one user's row with `change`, inside a transaction, verifying the MAC it replaces.
/// The user's id, or `None` if there is no such user.
pub fn change(
    conn: &mut DbConn,
    keyring: &Keyring,
    username: &str,
    change: impl FnOnce(&mut UserRow),
) -> Result<Option<i64>, DbError> {
    conn.transaction(|tx| {
        let Some(mut row) = lock_intact(tx, keyring, username)? else {
            return Ok(None);
        };
        change(&mut row);
        rewrite(tx, keyring, &row)?;
        Ok(Some(row.id))
    })
}

/// Re-signs, under `target`, up to `limit` users whose MAC was made under an older version
/// and whose id is above `after`; a row whose MAC does not verify is left as it is (and
/// logged). The last id looked at, or `None` when there is nothing left.
pub fn resign_batch(
    tx: &mut DbConn,
    keyring: &Keyring,
    target: i32,
    after: i64,
    limit: i64,
) -> Result<Option<i64>, DbError> {
    let rows: Vec<UserRow> = u::table
        .filter(u::mac_version.lt(target))
        .filter(u::id.gt(after))
        .order(u::id.asc())
        .limit(limit)
        .select(UserRow::as_select())
        .load(tx)?;
    resign_each(tx, keyring, &rows, "user", |r| r.id, UserRow::intact, store)
}

/// Re-signs each intact row of `rows` with `rewrite`; a row that fails its integrity check
/// is left as it is (and logged), so a rotation never launders a tampered row. The last id
/// looked at, or `None` when `rows` is empty.
pub(crate) fn resign_each<R>(
    tx: &mut DbConn,
    keyring: &Keyring,
    rows: &[R],
    kind: &'static str,
    id: impl Fn(&R) -> i64,
    intact: impl Fn(&R, &Keyring) -> bool,
    rewrite: impl Fn(&mut DbConn, &Keyring, &R) -> Result<(), DbError>,
) -> Result<Option<i64>, DbError> {
    for row in rows {
        if intact(row, keyring) {
            rewrite(tx, keyring, row)?;
        } else {
            tracing::error!(
                row = kind,
                id = id(row),
                "a row failed its integrity check: left unsigned"
            );
        }
    }
    Ok(rows.last().map(id))
}

pub fn find_by_id(conn: &mut DbConn, id: i64) -> Result<Option<UserRow>, DbError> {
    Ok(u::table
        .filter(u::id.eq(id))
        .select(UserRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn find_by_username(conn: &mut DbConn, username: &str) -> Result<Option<UserRow>, DbError> {
    Ok(u::table
        .filter(u::username.eq(username))
        .select(UserRow::as_select())
        .first(conn)
        .optional()?)
}

/// Disables a user; their tokens stop working on the next request. Their id, or `None` if
/// there is no such user.
pub fn disable(
    conn: &mut DbConn,
    keyring: &Keyring,
    username: &str,
) -> Result<Option<i64>, DbError> {
    conn.transaction(|tx| {
        let Some(mut row) = lock_intact(tx, keyring, username)? else {
            return Ok(None);
        };
        if is_last_admin(tx, keyring, &row)? {
            return Err(last_admin());
        }
        row.is_disabled = true;
        rewrite(tx, keyring, &row)?;
        Ok(Some(row.id))
    })
}

/// Enables a disabled user (they log in again; their old sessions stay ended). Their id, or
/// `None` if there is no such user.
pub fn enable(
    conn: &mut DbConn,
    keyring: &Keyring,
    username: &str,
) -> Result<Option<i64>, DbError> {
    change(conn, keyring, username, |row| row.is_disabled = false)
}

/// Sets a user's role. Refused (`Rejected`) when it would leave no enabled administrator.
/// Their id, or `None` if there is no such user.
pub fn set_role(
    conn: &mut DbConn,
    keyring: &Keyring,
    username: &str,
    role: Role,
) -> Result<Option<i64>, DbError> {
    conn.transaction(|tx| {
        let Some(mut row) = lock_intact(tx, keyring, username)? else {
            return Ok(None);
        };
        if role != Role::Admin && is_last_admin(tx, keyring, &row)? {
            return Err(last_admin());
        }
        row.role = role.as_str().to_owned();
        rewrite(tx, keyring, &row)?;
        Ok(Some(row.id))
    })
}

/// Replaces a user's password hash and ends every live session of theirs except `keep` (the
/// caller's own, when a user changes their own password). Their id, or `None` if there is
/// no such user.
pub fn set_password(
    conn: &mut DbConn,
    keyring: &Keyring,
    username: &str,
    password_hash: &str,
    keep: Option<&str>,
    now: UnixSeconds,
) -> Result<Option<i64>, DbError> {
    conn.transaction(|tx| {
        let Some(mut row) = lock_intact(tx, keyring, username)? else {
            return Ok(None);
        };
        row.password_hash = password_hash.to_owned();
        rewrite(tx, keyring, &row)?;
        super::sessions::revoke_live(tx, keyring, row.id, keep, now)?;
        Ok(Some(row.id))
    })
}

/// Whether `row` is the only enabled, intact administrator.
fn is_last_admin(tx: &mut DbConn, keyring: &Keyring, row: &UserRow) -> Result<bool, DbError> {
    if row.role != Role::Admin.as_str() || row.is_disabled {
        return Ok(false);
    }
    let others = u::table
        .filter(u::role.eq(Role::Admin.as_str()))
        .filter(u::is_disabled.eq(false))
        .filter(u::id.ne(row.id))
        .select(UserRow::as_select())
        .load(tx)?;
    Ok(!others.iter().any(|o| o.intact(keyring)))
}

fn last_admin() -> DbError {
    DbError::Rejected(crate::domain::ValidationError(
        "That would leave no enabled administrator; make another user an admin first".into(),
    ))
}

/// Every user, by name (administration).
/// The usernames of the users among `ids` (for pages that name people, not numbers).
pub fn usernames(
    conn: &mut DbConn,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, String>, DbError> {
    Ok(u::table
        .filter(u::id.eq_any(ids))
        .select((u::id, u::username))
        .load::<(i64, String)>(conn)?
        .into_iter()
        .collect())
}

pub fn list(conn: &mut DbConn) -> Result<Vec<UserRow>, DbError> {
    Ok(u::table
        .order(u::username.asc())
        .select(UserRow::as_select())
        .load(conn)?)
}

/// Sets (or with `None` clears) a user's IP allowlist; it applies from their next request.
/// Their id, or `None` if there is no such user.
pub fn set_allowed_cidrs(
    conn: &mut DbConn,
    keyring: &Keyring,
    username: &str,
    cidrs: Option<&str>,
) -> Result<Option<i64>, DbError> {
    change(conn, keyring, username, |row| {
        row.allowed_cidrs = cidrs.map(str::to_owned)
    })
}

/// Ends every live session of a user: their access tokens stop working on the next request
/// and their refresh tokens are spent. `(user id, sessions ended)`, or `None` if there is
/// no such user.
pub fn end_sessions(
    conn: &mut DbConn,
    keyring: &Keyring,
    username: &str,
    now: UnixSeconds,
) -> Result<Option<(i64, usize)>, DbError> {
    conn.transaction(|tx| {
        // The write first, so SQLite takes its write lock before it reads.
        let n = diesel::update(u::table.filter(u::username.eq(username)))
            .set(u::id.eq(u::id))
            .execute(tx)?;
        if n == 0 {
            return Ok(None);
        }
        let id = u::table
            .filter(u::username.eq(username))
            .select(u::id)
            .first::<i64>(tx)?;
        let ended = super::sessions::revoke_live(tx, keyring, id, None, now)?;
        Ok(Some((id, ended)))
    })
}
