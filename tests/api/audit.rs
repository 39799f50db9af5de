//! SPEC §2.4 and §4: every security-relevant event lands in the audit log with who, from
//! where, what, on which credential, how it ended and the request id; no entry holds a
//! secret; the hash chain names the first edited, deleted, inserted or reordered entry (over
//! the API and the CLI); reveals and verifies fail closed; several nodes extend one chain;
//! auditors read the log through filters, a cursor, an export and a verifier.

use std::collections::BTreeSet;
use std::process::Output;

use diesel::prelude::*;
use futures_util::future::join_all;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use hazina::audit::chain::AuditRow;
use hazina::db::schema::audit_log;
use hazina::domain::Role;

use crate::helpers::*;

const LOCALHOST: &str = "127.0.0.1";
const ONLY_AUDITORS: &str = "Only auditors may read the audit log";
const AUDITORS_NEVER: &str = "Auditors cannot access payment credentials";
const UNAVAILABLE: &str = "Service temporarily unavailable; try again";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

// ---------------------------------------------------------------------------------------
// Reading the log.

fn request_id(res: &Response) -> String {
    res.headers()
        .get("x-request-id")
        .expect("every response carries X-Request-Id")
        .to_str()
        .unwrap()
        .to_owned()
}

/// One page of `/audit/events/` (asserting 200).
async fn events(app: &TestApp, auditor: &TestUser, query: &str) -> Value {
    let res = app
        .get(&format!("/audit/events/{query}"), &auditor.access)
        .await;
    assert_eq!(res.status(), StatusCode::OK, "GET /audit/events/{query}");
    res.json().await.unwrap()
}

fn page_entries(page: &Value) -> Vec<Value> {
    page["events"]
        .as_array()
        .expect("events is an array")
        .clone()
}

/// Every entry matching `filter` (a query string without `?`), oldest first, following the
/// cursor.
async fn entries_where(app: &TestApp, auditor: &TestUser, filter: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let page = events(
            app,
            auditor,
            &format!("?limit=1000&cursor={cursor}&{filter}"),
        )
        .await;
        out.extend(page_entries(&page));
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = next,
            None => return out,
        }
    }
}

async fn all_entries(app: &TestApp, auditor: &TestUser) -> Vec<Value> {
    entries_where(app, auditor, "").await
}

/// The one entry the request with `id` produced.
async fn entry_of(app: &TestApp, auditor: &TestUser, id: &str) -> Value {
    let matching: Vec<Value> = all_entries(app, auditor)
        .await
        .into_iter()
        .filter(|e| e["request_id"] == id)
        .collect();
    assert_eq!(matching.len(), 1, "entries of request {id}: {matching:?}");
    matching.into_iter().next().unwrap()
}

