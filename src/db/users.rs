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

/// Disables a user; their tokens stop working on the next request. `false` if no such user.
pub fn disable(conn: &mut DbConn, username: &str) -> Result<bool, DbError> {
    let n = diesel::update(u::table.filter(u::username.eq(username)))
        .set(u::is_disabled.eq(true))
        .execute(conn)?;
    Ok(n == 1)
}
