//! The Payment Credentials API (SPEC §2.1): every endpoint's happy path with its exact
//! shapes and messages, owner isolation (another owner's id answers byte for byte like a
//! missing one and leaves that owner's row untouched), the one-per-environment rule,
//! IntaSend key formats, rotation history, crypto-shredding delete, and who may call.

use std::collections::BTreeSet;

use hazina::clock::rfc3339;
use hazina::domain::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const CREDENTIAL_FIELDS: [&str; 11] = [
    "id",
    "provider",
    "provider_display",
    "environment",
    "is_active",
    "is_live",
    "is_sandbox",
    "api_key",
    "version",
    "created_at",
    "updated_at",
];

const AUTH_FAILED: &str = "Authentication credentials were not provided or are invalid";
const AUDITOR_FORBIDDEN: &str = "Auditors cannot access payment credentials";

fn keys_of(object: &Value) -> BTreeSet<String> {
    object
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {object}"))
        .keys()
        .cloned()
        .collect()
}

fn set_of(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// Asserts a credential object carries exactly the public metadata fields.
fn assert_credential_shape(credential: &Value) {
    assert_eq!(
        keys_of(credential),
        set_of(&CREDENTIAL_FIELDS),
        "{credential}"
    );
}

fn id_of(credential: &Value) -> i64 {
    credential["id"]
        .as_i64()
        .expect("credential id is an integer")
}

fn path(id: i64, action: &str) -> String {
    if action.is_empty() {
        format!("/payments/credentials/{id}/")
    } else {
        format!("/payments/credentials/{id}/{action}/")
    }
}

/// A valid credential id that no row holds.
fn missing_id(app: &TestApp) -> i64 {
    let id = 4_242_424_242;
    assert_eq!(
        app.sql_lines(&format!(
            "SELECT CAST(COUNT(*) AS TEXT) AS line FROM credentials WHERE id = {id}"
        )),
        ["0"]
    );
    id
}

fn version_rows(app: &TestApp, id: i64) -> String {
    app.sql_lines(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) AS line FROM credential_versions WHERE credential_id = {id}"
    ))
    .remove(0)
}

/// Status and raw body bytes, for byte-for-byte comparisons.
async fn status_and_bytes(res: reqwest::Response) -> (StatusCode, Vec<u8>) {
    let status = res.status();
    (status, res.bytes().await.unwrap().to_vec())
}

async fn json_ok(res: reqwest::Response) -> Value {
    let status = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The private key the owner gets back from reveal.
async fn revealed_key(app: &TestApp, user: &TestUser, id: i64) -> String {
    let body = json_ok(app.get(&path(id, "get-private-key"), &user.access).await).await;
    body["private_key"].as_str().unwrap().to_owned()
}

/// Asserts two responses are the same 404 with byte-identical bodies.
async fn assert_same_not_found(other_owners: reqwest::Response, missing: reqwest::Response) {
    let (status_other, body_other) = status_and_bytes(other_owners).await;
    let (status_missing, body_missing) = status_and_bytes(missing).await;
    assert_eq!(status_other, StatusCode::NOT_FOUND);
    assert_eq!(status_missing, StatusCode::NOT_FOUND);
    assert_eq!(
        String::from_utf8_lossy(&body_other),
        String::from_utf8_lossy(&body_missing)
    );
    assert_eq!(body_other, body_missing);
    let body: Value = serde_json::from_slice(&body_other).unwrap();
    assert_eq!(body, json!({ "error": NOT_FOUND }));
}

// ---------------------------------------------------------------------------------------
// Happy paths

#[tokio::test]
async fn create_answers_201_with_exactly_the_credential_metadata() {
    let app = spawn_app().await;
    let alice = app.user().await;

    let res = app
        .post(
            "/payments/credentials/",
            &alice.access,
            &json!({
                "provider": "kopokopo",
                "api_key": "kk-api-key-create",
                "private_key": "kk_canary_create_7f3a91",
                "environment": "sandbox",
            }),
        )
        .await;

    assert_eq!(res.status(), StatusCode::CREATED);
    let text = res.text().await.unwrap();
    assert!(!text.contains("kk_canary_create_7f3a91"), "{text}");
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_credential_shape(&created);
    let id = id_of(&created);
    assert!(id > 0 && id < (1 << 53), "{id}");
    let now = rfc3339(app.clock.now());
    assert_eq!(
        created,
        json!({
            "id": id,
            "provider": "kopokopo",
            "provider_display": "KopoKopo",
            "environment": "sandbox",
            "is_active": true,
            "is_live": false,
            "is_sandbox": true,
            "api_key": "kk-api-key-create",
            "version": 1,
            "created_at": now,
            "updated_at": now,
        })
    );
}

#[tokio::test]
async fn create_without_an_environment_defaults_to_sandbox() {
    let app = spawn_app().await;
    let alice = app.user().await;

    let res = app
        .post(
            "/payments/credentials/",
            &alice.access,
            &json!({
                "provider": "jpay",
                "api_key": "jpay-api-key",
                "private_key": "jpay_canary_default_env_51c2",
            }),
        )
        .await;

    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["environment"], "sandbox");
    assert_eq!(created["is_sandbox"], true);
    assert_eq!(created["is_live"], false);
}