fn seqs(entries: &[Value]) -> Vec<i64> {
    entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

/// Unix seconds of an entry's `occurred_at`.
fn occurred_at(entry: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(entry["occurred_at"].as_str().unwrap())
        .unwrap()
        .timestamp()
}

/// `audit_head` as stored: (seq, lowercase hex hash).
fn stored_head(app: &TestApp) -> (i64, String) {
    let query = match backend() {
        Backend::Sqlite => {
            "SELECT CAST(seq AS TEXT) || ':' || lower(hex(hash)) AS line FROM audit_head WHERE id = 1"
        }
        Backend::Postgres => {
            "SELECT seq::text || ':' || encode(hash, 'hex') AS line FROM audit_head WHERE id = 1"
        }
    };
    let line = app.sql_lines(query).pop().expect("the head row exists");
    let (seq, hash) = line.split_once(':').unwrap();
    (seq.parse().unwrap(), hash.to_owned())
}

// ---------------------------------------------------------------------------------------
// What an entry must say.

fn user_actor(user: &TestUser) -> Value {
    json!({ "kind": "user", "id": user.id, "name": user.username })
}

fn anonymous() -> Value {
    json!({ "kind": "anonymous", "id": null, "name": null })
}

fn cli_actor() -> Value {
    json!({ "kind": "system", "id": null, "name": "cli" })
}

fn no_target() -> Value {
    json!({ "credential_id": null, "owner_id": null, "provider": null, "environment": null })
}

fn owner_target(owner_id: i64) -> Value {
    json!({ "credential_id": null, "owner_id": owner_id, "provider": null, "environment": null })
}

fn requested(credential_id: i64) -> Value {
    json!({ "credential_id": credential_id, "owner_id": null, "provider": null, "environment": null })
}

fn credential_target(credential: &Value, owner: &TestUser) -> Value {
    json!({
        "credential_id": credential["id"],
        "owner_id": owner.id,
        "provider": credential["provider"],
        "environment": credential["environment"],
    })
}

/// Every field of an entry a request decides (all but seq, time and hashes).
fn recorded(
    actor: Value,
    action: &str,
    target: Value,
    outcome: &str,
    reason: Option<&str>,
    request_id: &str,
) -> Value {
    json!({
        "actor": actor,
        "source_ip": LOCALHOST,
        "cert_fingerprint": null,
        "action": action,
        "target": target,
        "outcome": outcome,
        "reason": reason,
        "request_id": request_id,
    })
}

/// Asserts each field of `expected` equals the entry's.
fn assert_entry(entry: &Value, expected: &Value) {
    for (field, value) in expected.as_object().unwrap() {
        assert_eq!(&entry[field], value, "{field} of {entry}");
    }
}

// ---------------------------------------------------------------------------------------
// Arranging.

async fn credential(app: &TestApp, owner: &TestUser, key: &str) -> Value {
    app.create_credential(owner, "kopokopo", "sandbox", key)
        .await
}

fn path(credential: &Value, tail: &str) -> String {
    format!("/payments/credentials/{}/{tail}", credential["id"])
}

async fn refresh(app: &TestApp, refresh_token: &str) -> Response {
    app.client
        .post(app.url("/users/token/refresh/"))
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .unwrap()
}

/// Runs the `hazina` binary on the app's database and keyring.
fn hazina(app: &TestApp, args: &[&str], stdin: &str) -> Output {
    hazina_cli(app, args, stdin)
}

fn user_id_of(app: &TestApp, username: &str) -> i64 {
    let query = format!("SELECT CAST(id AS TEXT) AS line FROM users WHERE username = '{username}'");
    app.sql_lines(&query)
        .pop()
        .expect("the user exists")
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// One entry per event, saying exactly what happened.

#[tokio::test]
async fn a_successful_login_is_recorded() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;

    let res = app.login(&alice.username, PASSWORD).await;

    assert_eq!(res.status(), StatusCode::OK);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        user_actor(&alice),
        "auth.login",
        owner_target(alice.id),
        "success",
        None,
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn a_login_with_a_wrong_password_is_recorded_as_denied_for_that_user() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;

    let res = app.login(&alice.username, "not the right password").await;

    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        user_actor(&alice),
        "auth.login",
        owner_target(alice.id),
        "denied",
        Some("bad_password"),
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn a_login_with_an_unknown_username_is_recorded_as_anonymous_without_the_name() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let typed = "Typed.My.Password.Here-42";

    let res = app.login(typed, PASSWORD).await;

    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        anonymous(),
        "auth.login",
        no_target(),
        "denied",
        Some("unknown_user"),
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
    assert!(!entry.to_string().contains(typed), "{entry}");
}

#[tokio::test]
async fn a_login_by_a_disabled_user_is_recorded_as_denied() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let out = hazina(
        &app,
        &["users", "disable", "--username", &alice.username],
        "",
    );
    assert!(out.status.success(), "{out:?}");

    let res = app.login(&alice.username, PASSWORD).await;

    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        user_actor(&alice),
        "auth.login",
        owner_target(alice.id),
        "denied",
        Some("disabled_user"),
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn a_refresh_is_recorded() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;

    let res = refresh(&app, &alice.refresh).await;

    assert_eq!(res.status(), StatusCode::OK);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        user_actor(&alice),
        "auth.refresh",
        owner_target(alice.id),
        "success",
        None,
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn a_reused_refresh_token_is_recorded_as_denied_reuse() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    assert_eq!(refresh(&app, &alice.refresh).await.status(), StatusCode::OK);

    let res = refresh(&app, &alice.refresh).await;

    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        user_actor(&alice),
        "auth.refresh_reuse",
        owner_target(alice.id),
        "denied",
        Some("token_reused"),
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn an_invalid_refresh_token_is_recorded_as_an_anonymous_denial() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;

    let res = refresh(&app, &alice.access).await;

    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        anonymous(),
        "auth.refresh",
        no_target(),
        "denied",
        Some("token_invalid"),
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn a_logout_is_recorded() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;

    let res = app.post_empty("/users/logout/", &alice.access).await;

    assert_eq!(res.status(), StatusCode::OK);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        user_actor(&alice),
        "auth.logout",
        owner_target(alice.id),
        "success",
        None,
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn creating_a_credential_is_recorded() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let body = json!({
        "provider": "mpesa",
        "api_key": "mpesa-api-key",
        "private_key": "mpesa-create-audit-key",
        "environment": "live",
    });

    let res = app
        .post("/payments/credentials/", &alice.access, &body)
        .await;

    assert_eq!(res.status(), StatusCode::CREATED);
    let id = request_id(&res);
    let created: Value = res.json().await.unwrap();
    let entry = entry_of(&app, &auditor, &id).await;
    let target = json!({
        "credential_id": created["id"],
        "owner_id": alice.id,
        "provider": "mpesa",
        "environment": "live",
    });
    let expected = recorded(
        user_actor(&alice),
        "credential.create",
        target,
        "success",
        None,
        &id,
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn updating_a_credential_is_recorded_with_its_new_environment() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-update-audit").await;

    let res = app
        .put(
            &path(&cred, ""),
            &alice.access,
            &json!({ "api_key": "kk-new", "environment": "live" }),
        )
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let target = json!({
        "credential_id": cred["id"],
        "owner_id": alice.id,
        "provider": "kopokopo",
        "environment": "live",
    });
    let expected = recorded(
        user_actor(&alice),
        "credential.update",
        target,
        "success",
        None,
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn rotating_a_private_key_is_recorded() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-rotate-audit").await;

    let res = app
        .post(
            &path(&cred, "rotate/"),
            &alice.access,
            &json!({ "private_key": "kopokopo-rotated-audit" }),
        )
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        user_actor(&alice),
        "credential.rotate",
        credential_target(&cred, &alice),
        "success",
        None,
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn updating_a_private_key_is_recorded_as_a_rotation() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-upk-audit").await;

    let res = app
        .post(
            &path(&cred, "update-private-key/"),
            &alice.access,
            &json!({ "private_key": "kopokopo-upk-audit-2" }),
        )
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        user_actor(&alice),
        "credential.rotate",
        credential_target(&cred, &alice),
        "success",
        None,
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn toggling_a_credential_is_recorded() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-toggle-audit").await;

    let res = app
        .post_empty(&path(&cred, "toggle-status/"), &alice.access)
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        user_actor(&alice),
        "credential.toggle",
        credential_target(&cred, &alice),
        "success",
        None,
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn deleting_a_credential_is_recorded() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-delete-audit").await;

    let res = app.delete(&path(&cred, ""), &alice.access).await;

    assert_eq!(res.status(), StatusCode::OK);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        user_actor(&alice),
        "credential.delete",
        credential_target(&cred, &alice),
        "success",
        None,
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn revealing_a_private_key_is_recorded() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-reveal-audit").await;

    let res = app
        .get(&path(&cred, "get-private-key/"), &alice.access)
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let entry = entry_of(&app, &auditor, &request_id(&res)).await;
    let expected = recorded(
        user_actor(&alice),
        "credential.reveal",
        credential_target(&cred, &alice),
        "success",
        None,
        &request_id(&res),
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn verifying_the_right_key_is_recorded_as_a_success() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-verify-audit").await;

    let res = app
        .post(
            &path(&cred, "verify/"),
            &alice.access,
            &json!({ "private_key": "kopokopo-verify-audit" }),
        )
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let id = request_id(&res);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["is_valid"], true);
    let entry = entry_of(&app, &auditor, &id).await;
    let expected = recorded(
        user_actor(&alice),
        "credential.verify",
        credential_target(&cred, &alice),
        "success",
        None,
        &id,
    );
    assert_entry(&entry, &expected);
}

#[tokio::test]
async fn verifying_a_wrong_key_is_recorded_as_denied_with_key_mismatch() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-verify-audit").await;

    let res = app
        .post(
            &path(&cred, "verify/"),
            &alice.access,
            &json!({ "private_key": "kopokopo-wrong-guess" }),
        )
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let id = request_id(&res);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["is_valid"], false);
    let entry = entry_of(&app, &auditor, &id).await;
    let expected = recorded(
        user_actor(&alice),
        "credential.verify",
        credential_target(&cred, &alice),
        "denied",
        Some("key_mismatch"),
        &id,
    );
    assert_entry(&entry, &expected);
}

