//! Sessions repository: the shared, durable state behind tokens, so several nodes agree on
//! revocations and on which refresh token may be spent next.

use diesel::prelude::*;

use super::key_versions::RETIRED;
use super::users::UserRow;
use crate::audit::generation;
use crate::clock::UnixSeconds;
use crate::crypto::rowmac::{self, Verdict};
use crate::crypto::Keyring;
use crate::db::schema::{key_versions as kv, sessions as s, users as u};
use crate::db::{DbConn, DbError};
use crate::domain::UserId;

/// A session row. Its MAC (SPEC §14) binds whose it is, which refresh token is next, its
/// expiry, its revocation and its generation: a revoked session cleared in the database, or
/// an older row written back (its spent refresh token live again), is refused.
#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = s)]
pub struct SessionRow {
    pub id: String,
    pub user_id: i64,
    pub refresh_jti: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub generation: i64,
    pub mac: Option<Vec<u8>>,
    pub mac_version: Option<i32>,
}

impl std::fmt::Debug for SessionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRow")
            .field("user_id", &self.user_id)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

impl SessionRow {
    fn mac_row(&self) -> rowmac::Row<'_> {
        rowmac::Row::Session {
            id: &self.id,
            user_id: self.user_id,
            refresh_jti: &self.refresh_jti,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            generation: self.generation,
        }
    }

    pub fn verdict(&self, keyring: &Keyring, latest: Option<i64>) -> Verdict {
        let mac_ok = rowmac::verify(
            keyring,
            self.mac_version,
            self.mac.as_deref(),
            &self.mac_row(),
        );
        Verdict::of(mac_ok, self.generation, latest)
    }

    fn check(&self, conn: &mut DbConn, keyring: &Keyring) -> Result<Verdict, DbError> {
        let latest = generation::latest(conn, &generation::session(&self.id))?;
        Ok(self.verdict(keyring, latest))
    }
}

/// Writes `row` as this change's state of the session: the generation of the change's entry
/// and a fresh MAC.
fn store(tx: &mut DbConn, keyring: &Keyring, mut row: SessionRow) -> Result<(), DbError> {
    row.generation = generation::generation_for(tx, generation::session(&row.id))?;
    let (mac, mac_version) = super::users::sign(keyring, &row.mac_row())?;
    diesel::update(s::table.filter(s::id.eq(&row.id)))
        .set((
            s::refresh_jti.eq(&row.refresh_jti),
            s::revoked_at.eq(row.revoked_at),
            s::generation.eq(row.generation),
            s::mac.eq(Some(mac)),
            s::mac_version.eq(Some(mac_version)),
        ))
        .execute(tx)?;
    Ok(())
}

/// Creates a session (inside the login's audited change).
pub fn create(
    conn: &mut DbConn,
    keyring: &Keyring,
    id: &str,
    user: UserId,
    refresh_jti: &str,
    now: UnixSeconds,
    expires_at: UnixSeconds,
) -> Result<(), DbError> {
    diesel::insert_into(s::table)
        .values((
            s::id.eq(id),
            s::user_id.eq(user.get()),
            s::refresh_jti.eq(refresh_jti),
            s::created_at.eq(now),
            s::expires_at.eq(expires_at),
            s::revoked_at.eq(None::<i64>),
            s::generation.eq(0),
        ))
        .execute(conn)?;
    let row = s::table
        .filter(s::id.eq(id))
        .select(SessionRow::as_select())
        .first(conn)?;
    store(conn, keyring, row)
}

/// What an access token's session resolves to right now.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub username: String,
    pub role: String,
    /// The user's IP allowlist (comma-separated CIDRs), if they have one.
    pub allowed_cidrs: Option<String>,
    /// The integrity check of the user's row and the session's (the worse of the two); a
    /// session that is not intact is refused (and the violation audited) by the caller.
    pub verdict: Verdict,
}

