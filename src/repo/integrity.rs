//! The integrity marker (SPEC §14): rows are signed only by an audited change.
//!
//! A database that holds users, services, grants or credentials must carry a marker MAC'd
//! under the keyring, saying its rows carry generations (`audit::generation`). The marker is
//! written exactly twice in a database's life, each time with its `integrity.marked` entry:
//! - when a new, empty database first meets its keyring (nothing to sign);
//! - by the **one-time upgrade** of a database from before generations: every row whose
//!   format-1 MAC still verifies is re-signed in format 2 at generation 0; a row that fails
//!   (edited before the upgrade) is left as it is, and stays refused. Credentials (which had no
//!   MAC) are signed only when their current version is their newest, and key wear as it is;
//!   sessions (never signed) are ended, so their users sign in again.
//!
//! Everything else is refused in one line by `serve`, every CLI command and `restore`: a
//! database with rows and no valid marker, or whose master-key versions are gone, was edited;
//! nothing is ever re-signed to make it fit. The upgrade runs only while nothing shows that a
//! database ever had generations (no subject in the audit log, no `integrity.marked` entry);
//! see the README's integrity section for what that leaves to `audit verify`.

use diesel::prelude::*;

use super::key_versions::KeyStateError;
use crate::audit::{chain, generation, Action, Actor, Event, RequestMeta};
use crate::clock::UnixSeconds;
use crate::crypto::{rowmac, Keyring};
use crate::db::schema::{
    audit_log as log, credential_versions as cv, credentials as c, grants as g,
    integrity_marker as m, key_lock, key_wear as w, provider_certificates as pc, services as s,
    sessions as sess, users as u,
};
use crate::db::{DbConn, DbError};

/// The marker's format: rows carry generations (rowmac format 2).
const FORMAT: i32 = 2;

fn marker_row(format: i32, marked_at: i64) -> rowmac::Row<'static> {
    rowmac::Row::Marker { format, marked_at }
}

/// `Ok` when the marker is present and genuine; the refusal otherwise.
fn check_marker(conn: &mut DbConn, keyring: &Keyring) -> Result<Option<()>, KeyStateError> {
    let row: Option<(i32, i64, Vec<u8>, i32)> = m::table
        .filter(m::id.eq(1))
        .select((m::format, m::marked_at, m::mac, m::mac_version))
        .first(conn)
        .optional()
        .map_err(DbError::from)?;
    let Some((format, marked_at, mac, version)) = row else {
        return Ok(None);
    };
    if format == FORMAT
        && rowmac::verify(
            keyring,
            Some(version),
            Some(&mac),
            &marker_row(format, marked_at),
        )
    {
        Ok(Some(()))
    } else {
        Err(KeyStateError::Mismatch(
            "the database's integrity marker fails its check under this keyring: it was \
             edited outside hazina (or belongs to another installation); refusing to use it"
                .into(),
        ))
    }
}

/// The refusal for a database whose rows nothing vouches for.
fn unmarked() -> KeyStateError {
    KeyStateError::Mismatch(
        "the database holds users, services, grants or credentials but no valid integrity \
         marker: it was edited outside hazina (or restored from an unknown source); refusing \
         it, and nothing was re-signed"
            .into(),
    )
}

