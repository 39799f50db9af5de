//! Online master-key rotation: a background rewrap that runs while the vault keeps serving,
//! resumes after a crash (any node, or the CLI, picks up the unfinished rotation recorded in
//! the database), and never leaves a row that cannot be opened (see `repo::keys`).

use std::sync::Arc;

use crate::clock::Clock;
use crate::crypto::Keyring;
use crate::db::{DbError, Pool};
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
