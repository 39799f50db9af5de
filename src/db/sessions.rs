//! Sessions repository: the shared, durable state behind tokens, so several nodes agree on
//! revocations and on which refresh token may be spent next.

use diesel::prelude::*;

use super::schema::{sessions as s, users as u};
use super::{DbConn, DbError};
use crate::clock::UnixSeconds;
use crate::domain::UserId;

#[derive(Insertable)]
#[diesel(table_name = s)]
struct NewSessionRow<'a> {
    id: &'a str,
    user_id: i64,
    refresh_jti: &'a str,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
}

pub fn create(
    conn: &mut DbConn,
    id: &str,
    user: UserId,
    refresh_jti: &str,
    now: UnixSeconds,
    expires_at: UnixSeconds,
) -> Result<(), DbError> {
    diesel::insert_into(s::table)
        .values(NewSessionRow {
            id,
            user_id: user.get(),
            refresh_jti,
            created_at: now,
            expires_at,
            revoked_at: None,
        })
        .execute(conn)?;
    Ok(())
}

/// What an access token's session resolves to right now.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub username: String,
    pub role: String,
    /// The user's IP allowlist (comma-separated CIDRs), if they have one.
    pub allowed_cidrs: Option<String>,
}

/// The session's user, if the session is live (not revoked, not expired) and the user is
/// enabled. One indexed read per authenticated request.
pub fn live(
    conn: &mut DbConn,
    session_id: &str,
    user: UserId,
    now: UnixSeconds,
) -> Result<Option<LiveSession>, DbError> {
    let row: Option<(String, String, Option<String>)> = s::table
        .inner_join(u::table)
        .filter(s::id.eq(session_id))
        .filter(s::user_id.eq(user.get()))
        .filter(s::revoked_at.is_null())
        .filter(s::expires_at.gt(now))
        .filter(u::is_disabled.eq(false))
        .select((u::username, u::role, u::allowed_cidrs))
        .first(conn)
        .optional()?;
    Ok(row.map(|(username, role, allowed_cidrs)| LiveSession {
        username,
        role,
        allowed_cidrs,
    }))
}

/// The outcome of presenting a refresh token.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The token was the current one; `next_jti` is now the only one that works.
    Rotated,
    /// The token was spent before (or the session is gone): the session is now revoked.
    Reused,
}

/// Spends refresh token `jti` of `session_id` and installs `next_jti`, atomically: the
/// compare-and-swap in one UPDATE means two nodes cannot both spend the same token. A token
/// that does not match revokes the whole session. Also answers the user's name (for the
/// audit trail), when the user exists.
pub fn rotate_refresh(
    conn: &mut DbConn,
    session_id: &str,
    user: UserId,
    jti: &str,
    next_jti: &str,
    now: UnixSeconds,
) -> Result<(Refresh, Option<String>), DbError> {
    conn.transaction(|tx| {
        let n = diesel::update(
            s::table
                .filter(s::id.eq(session_id))
                .filter(s::user_id.eq(user.get()))
                .filter(s::refresh_jti.eq(jti))
                .filter(s::revoked_at.is_null())
                .filter(s::expires_at.gt(now)),
        )
        .set(s::refresh_jti.eq(next_jti))
        .execute(tx)?;
        let account: Option<(String, bool)> = u::table
            .filter(u::id.eq(user.get()))
            .select((u::username, u::is_disabled))
            .first(tx)
            .optional()?;
        let name = account.as_ref().map(|(name, _)| name.clone());
        if n == 1 && account.as_ref().is_some_and(|(_, disabled)| !disabled) {
            return Ok((Refresh::Rotated, name));
        }
        revoke(tx, session_id, now)?;
        Ok((Refresh::Reused, name))
    })
}

/// Revokes a session; idempotent.
pub fn revoke(conn: &mut DbConn, session_id: &str, now: UnixSeconds) -> Result<(), DbError> {
    diesel::update(
        s::table
            .filter(s::id.eq(session_id))
            .filter(s::revoked_at.is_null()),
    )
    .set(s::revoked_at.eq(Some(now)))
    .execute(conn)?;
    Ok(())
}