/// Run by `serve`, every CLI command and `restore` once the keyring matched the database's
/// key versions: accepts a marked database, marks a new one or upgrades one from before
/// generations (once), and refuses anything else.
pub fn check_or_mark(
    conn: &mut DbConn,
    keyring: &Keyring,
    now: UnixSeconds,
) -> Result<(), KeyStateError> {
    if check_marker(conn, keyring)?.is_some() {
        return Ok(());
    }
    let event = Event::new(
        now.saturating_mul(1_000_000),
        Actor::system(),
        &RequestMeta::default(),
        Action::IntegrityMarked,
    );
    let mut refused = None;
    chain::with_entry(
        conn,
        |tx| {
            // One decision at a time across every process: the key lock.
            diesel::update(key_lock::table.filter(key_lock::id.eq(1)))
                .set(key_lock::generation.eq(key_lock::generation + 1))
                .execute(tx)?;
            match check_marker(tx, keyring) {
                Ok(Some(())) => return Ok(false),
                Ok(None) => {}
                Err(e) => {
                    refused = Some(e);
                    return Ok(false);
                }
            }
            if super::key_versions::holds_rows(tx)? {
                if !before_generations(tx)? {
                    refused = Some(unmarked());
                    return Ok(false);
                }
                upgrade(tx, keyring)?;
            }
            let (mac, version) = super::users::sign(keyring, &marker_row(FORMAT, now))?;
            diesel::insert_into(m::table)
                .values((
                    m::id.eq(1),
                    m::format.eq(FORMAT),
                    m::marked_at.eq(now),
                    m::mac.eq(mac),
                    m::mac_version.eq(version),
                ))
                .execute(tx)?;
            Ok(true)
        },
        |marked| marked.then_some(event),
    )?;
    match refused {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Whether nothing shows the database ever had generations.
fn before_generations(tx: &mut DbConn) -> Result<bool, DbError> {
    let marked = diesel::select(diesel::dsl::exists(
        log::table.filter(log::action.eq(Action::IntegrityMarked.as_str())),
    ))
    .get_result::<bool>(tx)?;
    Ok(!marked && !generation::any(tx)?)
}

/// The one-time upgrade: format-1 rows that still verify are re-signed at generation 0.
fn upgrade(tx: &mut DbConn, keyring: &Keyring) -> Result<(), DbError> {
    let mut left = 0usize;
    let users: Vec<super::users::UserRow> = u::table
        .select(super::users::UserRow::as_select())
        .load(tx)?;
    for mut row in users {
        if row.intact_format1(keyring) {
            row.generation = 0;
            super::users::store(tx, keyring, &row)?;
        } else {
            left += 1;
        }
    }
    let services: Vec<super::services::ServiceRow> = s::table
        .select(super::services::ServiceRow::as_select())
        .load(tx)?;
    for mut row in services {
        if row.intact_format1(keyring) {
            row.generation = 0;
            super::services::store_service(tx, keyring, &row)?;
        } else {
            left += 1;
        }
    }
    let grants: Vec<super::services::GrantRow> = g::table
        .select(super::services::GrantRow::as_select())
        .load(tx)?;
    for mut row in grants {
        if row.intact_format1(keyring) {
            row.generation = 0;
            super::services::store_grant(tx, keyring, &row)?;
        } else {
            left += 1;
        }
    }
    let certs: Vec<super::provider_certs::CertificateRow> = pc::table
        .select(super::provider_certs::CertificateRow::as_select())
        .load(tx)?;
    for mut row in certs {
        if row.intact_format1(keyring) {
            row.generation = 0;
            super::provider_certs::store(tx, keyring, &row)?;
        } else {
            left += 1;
        }
    }
    // Credentials had no MAC: their state is signed as it stands, but only when its current
    // version is its newest (a `current_version` pointed back at an older version is refused).
    let credentials: Vec<super::credentials::CredentialRow> = c::table
        .select(super::credentials::CredentialRow::as_select())
        .load(tx)?;
    for row in credentials {
        let newest: Option<i32> = cv::table
            .filter(cv::credential_id.eq(row.id))
            .select(diesel::dsl::max(cv::version))
            .first(tx)?;
        let consistent = match newest {
            Some(n) => n == row.current_version && row.deleted_at.is_none(),
            None => row.deleted_at.is_some(),
        };
        if consistent {
            super::credentials::store_upgraded(tx, keyring, row)?;
        } else {
            left += 1;
        }
    }
    let wear: Vec<super::keys::WearRow> = w::table
        .select(super::keys::WearRow::as_select())
        .load(tx)?;
    for mut row in wear {
        row.generation = 0;
        super::keys::store_wear(tx, keyring, &row)?;
    }
    let ended = diesel::delete(sess::table).execute(tx)?;
    if left > 0 {
        tracing::error!(
            rows = left,
            "integrity upgrade: rows that failed their check were left unsigned and stay refused"
        );
    }
    tracing::warn!(
        sessions_ended = ended,
        "integrity upgrade: rows now carry generations (once); every session was ended"
    );
    Ok(())
}

/// Re-signs the marker under master-key version `target` (a rotation's step; one pass: `after`
/// is `i64::MIN` the first time), when its MAC still verifies.
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
    let row: Option<(i32, i64, Vec<u8>, i32)> = m::table
        .filter(m::id.eq(1))
        .filter(m::mac_version.lt(target))
        .select((m::format, m::marked_at, m::mac, m::mac_version))
        .first(tx)
        .optional()?;
    if let Some((format, marked_at, mac, version)) = row {
        let marker = marker_row(format, marked_at);
        if rowmac::verify(keyring, Some(version), Some(&mac), &marker) {
            let (mac, version) = super::users::sign(keyring, &marker)?;
            diesel::update(m::table.filter(m::id.eq(1)))
                .set((m::mac.eq(mac), m::mac_version.eq(version)))
                .execute(tx)?;
        }
    }
    Ok(Some(0))
}

/// 1 when the marker is signed under master-key version `version`.
pub fn signed_under(conn: &mut DbConn, version: i32) -> Result<i64, DbError> {
    Ok(m::table
        .filter(m::mac_version.eq(version))
        .count()
        .get_result(conn)?)
}
