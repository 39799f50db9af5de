//! Row generations (SPEC §14): the audit log as the memory that replays cannot erase.
//!
//! Every row hazina signs (users, sessions, services, grants, credentials, provider
//! certificates, key wear) binds in its MAC a **generation**: the sequence number of the audit
//! entry that recorded its last change. That entry names the row among its `subjects`, which
//! its chain hash covers, and `audit_subjects` indexes them by subject. A row is current only
//! when the latest entry naming it is the one its generation names: a genuine but
//! older row written back (from a backup, a dump, a WAL) names an older entry and is refused as
//! `row_replayed` (`crypto::rowmac::Verdict`). Rows signed by the one-time upgrade (`repo::integrity`) have generation 0 and
//! no entry naming them until their first change.
//!
//! Facts that take something away and have no row to sign (a revoked certificate, a backup
//! that still needs a key) are subjects too: deleting their table row leaves the subject in
//! the log ([`with_prefix`]; revoked certificates are looked up by `repo::services::is_revoked`).
//!
//! **Signing only inside an audited change.** [`super::chain::with_entry`] opens a [`Scope`]
//! for the change it runs. A repository that signs a row asks [`generation_for`] for the row's
//! new generation: the first ask locks the chain head (the lock the entry's append takes
//! anyway, so the lock order stays rows → head) and reserves the next sequence number; every
//! ask records its subject. Outside a scope the ask fails with `DbError::Unaudited`, so no code
//! path can sign a row without an entry that names it. The scope is per thread: a change runs
//! on one blocking thread, inside one transaction, from start to commit.
//!
//! What the index is trusted for: the hot path reads `audit_subjects`, not the chain. An edit
//! of the index is what `audit verify` finds (`audit::verify` compares it with the subjects
//! hashed into each entry); an edit of the entries, what verify and the checkpoint signer find.

use std::cell::RefCell;
use std::collections::BTreeSet;

use diesel::prelude::*;

use crate::db::schema::{audit_head as head, audit_subjects as subj};
use crate::db::{DbConn, DbError};

/// The subject naming a signed row or a recorded fact.
pub fn user(id: i64) -> String {
    format!("user:{id}")
}
pub fn session(id: &str) -> String {
    format!("session:{id}")
}
pub fn service(id: i64) -> String {
    format!("service:{id}")
}
pub fn grant(id: i64) -> String {
    format!("grant:{id}")
}
pub fn credential(id: i64) -> String {
    format!("credential:{id}")
}
pub fn provider_cert(provider: &str, environment: &str) -> String {
    format!("provider_cert:{provider}/{environment}")
}
pub fn key_wear(version: i32) -> String {
    format!("key_wear:{version}")
}
pub fn revoked_cert(fingerprint: &str) -> String {
    format!("revoked_cert:{fingerprint}")
}
/// A backup and the master-key versions it needs (`backup:ID:1,2`).
pub fn backup(id: i64, versions: &str) -> String {
    format!("backup:{id}:{versions}")
}
pub const BACKUP_PREFIX: &str = "backup:";

#[derive(Default)]
struct Open {
    reserved: Option<i64>,
    subjects: BTreeSet<String>,
}

thread_local! {
    static SCOPE: RefCell<Option<Open>> = const { RefCell::new(None) };
}

/// An open change scope; [`Scope::close`] ends it (dropping it unclosed ends it too, so an
/// error inside a change never leaves a scope open on the thread).
pub struct Scope(());

impl Scope {
    /// Opens the thread's scope; a scope already open (a change nested in a change) is a bug
    /// and refused, since both entries would claim one sequence number.
    pub fn open() -> Result<Scope, DbError> {
        SCOPE.with(|s| {
            let mut s = s.borrow_mut();
            if s.is_some() {
                return Err(DbError::Unaudited);
            }
            *s = Some(Open::default());
            Ok(Scope(()))
        })
    }

    /// The reserved sequence number (if any row was signed) and the subjects, in the form
    /// the entry stores (`None` when there are none).
    pub fn close(self) -> (Option<i64>, Option<String>) {
        let open = SCOPE.with(|s| s.borrow_mut().take()).unwrap_or_default();
        let subjects = (!open.subjects.is_empty())
            .then(|| open.subjects.into_iter().collect::<Vec<_>>().join(" "));
        (open.reserved, subjects)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        SCOPE.with(|s| s.borrow_mut().take());
    }
}