/// (method, path tail, body, action) for every route that names one credential.
fn id_routes() -> Vec<(&'static str, &'static str, Option<Value>, &'static str)> {
    let key = json!({ "private_key": "a-candidate-private-key" });
    vec![
        ("GET", "", None, "credential.read"),
        (
            "PUT",
            "",
            Some(json!({ "api_key": "x-api" })),
            "credential.update",
        ),
        ("DELETE", "", None, "credential.delete"),
        ("POST", "rotate/", Some(key.clone()), "credential.rotate"),
        (
            "POST",
            "update-private-key/",
            Some(key.clone()),
            "credential.rotate",
        ),
        ("GET", "get-private-key/", None, "credential.reveal"),
        ("POST", "verify/", Some(key), "credential.verify"),
        ("POST", "toggle-status/", None, "credential.toggle"),
    ]
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Response {
    let mut req = app
        .client
        .request(method.parse().unwrap(), app.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(body);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn another_owners_credential_is_recorded_as_denied_with_the_requested_id() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let mallory = app.user().await;
    let theirs = credential(&app, &alice, "kopokopo-not-mallorys").await;
    let id = theirs["id"].as_i64().unwrap();

    for (method, tail, body, action) in id_routes() {
        let res = send(
            &app,
            method,
            &path(&theirs, tail),
            &mallory.access,
            body.as_ref(),
        )
        .await;

        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{method} {tail}");
        let entry = entry_of(&app, &auditor, &request_id(&res)).await;
        let expected = recorded(
            user_actor(&mallory),
            action,
            requested(id),
            "denied",
            Some("not_found_or_not_owner"),
            &request_id(&res),
        );
        assert_entry(&entry, &expected);
    }
}

#[tokio::test]
async fn an_id_that_can_never_name_a_credential_is_recorded_as_denied_without_one() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let mallory = app.user().await;

    for (method, tail, body, action) in id_routes() {
        let path = format!("/payments/credentials/abc/{tail}");
        let res = send(&app, method, &path, &mallory.access, body.as_ref()).await;

        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{method} {tail}");
        let entry = entry_of(&app, &auditor, &request_id(&res)).await;
        let expected = recorded(
            user_actor(&mallory),
            action,
            no_target(),
            "denied",
            Some("not_found_or_not_owner"),
            &request_id(&res),
        );
        assert_entry(&entry, &expected);
    }
}

#[tokio::test]
async fn an_auditor_using_the_credentials_api_is_recorded_as_denied_by_role() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-auditor-denied").await;
    let create = json!({ "provider": "jpay", "api_key": "k", "private_key": "jpay-key-12345" });
    let mut routes: Vec<(&str, String, Option<Value>, &str)> = vec![
        (
            "GET",
            "/payments/credentials/".into(),
            None,
            "credential.read",
        ),
        (
            "POST",
            "/payments/credentials/".into(),
            Some(create),
            "credential.create",
        ),
        (
            "GET",
            "/payments/credentials/provider/kopokopo/".into(),
            None,
            "credential.read",
        ),
    ];
    for (method, tail, body, action) in id_routes() {
        routes.push((method, path(&cred, tail), body, action));
    }

    for (method, path, body, action) in routes {
        let res = send(&app, method, &path, &auditor.access, body.as_ref()).await;

        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{method} {path}");
        let entry = entry_of(&app, &auditor, &request_id(&res)).await;
        let expected = json!({
            "actor": user_actor(&auditor),
            "source_ip": LOCALHOST,
            "action": action,
            "outcome": "denied",
            "reason": "role_forbidden",
            "request_id": request_id(&res),
        });
        assert_entry(&entry, &expected);
    }
}

#[tokio::test]
async fn a_user_reading_the_audit_api_is_refused_and_recorded() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;

    for role in [Role::User, Role::Admin] {
        let someone = app.user_with_role(role).await;
        for route in ["/audit/events/", "/audit/export/", "/audit/verify/"] {
            let res = app.get(route, &someone.access).await;

            let id = request_id(&res);
            assert_error(res, StatusCode::FORBIDDEN, ONLY_AUDITORS).await;
            let entry = entry_of(&app, &auditor, &id).await;
            let expected = recorded(
                user_actor(&someone),
                "audit.read",
                no_target(),
                "denied",
                Some("role_forbidden"),
                &id,
            );
            assert_entry(&entry, &expected);
        }
    }
}