#[tokio::test]
async fn every_provider_has_its_display_name() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let expected = [
        ("kopokopo", "KopoKopo"),
        ("instasend", "InstaSend"),
        ("jpay", "JPay Africa"),
        ("mpesa", "M-Pesa Daraja"),
        ("pagamio", "Pagamio"),
    ];

    for (provider, display) in expected {
        let created = app
            .create_credential(
                &alice,
                provider,
                "live",
                &format!("{provider}_canary_display_0c4d"),
            )
            .await;

        assert_eq!(created["provider"], provider);
        assert_eq!(created["provider_display"], display, "{provider}");
        assert_eq!(created["is_live"], true);
        assert_eq!(created["is_sandbox"], false);
    }
}

#[tokio::test]
async fn create_then_list_shows_the_credential_without_key_material() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "kopokopo", "sandbox", "kk_secret_canary_0001")
        .await;

    let res = app.get("/payments/credentials/", &alice.access).await;

    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    assert!(!text.contains("kk_secret_canary_0001"), "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list, json!([created]));
    assert_credential_shape(&list[0]);
}

#[tokio::test]
async fn list_returns_every_credential_of_the_caller_and_none_of_another_owner() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let first = app
        .create_credential(&alice, "mpesa", "sandbox", "mpesa_canary_list_a1")
        .await;
    let second = app
        .create_credential(&alice, "pagamio", "live", "pagamio_canary_list_a2")
        .await;
    let bobs = app
        .create_credential(&bob, "mpesa", "sandbox", "mpesa_canary_list_b1")
        .await;

    let list = json_ok(app.get("/payments/credentials/", &alice.access).await).await;

    let items = list.as_array().expect("the list is an array");
    assert_eq!(items.len(), 2, "{list}");
    for item in items {
        assert_credential_shape(item);
    }
    let ids: BTreeSet<i64> = items.iter().map(id_of).collect();
    assert_eq!(ids, BTreeSet::from([id_of(&first), id_of(&second)]));
    assert!(!ids.contains(&id_of(&bobs)));
    let text = list.to_string();
    for canary in [
        "mpesa_canary_list_a1",
        "pagamio_canary_list_a2",
        "mpesa_canary_list_b1",
    ] {
        assert!(!text.contains(canary), "{text}");
    }
}

#[tokio::test]
async fn list_of_a_user_without_credentials_is_an_empty_array() {
    let app = spawn_app().await;
    let alice = app.user().await;

    let list = json_ok(app.get("/payments/credentials/", &alice.access).await).await;

    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn get_one_returns_the_credential_metadata() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(
            &alice,
            "instasend",
            "sandbox",
            "ISSecretKey_test_canary_get1",
        )
        .await;

    let res = app.get(&path(id_of(&created), ""), &alice.access).await;

    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    assert!(!text.contains("ISSecretKey_test_canary_get1"), "{text}");
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_credential_shape(&got);
    assert_eq!(got, created);
    assert_eq!(got["provider_display"], "InstaSend");
}

#[tokio::test]
async fn put_changes_the_api_key_and_nothing_else() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "kopokopo", "sandbox", "kk_canary_put_api_9b1e")
        .await;
    let id = id_of(&created);
    app.clock.advance(60);

    let res = app
        .put(
            &path(id, ""),
            &alice.access,
            &json!({ "api_key": "kk-new-api-key" }),
        )
        .await;

    let updated = json_ok(res).await;
    assert_credential_shape(&updated);
    let mut expected = created.clone();
    expected["api_key"] = json!("kk-new-api-key");
    expected["updated_at"] = json!(rfc3339(app.clock.now()));
    assert_eq!(updated, expected);
    let got = json_ok(app.get(&path(id, ""), &alice.access).await).await;
    assert_eq!(got, updated);
    assert_eq!(
        revealed_key(&app, &alice, id).await,
        "kk_canary_put_api_9b1e"
    );
}

#[tokio::test]
async fn put_changes_the_environment_and_keeps_the_private_key() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "mpesa", "sandbox", "mpesa_canary_put_env_44d0")
        .await;
    let id = id_of(&created);

    let res = app
        .put(
            &path(id, ""),
            &alice.access,
            &json!({ "environment": "live" }),
        )
        .await;

    let updated = json_ok(res).await;
    assert_credential_shape(&updated);
    assert_eq!(updated["id"], id);
    assert_eq!(updated["environment"], "live");
    assert_eq!(updated["is_live"], true);
    assert_eq!(updated["is_sandbox"], false);
    assert_eq!(updated["api_key"], created["api_key"]);
    assert!(!updated.to_string().contains("mpesa_canary_put_env_44d0"));
    let got = json_ok(app.get(&path(id, ""), &alice.access).await).await;
    assert_eq!(got, updated);
    assert_eq!(
        revealed_key(&app, &alice, id).await,
        "mpesa_canary_put_env_44d0"
    );
}

