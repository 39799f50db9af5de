//! Master-key lifecycle in the database: rotation state, rewrap batches, key wear.
//!
//! A rotation re-wraps data keys only: each batch unwraps DEKs under their old master key and
//! wraps them under the target, in one transaction that also advances the rotation's
//! progress. A crash loses at most the batch in flight, which rolled back whole, so every
//! row always holds a `(kek_version, wrapped_dek)` pair that opens. The secret ciphertexts are
//! never read or written.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};

use crate::audit::generation;
use crate::clock::UnixSeconds;
use crate::crypto::{envelope, rowmac, Aad, Envelope, Keyring};
use crate::db::schema::{
    credential_versions as cv, credentials as c, key_rotations as r, key_wear as w,
};
use crate::db::{DbConn, DbError};

/// One master-key version's wear: how many data keys it has wrapped, signed with its
/// generation (SPEC §14), so a count reset, written back or deleted in the database is found
/// at the next write instead of silently letting a key be used past its limit.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = w)]
pub struct WearRow {
    pub kek_version: i32,
    pub encryptions: i64,
    pub generation: i64,
    pub mac: Option<Vec<u8>>,
    pub mac_version: Option<i32>,
}

impl WearRow {
    pub(crate) fn mac_row(&self) -> rowmac::Row<'_> {
        rowmac::Row::KeyWear {
            kek_version: self.kek_version,
            encryptions: self.encryptions,
            generation: self.generation,
        }
    }

    pub(crate) fn intact(&self, keyring: &Keyring) -> bool {
        rowmac::verify(
            keyring,
            self.mac_version,
            self.mac.as_deref(),
            &self.mac_row(),
        )
    }
}

/// Signs `row` as it is (its generation included).
pub(crate) fn store_wear(tx: &mut DbConn, keyring: &Keyring, row: &WearRow) -> Result<(), DbError> {
    let (mac, mac_version) = super::users::sign(keyring, &row.mac_row())?;
    diesel::update(w::table.filter(w::kek_version.eq(row.kek_version)))
        .set((
            w::encryptions.eq(row.encryptions),
            w::generation.eq(row.generation),
            w::mac.eq(Some(mac)),
            w::mac_version.eq(Some(mac_version)),
        ))
        .execute(tx)?;
    Ok(())
}

/// Records `n` more encryptions under master-key version `kek_version`, inside the caller's
/// audited change (so the count is as durable as the rows it counts, and its generation
/// names that change's entry). A count that fails its check — edited, written back from
/// before, or deleted while the log remembers it — refuses the write.
pub fn bump_wear(
    conn: &mut DbConn,
    keyring: &Keyring,
    kek_version: i32,
    n: i64,
) -> Result<(), DbError> {
    let subject = generation::key_wear(kek_version);
    // The write first (it takes the row's lock); the MAC it replaces covers the count before.
    let updated = diesel::update(w::table.filter(w::kek_version.eq(kek_version)))
        .set(w::encryptions.eq(w::encryptions + n))
        .execute(conn)?;
    let latest = generation::latest(conn, &subject)?;
    if updated == 0 {
        if latest.is_some() {
            // The log counted encryptions under this version; the row is gone.
            return Err(DbError::Tampered("key wear"));
        }
        diesel::sql_query("INSERT INTO key_wear (kek_version, encryptions) VALUES ($1, 0) ON CONFLICT (kek_version) DO NOTHING")
            .bind::<Integer, _>(kek_version)
            .execute(conn)?;
        diesel::update(w::table.filter(w::kek_version.eq(kek_version)))
            .set(w::encryptions.eq(w::encryptions + n))
            .execute(conn)?;
    } else {
        let mut before: WearRow = w::table
            .filter(w::kek_version.eq(kek_version))
            .select(WearRow::as_select())
            .first(conn)?;
        before.encryptions -= n;
        if !rowmac::Verdict::of(before.intact(keyring), before.generation, latest).is_intact() {
            return Err(DbError::Tampered("key wear"));
        }
    }
    let mut row: WearRow = w::table
        .filter(w::kek_version.eq(kek_version))
        .select(WearRow::as_select())
        .first(conn)?;
    row.generation = generation::generation_for(conn, subject)?;
    store_wear(conn, keyring, &row)
}

/// Encryptions per master-key version.
pub fn wear(conn: &mut DbConn) -> Result<Vec<(i32, i64)>, DbError> {
    Ok(w::table
        .order(w::kek_version.asc())
        .select((w::kek_version, w::encryptions))
        .load(conn)?)
}

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = r)]
pub struct RotationRow {
    pub id: i64,
    pub target_version: i32,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub rows_rewrapped: i64,
}