#[tokio::test]
async fn creating_a_user_on_the_command_line_is_recorded_as_a_system_action() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;

    let out = hazina(
        &app,
        &[
            "users",
            "create",
            "--username",
            "carol",
            "--role",
            "user",
            "--password-stdin",
        ],
        "carols-long-cli-password\n",
    );

    assert!(out.status.success(), "{out:?}");
    let carol = user_id_of(&app, "carol");
    // (The test harness creates its users as audited changes too: the CLI's is carol's.)
    let entries = entries_where(
        &app,
        &auditor,
        &format!("action=admin.user_create&owner={carol}"),
    )
    .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let expected = json!({
        "actor": cli_actor(),
        "source_ip": null,
        "cert_fingerprint": null,
        "target": owner_target(carol),
        "outcome": "success",
        "reason": null,
        "request_id": null,
    });
    assert_entry(&entries[0], &expected);
}

#[tokio::test]
async fn disabling_a_user_on_the_command_line_is_recorded_as_a_system_action() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alice = app.user().await;

    let out = hazina(
        &app,
        &["users", "disable", "--username", &alice.username],
        "",
    );

    assert!(out.status.success(), "{out:?}");
    let entries = entries_where(&app, &auditor, "action=admin.user_disable").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let expected = json!({
        "actor": cli_actor(),
        "source_ip": null,
        "cert_fingerprint": null,
        "target": owner_target(alice.id),
        "outcome": "success",
        "reason": null,
        "request_id": null,
    });
    assert_entry(&entries[0], &expected);
}

// ---------------------------------------------------------------------------------------
// No secret ever reaches the log.

