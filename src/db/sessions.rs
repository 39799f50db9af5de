//! Sessions repository: the shared, durable state behind tokens, so several nodes agree on
//! revocations and on which refresh token may be spent next.

use diesel::prelude::*;

use super::key_versions::RETIRED;
use super::schema::{key_versions as kv, sessions as s, users as u};
use super::users::UserRow;
use super::{DbConn, DbError};
use crate::clock::UnixSeconds;
use crate::crypto::Keyring;
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
    /// Whether the user's row passed its integrity check; a session of a tampered row is
    /// refused (and the tampering audited) by the caller.
    pub intact: bool,
}

/// The session's user, if the session is live (not revoked, not expired), the user is
/// enabled, and the master-key version that signed the token (`key_version`) is not retired.
/// One indexed read per authenticated request.
pub fn live(
    conn: &mut DbConn,
    keyring: &Keyring,
    session_id: &str,
    user: UserId,
    key_version: u32,
    now: UnixSeconds,
) -> Result<Option<LiveSession>, DbError> {
    let row: Option<UserRow> = s::table
        .inner_join(u::table)
        .filter(signing_key_live(key_version))
        .filter(s::id.eq(session_id))
        .filter(s::user_id.eq(user.get()))
        .filter(s::revoked_at.is_null())
        .filter(s::expires_at.gt(now))
        .filter(u::is_disabled.eq(false))
        .select(UserRow::as_select())
        .first(conn)
        .optional()?;
    Ok(row.map(|row| LiveSession {
        intact: row.intact(keyring),
        username: row.username,
        role: row.role,
        allowed_cidrs: row.allowed_cidrs,
    }))
}

/// The versions whose tokens may still be accepted: registered and not retired.
type LiveKeyVersion = diesel::dsl::Filter<
    diesel::dsl::Filter<kv::table, diesel::dsl::Eq<kv::version, i32>>,
    diesel::dsl::NotEq<kv::state, &'static str>,
>;

/// `key_version` is registered and not retired.
fn signing_key_live(key_version: u32) -> diesel::dsl::exists<LiveKeyVersion> {
    let version = i32::try_from(key_version).unwrap_or(-1);
    diesel::dsl::exists(
        kv::table
            .filter(kv::version.eq(version))
            .filter(kv::state.ne(RETIRED)),
    )
}

/// Whether tokens signed under `key_version` may still be accepted.
pub fn signing_key_is_live(conn: &mut DbConn, key_version: u32) -> Result<bool, DbError> {
    Ok(diesel::select(signing_key_live(key_version)).get_result(conn)?)
}

/// The outcome of presenting a refresh token.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The token was the current one; `next_jti` is now the only one that works.
    Rotated,
    /// The token was spent before (or the session is gone): the session is now revoked.
    Reused,
    /// The token was signed under a retired master-key version: refused, nothing changed.
    KeyRetired,
    /// The user's row failed its integrity check: refused, and the session revoked.
    Tampered,
}

/// Spends refresh token `jti` of `session_id` and installs `next_jti`, atomically: the
/// compare-and-swap in one UPDATE means two nodes cannot both spend the same token. A token
/// that does not match revokes the whole session. Also answers the user's name (for the
/// audit trail), when the user exists.
pub fn rotate_refresh(
    conn: &mut DbConn,
    keyring: &Keyring,
    session_id: &str,
    user: UserId,
    (jti, key_version): (&str, u32),
    next_jti: &str,
    now: UnixSeconds,
) -> Result<(Refresh, Option<String>), DbError> {
    if !signing_key_is_live(conn, key_version)? {
        return Ok((Refresh::KeyRetired, None));
    }
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
        let account: Option<UserRow> = u::table
            .filter(u::id.eq(user.get()))
            .select(UserRow::as_select())
            .first(tx)
            .optional()?;
        let name = account.as_ref().map(|a| a.username.clone());
        if account.as_ref().is_some_and(|a| !a.intact(keyring)) {
            revoke(tx, session_id, now)?;
            return Ok((Refresh::Tampered, name));
        }
        if n == 1 && account.as_ref().is_some_and(|a| !a.is_disabled) {
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
