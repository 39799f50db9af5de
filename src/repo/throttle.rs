//! Failed-login throttling, shared by every node through the database (SPEC §7).
//!
//! One row per *subject*: an account (keyed by a keyed hash of the attempted name, so known
//! and unknown names count alike and no name is stored) or a source address. Each failure
//! counts; once a subject reaches its limit it is blocked for the backoff, and every further
//! failure after a block has passed doubles the next block (up to [`MAX_BLOCK_SECONDS`]). A
//! success clears the account's row; an address's row is never cleared by a success (a
//! guesser may hold an account of their own) and is forgotten [`FORGET_AFTER_SECONDS`] after
//! its last failure, like every row.
//!
//! Atomic: [`admit`] checks the block and counts the attempt in one transaction **before**
//! the password is hashed (the attempt counts as a failure until [`succeeded`] takes it
//! back), so any number of concurrent attempts for one account get at most its limit of
//! password checks per block, on every node.

use diesel::prelude::*;

use crate::clock::UnixSeconds;
use crate::crypto::Keyring;
use crate::db::schema::login_sources as known;
use crate::db::schema::login_throttle as t;
use crate::db::{DbConn, DbError};

/// A subject's failures are forgotten this long after its last one.
pub const FORGET_AFTER_SECONDS: i64 = 24 * 60 * 60;
/// A source that signed in to an account within this long is known to it (SPEC §15).
pub const KNOWN_SOURCE_SECONDS: i64 = 30 * 24 * 60 * 60;

/// No single block lasts longer than this.
pub const MAX_BLOCK_SECONDS: i64 = 60 * 60;

/// Keys the throttle's account and source subjects (a fixed label, never caller data).
const PURPOSE: &str = "hazina/login-throttle/v1";

/// HMAC-SHA-256 under the keyring's throttle key; `None` without an active master key.
fn keyed(keyring: &Keyring, parts: &[&[u8]], framed: bool) -> Option<String> {
    use hmac::{Hmac, Mac};
    let key = keyring.derive(keyring.active_version(), PURPOSE)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_ref()).ok()?;
    for part in parts {
        if framed {
            mac.update(&(part.len() as u64).to_be_bytes());
        }
        mac.update(part);
    }
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// `account:` + HMAC-SHA-256 of the attempted name under a keyring-derived key: known and
/// unknown names count alike, and the table never holds a name (which may be a password
/// typed into the wrong field) or an unkeyed hash of one.
pub fn account_subject(keyring: &Keyring, username: &str) -> Option<String> {
    // The bare name's MAC, unframed, as rows written before hold it.
    Some(format!(
        "account:{}",
        keyed(keyring, &[username.as_bytes()], false)?
    ))
}

/// `source:` + HMAC-SHA-256 of the name and the address key, under the same key: the pair a
/// successful sign-in makes known (SPEC §15), which then meets a limit of its own.
pub fn source_subject(keyring: &Keyring, username: &str, address: &str) -> Option<String> {
    Some(format!(
        "source:{}",
        keyed(keyring, &[username.as_bytes(), address.as_bytes()], true)?
    ))
}

/// Lifts the lockout of an account: the failures of its subject and of every source known to
/// it (the addresses it signed in from, which meet limits of their own) are forgotten, so its
/// next sign-in checks the password at once. Whether any of them was locked out at `now`.
/// Addresses stay as they are (an address's lock is not the account's: a guesser may hold an
/// account of their own).
pub fn unlock(conn: &mut DbConn, account: &str, now: UnixSeconds) -> Result<bool, DbError> {
    conn.transaction(|tx| {
        let mut subjects: Vec<String> = known::table
            .filter(known::account.eq(account))
            .select(known::subject)
            .load(tx)?;
        subjects.push(account.to_owned());
        // In subject order, as `admit` locks them.
        subjects.sort();
        let mut was_locked = false;
        for subject in &subjects {
            was_locked |= blocked_until(tx, subject, now)?.is_some();
            diesel::delete(t::table.filter(t::subject.eq(subject))).execute(tx)?;
        }
        Ok(was_locked)
    })
}

/// Lifts the lockout of the user named `username` (see [`unlock`]), with `entry` (completed
/// with the user as its target) in the same transaction: their id and whether they were
/// locked out, or `None` when there is no such user (and nothing is recorded).
pub fn unlock_user(
    conn: &mut DbConn,
    keyring: &Keyring,
    username: &str,
    now: UnixSeconds,
    entry: crate::audit::Event,
) -> Result<Option<(i64, bool)>, DbError> {
    let subject = account_subject(keyring, username).ok_or(DbError::KeyState(NO_ACTIVE_KEY))?;
    crate::audit::chain::with_entry(
        conn,
        |tx| {
            let Some(user) = super::users::find_by_username(tx, username)? else {
                return Ok(None);
            };
            Ok(Some((user.id, unlock(tx, &subject, now)?)))
        },
        |unlocked| unlocked.map(|(id, _)| entry.target(crate::audit::Target::owner(id))),
    )
}