#[tokio::test]
async fn delete_answers_the_providers_deleted_message() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "kopokopo", "sandbox", "kk_canary_delete_3e8f")
        .await;

    let res = app.delete(&path(id_of(&created), ""), &alice.access).await;

    let body = json_ok(res).await;
    assert_eq!(
        body,
        json!({ "message": "Payment credentials for KopoKopo have been successfully deleted" })
    );
    let list = json_ok(app.get("/payments/credentials/", &alice.access).await).await;
    assert_eq!(list, json!([]));
}

async fn assert_rotation_installs_the_new_key(action: &str) {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "pagamio", "sandbox", "pagamio_canary_old_key_1a")
        .await;
    let id = id_of(&created);

    let res = app
        .post(
            &path(id, action),
            &alice.access,
            &json!({ "private_key": "pagamio_canary_new_key_2b" }),
        )
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    assert!(!text.contains("pagamio_canary_new_key_2b"), "{text}");
    assert!(!text.contains("pagamio_canary_old_key_1a"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(keys_of(&body), set_of(&["message", "credentials"]));
    assert_eq!(body["message"], "Private key updated successfully");
    assert_credential_shape(&body["credentials"]);
    assert_eq!(body["credentials"]["id"], id);
    assert_eq!(body["credentials"]["version"], 2);
    assert_eq!(body["credentials"]["provider"], "pagamio");
    assert_eq!(
        revealed_key(&app, &alice, id).await,
        "pagamio_canary_new_key_2b"
    );
    let got = json_ok(app.get(&path(id, ""), &alice.access).await).await;
    assert_eq!(got["version"], 2);
}

#[tokio::test]
async fn update_private_key_installs_the_new_key_as_the_next_version() {
    assert_rotation_installs_the_new_key("update-private-key").await;
}

#[tokio::test]
async fn rotate_installs_the_new_key_as_the_next_version() {
    assert_rotation_installs_the_new_key("rotate").await;
}

#[tokio::test]
async fn get_private_key_reveals_the_key_with_no_store() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "jpay", "live", "jpay_canary_reveal_6d2c")
        .await;
    let id = id_of(&created);

    let res = app.get(&path(id, "get-private-key"), &alice.access).await;

    assert_eq!(res.status(), StatusCode::OK);
    let cache_control: Vec<_> = res.headers().get_all("cache-control").iter().collect();
    assert_eq!(cache_control, ["no-store"]);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "credentials_id": id,
            "provider": "jpay",
            "provider_display": "JPay Africa",
            "private_key": "jpay_canary_reveal_6d2c",
            "message": "Private key retrieved successfully",
        })
    );
}

#[tokio::test]
async fn verify_accepts_the_stored_key() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "mpesa", "live", "mpesa_canary_verify_ok_81")
        .await;
    let id = id_of(&created);

    let res = app
        .post(
            &path(id, "verify"),
            &alice.access,
            &json!({ "private_key": "mpesa_canary_verify_ok_81" }),
        )
        .await;

    let body = json_ok(res).await;
    assert_eq!(
        body,
        json!({
            "credentials_id": id,
            "provider": "mpesa",
            "provider_display": "M-Pesa Daraja",
            "is_valid": true,
            "message": "Credentials verified successfully",
        })
    );
}

#[tokio::test]
async fn verify_rejects_a_wrong_key() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "mpesa", "live", "mpesa_canary_verify_no_82")
        .await;
    let id = id_of(&created);

    let res = app
        .post(
            &path(id, "verify"),
            &alice.access,
            &json!({ "private_key": "mpesa_canary_verify_no_83" }),
        )
        .await;

    let body = json_ok(res).await;
    assert_eq!(
        body,
        json!({
            "credentials_id": id,
            "provider": "mpesa",
            "provider_display": "M-Pesa Daraja",
            "is_valid": false,
            "message": "Invalid private key",
        })
    );
}

#[tokio::test]
async fn verify_after_rotation_accepts_only_the_new_key() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let id = id_of(
        &app.create_credential(&alice, "kopokopo", "live", "kk_canary_verify_old_90")
            .await,
    );
    json_ok(
        app.post(
            &path(id, "rotate"),
            &alice.access,
            &json!({ "private_key": "kk_canary_verify_new_91" }),
        )
        .await,
    )
    .await;

    let old = json_ok(
        app.post(
            &path(id, "verify"),
            &alice.access,
            &json!({ "private_key": "kk_canary_verify_old_90" }),
        )
        .await,
    )
    .await;
    let new = json_ok(
        app.post(
            &path(id, "verify"),
            &alice.access,
            &json!({ "private_key": "kk_canary_verify_new_91" }),
        )
        .await,
    )
    .await;

    assert_eq!(old["is_valid"], false);
    assert_eq!(new["is_valid"], true);
}