/// The unfinished rotation, if any.
pub fn unfinished_rotation(conn: &mut DbConn) -> Result<Option<RotationRow>, DbError> {
    Ok(r::table
        .filter(r::finished_at.is_null())
        .order(r::started_at.desc())
        .select(RotationRow::as_select())
        .first(conn)
        .optional()?)
}

/// The most recent rotation, finished or not.
pub fn latest_rotation(conn: &mut DbConn) -> Result<Option<RotationRow>, DbError> {
    Ok(r::table
        .order((r::started_at.desc(), r::id.desc()))
        .select(RotationRow::as_select())
        .first(conn)
        .optional()?)
}

/// Starts (or continues) a rotation towards `target`: an unfinished rotation to the same
/// target is resumed; one to another target is superseded (its work is not lost: rows it
/// moved are simply moved again).
pub fn start_rotation(
    conn: &mut DbConn,
    target: i32,
    now: UnixSeconds,
) -> Result<RotationRow, DbError> {
    conn.transaction(|tx| {
        if let Some(current) = unfinished_rotation(tx)? {
            if current.target_version == target {
                return Ok(current);
            }
            diesel::update(r::table.filter(r::id.eq(current.id)))
                .set(r::finished_at.eq(Some(now)))
                .execute(tx)?;
        }
        let id = crate::domain::UserId::generate().get();
        diesel::insert_into(r::table)
            .values((
                r::id.eq(id),
                r::target_version.eq(target),
                r::started_at.eq(now),
                r::finished_at.eq(None::<i64>),
                r::rows_rewrapped.eq(0i64),
            ))
            .execute(tx)?;
        Ok(r::table
            .find(id)
            .select(RotationRow::as_select())
            .first(tx)?)
    })
}

/// Stored key versions still under a version older than `target`.
pub fn remaining(conn: &mut DbConn, target: i32) -> Result<i64, DbError> {
    Ok(cv::table
        .filter(cv::kek_version.lt(target))
        .count()
        .get_result(conn)?)
}

type RewrapRow = (i64, i32, String, i32, Vec<u8>, i64, String, Option<String>);

/// Up to `limit` stored versions under a master key older than `target`, with what their
/// associated data needs. A range on the `kek_version` index: only rows still to move.
fn load_batch(conn: &mut DbConn, target: i32, limit: i64) -> Result<Vec<RewrapRow>, DbError> {
    Ok(cv::table
        .inner_join(c::table)
        .filter(cv::kek_version.lt(target))
        .limit(limit)
        .select((
            cv::credential_id,
            cv::version,
            cv::environment,
            cv::kek_version,
            cv::wrapped_dek,
            c::owner_id,
            c::provider,
            cv::profile,
        ))
        .load(conn)?)
}

/// The first statement of every rotation batch: the rotation row is the lock (concurrent
/// rewrappers — several nodes, the CLI — take turns, and SQLite takes its write lock before
/// reading). `false` when the rotation finished or was superseded by a newer one: stop.
fn lock_live_rotation(tx: &mut DbConn, rotation: &RotationRow) -> Result<bool, DbError> {
    let live = diesel::update(
        r::table
            .filter(r::id.eq(rotation.id))
            .filter(r::finished_at.is_null()),
    )
    .set(r::rows_rewrapped.eq(r::rows_rewrapped))
    .execute(tx)?;
    Ok(live == 1)
}

/// Re-wraps up to `batch` data keys under `target` in one transaction; the number moved (0
/// when the rotation is complete, or when a later rotation superseded this one). Never
/// decrypts a secret, and only ever moves a row to a newer version: rows move one way, so
/// two rotations can never pass rows back and forth (nor wear a key out doing it).
pub fn rewrap_batch(
    conn: &mut DbConn,
    keyring: &Keyring,
    rotation: &RotationRow,
    batch: i64,
) -> Result<usize, DbError> {
    let target = rotation.target_version;
    // Each batch is an audited change (`keys.rewrap`): the key wear it adds is signed, and a
    // signed row changes only with an entry that names it.
    let event = crate::audit::Event::new(
        chrono::Utc::now().timestamp_micros(),
        crate::audit::Actor::system(),
        &crate::audit::RequestMeta::default(),
        crate::audit::Action::KeysRewrap,
    );
    crate::audit::chain::with_entry(
        conn,
        |tx| {
            if !lock_live_rotation(tx, rotation)? {
                return Ok(0);
            }
            // Walk the kek_version index by range: each batch reads only rows still to move, so a
            // rotation is linear in the row count. Each row is moved by a compare-and-swap on its
            // old version.
            let rows = load_batch(tx, target, batch)?;
            let mut moved = 0usize;
            for (
                credential_id,
                version,
                environment,
                old_kek,
                wrapped_dek,
                owner_id,
                provider,
                profile,
            ) in rows
            {
                let aad = Aad {
                    owner_id,
                    credential_id,
                    provider: &provider,
                    environment: &environment,
                    version,
                    profile: profile.as_deref(),
                };
                let current = Envelope {
                    format: envelope::FORMAT_V1,
                    kek_version: old_kek,
                    wrapped_dek,
                    ciphertext: Vec::new(),
                    verifier: Vec::new(),
                };
                let rewrapped = envelope::rewrap_dek(keyring, &aad, &current, target)?;
                moved += diesel::update(
                    cv::table
                        .filter(cv::credential_id.eq(credential_id))
                        .filter(cv::version.eq(version))
                        .filter(cv::kek_version.eq(old_kek)),
                )
                .set((cv::kek_version.eq(target), cv::wrapped_dek.eq(rewrapped)))
                .execute(tx)?;
            }
            if moved > 0 {
                bump_wear(tx, keyring, target, moved as i64)?;
                diesel::sql_query(
                    "UPDATE key_rotations SET rows_rewrapped = rows_rewrapped + $1 WHERE id = $2",
                )
                .bind::<BigInt, _>(moved as i64)
                .bind::<BigInt, _>(rotation.id)
                .execute(tx)?;
            }
            Ok(moved)
        },
        |moved| (*moved > 0).then_some(event),
    )
}

