//! Master-key administration (SPEC §2.3, §3): the keyring's versions and how many stored
//! keys each protects, key wear, starting a rotation and watching it, retiring a version.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use crate::audit::{Action, RequestMeta};
use crate::db::DbError;
use crate::error::ApiError;
use crate::http::AuthenticatedUser;
use crate::repo::{credentials, key_versions, keys};
use crate::rotation;
use crate::routes::admin::Admin;
use crate::routes::JsonObject;
use crate::state::AppState;

/// The keyring and rotation status, as `GET /admin/keys/` and `hazina keys status` show it.
pub fn status(
    conn: &mut crate::db::DbConn,
    keyring: &crate::crypto::Keyring,
) -> Result<serde_json::Value, crate::db::DbError> {
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
                "rotation_due": encryptions >= rotation::DEFAULT_WEAR_WARNING,
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
        "wear_warning_threshold": rotation::DEFAULT_WEAR_WARNING,
        "rotation": rotation,
    }))
}

pub async fn show(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    Admin::check(&state, &user, meta, Action::KeysRead).await?;
    let keyring = state.keyring.clone();
    let body = state.db(move |c| status(c, &keyring)).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// Adds a master-key version, makes it active, and re-wraps every data key under it in the
/// background while the vault keeps serving. `202` with the rotation to watch. The decision
/// and its audit entry are one transaction under the database's key lock (see
/// `repo::key_versions`), so concurrent rotations on any node take turns.
pub async fn rotate(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::KeysRotate).await?;
    let event = admin.event(Action::KeysRotate);
    let (pool, keyring, now) = (state.pool.clone(), state.keyring.clone(), state.clock.now());
    let rotation = web::block(move || -> Result<_, ApiError> {
        let mut conn = pool.get().map_err(DbError::from)?;
        Ok(key_versions::begin_rotation(
            &mut conn,
            &keyring,
            now,
            Some(&event),
        )?)
    })
    .await??;
    rotation::spawn(
        state.pool.clone(),
        state.keyring.clone(),
        rotation.clone(),
        state.clock.clone(),
    );
    let version = rotation.target_version;
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "message": format!("Master key version {version} is active; re-wrapping stored keys in the background"),
        "rotation": { "id": rotation.id, "target_version": rotation.target_version },
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetireBody {
    version: i32,
    /// Retire even though a recorded backup still needs the version (it will not open with
    /// this keyring any more).
    #[serde(default)]
    force: bool,
}

/// Removes a master-key version from the keyring, refused while any stored key depends on it.
pub async fn retire(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    body: web::Json<JsonObject<RetireBody>>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::KeysRetire).await?;
    let event = admin.event(Action::KeysRetire);
    let RetireBody { version, force } = body.into_inner().0;
    let (pool, keyring, now) = (state.pool.clone(), state.keyring.clone(), state.clock.now());
    let outcome =
        web::block(move || retire_blocking(&pool, &keyring, version, force, now, Some(&event)))
            .await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": outcome })))
}

/// The retire rule, shared by the API and the CLI: refused for the active version, an unknown
/// one, or one that any stored key or recorded backup still depends on (see
/// `repo::key_versions::retire`).
pub fn retire_blocking(
    pool: &crate::db::Pool,
    keyring: &crate::crypto::Keyring,
    version: i32,
    force: bool,
    now: crate::clock::UnixSeconds,
    audit: Option<&crate::audit::Event>,
) -> Result<String, ApiError> {
    let mut conn = pool.get().map_err(DbError::from)?;
    Ok(key_versions::retire(
        &mut conn, keyring, version, force, now, audit,
    )?)
}