/// Uses every kind of secret once (keys, candidates, passwords, tokens) and returns them.
async fn exercise_secrets(app: &TestApp) -> Vec<String> {
    let alice = app.user().await;
    let created_key = "canary-private-key-created-8f3b1c";
    let rotated_key = "canary-private-key-rotated-2d7e9a";
    let wrong_guess = "canary-wrong-candidate-5a1f0e";
    let wrong_password = "canary-wrong-password-6c4d2b";
    let password_as_username = "Canary.Password.In.Username-91";
    let cred = credential(app, &alice, created_key).await;
    let rotate = json!({ "private_key": rotated_key });
    assert_eq!(
        app.post(&path(&cred, "rotate/"), &alice.access, &rotate)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get(&path(&cred, "get-private-key/"), &alice.access)
            .await
            .status(),
        StatusCode::OK
    );
    for candidate in [rotated_key, wrong_guess] {
        let body = json!({ "private_key": candidate });
        let res = app
            .post(&path(&cred, "verify/"), &alice.access, &body)
            .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(
        app.login(&alice.username, wrong_password).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(password_as_username, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = refresh(app, &alice.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    let pair: Value = res.json().await.unwrap();
    let (access, refreshed) = (
        pair["access_token"].as_str().unwrap().to_owned(),
        pair["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        app.post_empty("/users/logout/", &access).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        refresh(app, &alice.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let mut secrets: Vec<String> = [
        created_key,
        rotated_key,
        wrong_guess,
        wrong_password,
        password_as_username,
        PASSWORD,
    ]
    .map(str::to_owned)
    .to_vec();
    for token in [&alice.access, &alice.refresh, &access, &refreshed] {
        secrets.push(token.clone());
        // The signature alone identifies a token too.
        secrets.push(token.rsplit('.').next().unwrap().to_owned());
    }
    secrets
}

/// A secret as text, as hex (both cases) and as the hex of its SHA-256.
fn renderings(secret: &str) -> Vec<String> {
    let hex = hex::encode(secret.as_bytes());
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    vec![
        secret.to_owned(),
        hex.to_uppercase(),
        hex,
        digest.to_uppercase(),
        digest,
    ]
}

/// Every audit row as text, every column included (blobs as hex).
fn audit_rows_as_text(app: &TestApp) -> String {
    let query = match backend() {
        Backend::Sqlite => {
            "SELECT CAST(seq AS TEXT) || '|' || CAST(occurred_at AS TEXT) || '|' || actor_kind \
             || '|' || COALESCE(CAST(actor_id AS TEXT), '') || '|' || COALESCE(actor_name, '') \
             || '|' || COALESCE(source_ip, '') || '|' || COALESCE(cert_fingerprint, '') \
             || '|' || action || '|' || COALESCE(CAST(credential_id AS TEXT), '') \
             || '|' || COALESCE(CAST(owner_id AS TEXT), '') || '|' || COALESCE(provider, '') \
             || '|' || COALESCE(environment, '') || '|' || outcome || '|' || COALESCE(reason, '') \
             || '|' || COALESCE(request_id, '') || '|' || hex(prev_hash) || '|' || hex(hash) \
             AS line FROM audit_log ORDER BY seq"
        }
        Backend::Postgres => "SELECT row_to_json(a)::text AS line FROM audit_log a ORDER BY seq",
    };
    app.sql_lines(query).join("\n")
}

#[tokio::test]
async fn no_secret_used_in_a_session_reaches_an_audit_row() {
    let app = spawn_app().await;

    let secrets = exercise_secrets(&app).await;

    let rows = audit_rows_as_text(&app);
    assert!(rows.lines().count() >= 10, "{rows}");
    for secret in &secrets {
        for form in renderings(secret) {
            assert!(!rows.contains(&form), "{form} is in the audit log");
        }
    }
}

#[tokio::test]
async fn no_secret_used_in_a_session_reaches_the_export() {
    let app = spawn_app().await;
    let mut secrets = exercise_secrets(&app).await;
    let auditor = app.user_with_role(Role::Auditor).await;
    secrets.push(auditor.access.clone());
    secrets.push(auditor.refresh.clone());

    let res = app.get("/audit/export/", &auditor.access).await;

    assert_eq!(res.status(), StatusCode::OK);
    let body = res.bytes().await.unwrap();
    assert!(body.len() > 1000);
    for secret in &secrets {
        for form in renderings(secret) {
            let found = body.windows(form.len()).any(|w| w == form.as_bytes());
            assert!(!found, "{form} is in the export");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tamper evidence, through the API and the command line.

/// A log of at least seven entries; returns the auditor and the seq of a denied login in the
/// middle of it (with entries on both sides).
async fn seeded_log(app: &TestApp) -> (TestUser, i64) {
    let alice = app.user().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let cred = credential(app, &alice, "kopokopo-chain-key").await;
    let res = app.login(&alice.username, "a wrong password").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let denied = entry_of(app, &auditor, &request_id(&res)).await;
    app.get(&path(&cred, "get-private-key/"), &alice.access)
        .await;
    app.post(
        &path(&cred, "verify/"),
        &alice.access,
        &json!({ "private_key": "kopokopo-chain-key" }),
    )
    .await;
    app.post_empty(&path(&cred, "toggle-status/"), &alice.access)
        .await;
    let k = denied["seq"].as_i64().unwrap();
    assert!(
        k > 1 && k + 2 <= stored_head(app).0,
        "k={k} is in the middle"
    );
    (auditor, k)
}

async fn verify(app: &TestApp, auditor: &TestUser) -> Value {
    let res = app.get("/audit/verify/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

/// Asserts the API and the CLI both name `seq` as the first bad entry, and agree.
async fn assert_broken_at(app: &TestApp, auditor: &TestUser, seq: i64) {
    let report = verify(app, auditor).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad_seq"], seq, "{report}");

    let out = hazina(app, &["audit", "verify"], "");

    assert!(!out.status.success(), "the CLI exits non-zero: {out:?}");
    let stdout: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stdout, report);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("first bad sequence number {seq}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_intact_chain_verifies_through_the_api_and_the_cli() {
    let app = spawn_app().await;
    let (auditor, _) = seeded_log(&app).await;
    let (head, _) = stored_head(&app);

    let report = verify(&app, &auditor).await;
    let out = hazina(&app, &["audit", "verify"], "");

    let intact = json!({ "ok": true, "checked": head, "first_bad_seq": null });
    assert_eq!(report, intact);
    assert!(out.status.success(), "{out:?}");
    let stdout: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stdout, intact);
}

#[tokio::test]
async fn an_edited_entry_is_named_as_the_first_bad_one() {
    let app = spawn_app().await;
    let (auditor, k) = seeded_log(&app).await;

    app.sql(&format!(
        "UPDATE audit_log SET outcome = 'success', reason = NULL WHERE seq = {k}"
    ));

    assert_broken_at(&app, &auditor, k).await;
}

#[tokio::test]
async fn an_edited_entry_whose_hash_was_recomputed_is_still_named() {
    let app = spawn_app().await;
    let (auditor, k) = seeded_log(&app).await;

    {
        let mut conn = app.conn();
        let mut row: AuditRow = audit_log::table
            .filter(audit_log::seq.eq(k))
            .select(AuditRow::as_select())
            .first(&mut *conn)
            .unwrap();
        row.outcome = "success".into();
        row.reason = None;
        row.hash = row.compute_hash().to_vec();
        diesel::update(audit_log::table.filter(audit_log::seq.eq(k)))
            .set((
                audit_log::outcome.eq(&row.outcome),
                audit_log::reason.eq(&row.reason),
                audit_log::hash.eq(&row.hash),
            ))
            .execute(&mut *conn)
            .unwrap();
    }

    assert_broken_at(&app, &auditor, k).await;
}

#[tokio::test]
async fn a_deleted_entry_is_named() {
    let app = spawn_app().await;
    let (auditor, k) = seeded_log(&app).await;

    app.sql(&format!("DELETE FROM audit_log WHERE seq = {k}"));

    assert_broken_at(&app, &auditor, k).await;
}

#[tokio::test]
async fn an_inserted_entry_is_named() {
    let app = spawn_app().await;
    let (auditor, k) = seeded_log(&app).await;
    let later = k + 1;

    // Make room at k (through negative seqs, so no two rows ever share one), then forge a
    // successful reveal there from the entry that used to be k.
    app.sql(&format!(
        "UPDATE audit_log SET seq = -seq WHERE seq >= {k};
         UPDATE audit_log SET seq = 1 - seq WHERE seq < 0;
         INSERT INTO audit_log (seq, occurred_at, actor_kind, actor_id, actor_name, source_ip,
             cert_fingerprint, action, credential_id, owner_id, provider, environment, outcome,
             reason, request_id, prev_hash, hash)
           SELECT {k}, occurred_at, actor_kind, actor_id, actor_name, source_ip,
             cert_fingerprint, 'credential.reveal', credential_id, owner_id, provider,
             environment, 'success', NULL, request_id, prev_hash, hash
           FROM audit_log WHERE seq = {later};
         UPDATE audit_head SET seq = seq + 1 WHERE id = 1;"
    ));

    assert_broken_at(&app, &auditor, k).await;
}

#[tokio::test]
async fn swapped_entries_are_named_at_the_first_of_the_pair() {
    let app = spawn_app().await;
    let (auditor, k) = seeded_log(&app).await;
    let next = k + 1;

    app.sql(&format!(
        "UPDATE audit_log SET seq = -1 WHERE seq = {k};
         UPDATE audit_log SET seq = {k} WHERE seq = {next};
         UPDATE audit_log SET seq = {next} WHERE seq = -1;"
    ));

    assert_broken_at(&app, &auditor, k).await;
}

#[tokio::test]
async fn a_deleted_last_entry_is_named_at_the_head() {
    let app = spawn_app().await;
    let (auditor, _) = seeded_log(&app).await;
    let (head, _) = stored_head(&app);

    app.sql(&format!("DELETE FROM audit_log WHERE seq = {head}"));

    assert_broken_at(&app, &auditor, head).await;
}

// ---------------------------------------------------------------------------------------
// Fail closed.

fn accept_audit_writes(app: &TestApp) {
    app.sql(match backend() {
        Backend::Sqlite => "DROP TRIGGER no_audit;",
        Backend::Postgres => "DROP TRIGGER no_audit ON audit_log; DROP FUNCTION no_audit();",
    });
}

/// Asserts a 503 JSON answer that does not carry `secret`.
async fn assert_unavailable_without(res: Response, secret: &str) {
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("application/json")));
    let text = res.text().await.unwrap();
    assert!(!text.contains(secret), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body, json!({ "error": UNAVAILABLE }));
}

#[tokio::test]
async fn a_reveal_answers_503_without_the_key_when_its_audit_entry_cannot_be_written() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-fail-closed-canary").await;
    refuse_audit_writes(&app);

    let res = app
        .get(&path(&cred, "get-private-key/"), &alice.access)
        .await;

    assert_unavailable_without(res, "kopokopo-fail-closed-canary").await;
}

#[tokio::test]
async fn a_verify_answers_503_when_its_audit_entry_cannot_be_written() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-fail-closed-canary").await;
    refuse_audit_writes(&app);

    let res = app
        .post(
            &path(&cred, "verify/"),
            &alice.access,
            &json!({ "private_key": "kopokopo-fail-closed-canary" }),
        )
        .await;

    assert_unavailable_without(res, "is_valid").await;
}

#[tokio::test]
async fn reveals_work_again_once_the_audit_log_accepts_writes() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let cred = credential(&app, &alice, "kopokopo-fail-closed-canary").await;
    refuse_audit_writes(&app);
    let refused = app
        .get(&path(&cred, "get-private-key/"), &alice.access)
        .await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    accept_audit_writes(&app);
    let res = app
        .get(&path(&cred, "get-private-key/"), &alice.access)
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let id = request_id(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["private_key"], "kopokopo-fail-closed-canary");
    let auditor = app.user_with_role(Role::Auditor).await;
    let entry = entry_of(&app, &auditor, &id).await;
    assert_eq!(entry["action"], "credential.reveal");
    let report = verify(&app, &auditor).await;
    assert_eq!(report["ok"], true, "{report}");
}

// ---------------------------------------------------------------------------------------
// Several nodes, one chain.

#[tokio::test]
async fn concurrent_reveals_on_two_nodes_extend_one_chain_with_one_entry_each() {
    let a = spawn_app().await;
    let b = a.spawn_node().await;
    let alice = a.user().await;
    let cred = credential(&a, &alice, "kopokopo-two-node-reveals").await;
    let reveal = path(&cred, "get-private-key/");

    let responses = join_all((0..50).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        node.get(&reveal, &alice.access)
    }))
    .await;

    let mut revealed = BTreeSet::new();
    for res in &responses {
        assert_eq!(res.status(), StatusCode::OK);
        revealed.insert(request_id(res));
    }
    assert_eq!(revealed.len(), 50);
    let auditor = a.user_with_role(Role::Auditor).await;
    let filter = format!(
        "action=credential.reveal&outcome=success&credential={}",
        cred["id"]
    );
    let entries = entries_where(&b, &auditor, &filter).await;
    let logged: BTreeSet<String> = entries
        .iter()
        .map(|e| e["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(entries.len(), 50);
    assert_eq!(logged, revealed);
    let (head, _) = stored_head(&a);
    let intact = json!({ "ok": true, "checked": head, "first_bad_seq": null });
    assert_eq!(verify(&a, &auditor).await, intact);
    assert_eq!(verify(&b, &auditor).await, intact);
}

// ---------------------------------------------------------------------------------------
// The auditor API.

/// Two owners doing a little of everything, over three distinct seconds.
struct Scene {
    auditor: TestUser,
    alice: TestUser,
    bob: TestUser,
    alices: Value,
    bobs: Value,
    /// Unix seconds at which the second and third phases happened.
    phase2: i64,
    phase3: i64,
}

async fn scene(app: &TestApp) -> Scene {
    let alice = app.user().await;
    let bob = app.user().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let alices = credential(app, &alice, "kopokopo-alices-key").await;
    let bobs = app
        .create_credential(&bob, "mpesa", "live", "mpesa-bobs-key")
        .await;

    app.clock.advance(100);
    let phase2 = app.clock.now();
    app.get(&path(&alices, "get-private-key/"), &alice.access)
        .await;
    app.get(&path(&bobs, "get-private-key/"), &alice.access)
        .await;
    app.login(&bob.username, "a wrong password").await;

    app.clock.advance(100);
    let phase3 = app.clock.now();
    app.post(
        &path(&alices, "verify/"),
        &alice.access,
        &json!({ "private_key": "not-alices-key" }),
    )
    .await;
    app.post_empty(&path(&bobs, "toggle-status/"), &bob.access)
        .await;
    app.get(&path(&bobs, "get-private-key/"), &bob.access).await;
    Scene {
        auditor,
        alice,
        bob,
        alices,
        bobs,
        phase2,
        phase3,
    }
}

/// Asserts `query` selects exactly the entries `keep` picks out of `all` (some, not all).
async fn assert_filter(
    app: &TestApp,
    auditor: &TestUser,
    all: &[Value],
    query: &str,
    keep: impl Fn(&Value) -> bool,
) {
    let expected: Vec<i64> = seqs(&all.iter().filter(|e| keep(e)).cloned().collect::<Vec<_>>());
    assert!(
        !expected.is_empty() && expected.len() < all.len(),
        "{query} should select some entries but not all: {expected:?}"
    );

    let got = seqs(&page_entries(
        &events(app, auditor, &format!("?limit=1000&{query}")).await,
    ));

    assert_eq!(got, expected, "{query}");
}

#[tokio::test]
async fn the_actor_filter_matches_a_username_or_an_id() {
    let app = spawn_app().await;
    let s = scene(&app).await;
    let all = all_entries(&app, &s.auditor).await;
    let alice_id = s.alice.id;

    assert_filter(
        &app,
        &s.auditor,
        &all,
        &format!("actor={}", s.alice.username),
        |e| e["actor"]["name"] == s.alice.username.as_str(),
    )
    .await;
    assert_filter(&app, &s.auditor, &all, &format!("actor={alice_id}"), |e| {
        e["actor"]["id"] == alice_id
    })
    .await;
}

#[tokio::test]
async fn the_action_filter_selects_one_action() {
    let app = spawn_app().await;
    let s = scene(&app).await;
    let all = all_entries(&app, &s.auditor).await;

    assert_filter(&app, &s.auditor, &all, "action=credential.reveal", |e| {
        e["action"] == "credential.reveal"
    })
    .await;
    assert_filter(&app, &s.auditor, &all, "action=auth.login", |e| {
        e["action"] == "auth.login"
    })
    .await;
}

#[tokio::test]
async fn the_credential_and_owner_filters_select_their_target() {
    let app = spawn_app().await;
    let s = scene(&app).await;
    let all = all_entries(&app, &s.auditor).await;
    let bobs = s.bobs["id"].clone();
    let alices = s.alices["id"].clone();

    assert_filter(&app, &s.auditor, &all, &format!("credential={bobs}"), |e| {
        e["target"]["credential_id"] == bobs
    })
    .await;
    assert_filter(
        &app,
        &s.auditor,
        &all,
        &format!("credential={alices}"),
        |e| e["target"]["credential_id"] == alices,
    )
    .await;
    assert_filter(
        &app,
        &s.auditor,
        &all,
        &format!("owner={}", s.bob.id),
        |e| e["target"]["owner_id"] == s.bob.id,
    )
    .await;
}

#[tokio::test]
async fn the_outcome_filter_selects_one_outcome() {
    let app = spawn_app().await;
    let s = scene(&app).await;
    let all = all_entries(&app, &s.auditor).await;

    assert_filter(&app, &s.auditor, &all, "outcome=denied", |e| {
        e["outcome"] == "denied"
    })
    .await;
    assert_filter(&app, &s.auditor, &all, "outcome=success", |e| {
        e["outcome"] == "success"
    })
    .await;
}

#[tokio::test]
async fn filters_combine() {
    let app = spawn_app().await;
    let s = scene(&app).await;
    let all = all_entries(&app, &s.auditor).await;
    let bobs = s.bobs["id"].clone();

    assert_filter(
        &app,
        &s.auditor,
        &all,
        &format!("credential={bobs}&action=credential.reveal&outcome=denied"),
        |e| {
            e["target"]["credential_id"] == bobs
                && e["action"] == "credential.reveal"
                && e["outcome"] == "denied"
        },
    )
    .await;
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test]
async fn since_and_until_bound_the_time_range_in_rfc3339_or_unix_seconds() {
    let app = spawn_app().await;
    let s = scene(&app).await;
    let all = all_entries(&app, &s.auditor).await;
    let (p2, p3) = (s.phase2, s.phase3);

    for since in [p2.to_string(), rfc3339(p2)] {
        assert_filter(&app, &s.auditor, &all, &format!("since={since}"), |e| {
            occurred_at(e) >= p2
        })
        .await;
    }
    for until in [p3.to_string(), rfc3339(p3)] {
        assert_filter(&app, &s.auditor, &all, &format!("until={until}"), |e| {
            occurred_at(e) < p3
        })
        .await;
    }
    assert_filter(
        &app,
        &s.auditor,
        &all,
        &format!("since={}&until={}", rfc3339(p2), p3),
        |e| (p2..p3).contains(&occurred_at(e)),
    )
    .await;
}

#[tokio::test]
async fn the_cursor_pages_through_every_entry_exactly_once() {
    let app = spawn_app().await;
    let s = scene(&app).await;
    let all = seqs(&all_entries(&app, &s.auditor).await);
    let (head, _) = stored_head(&app);

    let mut paged = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let query = match cursor {
            Some(c) => format!("?limit=2&cursor={c}"),
            None => "?limit=2".to_owned(),
        };
        let page = events(&app, &s.auditor, &query).await;
        let entries = page_entries(&page);
        assert!(entries.len() <= 2, "{page}");
        paged.extend(seqs(&entries));
        match page["next_cursor"].as_i64() {
            Some(next) => {
                assert_eq!(
                    Some(next),
                    paged.last().copied(),
                    "the cursor is the last seq"
                );
                cursor = Some(next);
            }
            None => break,
        }
    }

    assert_eq!(paged, (1..=head).collect::<Vec<_>>());
    assert_eq!(paged, all);
}

#[tokio::test]
async fn the_cursor_pages_through_a_filtered_listing_exactly_once() {
    let app = spawn_app().await;
    let s = scene(&app).await;
    let logins = seqs(&entries_where(&app, &s.auditor, "action=auth.login").await);

    let mut paged = Vec::new();
    let mut cursor = 0;
    loop {
        let page = events(
            &app,
            &s.auditor,
            &format!("?action=auth.login&limit=1&cursor={cursor}"),
        )
        .await;
        paged.extend(seqs(&page_entries(&page)));
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = next,
            None => break,
        }
    }

    assert!(logins.len() >= 4, "{logins:?}");
    assert_eq!(paged, logins);
}

#[tokio::test]
async fn a_limit_of_1_to_1000_is_accepted_and_anything_else_refused() {
    let app = spawn_app().await;
    let s = scene(&app).await;

    let one = events(&app, &s.auditor, "?limit=1").await;
    let most = events(&app, &s.auditor, "?limit=1000").await;

    assert_eq!(page_entries(&one).len(), 1);
    assert_eq!(one["next_cursor"], 1);
    assert!(page_entries(&most).len() > 1);
    assert_eq!(most["next_cursor"], Value::Null);
    for limit in ["0", "1001", "-1"] {
        let res = app
            .get(&format!("/audit/events/?limit={limit}"), &s.auditor.access)
            .await;
        assert_error(res, StatusCode::BAD_REQUEST, "limit must be from 1 to 1000").await;
    }
}

#[tokio::test]
async fn an_unknown_action_or_outcome_is_refused() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;

    for action in ["credential.steal", "CREDENTIAL.REVEAL", ""] {
        let res = app
            .get(&format!("/audit/events/?action={action}"), &auditor.access)
            .await;
        assert_error(res, StatusCode::BAD_REQUEST, "Unknown action").await;
    }
    for outcome in ["maybe", "Success"] {
        let res = app
            .get(
                &format!("/audit/events/?outcome={outcome}"),
                &auditor.access,
            )
            .await;
        assert_error(
            res,
            StatusCode::BAD_REQUEST,
            "outcome must be one of: success, denied, error",
        )
        .await;
    }
}

#[tokio::test]
async fn bad_times_and_unknown_parameters_are_refused() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;

    let since = app
        .get("/audit/events/?since=yesterday", &auditor.access)
        .await;
    let until = app
        .get("/audit/events/?until=2026-13-01", &auditor.access)
        .await;
    let export = app.get("/audit/export/?since=soon", &auditor.access).await;
    let unknown = app.get("/audit/events/?secret=1", &auditor.access).await;
    let cursor = app.get("/audit/events/?cursor=abc", &auditor.access).await;

    assert_error(
        since,
        StatusCode::BAD_REQUEST,
        "since must be an RFC 3339 time or Unix seconds",
    )
    .await;
    assert_error(
        until,
        StatusCode::BAD_REQUEST,
        "until must be an RFC 3339 time or Unix seconds",
    )
    .await;
    assert_error(
        export,
        StatusCode::BAD_REQUEST,
        "since must be an RFC 3339 time or Unix seconds",
    )
    .await;
    assert_error(unknown, StatusCode::BAD_REQUEST, "Invalid query parameters").await;
    assert_error(cursor, StatusCode::BAD_REQUEST, "Invalid query parameters").await;
}