pub fn finish_rotation(conn: &mut DbConn, id: i64, now: UnixSeconds) -> Result<(), DbError> {
    diesel::update(
        r::table
            .filter(r::id.eq(id))
            .filter(r::finished_at.is_null()),
    )
    .set(r::finished_at.eq(Some(now)))
    .execute(conn)?;
    Ok(())
}

/// Runs a rotation to completion in bounded batches (memory stays flat in the row count),
/// reporting the running total after each batch. Resumable: calling it again after a crash
/// continues where the last committed batch left off.
pub fn run_rotation(
    conn: &mut DbConn,
    keyring: &Keyring,
    rotation: &RotationRow,
    batch: i64,
    now: impl Fn() -> UnixSeconds,
    mut progress: impl FnMut(u64),
) -> Result<u64, DbError> {
    let mut total = 0u64;
    loop {
        let moved = rewrap_batch(conn, keyring, rotation, batch)?;
        if moved == 0 {
            break;
        }
        total += moved as u64;
        progress(total);
    }
    resign_authorization_rows(conn, keyring, rotation, batch)?;
    finish_rotation(conn, rotation.id, now())?;
    Ok(total)
}

/// Re-signs the MACs of users, services and grants under the rotation's target, in bounded
/// batches (each its own transaction, each first checking the rotation is still the live
/// one), so the old version can be retired. Rows that fail their integrity check are left
/// as they are: a rotation never launders a tampered row.
fn resign_authorization_rows(
    conn: &mut DbConn,
    keyring: &Keyring,
    rotation: &RotationRow,
    batch: i64,
) -> Result<(), DbError> {
    type Step = fn(&mut DbConn, &Keyring, i32, i64, i64) -> Result<Option<i64>, DbError>;
    let steps: [Step; 8] = [
        super::users::resign_batch,
        super::services::resign_services_batch,
        super::services::resign_grants_batch,
        super::provider_certs::resign_batch,
        super::credentials::resign_batch,
        super::sessions::resign_batch,
        resign_wear_batch,
        super::integrity::resign_batch,
    ];
    for step in steps {
        let mut after = i64::MIN;
        loop {
            let last = conn.transaction(|tx| {
                if !lock_live_rotation(tx, rotation)? {
                    return Ok(None);
                }
                step(tx, keyring, rotation.target_version, after, batch)
            })?;
            match last {
                Some(id) => after = id,
                None => break,
            }
        }
    }
    // The audit archive's anchor note, signed with the checkpoint key of a version.
    conn.transaction(|tx| {
        if lock_live_rotation(tx, rotation)? {
            crate::audit::archive::resign_anchor(tx, keyring, rotation.target_version)?;
        }
        Ok::<_, DbError>(())
    })?;
    Ok(())
}

/// Re-signs every key-wear row signed under a version older than `target` (one pass),
/// keeping generations.
pub fn resign_wear_batch(
    tx: &mut DbConn,
    keyring: &Keyring,
    target: i32,
    after: i64,
    _limit: i64,
) -> Result<Option<i64>, DbError> {
    if after != i64::MIN {
        return Ok(None);
    }
    let rows: Vec<WearRow> = w::table
        .filter(w::mac_version.lt(target))
        .select(WearRow::as_select())
        .load(tx)?;
    for row in rows.iter().filter(|r| r.intact(keyring)) {
        store_wear(tx, keyring, row)?;
    }
    Ok(Some(0))
}

/// Key-wear rows signed under master-key version `version`.
pub fn wear_signed_under(conn: &mut DbConn, version: i32) -> Result<i64, DbError> {
    Ok(w::table
        .filter(w::mac_version.eq(version))
        .count()
        .get_result(conn)?)
}