/// Until when a login lockout holds the account of `username`, if one does at `now` (what
/// enabling a user or setting their password leaves in force).
pub fn account_locked_until(
    conn: &mut DbConn,
    keyring: &Keyring,
    username: &str,
    now: UnixSeconds,
) -> Result<Option<UnixSeconds>, DbError> {
    let subject = account_subject(keyring, username).ok_or(DbError::KeyState(NO_ACTIVE_KEY))?;
    blocked_until(conn, &subject, now)
}

const NO_ACTIVE_KEY: &str = "the keyring has no active master key";

/// Until when `subject` is locked out, if it is at `now`.
pub fn blocked_until(
    conn: &mut DbConn,
    subject: &str,
    now: UnixSeconds,
) -> Result<Option<UnixSeconds>, DbError> {
    Ok(t::table
        .filter(t::subject.eq(subject))
        .filter(t::blocked_until.gt(now))
        .select(t::blocked_until)
        .first::<Option<i64>>(conn)
        .optional()?
        .flatten())
}

/// One throttled subject and the number of failures that blocks it.
#[derive(Debug, Clone, Copy)]
pub struct Limit<'a> {
    pub subject: &'a str,
    pub max_failures: u32,
}

/// How long the block after `failures` failures lasts, given the limit and the first
/// block's length: `backoff × 2^(failures − limit)`, capped.
pub fn block_seconds(failures: i64, max_failures: u32, backoff: i64) -> i64 {
    let over = failures
        .saturating_sub(i64::from(max_failures))
        .clamp(0, 30);
    backoff
        .saturating_mul(1_i64 << over)
        .clamp(1, MAX_BLOCK_SECONDS.max(backoff))
}

/// What [`admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The attempt may check its password; it has been counted. `blocked` lists the subjects
    /// whose limit this attempt reached (their block starts now); `undo` is what
    /// [`succeeded`] needs to take the attempt back.
    Admitted {
        blocked: Vec<(String, UnixSeconds)>,
        undo: Undo,
    },
    /// A subject is blocked until then: refused, nothing counted, nothing hashed.
    Blocked(UnixSeconds),
}

/// How to take an admitted attempt back: each subject with the block it had before.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Undo(Vec<(String, Option<UnixSeconds>)>);

/// Checks and counts one login attempt against every limit's subject, in one transaction.
pub fn admit(
    conn: &mut DbConn,
    limits: &[Limit<'_>],
    backoff: i64,
    now: UnixSeconds,
) -> Result<Admission, DbError> {
    // Two nodes may both insert a subject's first row; the loser retries and then updates.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match conn.transaction(|tx| admit_tx(tx, limits, backoff, now)) {
            Err(DbError::Conflict) if attempts < 3 => continue,
            other => return other,
        }
    }
}

