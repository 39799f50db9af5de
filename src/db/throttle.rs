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
//! The check before a password is verified and the count after it are separate statements:
//! attempts already in flight when a subject reaches its limit still finish. The per-address
//! rate limit and the cost of argon2id bound how many that can be.

use diesel::prelude::*;

use super::schema::login_throttle as t;
use super::{DbConn, DbError};
use crate::clock::UnixSeconds;

/// A subject's failures are forgotten this long after its last one.
pub const FORGET_AFTER_SECONDS: i64 = 24 * 60 * 60;
/// No single block lasts longer than this.
pub const MAX_BLOCK_SECONDS: i64 = 60 * 60;

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

/// The latest time until which any of `subjects` is blocked, if one is blocked at `now`.
pub fn blocked_until(
    conn: &mut DbConn,
    subjects: &[&str],
    now: UnixSeconds,
) -> Result<Option<UnixSeconds>, DbError> {
    let until: Vec<Option<i64>> = t::table
        .filter(t::subject.eq_any(subjects))
        .filter(t::blocked_until.gt(now))
        .select(t::blocked_until)
        .load(conn)?;
    Ok(until.into_iter().flatten().max())
}

/// Counts one failure against each limit's subject. Returns the subjects that this failure
/// blocked, with the time each block ends.
pub fn record_failure(
    conn: &mut DbConn,
    limits: &[Limit<'_>],
    backoff: i64,
    now: UnixSeconds,
) -> Result<Vec<(String, UnixSeconds)>, DbError> {
    // Two nodes may both insert a subject's first row; the loser retries and then updates.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match conn.transaction(|tx| record_failure_tx(tx, limits, backoff, now)) {
            Err(DbError::Conflict) if attempts < 3 => continue,
            other => return other,
        }
    }
}

fn record_failure_tx(
    tx: &mut DbConn,
    limits: &[Limit<'_>],
    backoff: i64,
    now: UnixSeconds,
) -> Result<Vec<(String, UnixSeconds)>, DbError> {
    let mut blocked = Vec::new();
    for limit in limits {
        let subject = limit.subject;
        // Writes first: SQLite takes its write lock at once, PostgreSQL locks the row.
        diesel::update(
            t::table
                .filter(t::subject.eq(subject))
                .filter(t::last_failure_at.lt(now - FORGET_AFTER_SECONDS)),
        )
        .set((t::failures.eq(0), t::blocked_until.eq(None::<i64>)))
        .execute(tx)?;
        let updated = diesel::update(t::table.filter(t::subject.eq(subject)))
            .set((t::failures.eq(t::failures + 1), t::last_failure_at.eq(now)))
            .execute(tx)?;
        if updated == 0 {
            diesel::insert_into(t::table)
                .values((
                    t::subject.eq(subject),
                    t::failures.eq(1_i64),
                    t::last_failure_at.eq(now),
                    t::blocked_until.eq(None::<i64>),
                ))
                .execute(tx)?;
        }
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
    Ok(blocked)
}

/// A successful login: the account's failures are forgiven.
pub fn clear(conn: &mut DbConn, subject: &str) -> Result<(), DbError> {
    diesel::delete(t::table.filter(t::subject.eq(subject))).execute(conn)?;
    Ok(())
}

/// Deletes rows whose last failure is older than [`FORGET_AFTER_SECONDS`] and that block
/// nothing, so the table stays as small as recent abuse. The number deleted.
pub fn forget_stale(conn: &mut DbConn, now: UnixSeconds) -> Result<usize, DbError> {
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