#[tokio::test]
async fn toggle_status_deactivates_and_the_credential_is_still_listed() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "kopokopo", "sandbox", "kk_canary_toggle_off_5a")
        .await;
    let id = id_of(&created);

    let res = app
        .post_empty(&path(id, "toggle-status"), &alice.access)
        .await;

    let body = json_ok(res).await;
    assert_eq!(keys_of(&body), set_of(&["message", "credentials"]));
    assert_eq!(
        body["message"],
        "Payment credentials for KopoKopo have been deactivated"
    );
    assert_credential_shape(&body["credentials"]);
    assert_eq!(body["credentials"]["id"], id);
    assert_eq!(body["credentials"]["is_active"], false);
    let list = json_ok(app.get("/payments/credentials/", &alice.access).await).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["is_active"], false);
}

#[tokio::test]
async fn toggle_status_twice_reactivates_the_credential() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "instasend", "live", "ISSecretKey_live_canary_tg")
        .await;
    let id = id_of(&created);
    json_ok(
        app.post_empty(&path(id, "toggle-status"), &alice.access)
            .await,
    )
    .await;

    let res = app
        .post_empty(&path(id, "toggle-status"), &alice.access)
        .await;

    let body = json_ok(res).await;
    assert_eq!(
        body["message"],
        "Payment credentials for InstaSend have been activated"
    );
    assert_eq!(body["credentials"]["is_active"], true);
    let got = json_ok(app.get(&path(id, ""), &alice.access).await).await;
    assert_eq!(got["is_active"], true);
}

#[tokio::test]
async fn provider_lookup_returns_the_only_credential_for_that_provider() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "mpesa", "sandbox", "mpesa_canary_lookup_one")
        .await;
    app.create_credential(&alice, "kopokopo", "sandbox", "kk_canary_lookup_other")
        .await;

    let res = app
        .get("/payments/credentials/provider/mpesa/", &alice.access)
        .await;

    let got = json_ok(res).await;
    assert_credential_shape(&got);
    assert_eq!(got, created);
}

#[tokio::test]
async fn provider_lookup_selects_by_environment_when_both_exist() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let sandbox = app
        .create_credential(&alice, "mpesa", "sandbox", "mpesa_canary_lookup_sbx")
        .await;
    let live = app
        .create_credential(&alice, "mpesa", "live", "mpesa_canary_lookup_live")
        .await;

    let got_live = json_ok(
        app.get(
            "/payments/credentials/provider/mpesa/?environment=live",
            &alice.access,
        )
        .await,
    )
    .await;
    let got_sandbox = json_ok(
        app.get(
            "/payments/credentials/provider/mpesa/?environment=sandbox",
            &alice.access,
        )
        .await,
    )
    .await;

    assert_eq!(got_live, live);
    assert_eq!(got_sandbox, sandbox);
}

#[tokio::test]
async fn provider_lookup_without_environment_when_both_exist_is_a_400() {
    let app = spawn_app().await;
    let alice = app.user().await;
    app.create_credential(&alice, "mpesa", "sandbox", "mpesa_canary_ambig_sbx")
        .await;
    app.create_credential(&alice, "mpesa", "live", "mpesa_canary_ambig_live")
        .await;

    let res = app
        .get("/payments/credentials/provider/mpesa/", &alice.access)
        .await;

    assert_error(
        res,
        StatusCode::BAD_REQUEST,
        "Both sandbox and live credentials exist for M-Pesa Daraja; choose one with ?environment=",
    )
    .await;
}

#[tokio::test]
async fn provider_lookup_for_a_provider_without_credentials_is_a_404() {
    let app = spawn_app().await;
    let alice = app.user().await;
    app.create_credential(&alice, "mpesa", "sandbox", "mpesa_canary_lookup_none")
        .await;

    let missing_provider = app
        .get("/payments/credentials/provider/pagamio/", &alice.access)
        .await;
    let missing_environment = app
        .get(
            "/payments/credentials/provider/mpesa/?environment=live",
            &alice.access,
        )
        .await;

    assert_error(missing_provider, StatusCode::NOT_FOUND, NOT_FOUND).await;
    assert_error(missing_environment, StatusCode::NOT_FOUND, NOT_FOUND).await;
}

// ---------------------------------------------------------------------------------------
// Another owner's credential answers exactly like a missing one, and stays as it was.

