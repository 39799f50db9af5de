//! Key lifecycle (issue 6): online master-key rotation, resumption after a crash, retiring,
//! key wear, provider-key versions, rollback and optimistic concurrency.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use hazina::domain::Role;
use hazina::repo::keys;

use crate::helpers::*;

/// `hazina <args>` against the test app's database and keyring.
fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(args)
        .current_dir(app.dir.path())
        .env("HAZINA_DATABASE_URL", app.db.url())
        .env("HAZINA_KEYRING", &app.keyring_path)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Creates `n` credentials spread over fresh merchants; returns (owner token, id, key).
async fn seed(app: &TestApp, n: usize) -> Vec<(String, i64, String)> {
    let providers = ["kopokopo", "instasend", "jpay", "mpesa", "pagamio"];
    let mut out = Vec::new();
    let mut user = app.user().await;
    for i in 0..n {
        if i % 10 == 0 && i > 0 {
            user = app.user().await;
        }
        let provider = providers[(i % 10) / 2];
        let env = if i % 2 == 0 { "sandbox" } else { "live" };
        let key = format!("rotation-key-{i:05}-{}", uuid::Uuid::new_v4().simple());
        let created = app.create_credential(&user, provider, env, &key).await;
        out.push((user.access.clone(), created["id"].as_i64().unwrap(), key));
    }
    out
}

/// (credential_id, version, kek_version, ciphertext hex, wrapped_dek hex) for every row.
fn stored(app: &TestApp) -> Vec<String> {
    let (hex, sep) = match backend() {
        Backend::Sqlite => ("hex", "||"),
        Backend::Postgres => ("", "||"),
    };
    let q = if hex.is_empty() {
        format!("SELECT CAST(credential_id AS TEXT) {sep} ':' {sep} CAST(version AS TEXT) {sep} ':' {sep} CAST(kek_version AS TEXT) {sep} ':' {sep} encode(ciphertext, 'hex') {sep} ':' {sep} encode(wrapped_dek, 'hex') AS line FROM credential_versions ORDER BY credential_id, version")
    } else {
        format!("SELECT CAST(credential_id AS TEXT) {sep} ':' {sep} CAST(version AS TEXT) {sep} ':' {sep} CAST(kek_version AS TEXT) {sep} ':' {sep} hex(ciphertext) {sep} ':' {sep} hex(wrapped_dek) AS line FROM credential_versions ORDER BY credential_id, version")
    };
    app.sql_lines(&q)
        .into_iter()
        .map(|l| l.to_ascii_lowercase())
        .collect()
}

/// Decides a rotation (a new active version, recorded in the database) without running it.
fn begin_rotation(app: &TestApp) -> keys::RotationRow {
    hazina::repo::key_versions::begin_rotation(&mut app.conn(), &app.state.keyring, 0, None)
        .unwrap()
}

fn kek_counts(app: &TestApp) -> Vec<(i32, i64)> {
    hazina::repo::credentials::count_by_kek_version(&mut app.conn()).unwrap()
}

#[tokio::test]
async fn after_a_rotation_through_the_api_every_key_reveals_and_no_row_is_left_on_the_old_version()
{
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let creds = seed(&app, 12).await;

    let res = app.post_empty("/admin/keys/rotate/", &admin.access).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["rotation"]["target_version"], 2);
    // Wait for the background rewrap deterministically: finish it here too (idempotent).
    let rotation = keys::unfinished_rotation(&mut app.conn()).unwrap();
    if let Some(r) = rotation {
        keys::run_rotation(&mut app.conn(), &app.state.keyring, &r, 100, || 0, |_| {}).unwrap();
    }

    assert_eq!(kek_counts(&app), vec![(2, 12)]);
    assert_all_reveal(&app, &creds).await;
    let status: Value = app
        .get("/admin/keys/", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["active_version"], 2);
    let v1 = status["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 1)
        .unwrap();
    assert_eq!(v1["stored_keys"], 0);
    assert_eq!(status["rotation"]["remaining"], 0);
    // New writes go under the new version.
    let more = seed(&app, 1).await;
    assert_all_reveal(&app, &more).await;
    assert_eq!(kek_counts(&app), vec![(2, 13)]);
}