/// The session's user, if the session is live (not revoked, not expired), the user is
/// enabled, and the master-key version that signed the token (`key_version`) is not retired.
/// One indexed read per authenticated request, which also reads the latest audit entries
/// naming the session and the user: both rows' generations are checked here.
pub fn live(
    conn: &mut DbConn,
    keyring: &Keyring,
    session_id: &str,
    user: UserId,
    key_version: u32,
    now: UnixSeconds,
) -> Result<Option<LiveSession>, DbError> {
    let (user_subject, session_subject) = (
        generation::user(user.get()),
        generation::session(session_id),
    );
    let found: Option<(UserRow, SessionRow, Option<i64>, Option<i64>)> =
        crate::per_backend!(conn, |c| s::table
            .inner_join(u::table)
            .filter(signing_key_live(key_version))
            .filter(s::id.eq(session_id))
            .filter(s::user_id.eq(user.get()))
            .filter(s::revoked_at.is_null())
            .filter(s::expires_at.gt(now))
            .filter(u::is_disabled.eq(false))
            .select((
                UserRow::as_select(),
                SessionRow::as_select(),
                crate::latest_generation!(&user_subject),
                crate::latest_generation!(&session_subject),
            ))
            .first(c)
            .optional())?;
    Ok(found.map(|(row, session, user_latest, session_latest)| {
        let verdict = match row.verdict(keyring, user_latest) {
            Verdict::Intact => session.verdict(keyring, session_latest),
            worse => worse,
        };
        LiveSession {
            verdict,
            username: row.username,
            role: row.role,
            allowed_cidrs: row.allowed_cidrs,
        }
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
/// audit trail), when the user exists. Runs inside the refresh's audited change.
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
        let account_ok = match &account {
            Some(a) => a.check(tx, keyring)?.is_intact(),
            None => true,
        };
        let session: Option<SessionRow> = s::table
            .filter(s::id.eq(session_id))
            .select(SessionRow::as_select())
            .first(tx)
            .optional()?;
        // The row as it was before this swap must be the genuine, latest one: a spent token
        // made live again by writing an older row back is a replay, not a refresh.
        let session_ok = match &session {
            Some(row) if n == 1 => {
                let mut before = row.clone();
                before.refresh_jti = jti.to_owned();
                before.check(tx, keyring)?.is_intact()
            }
            _ => true,
        };
        if !account_ok || !session_ok {
            revoke(tx, keyring, session_id, now)?;
            return Ok((Refresh::Tampered, name));
        }
        if n == 1 && account.as_ref().is_some_and(|a| !a.is_disabled) {
            if let Some(row) = session {
                store(tx, keyring, row)?;
            }
            return Ok((Refresh::Rotated, name));
        }
        revoke(tx, keyring, session_id, now)?;
        Ok((Refresh::Reused, name))
    })
}

/// Revokes a session (inside the audited change that ends it); idempotent.
pub fn revoke(
    conn: &mut DbConn,
    keyring: &Keyring,
    session_id: &str,
    now: UnixSeconds,
) -> Result<(), DbError> {
    let row: Option<SessionRow> = s::table
        .filter(s::id.eq(session_id))
        .filter(s::revoked_at.is_null())
        .select(SessionRow::as_select())
        .first(conn)
        .optional()?;
    if let Some(mut row) = row {
        row.revoked_at = Some(now);
        store(conn, keyring, row)?;
    }
    Ok(())
}

/// Revokes every live session of `user_id` but `keep` (inside the audited change that ends
/// them); the number revoked.
pub fn revoke_live(
    tx: &mut DbConn,
    keyring: &Keyring,
    user_id: i64,
    keep: Option<&str>,
    now: UnixSeconds,
) -> Result<usize, DbError> {
    let rows: Vec<SessionRow> = s::table
        .filter(s::user_id.eq(user_id))
        .filter(s::revoked_at.is_null())
        .filter(s::expires_at.gt(now))
        .select(SessionRow::as_select())
        .load(tx)?;
    let mut ended = 0;
    for mut row in rows.into_iter().filter(|r| Some(r.id.as_str()) != keep) {
        row.revoked_at = Some(now);
        store(tx, keyring, row)?;
        ended += 1;
    }
    Ok(ended)
}

/// Re-signs every live session signed under a version older than `target` (one pass:
/// `after` is `i64::MIN` the first time), keeping generations. A revoked or expired session
/// is left as it is: it is refused whatever its MAC says.
pub fn resign_batch(
    tx: &mut DbConn,
    keyring: &Keyring,
    target: i32,
    after: i64,
    _limit: i64,
) -> Result<Option<i64>, DbError> {
    if after != i64::MIN {
        return Ok(None);
    }
    let rows: Vec<SessionRow> = s::table
        .filter(s::mac_version.lt(target))
        .filter(s::revoked_at.is_null())
        .select(SessionRow::as_select())
        .load(tx)?;
    for row in &rows {
        let mac_ok = rowmac::verify(keyring, row.mac_version, row.mac.as_deref(), &row.mac_row());
        if !mac_ok {
            continue;
        }
        let (mac, mac_version) = super::users::sign(keyring, &row.mac_row())?;
        diesel::update(s::table.filter(s::id.eq(&row.id)))
            .set((s::mac.eq(Some(mac)), s::mac_version.eq(Some(mac_version))))
            .execute(tx)?;
    }
    Ok(Some(0))
}

/// Live sessions signed under master-key version `version`.
pub fn signed_under(conn: &mut DbConn, version: i32) -> Result<i64, DbError> {
    Ok(s::table
        .filter(s::mac_version.eq(version))
        .filter(s::revoked_at.is_null())
        .count()
        .get_result(conn)?)
}
