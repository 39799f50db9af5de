//! Master-key administration (SPEC §2.3, §3): the keyring's versions and how many stored
//! keys each protects, key wear, starting a rotation and watching it, retiring a version.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use crate::audit::Action;
use crate::db::DbError;
use crate::error::ApiError;
use crate::http::UserRequest;
use crate::repo::key_versions;
use crate::rotation;
use crate::routes::admin::Admin;
use crate::routes::JsonObject;

pub async fn show(
    UserRequest { state, user, meta }: UserRequest,
) -> Result<HttpResponse, ApiError> {
    Admin::check(&state, &user, meta, Action::KeysRead).await?;
    let keyring = state.keyring.clone();
    let body = state.db(move |c| rotation::status(c, &keyring)).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// Adds a master-key version, makes it active, and re-wraps every data key under it in the
/// background while the vault keeps serving. `202` with the rotation to watch. The decision
/// and its audit entry are one transaction under the database's key lock (see
/// `repo::key_versions`), so concurrent rotations on any node take turns.
pub async fn rotate(
    UserRequest { state, user, meta }: UserRequest,
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
    UserRequest { state, user, meta }: UserRequest,
    body: web::Json<JsonObject<RetireBody>>,
) -> Result<HttpResponse, ApiError> {
    let admin = Admin::check(&state, &user, meta, Action::KeysRetire).await?;
    let event = admin.event(Action::KeysRetire);
    let RetireBody { version, force } = body.into_inner().0;
    let (pool, keyring, now) = (state.pool.clone(), state.keyring.clone(), state.clock.now());
    let outcome =
        web::block(move || rotation::retire(&pool, &keyring, version, force, now, Some(&event)))
            .await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": outcome })))
}
