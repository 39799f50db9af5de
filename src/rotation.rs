//! Online master-key rotation: a background rewrap that runs while the vault keeps serving,
//! resumes after a crash (any node, or the CLI, picks up the unfinished rotation recorded in
//! the database), and never leaves a row that cannot be opened (see `repo::keys`). Also the
//! keyring's status and the retire rule, which the API and the CLI share.

use std::sync::Arc;

use crate::audit::Event;
use crate::clock::{Clock, UnixSeconds};
use crate::crypto::Keyring;
use crate::db::{DbConn, DbError, Pool};
use crate::repo::credentials;
use crate::repo::key_versions::{self, KeyStateError};
use crate::repo::keys::{self, RotationRow};

/// Rows re-wrapped per transaction: bounded, so memory stays flat and a crash loses little.
pub const BATCH: i64 = 1000;

/// Default number of encryptions under one master key after which hazina warns that
/// rotation is due: far below the 2^32 random-nonce limit of AES-GCM.
pub const DEFAULT_WEAR_WARNING: i64 = 1 << 28;

/// Runs `rotation` to completion on a background thread.
pub fn spawn(pool: Pool, keyring: Arc<Keyring>, rotation: RotationRow, clock: Clock) {
    let name = format!("hazina-rotation-{}", rotation.target_version);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let result = pool
            .get()
            .map_err(DbError::from)
            .and_then(|mut conn| keys::run_rotation(&mut conn, &keyring, &rotation, BATCH, || clock.now(), |_| {}));
        match result {
            Ok(moved) => tracing::info!(target_version = rotation.target_version, moved, "master-key rotation finished"),
            Err(e) => tracing::error!(
                error = %e,
                target_version = rotation.target_version,
                "master-key rotation stopped; it resumes at the next start or with `hazina keys rotate --resume`"
            ),
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the rotation thread");
    }
}

/// At start-up: continues a rotation a crash interrupted, if its target key is here.
pub fn resume_if_unfinished(
    pool: &Pool,
    keyring: &Arc<Keyring>,
    clock: &Clock,
) -> Result<(), DbError> {
    let Some(rotation) = keys::unfinished_rotation(&mut *pool.get()?)? else {
        return Ok(());
    };
    let target = u32::try_from(rotation.target_version).unwrap_or(0);
    if !keyring.has_version(target) {
        tracing::error!(
            target_version = rotation.target_version,
            "an unfinished master-key rotation targets a key version this node does not have; \
             distribute the keyring file, then restart or run `hazina keys rotate --resume`"
        );
        return Ok(());
    }
    tracing::warn!(
        target_version = rotation.target_version,
        "resuming an interrupted master-key rotation"
    );
    spawn(pool.clone(), keyring.clone(), rotation, clock.clone());
    Ok(())
}

/// Logs loudly for every master-key version past the wear threshold.
pub fn warn_about_wear(pool: &Pool, threshold: i64) -> Result<(), DbError> {
    for (version, n) in keys::wear(&mut *pool.get()?)? {
        if n >= threshold {
            tracing::warn!(
                kek_version = version,
                encryptions = n,
                threshold,
                "!!! MASTER KEY ROTATION DUE: this key has encrypted {n} data keys (threshold {threshold}); run `hazina keys rotate` !!!"
            );
        }
    }
    Ok(())
}

/// The keyring and rotation status, as `GET /admin/keys/` and `hazina keys status` show it.
pub fn status(conn: &mut DbConn, keyring: &Keyring) -> Result<serde_json::Value, DbError> {
    let counts = credentials::count_by_kek_version(conn)?;
    let wear = keys::wear(conn)?;
    let latest = keys::latest_rotation(conn)?;
    let registered = key_versions::load(conn)?;
    let state_of = |v: i32| {
        registered
            .iter()
            .find(|r| r.version == v)
            .map(|r| r.state.clone())
    };
    let active = registered
        .iter()
        .find(|r| r.state == key_versions::ACTIVE)
        .map_or(keyring.active_version() as i32, |r| r.version);
    let mut known: Vec<i32> = keyring.versions().into_iter().map(|v| v as i32).collect();
    for v in counts
        .iter()
        .map(|(v, _)| *v)
        .chain(registered.iter().map(|r| r.version))
    {
        if !known.contains(&v) {
            known.push(v);
        }
    }
    known.sort_unstable();
    let versions: Vec<serde_json::Value> = known
        .iter()
        .map(|v| {
            let rows = counts.iter().find(|(k, _)| k == v).map_or(0, |(_, n)| *n);
            let encryptions = wear.iter().find(|(k, _)| k == v).map_or(0, |(_, n)| *n);
            serde_json::json!({
                "version": v,
                "active": *v == active,
                "state": state_of(*v),
                "in_keyring": keyring.has_version(*v as u32),
                "stored_keys": rows,
                "encryptions": encryptions,
                "rotation_due": encryptions >= DEFAULT_WEAR_WARNING,
            })
        })
        .collect();
    let rotation = match latest {
        Some(r) => {
            let remaining = keys::remaining(conn, r.target_version)?;
            serde_json::json!({
                "id": r.id,
                "target_version": r.target_version,
                "started_at": crate::clock::rfc3339(r.started_at),
                "finished_at": r.finished_at.map(crate::clock::rfc3339),
                "rows_rewrapped": r.rows_rewrapped,
                "remaining": remaining,
            })
        }
        None => serde_json::Value::Null,
    };
    Ok(serde_json::json!({
        "active_version": active,
        "versions": versions,
        "wear_warning_threshold": DEFAULT_WEAR_WARNING,
        "rotation": rotation,
    }))
}

/// The retire rule, shared by the API and the CLI: refused for the active version, an unknown
/// one, or one that any stored key or recorded backup still depends on (see
/// `repo::key_versions::retire`).
pub fn retire(
    pool: &Pool,
    keyring: &Keyring,
    version: i32,
    force: bool,
    now: UnixSeconds,
    audit: Option<&Event>,
) -> Result<String, KeyStateError> {
    let mut conn = pool.get().map_err(DbError::from)?;
    key_versions::retire(&mut conn, keyring, version, force, now, audit)
}
