//! Master-key versions as the database decides them (SPEC §11).
//!
//! The keys live only in the keyring; what the keys are *for* lives here, shared by every node
//! and CLI process: each version's check value, and its state — `active` (new data keys are
//! wrapped under it), `retiring` (still opens rows a rotation has not moved yet) or `retired`
//! (gone). Every decision (register, rotate, retire) takes the one row of `key_lock` first, in
//! its transaction, so decisions happen one at a time across all processes, and the keyring
//! file is written only from inside that decision:
//! - **rotate** re-reads the file, adds a version to it, registers it as the active version
//!   and records the rotation (and its audit entry) in one transaction. A crash after the
//!   file write and before the commit leaves a version nothing was sealed under; the next
//!   decision adopts it, so no key is ever generated twice or lost.
//! - **retire** marks a version retired only when, inside the lock, no stored key depends on it
//!   and it is not active (writers seal only under the active version, which they read in
//!   their own transaction); only then is the key removed from the file.
//! - **check**: a keyring whose versions do not match their check values, or that lacks a
//!   version the database needs, is refused by `serve`, every CLI command and `/readyz`.
//!
//! Against a database writer: check values cannot be forged without the keyring, and a writer
//! is only ever sealed under a version that both the database and the keyring name active, so
//! marking an old (perhaps leaked) version active makes writes fail, never use it.

use diesel::prelude::*;
use diesel::sql_types::Integer;
use subtle::ConstantTimeEq;

use crate::audit::{chain, Action, Actor, Event, RequestMeta};
use crate::clock::UnixSeconds;
use crate::crypto::{Keyring, KeyringError};
use crate::db::schema::{
    credential_versions as cv, credentials as c, key_lock, key_versions as kv,
};
use crate::db::{DbConn, DbError};

pub use crate::domain::key_state::{ACTIVE, RETIRED, RETIRING};