#[tokio::test]
async fn get_of_another_owners_credential_answers_like_a_missing_one() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let bobs = app
        .create_credential(&bob, "kopokopo", "sandbox", "kk_canary_iso_get_b0b")
        .await;
    let missing = missing_id(&app);

    let other = app.get(&path(id_of(&bobs), ""), &alice.access).await;
    let absent = app.get(&path(missing, ""), &alice.access).await;

    assert_same_not_found(other, absent).await;
    let still = json_ok(app.get(&path(id_of(&bobs), ""), &bob.access).await).await;
    assert_eq!(still, bobs);
}

#[tokio::test]
async fn put_of_another_owners_credential_answers_like_a_missing_one() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let bobs = app
        .create_credential(&bob, "kopokopo", "sandbox", "kk_canary_iso_put_b0b")
        .await;
    let missing = missing_id(&app);
    let body = json!({ "api_key": "hijacked-api-key", "environment": "live" });
    app.clock.advance(60);

    let other = app.put(&path(id_of(&bobs), ""), &alice.access, &body).await;
    let absent = app.put(&path(missing, ""), &alice.access, &body).await;

    assert_same_not_found(other, absent).await;
    let still = json_ok(app.get(&path(id_of(&bobs), ""), &bob.access).await).await;
    assert_eq!(still, bobs);
    assert_eq!(
        revealed_key(&app, &bob, id_of(&bobs)).await,
        "kk_canary_iso_put_b0b"
    );
}

#[tokio::test]
async fn delete_of_another_owners_credential_answers_like_a_missing_one() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let bobs = app
        .create_credential(&bob, "kopokopo", "sandbox", "kk_canary_iso_del_b0b")
        .await;
    let id = id_of(&bobs);
    let missing = missing_id(&app);

    let other = app.delete(&path(id, ""), &alice.access).await;
    let absent = app.delete(&path(missing, ""), &alice.access).await;

    assert_same_not_found(other, absent).await;
    let still = json_ok(app.get(&path(id, ""), &bob.access).await).await;
    assert_eq!(still, bobs);
    assert_eq!(revealed_key(&app, &bob, id).await, "kk_canary_iso_del_b0b");
    assert_eq!(version_rows(&app, id), "1");
}

async fn assert_rotation_of_another_owners_credential_answers_like_a_missing_one(action: &str) {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let bobs = app
        .create_credential(&bob, "pagamio", "live", "pagamio_canary_iso_rot_b0b")
        .await;
    let id = id_of(&bobs);
    let missing = missing_id(&app);
    let body = json!({ "private_key": "pagamio_canary_iso_rot_alice" });

    let other = app.post(&path(id, action), &alice.access, &body).await;
    let absent = app.post(&path(missing, action), &alice.access, &body).await;

    assert_same_not_found(other, absent).await;
    let still = json_ok(app.get(&path(id, ""), &bob.access).await).await;
    assert_eq!(still, bobs);
    assert_eq!(still["version"], 1);
    assert_eq!(version_rows(&app, id), "1");
    assert_eq!(
        revealed_key(&app, &bob, id).await,
        "pagamio_canary_iso_rot_b0b"
    );
}

#[tokio::test]
async fn update_private_key_of_another_owners_credential_answers_like_a_missing_one() {
    assert_rotation_of_another_owners_credential_answers_like_a_missing_one("update-private-key")
        .await;
}

#[tokio::test]
async fn rotate_of_another_owners_credential_answers_like_a_missing_one() {
    assert_rotation_of_another_owners_credential_answers_like_a_missing_one("rotate").await;
}

#[tokio::test]
async fn get_private_key_of_another_owners_credential_answers_like_a_missing_one() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let bobs = app
        .create_credential(&bob, "jpay", "sandbox", "jpay_canary_iso_reveal_b0b")
        .await;
    let id = id_of(&bobs);
    let missing = missing_id(&app);

    let other = app.get(&path(id, "get-private-key"), &alice.access).await;
    let absent = app
        .get(&path(missing, "get-private-key"), &alice.access)
        .await;

    let (status, bytes) = status_and_bytes(other).await;
    assert!(
        !String::from_utf8_lossy(&bytes).contains("jpay_canary_iso_reveal_b0b"),
        "the other owner's key leaked"
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (absent_status, absent_bytes) = status_and_bytes(absent).await;
    assert_eq!(absent_status, StatusCode::NOT_FOUND);
    assert_eq!(bytes, absent_bytes);
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap(),
        json!({ "error": NOT_FOUND })
    );
    assert_eq!(
        revealed_key(&app, &bob, id).await,
        "jpay_canary_iso_reveal_b0b"
    );
}

#[tokio::test]
async fn verify_of_another_owners_credential_answers_like_a_missing_one() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let bobs = app
        .create_credential(&bob, "mpesa", "sandbox", "mpesa_canary_iso_verify_b0b")
        .await;
    let id = id_of(&bobs);
    let missing = missing_id(&app);
    // The right key: even a correct guess must not tell another owner the id exists.
    let body = json!({ "private_key": "mpesa_canary_iso_verify_b0b" });

    let other = app.post(&path(id, "verify"), &alice.access, &body).await;
    let absent = app
        .post(&path(missing, "verify"), &alice.access, &body)
        .await;

    assert_same_not_found(other, absent).await;
    let still = json_ok(app.get(&path(id, ""), &bob.access).await).await;
    assert_eq!(still, bobs);
}