#[tokio::test]
async fn the_cli_rotation_reports_progress_and_never_touches_the_secret_ciphertexts() {
    let app = spawn_app().await;
    let creds = seed(&app, 8).await;
    let before = stored(&app);

    let out = cli(&app, &["keys", "rotate", "--batch", "3"]);

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rewrapped 3/8") && stderr.contains("rewrapped 8/8"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-wrapped 8 data keys"));
    let after = stored(&app);
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        let b: Vec<&str> = b.split(':').collect();
        let a: Vec<&str> = a.split(':').collect();
        assert_eq!((b[0], b[1]), (a[0], a[1]));
        assert_eq!((b[2], a[2]), ("1", "2"), "moved to the new master key");
        assert_eq!(
            b[3], a[3],
            "the secret ciphertext is byte-for-byte unchanged"
        );
        assert_ne!(b[4], a[4], "only the wrapped data key changes");
    }
    // The running server follows the keyring file and opens the re-wrapped rows.
    assert_all_reveal(&app, &creds).await;
}

#[tokio::test]
async fn reveals_running_during_a_rotation_all_succeed() {
    let app = spawn_app().await;
    let creds = seed(&app, 20).await;
    let rotation = begin_rotation(&app);

    // Rewrap one row per transaction on a blocking thread while reveals run.
    let pool = app.state.pool.clone();
    let keyring = app.state.keyring.clone();
    let rewrap = tokio::task::spawn_blocking(move || {
        keys::run_rotation(
            &mut pool.get().unwrap(),
            &keyring,
            &rotation,
            1,
            || 0,
            |_| {},
        )
        .unwrap()
    });
    let reveals = (0..3).flat_map(|_| creds.iter()).map(|(token, id, key)| {
        let app = &app;
        async move {
            let res = reveal(app, token, *id).await;
            assert_eq!(res.status(), StatusCode::OK);
            let body: Value = res.json().await.unwrap();
            assert_eq!(&body["private_key"], key);
        }
    });
    join_all(reveals).await;
    assert_eq!(rewrap.await.unwrap(), 20);
    assert_all_reveal(&app, &creds).await;
}

#[tokio::test]
async fn a_rotation_stopped_between_batches_leaves_every_row_openable_and_resumes() {
    let app = spawn_app().await;
    let creds = seed(&app, 10).await;
    let rotation = begin_rotation(&app);

    // Two batches commit, then the "process" stops.
    for _ in 0..2 {
        assert_eq!(
            keys::rewrap_batch(&mut app.conn(), &app.state.keyring, &rotation, 3).unwrap(),
            3
        );
    }
    assert_eq!(kek_counts(&app), vec![(1, 4), (2, 6)]);
    assert_all_reveal(&app, &creds).await;

    // A restart finds the unfinished rotation in the database and completes it.
    let resumed = keys::unfinished_rotation(&mut app.conn())
        .unwrap()
        .expect("still unfinished");
    assert_eq!(resumed.id, rotation.id);
    assert_eq!(resumed.rows_rewrapped, 6);
    let moved = keys::run_rotation(
        &mut app.conn(),
        &app.state.keyring,
        &resumed,
        3,
        || 0,
        |_| {},
    )
    .unwrap();
    assert_eq!(moved, 4);
    assert_eq!(kek_counts(&app), vec![(2, 10)]);
    assert!(keys::unfinished_rotation(&mut app.conn())
        .unwrap()
        .is_none());
    assert_all_reveal(&app, &creds).await;
}