/// Why a master-key decision or check was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyStateError {
    /// The keyring does not belong to this database (or the key states were edited).
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for KeyStateError {
    fn from(e: diesel::result::Error) -> Self {
        KeyStateError::Db(e.into())
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = kv)]
pub struct KeyVersionRow {
    pub version: i32,
    pub check_value: Vec<u8>,
    pub state: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// Takes the key lock: the first statement of every decision, so SQLite takes its write lock
/// and PostgreSQL locks the one row before anything is read.
fn lock(tx: &mut DbConn) -> Result<(), DbError> {
    diesel::update(key_lock::table.filter(key_lock::id.eq(1)))
        .set(key_lock::generation.eq(key_lock::generation + 1))
        .execute(tx)?;
    Ok(())
}

pub fn load(conn: &mut DbConn) -> Result<Vec<KeyVersionRow>, DbError> {
    Ok(kv::table
        .order(kv::version.asc())
        .select(KeyVersionRow::as_select())
        .load(conn)?)
}

/// Whether anything in the database was sealed under a keyring: a stored key, or a
/// registered master-key version. Beside such a database no keyring is ever created.
pub fn holds_keys(conn: &mut DbConn) -> Result<bool, DbError> {
    let versions: i64 = kv::table.count().get_result(conn)?;
    if versions > 0 {
        return Ok(true);
    }
    let stored: i64 = cv::table.count().get_result(conn)?;
    Ok(stored > 0)
}

fn u32_of(version: i32) -> Option<u32> {
    u32::try_from(version).ok().filter(|v| *v > 0)
}

/// Checks `keyring` against the registered versions: [`verify_check_values`] and
/// [`verify_active`]. Read-only; `/readyz` runs it.
pub fn verify(rows: &[KeyVersionRow], keyring: &Keyring) -> Result<(), KeyStateError> {
    verify_check_values(rows, keyring)?;
    verify_active(rows, keyring)
}

/// Every version the database still needs is in the keyring and matches its check value.
pub fn verify_check_values(rows: &[KeyVersionRow], keyring: &Keyring) -> Result<(), KeyStateError> {
    for row in rows.iter().filter(|r| r.state != RETIRED) {
        let expected = u32_of(row.version).and_then(|v| keyring.check_value(v));
        let Some(expected) = expected else {
            return Err(KeyStateError::Mismatch(format!(
                "the keyring lacks master-key version {}, which this database needs; \
                 mount the keyring that belongs to this database",
                row.version
            )));
        };
        if !bool::from(expected.ct_eq(row.check_value.as_slice())) {
            return Err(KeyStateError::Mismatch(format!(
                "the keyring does not belong to this database: master-key version {} does \
                 not match its check value (another installation's keyring?)",
                row.version
            )));
        }
    }
    Ok(())
}

/// Exactly one version is active, and it is the one the keyring names active.
pub fn verify_active(rows: &[KeyVersionRow], keyring: &Keyring) -> Result<(), KeyStateError> {
    let active: Vec<i32> = rows
        .iter()
        .filter(|r| r.state == ACTIVE)
        .map(|r| r.version)
        .collect();
    let [active] = active[..] else {
        return Err(KeyStateError::Mismatch(format!(
            "the database names {} active master-key versions, not one: the key states were \
             edited; refusing to use the keyring with it",
            active.len()
        )));
    };
    let keyring_active = keyring.active_version() as i32;
    if keyring_active != active {
        return Err(KeyStateError::Mismatch(format!(
            "the keyring's active master-key version is {keyring_active} but this database's is \
             {active}: the keyring is out of date, or the database was edited"
        )));
    }
    Ok(())
}

fn insert(
    tx: &mut DbConn,
    keyring: &Keyring,
    version: u32,
    state: &str,
    now: UnixSeconds,
) -> Result<(), KeyStateError> {
    let check = keyring.check_value(version).ok_or_else(|| {
        KeyStateError::Mismatch(format!("the keyring lacks master-key version {version}"))
    })?;
    diesel::insert_into(kv::table)
        .values((
            kv::version.eq(version as i32),
            kv::check_value.eq(check.to_vec()),
            kv::state.eq(state),
            kv::created_at.eq(now),
            kv::retired_at.eq(None::<i64>),
        ))
        .execute(tx)?;
    Ok(())
}

/// A new, empty database meets its keyring: the keyring's versions are registered, its
/// active version as active.
fn register_first(
    tx: &mut DbConn,
    keyring: &Keyring,
    now: UnixSeconds,
) -> Result<(), KeyStateError> {
    // Only an empty database meets its first keyring (SPEC §14). One with rows whose key
    // versions are gone was emptied outside hazina: nothing is registered, and no row is ever
    // signed to make it fit (which would launder every edit made with it).
    if holds_rows(tx)? {
        return Err(keys_emptied());
    }
    let active = keyring.active_version();
    for version in keyring.versions() {
        let state = if version == active { ACTIVE } else { RETIRING };
        insert(tx, keyring, version, state, now)?;
    }
    Ok(())
}

/// Whether the database holds users, services, grants or credentials: rows a keyring must
/// already have vouched for.
pub fn holds_rows(conn: &mut DbConn) -> Result<bool, DbError> {
    use crate::db::schema::{grants as g, services as s, users as u};
    use diesel::dsl::exists;
    Ok(diesel::select(
        exists(u::table.select(u::id))
            .or(exists(s::table.select(s::id)))
            .or(exists(g::table.select(g::id)))
            .or(exists(c::table.select(c::id))),
    )
    .get_result(conn)?)
}

/// The refusal for a database whose rows nothing vouches for any more.
fn keys_emptied() -> KeyStateError {
    KeyStateError::Mismatch(
        "the database holds users, services, grants or credentials but no master-key \
         versions: the table was emptied outside hazina (or the database predates row MACs; \
         upgrade it through the previous release first); refusing it, and nothing was \
         re-signed"
            .into(),
    )
}

/// Makes `version` (already in the keyring) the one active version.
fn make_active(
    tx: &mut DbConn,
    keyring: &Keyring,
    version: u32,
    now: UnixSeconds,
) -> Result<(), KeyStateError> {
    diesel::update(kv::table.filter(kv::state.eq(ACTIVE)))
        .set(kv::state.eq(RETIRING))
        .execute(tx)?;
    insert(tx, keyring, version, ACTIVE, now)
}

/// The keyring names an active version newer than any the database knows: an operator added
/// it (a keyring from `HAZINA_KEYRING_DATA`), or a rotation wrote it to the file and stopped
/// before committing. Nothing can have been sealed under it, so it becomes the active version
/// and a rotation towards it is recorded. `None` when there is nothing to adopt.
fn adopt_newer(
    tx: &mut DbConn,
    keyring: &Keyring,
    rows: &[KeyVersionRow],
    now: UnixSeconds,
) -> Result<Option<i32>, KeyStateError> {
    let newest_known = rows.iter().map(|r| r.version).max().unwrap_or(0);
    let keyring_active = keyring.active_version();
    if keyring_active as i64 <= newest_known as i64 {
        return Ok(None);
    }
    make_active(tx, keyring, keyring_active, now)?;
    let target = keyring_active as i32;
    super::keys::start_rotation(tx, target, now)?;
    // A key event like any other: recorded in the same transaction.
    let event = Event::new(
        now.saturating_mul(1_000_000),
        Actor::system(),
        &RequestMeta::default(),
        Action::KeysRotate,
    );
    chain::append(tx, &[&event])?;
    tracing::warn!(
        kek_version = target,
        "the keyring names a master-key version the database did not know: it is now active, \
         and a rotation re-wraps the stored keys under it"
    );
    Ok(Some(target))
}

/// What [`check_and_register`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The keyring matches.
    Matches,
    /// The keyring matches and named a newer active version, now adopted (a rotation to it
    /// is recorded and should be run).
    Adopted(i32),
}