fn admit_tx(
    tx: &mut DbConn,
    limits: &[Limit<'_>],
    backoff: i64,
    now: UnixSeconds,
) -> Result<Admission, DbError> {
    // Writes first: SQLite takes its write lock at once, PostgreSQL locks each row, so
    // concurrent attempts for one subject take turns through the check and the count. Every
    // transaction that writes throttle rows locks them in one order (by subject), so two
    // logins, or a login and a success, never wait on each other in a cycle (PostgreSQL would
    // abort one: "deadlock detected").
    let mut ordered = limits.to_vec();
    ordered.sort_by(|a, b| a.subject.cmp(b.subject));
    let limits = &ordered[..];
    for limit in limits {
        let subject = limit.subject;
        diesel::update(
            t::table
                .filter(t::subject.eq(subject))
                .filter(t::last_failure_at.lt(now - FORGET_AFTER_SECONDS)),
        )
        .set((t::failures.eq(0), t::blocked_until.eq(None::<i64>)))
        .execute(tx)?;
        let locked = diesel::update(t::table.filter(t::subject.eq(subject)))
            .set(t::last_failure_at.eq(t::last_failure_at))
            .execute(tx)?;
        if locked == 0 {
            diesel::insert_into(t::table)
                .values((
                    t::subject.eq(subject),
                    t::failures.eq(0_i64),
                    t::last_failure_at.eq(now),
                    t::blocked_until.eq(None::<i64>),
                ))
                .execute(tx)?;
        }
    }
    let subjects: Vec<&str> = limits.iter().map(|l| l.subject).collect();
    let rows: Vec<(String, Option<i64>)> = t::table
        .filter(t::subject.eq_any(&subjects))
        .order(t::subject.asc())
        .select((t::subject, t::blocked_until))
        .load(tx)?;
    if let Some(until) = rows
        .iter()
        .filter_map(|(_, b)| *b)
        .filter(|b| *b > now)
        .max()
    {
        return Ok(Admission::Blocked(until));
    }
    let mut blocked = Vec::new();
    for limit in limits {
        let subject = limit.subject;
        diesel::update(t::table.filter(t::subject.eq(subject)))
            .set((t::failures.eq(t::failures + 1), t::last_failure_at.eq(now)))
            .execute(tx)?;
        let failures: i64 = t::table
            .filter(t::subject.eq(subject))
            .select(t::failures)
            .first(tx)?;
        if failures >= i64::from(limit.max_failures) {
            let until = now + block_seconds(failures, limit.max_failures, backoff);
            diesel::update(t::table.filter(t::subject.eq(subject)))
                .set(t::blocked_until.eq(Some(until)))
                .execute(tx)?;
            blocked.push((subject.to_owned(), until));
        }
    }
    Ok(Admission::Admitted {
        blocked,
        undo: Undo(rows),
    })
}

/// Whether `source` (an account and an address, keyed like the other subjects) signed in
/// within [`KNOWN_SOURCE_SECONDS`]. Such a source meets a limit of its own in place of the
/// account's, so failures from elsewhere never lock it out.
pub fn is_known_source(conn: &mut DbConn, source: &str, now: UnixSeconds) -> Result<bool, DbError> {
    Ok(diesel::select(diesel::dsl::exists(
        known::table
            .filter(known::subject.eq(source))
            .filter(known::last_success_at.ge(now - KNOWN_SOURCE_SECONDS)),
    ))
    .get_result(conn)?)
}

/// Records that `source` signed in now to the account whose subject is `account` (so that
/// [`unlock`] finds it). Two nodes recording the same source at once is one fact: the loser's
/// insert conflicts and is dropped.
pub fn remember_source(
    conn: &mut DbConn,
    source: &str,
    account: &str,
    now: UnixSeconds,
) -> Result<(), DbError> {
    let updated = diesel::update(known::table.filter(known::subject.eq(source)))
        .set((known::last_success_at.eq(now), known::account.eq(account)))
        .execute(conn)?;
    if updated == 0 {
        let inserted = conn.transaction(|tx| {
            diesel::insert_into(known::table)
                .values((
                    known::subject.eq(source),
                    known::last_success_at.eq(now),
                    known::account.eq(account),
                ))
                .execute(tx)
                .map_err(DbError::from)
        });
        match inserted {
            Ok(_) | Err(DbError::Conflict) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A successful login takes its attempt back: the failures of each subject in `forgive`
/// (the account's, and the source's own) are forgiven (their rows go), and each other
/// subject loses the count and any block this attempt started (an address's earlier
/// failures stay: a guesser may hold an account of their own).
pub fn succeeded(conn: &mut DbConn, forgive: &[&str], undo: &Undo) -> Result<(), DbError> {
    conn.transaction(|tx| {
        // Every row in subject order, as `admit` locks them (see there): the forgiven ones
        // go, the others give this attempt back.
        let mut rows: Vec<(&str, Option<&Option<UnixSeconds>>)> =
            forgive.iter().map(|s| (*s, None)).collect();
        rows.extend(
            undo.0
                .iter()
                .filter(|(s, _)| !forgive.contains(&s.as_str()))
                .map(|(s, before)| (s.as_str(), Some(before))),
        );
        rows.sort_by(|a, b| a.0.cmp(b.0));
        for (subject, before) in rows {
            let Some(before) = before else {
                diesel::delete(t::table.filter(t::subject.eq(subject))).execute(tx)?;
                continue;
            };
            diesel::update(
                t::table
                    .filter(t::subject.eq(subject))
                    .filter(t::failures.gt(0)),
            )
            .set((
                t::failures.eq(t::failures - 1),
                t::blocked_until.eq(*before),
            ))
            .execute(tx)?;
        }
        Ok(())
    })
}

/// Deletes rows whose last failure is older than [`FORGET_AFTER_SECONDS`] and that block
/// nothing, so the table stays as small as recent abuse. The number deleted.
pub fn forget_stale(conn: &mut DbConn, now: UnixSeconds) -> Result<usize, DbError> {
    diesel::delete(known::table.filter(known::last_success_at.lt(now - KNOWN_SOURCE_SECONDS)))
        .execute(conn)?;
    Ok(diesel::delete(
        t::table
            .filter(t::last_failure_at.lt(now - FORGET_AFTER_SECONDS))
            .filter(t::blocked_until.is_null().or(t::blocked_until.le(now))),
    )
    .execute(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_double_after_the_limit_and_are_capped() {
        assert_eq!(block_seconds(10, 10, 60), 60);
        assert_eq!(block_seconds(11, 10, 60), 120);
        assert_eq!(block_seconds(12, 10, 60), 240);
        assert_eq!(block_seconds(40, 10, 60), MAX_BLOCK_SECONDS);
        assert_eq!(block_seconds(i64::MAX, 10, 60), MAX_BLOCK_SECONDS);
        // A backoff configured above the cap is honoured as given, never shortened.
        assert_eq!(block_seconds(10, 10, 7200), 7200);
    }
}