/// The generation a row changed in this scope takes: the sequence number of the entry that
/// will record the change. Records `subject` among the entry's subjects.
pub fn generation_for(tx: &mut DbConn, subject: String) -> Result<i64, DbError> {
    let reserved = SCOPE.with(|s| {
        let s = s.borrow();
        s.as_ref()
            .map(|open| open.reserved)
            .ok_or(DbError::Unaudited)
    })?;
    let seq = match reserved {
        Some(seq) => seq,
        None => {
            // The append's own lock, taken now: no other entry can take this number.
            diesel::update(head::table.filter(head::id.eq(1)))
                .set(head::seq.eq(head::seq))
                .execute(tx)?;
            let seq: i64 = head::table
                .filter(head::id.eq(1))
                .select(head::seq)
                .first(tx)?;
            seq + 1
        }
    };
    SCOPE.with(|s| {
        if let Some(open) = s.borrow_mut().as_mut() {
            open.reserved = Some(seq);
            open.subjects.insert(subject);
        }
    });
    Ok(seq)
}

/// Records a fact that has no signed row (a revoked certificate, a backup's needs) as a
/// subject of this scope's entry.
pub fn record(tx: &mut DbConn, subject: String) -> Result<(), DbError> {
    generation_for(tx, subject).map(|_| ())
}

/// Indexes an appended entry's subjects (called by the append, in its transaction).
pub(crate) fn index(tx: &mut DbConn, seq: i64, subjects: &str) -> Result<(), DbError> {
    for subject in subjects.split(' ').filter(|s| !s.is_empty()) {
        diesel::insert_into(subj::table)
            .values((subj::subject.eq(subject), subj::seq.eq(seq)))
            .execute(tx)?;
    }
    Ok(())
}

/// The sequence number of the latest entry naming `subject`, if any.
pub fn latest(conn: &mut DbConn, subject: &str) -> Result<Option<i64>, DbError> {
    Ok(subj::table
        .filter(subj::subject.eq(subject))
        .select(diesel::dsl::max(subj::seq))
        .first::<Option<i64>>(conn)?)
}

/// The latest entry naming `subject` (a `String`), as an expression a query can select
/// beside the row it checks: one indexed lookup, in the same statement.
#[macro_export]
macro_rules! latest_generation {
    ($subject:expr) => {
        $crate::db::schema::audit_subjects::table
            .filter($crate::db::schema::audit_subjects::subject.eq($subject))
            .select(diesel::dsl::max($crate::db::schema::audit_subjects::seq))
            .single_value()
    };
}

/// Every subject starting with `prefix`, with the latest entry naming it.
pub fn with_prefix(conn: &mut DbConn, prefix: &str) -> Result<Vec<(String, i64)>, DbError> {
    // A range scan of the primary key: [prefix, prefix + U+10FFFF).
    let upper = format!("{prefix}\u{10FFFF}");
    Ok(subj::table
        .filter(subj::subject.ge(prefix))
        .filter(subj::subject.lt(upper))
        .group_by(subj::subject)
        .select((subj::subject, diesel::dsl::max(subj::seq)))
        .load::<(String, Option<i64>)>(conn)?
        .into_iter()
        .filter_map(|(s, seq)| seq.map(|q| (s, q)))
        .collect())
}

/// Whether the log has ever recorded a row change (a database past the upgrade).
pub fn any(conn: &mut DbConn) -> Result<bool, DbError> {
    Ok(diesel::select(diesel::dsl::exists(subj::table.select(subj::seq))).get_result(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_current_only_at_the_latest_generation() {
        use crate::crypto::rowmac::Verdict;
        let fresh = |g, latest| Verdict::of(true, g, latest).is_intact();
        assert!(fresh(0, None));
        assert!(fresh(7, Some(7)));
        assert!(!fresh(5, Some(7)));
        assert!(!fresh(7, None));
        assert!(!fresh(0, Some(3)));
        assert_eq!(Verdict::of(false, 7, Some(7)), Verdict::Tampered);
        assert_eq!(Verdict::of(true, 5, Some(7)), Verdict::Replayed);
    }

    #[test]
    fn a_scope_cannot_nest_and_ends_when_dropped() {
        let outer = Scope::open().unwrap();
        assert!(matches!(Scope::open(), Err(DbError::Unaudited)));
        drop(outer);
        let again = Scope::open().unwrap();
        assert_eq!(again.close(), (None, None));
    }
}