/// Run by `serve` and every CLI command before anything else touches a key: registers the
/// keyring's versions the first time, refuses a keyring that does not belong to the database,
/// and adopts a newer active version the keyring names.
pub fn check_and_register(
    conn: &mut DbConn,
    keyring: &Keyring,
    now: UnixSeconds,
) -> Result<Checked, KeyStateError> {
    let checked = check_keys(conn, keyring, now)?;
    // Then the rows: a marked database, or one marked now (SPEC §14).
    super::integrity::check_or_mark(conn, keyring, now)?;
    Ok(checked)
}

fn check_keys(
    conn: &mut DbConn,
    keyring: &Keyring,
    now: UnixSeconds,
) -> Result<Checked, KeyStateError> {
    // The common case needs no lock: everything registered and matching.
    let rows = load(conn)?;
    if !rows.is_empty() && verify(&rows, keyring).is_ok() {
        return Ok(Checked::Matches);
    }
    conn.transaction(|tx| {
        lock(tx)?;
        keyring.reload_now()?;
        let rows = load(tx)?;
        if rows.is_empty() {
            register_first(tx, keyring, now)?;
            return Ok(Checked::Matches);
        }
        verify_check_values(&rows, keyring)?;
        if let Some(v) = adopt_newer(tx, keyring, &rows, now)? {
            return Ok(Checked::Adopted(v));
        }
        verify(&rows, keyring)?;
        Ok(Checked::Matches)
    })
}