#[tokio::test]
async fn listed_entries_link_into_one_chain_from_genesis() {
    let app = spawn_app().await;
    let s = scene(&app).await;

    let all = all_entries(&app, &s.auditor).await;

    assert_eq!(all[0]["prev_hash"], GENESIS);
    for (i, entry) in all.iter().enumerate() {
        assert_eq!(entry["seq"], i as i64 + 1);
        let hash = entry["hash"].as_str().unwrap();
        assert_eq!(hash.len(), 64);
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        if i > 0 {
            assert_eq!(entry["prev_hash"], all[i - 1]["hash"], "{entry}");
        }
        let time = entry["occurred_at"].as_str().unwrap();
        assert!(
            time.len() == 27 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
            "UTC with microseconds: {time}"
        );
    }
    assert_eq!(
        stored_head(&app),
        (
            all.len() as i64,
            all[all.len() - 1]["hash"].as_str().unwrap().to_owned()
        )
    );
}

/// The export's lines: (entries, the final chain-head line).
async fn export(app: &TestApp, auditor: &TestUser, query: &str) -> (Vec<Value>, Value) {
    let res = app
        .get(&format!("/audit/export/{query}"), &auditor.access)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/x-ndjson"),
        "{content_type}"
    );
    let text = res.text().await.unwrap();
    assert!(text.ends_with('\n'), "every line ends with a newline");
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let head = lines.pop().expect("at least the chain head");
    (lines, head)
}

