//! Secrets at rest and in logs, the envelope's binding to its row, and what errors and
//! headers give away.

use reqwest::{Method, Response, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use hazina::auth::password;
use hazina::domain::Role;

use crate::helpers::*;

const INTERNAL_ERROR_BODY: &str = r#"{"error":"Internal server error"}"#;

fn canary(label: &str) -> String {
    format!("canary-{label}-{}", uuid::Uuid::new_v4().simple())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts `secret` is nowhere in `haystack`: neither as text nor hex-encoded (either case).
fn assert_absent(haystack: &[u8], secret: &str, place: &str) {
    let hex_lower = hex::encode(secret.as_bytes());
    let hex_upper = hex_lower.to_uppercase();
    for needle in [secret, hex_lower.as_str(), hex_upper.as_str()] {
        assert!(
            !contains(haystack, needle.as_bytes()),
            "{place} holds {needle:.24}…"
        );
    }
}

fn versions_path(id: i64, action: &str) -> String {
    format!("/payments/credentials/{id}/{action}/")
}

async fn reveal(app: &TestApp, user: &TestUser, id: i64) -> Response {
    app.get(&versions_path(id, "get-private-key"), &user.access)
        .await
}

async fn revealed_key(app: &TestApp, user: &TestUser, id: i64) -> String {
    let res = reveal(app, user, id).await;
    assert_eq!(res.status(), StatusCode::OK, "reveal");
    let body: Value = res.json().await.unwrap();
    body["private_key"].as_str().unwrap().to_owned()
}

async fn verify(app: &TestApp, user: &TestUser, id: i64, candidate: &str) -> Response {
    app.post(
        &versions_path(id, "verify"),
        &user.access,
        &json!({ "private_key": candidate }),
    )
    .await
}

async fn rotate(app: &TestApp, user: &TestUser, id: i64, key: &str) {
    let res = app
        .post(
            &versions_path(id, "rotate"),
            &user.access,
            &json!({ "private_key": key }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK, "rotate");
}

async fn create(app: &TestApp, user: &TestUser, provider: &str, key: &str) -> i64 {
    app.create_credential(user, provider, "sandbox", key).await["id"]
        .as_i64()
        .unwrap()
}

/// Copies the sealed blob of `(from, from_version)` over `(to, to_version)` with raw SQL.
fn paste_envelope(app: &TestApp, from: i64, from_version: i32, to: i64, to_version: i32) {
    let source = |column: &str| {
        format!(
            "(SELECT {column} FROM credential_versions \
             WHERE credential_id = {from} AND version = {from_version})"
        )
    };
    let touched = app.sql_execute(&format!(
        "UPDATE credential_versions SET wrapped_dek = {}, ciphertext = {}, verifier = {}, \
         kek_version = {} WHERE credential_id = {to} AND version = {to_version}",
        source("wrapped_dek"),
        source("ciphertext"),
        source("verifier"),
        source("kek_version"),
    ));
    assert_eq!(touched, 1, "one version row was overwritten");
}

/// The stored verifier of `(id, version)`, as lowercase hex.
fn stored_verifier(app: &TestApp, id: i64, version: i32) -> String {
    let hex = match backend() {
        Backend::Sqlite => "hex(verifier)",
        Backend::Postgres => "encode(verifier, 'hex')",
    };
    let lines = app.sql_lines(&format!(
        "SELECT {hex} AS line FROM credential_versions \
         WHERE credential_id = {id} AND version = {version}"
    ));
    assert_eq!(lines.len(), 1);
    lines[0].to_lowercase()
}

/// A one-byte blob literal of the running backend.
fn short_blob() -> &'static str {
    match backend() {
        Backend::Sqlite => "X'00'",
        Backend::Postgres => "decode('00', 'hex')",
    }
}

/// Asserts a tampered reveal failed and gave neither key away.
async fn assert_reveal_fails_without_leaking(res: Response, keys: &[&str]) {
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(
        !status.is_success(),
        "a pasted blob opened: {status} {text}"
    );
    for key in keys {
        assert!(!text.contains(key), "the body holds a key: {text}");
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(body["error"].is_string(), "{text}");
}

/// Asserts a verify of a tampered row did not confirm `candidate`.
async fn assert_not_verified(res: Response, candidate: &str) {
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(!text.contains(candidate), "{text}");
    if status.is_success() {
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["is_valid"], false, "a pasted blob verified: {text}");
    }
}

/// Asserts the response is the generic 500: exactly `{"error":"Internal server error"}`.
async fn assert_generic_500(res: Response, what: &str) {
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "{what}");
    assert!(
        res.headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/json")),
        "{what}: 5xx bodies are JSON"
    );
    let text = res.text().await.unwrap();
    assert_eq!(text, INTERNAL_ERROR_BODY, "{what}");
}

// ---------------------------------------------------------------------------------------
// Secrets at rest and in logs

#[tokio::test]
async fn a_private_key_is_never_stored_or_logged_in_the_clear() {
    let app = spawn_app().await;
    let user = app.user().await;
    let first = canary("first");
    let second = canary("second");

    let id = create(&app, &user, "kopokopo", &first).await;
    assert_eq!(revealed_key(&app, &user, id).await, first);
    assert_eq!(
        verify(&app, &user, id, &first).await.status(),
        StatusCode::OK
    );
    rotate(&app, &user, id, &second).await;
    assert_eq!(revealed_key(&app, &user, id).await, second);
    let res = verify(&app, &user, id, &second).await;
    let verified: Value = res.json().await.unwrap();
    assert_eq!(verified["is_valid"], true);
    let res = verify(&app, &user, id, &first).await;
    let verified: Value = res.json().await.unwrap();
    assert_eq!(verified["is_valid"], false);

    let stored = app.stored_bytes();
    assert!(
        contains(&stored, b"kopokopo"),
        "stored_bytes sees the rows at all"
    );
    let logs = captured_logs();
    for key in [&first, &second] {
        assert_absent(&stored, key, "the database");
        assert_absent(&logs, key, "the logs");
    }
}

#[tokio::test]
async fn passwords_and_tokens_never_appear_in_the_logs() {
    let app = spawn_app().await;
    let username = format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let secret_password = canary("password");
    let wrong_password = canary("wrong-password");
    let hash = password::hash(&SecretString::from(secret_password.clone())).unwrap();
    app.insert_user_with_hash(&username, &hash, Role::User);

    let failed = app.login(&username, &wrong_password).await;
    assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
    let res = app.login(&username, &secret_password).await;
    assert_eq!(res.status(), StatusCode::OK);
    let first: Value = res.json().await.unwrap();
    let access = first["access_token"].as_str().unwrap().to_owned();
    let refresh = first["refresh_token"].as_str().unwrap().to_owned();
    let listed = app.get("/payments/credentials/", &access).await;
    assert_eq!(listed.status(), StatusCode::OK);
    let res = app
        .client
        .post(app.url("/users/token/refresh/"))
        .json(&json!({ "refresh_token": refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let second: Value = res.json().await.unwrap();
    let new_access = second["access_token"].as_str().unwrap().to_owned();
    let new_refresh = second["refresh_token"].as_str().unwrap().to_owned();
    let reused = app
        .client
        .post(app.url("/users/token/refresh/"))
        .json(&json!({ "refresh_token": refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        reused.status(),
        StatusCode::UNAUTHORIZED,
        "a spent refresh token"
    );
    let after_reuse = app.post_empty("/users/logout/", &new_access).await;
    assert_eq!(after_reuse.status(), StatusCode::UNAUTHORIZED);

    let logs = captured_logs();
    assert!(contains(&logs, b"request"), "the logs were captured at all");
    assert_absent(&logs, &secret_password, "the logs");
    assert_absent(&logs, &wrong_password, "the logs");
    for token in [&access, &refresh, &new_access, &new_refresh] {
        assert_absent(&logs, token, "the logs");
        let signature = token.rsplit('.').next().unwrap();
        assert_absent(&logs, signature, "the logs");
    }
}

#[tokio::test]
async fn passwords_and_tokens_are_not_stored_at_rest() {
    let app = spawn_app().await;
    let user = app.user().await;
    let res = app
        .client
        .post(app.url("/users/token/refresh/"))
        .json(&json!({ "refresh_token": user.refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let pair: Value = res.json().await.unwrap();

    let stored = app.stored_bytes();
    assert!(
        contains(&stored, user.username.as_bytes()),
        "the user row is seen"
    );
    assert_absent(&stored, &user.password, "the database");
    for token in [
        user.access.as_str(),
        user.refresh.as_str(),
        pair["access_token"].as_str().unwrap(),
        pair["refresh_token"].as_str().unwrap(),
    ] {
        let signature = token.rsplit('.').next().unwrap();
        assert_absent(&stored, signature, "the database");
    }
}

// ---------------------------------------------------------------------------------------
// The envelope is bound to its row

#[tokio::test]
async fn a_blob_pasted_into_another_credential_of_the_same_owner_does_not_open() {
    let app = spawn_app().await;
    let user = app.user().await;
    let key_a = canary("a");
    let key_b = canary("b");
    let a = create(&app, &user, "kopokopo", &key_a).await;
    let b = create(&app, &user, "jpay", &key_b).await;
    assert_eq!(revealed_key(&app, &user, b).await, key_b, "b opens before");

    paste_envelope(&app, a, 1, b, 1);

    assert_reveal_fails_without_leaking(reveal(&app, &user, b).await, &[&key_a, &key_b]).await;
    assert_not_verified(verify(&app, &user, b, &key_a).await, &key_a).await;
    assert_eq!(revealed_key(&app, &user, a).await, key_a, "a is untouched");
}

#[tokio::test]
async fn a_blob_pasted_into_another_owners_credential_does_not_open() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let mallory = app.user().await;
    let alice_key = canary("alice");
    let mallory_key = canary("mallory");
    let alices = create(&app, &alice, "kopokopo", &alice_key).await;
    let mallorys = create(&app, &mallory, "kopokopo", &mallory_key).await;
    assert_eq!(revealed_key(&app, &mallory, mallorys).await, mallory_key);

    paste_envelope(&app, alices, 1, mallorys, 1);

    assert_reveal_fails_without_leaking(
        reveal(&app, &mallory, mallorys).await,
        &[&alice_key, &mallory_key],
    )
    .await;
    assert_not_verified(
        verify(&app, &mallory, mallorys, &alice_key).await,
        &alice_key,
    )
    .await;
}

#[tokio::test]
async fn an_earlier_versions_blob_pasted_over_the_current_version_does_not_open() {
    let app = spawn_app().await;
    let user = app.user().await;
    let old_key = canary("v1");
    let new_key = canary("v2");
    let id = create(&app, &user, "mpesa", &old_key).await;
    rotate(&app, &user, id, &new_key).await;
    assert_eq!(
        revealed_key(&app, &user, id).await,
        new_key,
        "v2 opens before"
    );

    paste_envelope(&app, id, 1, id, 2);

    assert_reveal_fails_without_leaking(reveal(&app, &user, id).await, &[&old_key, &new_key]).await;
    assert_not_verified(verify(&app, &user, id, &old_key).await, &old_key).await;
}

// ---------------------------------------------------------------------------------------
// The verifier

#[tokio::test]
async fn the_stored_verifier_is_not_a_bare_sha256_and_differs_per_credential() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let key = canary("shared");
    let bare_sha256 = hex::encode(Sha256::digest(key.as_bytes()));
    let alice_kopokopo = create(&app, &alice, "kopokopo", &key).await;
    let alice_jpay = create(&app, &alice, "jpay", &key).await;
    let bob_kopokopo = create(&app, &bob, "kopokopo", &key).await;

    let verifiers: Vec<String> = [alice_kopokopo, alice_jpay, bob_kopokopo]
        .iter()
        .map(|id| stored_verifier(&app, *id, 1))
        .collect();

    for v in &verifiers {
        assert!(!v.is_empty(), "a verifier is stored");
        assert_ne!(
            *v, bare_sha256,
            "the verifier is the bare SHA-256 of the key"
        );
        assert!(!v.contains(&hex::encode(key.as_bytes())));
    }
    assert_ne!(verifiers[0], verifiers[1], "two credentials of one owner");
    assert_ne!(verifiers[0], verifiers[2], "two owners");
    assert_ne!(verifiers[1], verifiers[2]);
    for id in [alice_kopokopo, alice_jpay] {
        let res = verify(&app, &alice, id, &key).await;
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["is_valid"], true, "each still verifies the shared key");
    }
}

// ---------------------------------------------------------------------------------------
// Errors give nothing away

#[tokio::test]
async fn a_corrupt_envelope_answers_a_generic_500() {
    let app = spawn_app().await;
    let user = app.user().await;
    let key = canary("corrupt");
    let id = create(&app, &user, "kopokopo", &key).await;
    let touched = app.sql_execute(&format!(
        "UPDATE credential_versions SET wrapped_dek = {} WHERE credential_id = {id}",
        short_blob()
    ));
    assert_eq!(touched, 1);

    assert_generic_500(reveal(&app, &user, id).await, "reveal").await;
    assert_generic_500(verify(&app, &user, id, &key).await, "verify").await;
}

#[tokio::test]
async fn an_unreadable_stored_row_answers_a_generic_500() {
    let app = spawn_app().await;
    let user = app.user().await;
    let id = create(&app, &user, "kopokopo", "kk-private-key-0001").await;
    let touched = app.sql_execute(&format!(
        "UPDATE credentials SET provider = 'no-such-provider' WHERE id = {id}"
    ));
    assert_eq!(touched, 1);

    assert_generic_500(
        app.get(&format!("/payments/credentials/{id}/"), &user.access)
            .await,
        "get",
    )
    .await;
    assert_generic_500(
        app.get("/payments/credentials/", &user.access).await,
        "list",
    )
    .await;
}

#[tokio::test]
async fn a_database_failure_answers_a_generic_500_without_sql_or_paths() {
    let app = spawn_app().await;
    let user = app.user().await;
    let id = create(&app, &user, "kopokopo", "kk-private-key-0001").await;
    app.sql("DROP TABLE credential_versions");

    assert_generic_500(reveal(&app, &user, id).await, "reveal").await;
    assert_generic_500(
        verify(&app, &user, id, "kk-private-key-0001").await,
        "verify",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Policy and headers

#[tokio::test]
async fn with_owner_reveal_off_the_owner_gets_403_but_verify_still_works() {
    let app = spawn_app_with(&[("HAZINA_OWNER_REVEAL", "false")]).await;
    let user = app.user().await;
    let key = canary("no-reveal");
    let id = create(&app, &user, "kopokopo", &key).await;

    let res = reveal(&app, &user, id).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let text = res.text().await.unwrap();
    assert!(!text.contains(&key), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        json!({ "error": "Revealing private keys is reserved for services on this vault" })
    );

    let res = verify(&app, &user, id, &key).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["is_valid"], true);
    assert_eq!(body["message"], "Credentials verified successfully");
}

#[tokio::test]
async fn a_revealed_key_is_sent_with_cache_control_no_store() {
    let app = spawn_app().await;
    let user = app.user().await;
    let id = create(&app, &user, "kopokopo", "kk-private-key-0001").await;

    let res = reveal(&app, &user, id).await;

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn every_response_carries_nosniff_and_a_distinct_request_id() {
    let app = spawn_app().await;
    let user = app.user().await;
    let id = create(&app, &user, "kopokopo", "kk-private-key-0001").await;
    let broken = create(&app, &user, "jpay", "jp-private-key-0001").await;
    app.sql_execute(&format!(
        "UPDATE credential_versions SET wrapped_dek = {} WHERE credential_id = {broken}",
        short_blob()
    ));
    let huge = format!(r#"{{"private_key":"{}"}}"#, "k".repeat(1024 * 1024));
    let c = &app.client;
    let token = user.access.as_str();
    let requests = [
        c.get(app.url("/healthz")),
        c.get(app.url("/readyz")),
        c.get(app.url("/payments/credentials/")).bearer_auth(token),
        c.get(app.url(&versions_path(id, "get-private-key")))
            .bearer_auth(token),
        c.post(app.url("/payments/credentials/"))
            .bearer_auth(token)
            .json(&json!({ "provider": "mpesa", "api_key": "a", "private_key": "mp-key-000001" })),
        c.post(app.url("/payments/credentials/"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body("{"),
        c.post(app.url("/payments/credentials/"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(huge),
        c.get(app.url("/payments/credentials/")),
        c.get(app.url(&versions_path(id, "get-private-key")))
            .bearer_auth("garbage"),
        c.get(app.url("/payments/credentials/42/"))
            .bearer_auth(token),
        c.get(app.url("/no/such/route/")),
        c.request(Method::PATCH, app.url("/payments/credentials/")),
        c.get(app.url(&versions_path(broken, "get-private-key")))
            .bearer_auth(token),
        c.post(app.url("/users/login/"))
            .json(&json!({ "username": "nobody", "password": "wrong" })),
    ];

    let mut seen = std::collections::HashSet::new();
    let mut statuses = Vec::new();
    for req in requests {
        let res = req.send().await.unwrap();
        let status = res.status();
        statuses.push(status.as_u16());
        let headers = res.headers();
        assert_eq!(
            headers
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{status}"
        );
        let request_id = headers
            .get("x-request-id")
            .unwrap_or_else(|| panic!("{status} has no X-Request-Id"))
            .to_str()
            .unwrap()
            .to_owned();
        assert!(!request_id.is_empty(), "{status}");
        assert!(seen.insert(request_id), "request ids are distinct");
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 201, 400, 413, 401, 401, 404, 404, 405, 500, 401],
        "each kind of response was exercised"
    );
}