#[tokio::test]
async fn toggle_status_of_another_owners_credential_answers_like_a_missing_one() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let bobs = app
        .create_credential(&bob, "kopokopo", "live", "kk_canary_iso_toggle_b0b")
        .await;
    let id = id_of(&bobs);
    let missing = missing_id(&app);
    app.clock.advance(60);

    let other = app
        .post_empty(&path(id, "toggle-status"), &alice.access)
        .await;
    let absent = app
        .post_empty(&path(missing, "toggle-status"), &alice.access)
        .await;

    assert_same_not_found(other, absent).await;
    let still = json_ok(app.get(&path(id, ""), &bob.access).await).await;
    assert_eq!(still, bobs);
    assert_eq!(still["is_active"], true);
}

#[tokio::test]
async fn provider_lookup_of_another_owners_provider_answers_like_a_missing_one() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let bobs = app
        .create_credential(&bob, "mpesa", "sandbox", "mpesa_canary_iso_lookup_b0b")
        .await;

    // Alice has no mpesa credential (Bob does) and nobody has a pagamio one.
    let other = app
        .get("/payments/credentials/provider/mpesa/", &alice.access)
        .await;
    let absent = app
        .get("/payments/credentials/provider/pagamio/", &alice.access)
        .await;
    let other_env = app
        .get(
            "/payments/credentials/provider/mpesa/?environment=sandbox",
            &alice.access,
        )
        .await;
    let absent_env = app
        .get(
            "/payments/credentials/provider/pagamio/?environment=sandbox",
            &alice.access,
        )
        .await;

    assert_same_not_found(other, absent).await;
    assert_same_not_found(other_env, absent_env).await;
    let still = json_ok(
        app.get("/payments/credentials/provider/mpesa/", &bob.access)
            .await,
    )
    .await;
    assert_eq!(still, bobs);
}

// ---------------------------------------------------------------------------------------
// Rules

#[tokio::test]
async fn a_second_credential_for_the_same_provider_and_environment_is_a_409() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let first = app
        .create_credential(&alice, "kopokopo", "sandbox", "kk_canary_dup_first_01")
        .await;

    let res = app
        .post(
            "/payments/credentials/",
            &alice.access,
            &json!({
                "provider": "kopokopo",
                "api_key": "kk-api-key-dup",
                "private_key": "kk_canary_dup_second_02",
                "environment": "sandbox",
            }),
        )
        .await;

    assert_error(
        res,
        StatusCode::CONFLICT,
        "Payment credentials for KopoKopo (sandbox) already exist",
    )
    .await;
    let list = json_ok(app.get("/payments/credentials/", &alice.access).await).await;
    assert_eq!(list, json!([first]));
    assert_eq!(
        revealed_key(&app, &alice, id_of(&first)).await,
        "kk_canary_dup_first_01"
    );
}

#[tokio::test]
async fn the_same_provider_in_the_other_environment_is_allowed() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let sandbox = app
        .create_credential(&alice, "kopokopo", "sandbox", "kk_canary_env_sbx_11")
        .await;

    let live = app
        .create_credential(&alice, "kopokopo", "live", "kk_canary_env_live_12")
        .await;

    assert_ne!(sandbox["id"], live["id"]);
    let list = json_ok(app.get("/payments/credentials/", &alice.access).await).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test]
async fn another_owner_may_hold_the_same_provider_and_environment() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let alices = app
        .create_credential(&alice, "kopokopo", "sandbox", "kk_canary_two_owners_a")
        .await;

    let bobs = app
        .create_credential(&bob, "kopokopo", "sandbox", "kk_canary_two_owners_b")
        .await;

    assert_ne!(alices["id"], bobs["id"]);
    assert_eq!(
        revealed_key(&app, &alice, id_of(&alices)).await,
        "kk_canary_two_owners_a"
    );
    assert_eq!(
        revealed_key(&app, &bob, id_of(&bobs)).await,
        "kk_canary_two_owners_b"
    );
}