#[tokio::test]
async fn a_killed_cli_rotation_resumes_and_finishes_with_every_row_openable() {
    let app = spawn_app().await;
    let creds = seed(&app, 40).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(["keys", "rotate", "--batch", "1"])
        .current_dir(app.dir.path())
        .env("HAZINA_DATABASE_URL", app.db.url())
        .env("HAZINA_KEYRING", &app.keyring_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it (SIGKILL: no clean-up) right after its first batch committed.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("rewrapped"), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();

    // Whatever point it died at, every row opens.
    assert_all_reveal(&app, &creds).await;
    let out = cli(&app, &["keys", "rotate", "--resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(kek_counts(&app), vec![(2, 40)]);
    assert_all_reveal(&app, &creds).await;
    let status = cli(&app, &["keys", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("version 1: 0 stored keys"), "{text}");
}

#[tokio::test]
async fn retiring_a_version_still_in_use_is_refused_and_an_unused_one_is_retired() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let owner = app.user().await;
    let mut creds = Vec::new();
    for (provider, env) in [("mpesa", "live"), ("jpay", "sandbox"), ("pagamio", "live")] {
        let key = format!("retire-key-{provider}-{env}-0001");
        let created = app.create_credential(&owner, provider, env, &key).await;
        creds.push((owner.access.clone(), created["id"].as_i64().unwrap(), key));
    }
    begin_rotation(&app);

    let res = app
        .post(
            "/admin/keys/retire/",
            &admin.access,
            &json!({ "version": 1 }),
        )
        .await;
    assert_error(
        res,
        StatusCode::CONFLICT,
        "Master-key version 1 still protects 3 stored keys; finish a rotation first",
    )
    .await;
    let out = cli(&app, &["keys", "retire", "--version", "1"]);
    assert!(!out.status.success());
    let res = app
        .post(
            "/admin/keys/retire/",
            &admin.access,
            &json!({ "version": 2 }),
        )
        .await;
    assert_error(
        res,
        StatusCode::CONFLICT,
        "The active master-key version cannot be retired",
    )
    .await;

    assert!(cli(&app, &["keys", "rotate", "--resume"]).status.success());
    let res = app
        .post(
            "/admin/keys/retire/",
            &admin.access,
            &json!({ "version": 1 }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.state.keyring.versions(), vec![2]);
    // Tokens signed under the retired version stop working; a fresh session opens every key.
    let (old_token, id, _) = &creds[0];
    assert_eq!(
        reveal(&app, old_token, *id).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let fresh: Value = app
        .login(&owner.username, PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let token = fresh["access_token"].as_str().unwrap();
    let creds: Vec<_> = creds
        .into_iter()
        .map(|(_, id, key)| (token.to_owned(), id, key))
        .collect();
    assert_all_reveal(&app, &creds).await;
}

#[tokio::test]
async fn only_admins_see_or_rotate_master_keys() {
    let app = spawn_app().await;
    let user = app.user().await;
    assert_eq!(
        app.get("/admin/keys/", &user.access).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.post_empty("/admin/keys/rotate/", &user.access)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(app.state.keyring.versions(), vec![1]);
}

#[tokio::test]
async fn key_wear_is_counted_durably_and_a_threshold_warns_that_rotation_is_due() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let creds = seed(&app, 3).await;
    let (token, id, _) = &creds[0];
    let res = app
        .post(
            &format!("/payments/credentials/{id}/rotate/"),
            token,
            &json!({ "private_key": "worn-key-0123456" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    assert_eq!(keys::wear(&mut app.conn()).unwrap(), vec![(1, 4)]);
    let status: Value = app
        .get("/admin/keys/", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["versions"][0]["encryptions"], 4);

    hazina::rotation::warn_about_wear(&app.state.pool, 4).unwrap();
    let logs = String::from_utf8_lossy(&captured_logs()).into_owned();
    assert!(logs.contains("MASTER KEY ROTATION DUE"), "a loud warning");
}

#[tokio::test]
async fn versions_list_metadata_only_newest_first() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "mpesa", "live", "versions-key-v1-000")
        .await;
    let id = created["id"].as_i64().unwrap();
    for k in ["versions-key-v2-000", "versions-key-v3-000"] {
        let res = app
            .post(
                &format!("/payments/credentials/{id}/rotate/"),
                &alice.access,
                &json!({ "private_key": k }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
    }

    let res = app
        .get(
            &format!("/payments/credentials/{id}/versions/"),
            &alice.access,
        )
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], "\"3\"");
    let text = res.text().await.unwrap();
    assert!(!text.contains("versions-key"), "no key material");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["current_version"], 3);
    let versions = body["versions"].as_array().unwrap();
    let numbers: Vec<i64> = versions
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, vec![3, 2, 1]);
    assert_eq!(versions[0]["is_current"], true);
    assert_eq!(versions[1]["is_current"], false);
    assert_eq!(
        versions[2]["created_by"]["username"],
        alice.username.as_str()
    );
    let keys: Vec<&String> = versions[0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        vec![
            "created_at",
            "created_by",
            "environment",
            "is_current",
            "master_key_version",
            "version"
        ]
    );
}

#[tokio::test]
async fn a_rollback_makes_the_old_key_current_as_a_new_version() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "kopokopo", "sandbox", "rollback-original-key")
        .await;
    let id = created["id"].as_i64().unwrap();
    app.post(
        &format!("/payments/credentials/{id}/rotate/"),
        &alice.access,
        &json!({ "private_key": "rollback-bad-new-key" }),
    )
    .await;

    let res = app
        .post(
            &format!("/payments/credentials/{id}/rollback/"),
            &alice.access,
            &json!({ "version": 1 }),
        )
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["message"], "Private key rolled back to version 1");
    assert_eq!(body["credentials"]["version"], 3);
    let revealed: Value = reveal(&app, &alice.access, id).await.json().await.unwrap();
    assert_eq!(revealed["private_key"], "rollback-original-key");
    let res = app
        .post(
            &format!("/payments/credentials/{id}/rollback/"),
            &alice.access,
            &json!({ "version": 9 }),
        )
        .await;
    assert_error(
        res,
        StatusCode::BAD_REQUEST,
        "This credential has no such version",
    )
    .await;
}

#[tokio::test]
async fn a_stale_if_match_gets_412_and_changes_nothing() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "jpay", "sandbox", "if-match-key-0001")
        .await;
    let id = created["id"].as_i64().unwrap();
    let path = format!("/payments/credentials/{id}/rotate/");
    let send = |version: &str, key: &str| {
        app.client
            .post(app.url(&path))
            .bearer_auth(&alice.access)
            .header("If-Match", version)
            .json(&json!({ "private_key": key }))
            .send()
    };

    let fresh = send("\"1\"", "if-match-key-0002").await.unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    assert_eq!(fresh.headers()["etag"], "\"2\"");
    let stale = send("\"1\"", "if-match-key-0003").await.unwrap();
    assert_error(
        stale,
        StatusCode::PRECONDITION_FAILED,
        "The credential has changed since that version; its current version is 2",
    )
    .await;
    let revealed: Value = reveal(&app, &alice.access, id).await.json().await.unwrap();
    assert_eq!(revealed["private_key"], "if-match-key-0002");
    // Other writes honour it too.
    let toggle = app
        .client
        .post(app.url(&format!("/payments/credentials/{id}/toggle-status/")))
        .bearer_auth(&alice.access)
        .header("If-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(toggle.status(), StatusCode::PRECONDITION_FAILED);
    let bad = send("not-a-version", "if-match-key-0004").await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn versions_and_rollback_of_another_owners_credential_answer_like_a_missing_id() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let mallory = app.user().await;
    let created = app
        .create_credential(&alice, "pagamio", "live", "alice-private-key-001")
        .await;
    let id = created["id"].as_i64().unwrap();
    let missing = 4_503_599_627_370_495i64;

    for (theirs, nothing) in [
        (
            app.get(
                &format!("/payments/credentials/{id}/versions/"),
                &mallory.access,
            )
            .await,
            app.get(
                &format!("/payments/credentials/{missing}/versions/"),
                &mallory.access,
            )
            .await,
        ),
        (
            app.post(
                &format!("/payments/credentials/{id}/rollback/"),
                &mallory.access,
                &json!({ "version": 1 }),
            )
            .await,
            app.post(
                &format!("/payments/credentials/{missing}/rollback/"),
                &mallory.access,
                &json!({ "version": 1 }),
            )
            .await,
        ),
    ] {
        assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
        assert_eq!(nothing.status(), StatusCode::NOT_FOUND);
        assert_eq!(theirs.text().await.unwrap(), nothing.text().await.unwrap());
    }
    let body: Value = app
        .get(
            &format!("/payments/credentials/{id}/versions/"),
            &alice.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["current_version"], 1);
}

#[tokio::test]
async fn an_admin_rotates_any_owners_key_and_is_recorded_as_the_actor() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "instasend", "live", "ISSecretKey_live_original")
        .await;
    let id = created["id"].as_i64().unwrap();

    let res = app
        .post(
            &format!("/admin/credentials/{id}/rotate/"),
            &admin.access,
            &json!({ "private_key": "ISSecretKey_live_by_admin" }),
        )
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let revealed: Value = reveal(&app, &alice.access, id).await.json().await.unwrap();
    assert_eq!(revealed["private_key"], "ISSecretKey_live_by_admin");
    let entry = app.sql_lines(&format!(
        "SELECT actor_name || '|' || CAST(owner_id AS TEXT) AS line FROM audit_log \
         WHERE action = 'credential.rotate' AND credential_id = {id}"
    ));
    assert_eq!(entry, vec![format!("{}|{}", admin.username, alice.id)]);
    let versions: Value = app
        .get(&format!("/admin/credentials/{id}/versions/"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        versions["versions"][0]["created_by"]["username"],
        admin.username.as_str()
    );
    // A non-admin cannot use the admin route, even on their own credential.
    let res = app
        .post(
            &format!("/admin/credentials/{id}/rotate/"),
            &alice.access,
            &json!({ "private_key": "ISSecretKey_live_nope00" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}
