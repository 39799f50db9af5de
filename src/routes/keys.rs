//! Master-key administration (SPEC §2.3, §3): the keyring's versions and how many stored
//! keys each protects, key wear, starting a rotation and watching it, retiring a version.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use crate::audit::{Action, RequestMeta, Target};
use crate::auth::AuthenticatedUser;
use crate::db::{credentials, keys};
use crate::error::ApiError;
use crate::rotation;
use crate::routes::admin::Admin;
use crate::routes::JsonObject;
use crate::startup::AppState;

/// The keyring and rotation status, as `GET /admin/keys/` and `hazina keys status` show it.
pub fn status(
    conn: &mut crate::db::DbConn,
    keyring: &crate::crypto::Keyring,
) -> Result<serde_json::Value, crate::db::DbError> {
    let counts = credentials::count_by_kek_version(conn)?;
    let wear = keys::wear(conn)?;
    let latest = keys::latest_rotation(conn)?;
    let active = keyring.active_version();
    let mut known: Vec<i32> = keyring.versions().into_iter().map(|v| v as i32).collect();
    for (v, _) in &counts {
        if !known.contains(v) {
            known.push(*v);
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
                "active": *v as u32 == active,
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
/// background while the vault keeps serving. `202` with the rotation to watch.
pub async fn rotate(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::KeysRotate).await?;
    let keyring = state.keyring.clone();
    let version = web::block(move || keyring.add_version()).await?.map_err(|e| match e {
        crate::crypto::KeyringError::NotAFile => ApiError::Conflict(
            "The keyring comes from HAZINA_KEYRING_DATA: add a version there, restart every node, then resume with `hazina keys rotate --resume`"
                .into(),
        ),
        other => ApiError::internal(other),
    })?;
    let now = state.clock.now();
    let target = version as i32;
    let rotation = state
        .db(move |c| keys::start_rotation(c, target, now))
        .await?;
    admin.done(Action::KeysRotate, Target::default()).await;
    rotation::spawn(
        state.pool.clone(),
        state.keyring.clone(),
        rotation.clone(),
        state.clock.clone(),
    );
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "message": format!("Master key version {version} is active; re-wrapping stored keys in the background"),
        "rotation": { "id": rotation.id, "target_version": rotation.target_version },
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetireBody {
    version: i32,
}

/// Removes a master-key version from the keyring, refused while any stored key depends on it.
pub async fn retire(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    body: web::Json<JsonObject<RetireBody>>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::KeysRetire).await?;
    let version = body.into_inner().0.version;
    let outcome = retire_version(&state.pool, &state.keyring, version).await?;
    admin.done(Action::KeysRetire, Target::default()).await;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": outcome })))
}

async fn retire_version(
    pool: &crate::db::Pool,
    keyring: &std::sync::Arc<crate::crypto::Keyring>,
    version: i32,
) -> Result<String, ApiError> {
    let pool = pool.clone();
    let keyring = keyring.clone();
    web::block(move || retire_blocking(&pool, &keyring, version)).await?
}

/// The retire rule, shared by the API and the CLI: refused for the active version, an unknown
/// one, or one that any stored key still depends on.
pub fn retire_blocking(
    pool: &crate::db::Pool,
    keyring: &crate::crypto::Keyring,
    version: i32,
) -> Result<String, ApiError> {
    let v = u32::try_from(version)
        .map_err(|_| ApiError::Invalid("No such master-key version".into()))?;
    if !keyring.has_version(v) {
        return Err(ApiError::Invalid("No such master-key version".into()));
    }
    if keyring.active_version() == v {
        return Err(ApiError::Conflict(
            "The active master-key version cannot be retired".into(),
        ));
    }
    let mut conn = pool.get().map_err(|e| ApiError::Unavailable(e.into()))?;
    let dependent = credentials::count_by_kek_version(&mut conn)?
        .into_iter()
        .find(|(k, _)| *k == version)
        .map_or(0, |(_, n)| n);
    if dependent > 0 {
        return Err(ApiError::Conflict(format!(
            "Master-key version {version} still protects {dependent} stored keys; finish a rotation first"
        )));
    }
    keyring.retire(v).map_err(|e| match e {
        crate::crypto::KeyringError::NotAFile => ApiError::Conflict(
            "The keyring comes from HAZINA_KEYRING_DATA: remove the version there".into(),
        ),
        other => ApiError::internal(other),
    })?;
    Ok(format!("Master-key version {version} retired"))
}