#[tokio::test]
async fn an_intasend_test_key_for_a_live_credential_is_a_400() {
    let app = spawn_app().await;
    let alice = app.user().await;

    let res = app
        .post(
            "/payments/credentials/",
            &alice.access,
            &json!({
                "provider": "instasend",
                "api_key": "is-api-key",
                "private_key": "ISSecretKey_test_canary_mismatch_1",
                "environment": "live",
            }),
        )
        .await;

    assert_error(
        res,
        StatusCode::BAD_REQUEST,
        "This InstaSend key is a sandbox key but the credential environment is live",
    )
    .await;
    let list = json_ok(app.get("/payments/credentials/", &alice.access).await).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn an_intasend_live_key_for_a_sandbox_credential_is_a_400() {
    let app = spawn_app().await;
    let alice = app.user().await;

    let res = app
        .post(
            "/payments/credentials/",
            &alice.access,
            &json!({
                "provider": "instasend",
                "api_key": "is-api-key",
                "private_key": "ISSecretKey_live_canary_mismatch_2",
                "environment": "sandbox",
            }),
        )
        .await;

    assert_error(
        res,
        StatusCode::BAD_REQUEST,
        "This InstaSend key is a live key but the credential environment is sandbox",
    )
    .await;
    let list = json_ok(app.get("/payments/credentials/", &alice.access).await).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn rotation_keeps_every_earlier_version() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let id = id_of(
        &app.create_credential(&alice, "jpay", "sandbox", "jpay_canary_hist_v1")
            .await,
    );
    assert_eq!(version_rows(&app, id), "1");

    for (n, key) in [(2, "jpay_canary_hist_v2"), (3, "jpay_canary_hist_v3")] {
        let body = json_ok(
            app.post(
                &path(id, "rotate"),
                &alice.access,
                &json!({ "private_key": key }),
            )
            .await,
        )
        .await;
        assert_eq!(body["credentials"]["version"], n);
    }

    assert_eq!(version_rows(&app, id), "3");
    assert_eq!(
        app.sql_lines(&format!(
            "SELECT CAST(version AS TEXT) AS line FROM credential_versions \
             WHERE credential_id = {id} ORDER BY version"
        )),
        ["1", "2", "3"]
    );
    assert_eq!(revealed_key(&app, &alice, id).await, "jpay_canary_hist_v3");
}

#[tokio::test]
async fn delete_shreds_every_version_and_leaves_a_tombstone() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let id = id_of(
        &app.create_credential(&alice, "kopokopo", "live", "kk_canary_shred_v1")
            .await,
    );
    json_ok(
        app.post(
            &path(id, "rotate"),
            &alice.access,
            &json!({ "private_key": "kk_canary_shred_v2" }),
        )
        .await,
    )
    .await;
    assert_eq!(version_rows(&app, id), "2");

    json_ok(app.delete(&path(id, ""), &alice.access).await).await;

    assert_eq!(version_rows(&app, id), "0");
    assert_eq!(
        app.sql_lines(&format!(
            "SELECT CAST(COUNT(*) AS TEXT) AS line FROM credentials \
             WHERE id = {id} AND deleted_at IS NOT NULL"
        )),
        ["1"]
    );
}

/// The stored envelope parts of every version of credential `id`, as bytes (SQLite's `hex`).
fn stored_envelopes(app: &TestApp, id: i64) -> Vec<(&'static str, Vec<u8>)> {
    let column = |name: &'static str| {
        app.sql_lines(&format!(
            "SELECT hex({name}) AS line FROM credential_versions \
             WHERE credential_id = {id} ORDER BY version"
        ))
        .into_iter()
        .map(move |h| (name, hex::decode(h).unwrap()))
    };
    column("wrapped_dek").chain(column("ciphertext")).collect()
}

fn occurs(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn delete_leaves_no_wrapped_data_key_or_ciphertext_in_the_sqlite_file_or_its_wal() {
    if backend() != Backend::Sqlite {
        return; // the raw file and its WAL are SQLite's; PostgreSQL's copies are in the README
    }
    let app = spawn_app().await;
    let alice = app.user().await;
    let id = id_of(
        &app.create_credential(&alice, "kopokopo", "live", "kk_canary_wal_v1")
            .await,
    );
    json_ok(
        app.post(
            &path(id, "rotate"),
            &alice.access,
            &json!({ "private_key": "kk_canary_wal_v2" }),
        )
        .await,
    )
    .await;
    let envelopes = stored_envelopes(&app, id);
    assert_eq!(
        envelopes.len(),
        4,
        "two versions, each a wrapped key and a ciphertext"
    );
    let before = app.stored_bytes();
    for (column, bytes) in &envelopes {
        assert!(bytes.len() >= 32, "{column} is too short to search for");
        assert!(
            occurs(&before, bytes),
            "the scan sees {column} before the delete"
        );
    }

    json_ok(app.delete(&path(id, ""), &alice.access).await).await;

    let after = app.stored_bytes();
    for (column, bytes) in &envelopes {
        assert!(
            !occurs(&after, bytes),
            "a deleted credential's {column} is still in the database file or its WAL"
        );
    }
}

#[tokio::test]
async fn a_deleted_credential_answers_404_to_get_and_reveal() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let id = id_of(
        &app.create_credential(&alice, "mpesa", "live", "mpesa_canary_deleted_404")
            .await,
    );
    json_ok(app.delete(&path(id, ""), &alice.access).await).await;

    let reveal = app.get(&path(id, "get-private-key"), &alice.access).await;
    let get = app.get(&path(id, ""), &alice.access).await;
    let again = app.delete(&path(id, ""), &alice.access).await;

    assert_error(reveal, StatusCode::NOT_FOUND, NOT_FOUND).await;
    assert_error(get, StatusCode::NOT_FOUND, NOT_FOUND).await;
    assert_error(again, StatusCode::NOT_FOUND, NOT_FOUND).await;
}