/// Starts a master-key rotation: one new version per call, decided inside the key lock, so
/// two rotations (two CLI processes, the CLI and the API, two nodes) take turns and each adds
/// exactly one version; the later supersedes the earlier's unfinished rewrap. `audit` is
/// written in the same transaction.
pub fn begin_rotation(
    conn: &mut DbConn,
    keyring: &Keyring,
    now: UnixSeconds,
    audit: Option<&Event>,
) -> Result<super::keys::RotationRow, KeyStateError> {
    let mut added = None;
    let decided = conn.transaction(|tx| {
        lock(tx)?;
        keyring.reload_now()?;
        let mut rows = load(tx)?;
        if rows.is_empty() {
            register_first(tx, keyring, now)?;
            rows = load(tx)?;
        }
        verify_check_values(&rows, keyring)?;
        let target = match adopt_newer(tx, keyring, &rows, now)? {
            Some(adopted) => adopted,
            None => {
                verify(&rows, keyring)?;
                let previous = keyring.active_version();
                let version = keyring.add_version()?;
                added = Some((version, previous));
                make_active(tx, keyring, version, now)?;
                version as i32
            }
        };
        let rotation = super::keys::start_rotation(tx, target, now)?;
        if let Some(event) = audit {
            chain::append(tx, &[event])?;
        }
        Ok(rotation)
    });
    if let (Err(_), Some((version, previous))) = (&decided, added) {
        // The decision did not commit: take the new key back out of the file (inside the
        // lock again, and only while no decision has registered it since), so a failed
        // rotation does not take effect later. If even that fails (the database is gone),
        // the next decision adopts the version, as after a crash.
        let undone = conn.transaction(|tx| {
            lock(tx)?;
            if !load(tx)?.iter().any(|r| r.version == version as i32) {
                keyring.undo_add(version, previous)?;
            }
            Ok::<_, KeyStateError>(())
        });
        if let Err(e) = undone {
            tracing::warn!(error = %e, kek_version = version, "a rotation failed; its new version stays in the keyring file until the next decision adopts it");
        }
    }
    decided
}

/// `keys rotate --resume`: the unfinished rotation, or (when stored keys still sit under an
/// older version) a rotation towards the active version; never a new version.
pub fn resume_rotation(
    conn: &mut DbConn,
    keyring: &Keyring,
    now: UnixSeconds,
    audit: Option<&Event>,
) -> Result<Option<super::keys::RotationRow>, KeyStateError> {
    conn.transaction(|tx| {
        lock(tx)?;
        keyring.reload_now()?;
        let rows = load(tx)?;
        verify_check_values(&rows, keyring)?;
        adopt_newer(tx, keyring, &rows, now)?;
        verify(&load(tx)?, keyring)?;
        let rotation = match super::keys::unfinished_rotation(tx)? {
            Some(r) => r,
            None => {
                let active = keyring.active_version() as i32;
                if super::keys::remaining(tx, active)? == 0 {
                    return Ok(None);
                }
                super::keys::start_rotation(tx, active, now)?
            }
        };
        if let Some(event) = audit {
            chain::append(tx, &[event])?;
        }
        Ok(Some(rotation))
    })
}

