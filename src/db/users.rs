//! Users repository.

use diesel::prelude::*;

use super::schema::users as u;
use super::{DbConn, DbError};
use crate::clock::UnixSeconds;
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
}

/// Creates a user; `Conflict` when the username is taken.
pub fn create(
    conn: &mut DbConn,
    username: &Username,
    password_hash: &str,
    role: Role,
    now: UnixSeconds,
) -> Result<UserId, DbError> {
    let id = UserId::generate();
    diesel::insert_into(u::table)
        .values(NewUserRow {
            id: id.get(),
            username: username.as_str(),
            password_hash,
            role: role.as_str(),
            is_disabled: false,
            created_at: now,
        })
        .execute(conn)?;
    Ok(id)
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
pub fn disable(conn: &mut DbConn, username: &str) -> Result<Option<i64>, DbError> {
    conn.transaction(|tx| {
        let n = diesel::update(u::table.filter(u::username.eq(username)))
            .set(u::is_disabled.eq(true))
            .execute(tx)?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(
            u::table
                .filter(u::username.eq(username))
                .select(u::id)
                .first(tx)?,
        ))
    })
}

/// Every user, by name (administration).
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
    username: &str,
    cidrs: Option<&str>,
) -> Result<Option<i64>, DbError> {
    conn.transaction(|tx| {
        let n = diesel::update(u::table.filter(u::username.eq(username)))
            .set(u::allowed_cidrs.eq(cidrs))
            .execute(tx)?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(
            u::table
                .filter(u::username.eq(username))
                .select(u::id)
                .first(tx)?,
        ))
    })
}

/// Ends every live session of a user: their access tokens stop working on the next request
/// and their refresh tokens are spent. `(user id, sessions ended)`, or `None` if there is
/// no such user.
pub fn end_sessions(
    conn: &mut DbConn,
    username: &str,
    now: UnixSeconds,
) -> Result<Option<(i64, usize)>, DbError> {
    use super::schema::sessions as s;
    conn.transaction(|tx| {
        // The write first, so SQLite takes its write lock before it reads.
        let ended = diesel::update(
            s::table
                .filter(s::user_id.eq_any(u::table.filter(u::username.eq(username)).select(u::id)))
                .filter(s::revoked_at.is_null())
                .filter(s::expires_at.gt(now)),
        )
        .set(s::revoked_at.eq(Some(now)))
        .execute(tx)?;
        let id = u::table
            .filter(u::username.eq(username))
            .select(u::id)
            .first::<i64>(tx)
            .optional()?;
        Ok(id.map(|id| (id, ended)))
    })
}