#[tokio::test]
async fn the_export_holds_every_entry_and_ends_with_the_chain_head() {
    let app = spawn_app().await;
    let s = scene(&app).await;

    let (lines, head) = export(&app, &s.auditor, "").await;

    let all = all_entries(&app, &s.auditor).await;
    assert_eq!(lines, all, "the export holds exactly the listed entries");
    assert_eq!(
        all.last().unwrap()["action"],
        "audit.read",
        "the export is audited"
    );
    let (seq, hash) = stored_head(&app);
    assert_eq!(head, json!({ "chain_head": { "seq": seq, "hash": hash } }));
    assert_eq!(lines.last().unwrap()["hash"], hash);
    let report = verify(&app, &s.auditor).await;
    assert_eq!(
        report,
        json!({ "ok": true, "checked": seq, "first_bad_seq": null })
    );
}

#[tokio::test]
async fn the_export_since_a_time_holds_only_later_entries() {
    let app = spawn_app().await;
    let s = scene(&app).await;

    let (lines, head) = export(&app, &s.auditor, &format!("?since={}", s.phase3)).await;

    let all = all_entries(&app, &s.auditor).await;
    let later: Vec<Value> = all
        .iter()
        .filter(|e| occurred_at(e) >= s.phase3)
        .cloned()
        .collect();
    assert!(later.len() >= 3 && later.len() < all.len());
    assert_eq!(lines, later);
    let (seq, hash) = stored_head(&app);
    assert_eq!(head, json!({ "chain_head": { "seq": seq, "hash": hash } }));
}

#[tokio::test]
async fn an_auditor_can_never_reveal_or_verify_a_secret() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let cred = credential(&app, &alice, "kopokopo-auditor-canary").await;

    let reveal = app
        .get(&path(&cred, "get-private-key/"), &auditor.access)
        .await;
    let verify = app
        .post(
            &path(&cred, "verify/"),
            &auditor.access,
            &json!({ "private_key": "kopokopo-auditor-canary" }),
        )
        .await;

    for res in [reveal, verify] {
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let text = res.text().await.unwrap();
        assert!(!text.contains("kopokopo-auditor-canary"), "{text}");
        assert!(!text.contains("is_valid"), "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body, json!({ "error": AUDITORS_NEVER }));
    }
}