#[tokio::test]
async fn after_delete_the_same_provider_and_environment_can_be_created_again() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let old = id_of(
        &app.create_credential(&alice, "pagamio", "sandbox", "pagamio_canary_recreate_1")
            .await,
    );
    json_ok(app.delete(&path(old, ""), &alice.access).await).await;

    let created = app
        .create_credential(&alice, "pagamio", "sandbox", "pagamio_canary_recreate_2")
        .await;

    let new = id_of(&created);
    assert_ne!(new, old);
    assert_eq!(created["version"], 1);
    assert_eq!(
        revealed_key(&app, &alice, new).await,
        "pagamio_canary_recreate_2"
    );
    let list = json_ok(app.get("/payments/credentials/", &alice.access).await).await;
    assert_eq!(list, json!([created]));
}

// ---------------------------------------------------------------------------------------
// Who may call

#[tokio::test]
async fn every_credentials_endpoint_refuses_a_request_without_a_token() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let id = id_of(
        &app.create_credential(&alice, "kopokopo", "sandbox", "kk_canary_no_token_01")
            .await,
    );
    let create_body = json!({
        "provider": "mpesa",
        "api_key": "mpesa-api-key",
        "private_key": "mpesa_canary_no_token_02",
        "environment": "sandbox",
    });
    let key_body = json!({ "private_key": "kk_canary_no_token_03" });
    let cases: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (reqwest::Method::GET, "/payments/credentials/".into(), None),
        (
            reqwest::Method::POST,
            "/payments/credentials/".into(),
            Some(create_body),
        ),
        (
            reqwest::Method::GET,
            "/payments/credentials/provider/kopokopo/".into(),
            None,
        ),
        (reqwest::Method::GET, path(id, ""), None),
        (
            reqwest::Method::PUT,
            path(id, ""),
            Some(json!({ "api_key": "no-token-api-key" })),
        ),
        (reqwest::Method::DELETE, path(id, ""), None),
        (
            reqwest::Method::POST,
            path(id, "update-private-key"),
            Some(key_body.clone()),
        ),
        (
            reqwest::Method::POST,
            path(id, "rotate"),
            Some(key_body.clone()),
        ),
        (reqwest::Method::GET, path(id, "get-private-key"), None),
        (reqwest::Method::POST, path(id, "verify"), Some(key_body)),
        (reqwest::Method::POST, path(id, "toggle-status"), None),
    ];

    for (method, target, body) in cases {
        let mut req = app.client.request(method.clone(), app.url(&target));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();

        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method} {target}");
        let text = res.text().await.unwrap();
        assert!(!text.contains("kk_canary_no_token_01"), "{method} {target}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"], AUTH_FAILED, "{method} {target}");
    }
    let still = json_ok(app.get(&path(id, ""), &alice.access).await).await;
    assert_eq!(still["version"], 1);
    assert_eq!(still["is_active"], true);
    assert_eq!(still["api_key"], "api-kopokopo-sandbox");
    let list = json_ok(app.get("/payments/credentials/", &alice.access).await).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn an_auditor_may_not_list_credentials() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;

    let res = app.get("/payments/credentials/", &auditor.access).await;

    assert_error(res, StatusCode::FORBIDDEN, AUDITOR_FORBIDDEN).await;
}

#[tokio::test]
async fn an_auditor_may_not_create_a_credential() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;

    let res = app
        .post(
            "/payments/credentials/",
            &auditor.access,
            &json!({
                "provider": "kopokopo",
                "api_key": "kk-api-key-auditor",
                "private_key": "kk_canary_auditor_create",
                "environment": "sandbox",
            }),
        )
        .await;

    assert_error(res, StatusCode::FORBIDDEN, AUDITOR_FORBIDDEN).await;
    assert_eq!(
        app.sql_lines("SELECT CAST(COUNT(*) AS TEXT) AS line FROM credentials"),
        ["0"]
    );
}

#[tokio::test]
async fn an_auditor_may_not_reveal_a_private_key() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let id = id_of(
        &app.create_credential(&alice, "mpesa", "live", "mpesa_canary_auditor_reveal")
            .await,
    );

    let res = app.get(&path(id, "get-private-key"), &auditor.access).await;

    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let text = res.text().await.unwrap();
    assert!(!text.contains("mpesa_canary_auditor_reveal"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body, json!({ "error": AUDITOR_FORBIDDEN }));
}