/// Retires master-key version `version`: refused for the active version, an unknown one, or
/// one any stored key still depends on — all decided inside the key lock, so no writer can
/// seal under it and no rotation can move a row to it in between. Refused too while a backup
/// recorded by `hazina backup` still needs it, unless `force` (the answer then names the
/// backups that no longer open with this keyring). `audit` is written in the same
/// transaction. The key leaves the keyring file only after the decision committed.
pub fn retire(
    conn: &mut DbConn,
    keyring: &Keyring,
    version: i32,
    force: bool,
    now: UnixSeconds,
    audit: Option<&Event>,
) -> Result<String, KeyStateError> {
    let unknown = || KeyStateError::Invalid("No such master-key version".into());
    let v = u32_of(version).ok_or_else(unknown)?;
    let lost = conn.transaction(|tx| {
        lock(tx)?;
        let rows = load(tx)?;
        verify_check_values(&rows, keyring)?;
        let row = rows.iter().find(|r| r.version == version).ok_or_else(unknown)?;
        match row.state.as_str() {
            ACTIVE => Err(KeyStateError::Conflict(
                "The active master-key version cannot be retired".into(),
            )),
            RETIRED => Ok(Vec::new()),
            _ => {
                let dependent: i64 = cv::table
                    .filter(cv::kek_version.eq(version))
                    .count()
                    .get_result(tx)?;
                if dependent > 0 {
                    return Err(KeyStateError::Conflict(format!(
                        "Master-key version {version} still protects {dependent} stored keys; finish a rotation first"
                    )));
                }
                let signed = super::services::signed_under(tx, version)?
                    + super::provider_certs::signed_under(tx, version)?
                    + super::credentials::signed_under(tx, version)?
                    + super::sessions::signed_under(tx, version)?
                    + super::keys::wear_signed_under(tx, version)?
                    + super::integrity::signed_under(tx, version)?;
                if signed > 0 {
                    return Err(KeyStateError::Conflict(format!(
                        "Master-key version {version} still signs {signed} users, services, grants, credentials, sessions, key-wear counts, provider certificates or the integrity marker; finish a rotation first"
                    )));
                }
                if crate::audit::archive::signed_under(tx, keyring, version)? {
                    return Err(KeyStateError::Conflict(format!(
                        "Master-key version {version} still signs the audit archive's anchor; finish a rotation first"
                    )));
                }
                let needing = super::backups::needing(tx, version)?;
                if !needing.is_empty() && !force {
                    return Err(KeyStateError::Conflict(format!(
                        "Master-key version {version} is needed by {}, which {} only with \
                         it. Keep a copy of this keyring file with the backups, then retire with \
                         --force (API: \"force\": true)",
                        describe_backups(&needing),
                        if needing.len() == 1 { "opens" } else { "open" }
                    )));
                }
                diesel::update(kv::table.filter(kv::version.eq(version)))
                    .set((kv::state.eq(RETIRED), kv::retired_at.eq(Some(now))))
                    .execute(tx)?;
                if let Some(event) = audit {
                    chain::append(tx, &[event])?;
                }
                Ok(needing)
            }
        }
    })?;
    let lost = if lost.is_empty() {
        String::new()
    } else {
        format!(
            "; {} no longer open with this keyring (only with a copy of it from before now)",
            describe_backups(&lost)
        )
    };
    if keyring.has_version(v) {
        match keyring.retire(v) {
            Ok(()) => {}
            Err(KeyringError::NotAFile) => {
                return Ok(format!(
                    "Master-key version {version} retired; remove it from HAZINA_KEYRING_DATA{lost}"
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(format!("Master-key version {version} retired{lost}"))
}

/// "2 backups (the newest taken 2026-12-01T10:00:00Z, to /backups/hazina-1.db)".
fn describe_backups(rows: &[super::backups::BackupRow]) -> String {
    let Some(newest) = rows.iter().max_by_key(|r| r.taken_at) else {
        return "no backups".into();
    };
    let when = crate::clock::rfc3339(newest.taken_at);
    match rows.len() {
        1 => format!("the backup taken {when} to {}", newest.location),
        n => format!(
            "{n} backups made by `hazina backup` (the newest taken {when} to {})",
            newest.location
        ),
    }
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Integer)]
    version: i32,
}

/// The version a writer seals new data keys under, read inside the writer's own transaction
/// (on PostgreSQL with a share lock, so a rotation or retirement waits for the writer to
/// commit). It must be the version the keyring names active too: a database whose key states
/// were edited to point at another version is refused, never obeyed.
pub fn sealing_version(tx: &mut DbConn, keyring: &Keyring) -> Result<i32, DbError> {
    let sql = match tx {
        DbConn::Postgres(_) => "SELECT version FROM key_versions WHERE state = 'active' FOR SHARE",
        DbConn::Sqlite(_) => "SELECT version FROM key_versions WHERE state = 'active'",
    };
    let mut rows: Vec<Version> = diesel::sql_query(sql).load(tx)?;
    if rows.is_empty() && matches!(tx, DbConn::Postgres(_)) {
        // A rotation committed between our snapshot and the lock: read again.
        rows = diesel::sql_query(sql).load(tx)?;
    }
    let [Version { version }] = rows[..] else {
        return Err(DbError::KeyState(
            "the database does not name exactly one active master-key version",
        ));
    };
    if keyring.active_version() as i32 != version {
        // Another process may have rotated within the file stamp's resolution: read it.
        if let Err(e) = keyring.reload_now() {
            tracing::error!(error = %e, "cannot re-read the keyring file");
        }
        if keyring.active_version() as i32 != version {
            return Err(DbError::KeyState(
                "the keyring and the database name different active master-key versions",
            ));
        }
    }
    Ok(version)
}
