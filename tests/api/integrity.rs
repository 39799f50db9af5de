//! Integrity against an operator's mistake (issue 11, SPEC §11): the keyring must belong to
//! the database, master-key rotations never race each other into loss, and a retired
//! version's tokens stop working on every node at once.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use hazina::clock::Clock;
use hazina::crypto::Keyring;
use hazina::domain::Role;
use hazina::startup::Application;

use crate::helpers::*;

/// `hazina <args>` on the app's database with the keyring at `keyring`, killed (and reported
/// as a failure) if it has not exited by the deadline: a server that should have refused to
/// start would otherwise run for ever.
pub(crate) fn run_hazina(app: &TestApp, keyring: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(args)
        .current_dir(app.dir.path())
        .env("HAZINA_DATABASE_URL", app.db.url())
        .env("HAZINA_KEYRING", keyring)
        .env("HAZINA_BIND", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`hazina {}` was still running after 60 s; stderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A refusal is a non-zero exit with exactly one line on standard error.
fn assert_refused_in_one_line(out: &Output, what: &str) -> String {
    let err = stderr_of(out);
    assert!(!out.status.success(), "{what} was accepted: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line expected, got {err:?}");
    assert!(lines[0].contains("keyring"), "{what}: {err}");
    err
}

async fn merchant_with_keys(app: &TestApp, n: usize) -> Vec<(String, i64, String)> {
    let user = app.user().await;
    let mut out = Vec::new();
    for (i, (provider, env)) in [
        ("mpesa", "sandbox"),
        ("mpesa", "live"),
        ("kopokopo", "sandbox"),
        ("kopokopo", "live"),
        ("jpay", "sandbox"),
        ("pagamio", "live"),
    ]
    .iter()
    .take(n)
    .enumerate()
    {
        let key = format!("integrity-key-{i}-{}", uuid::Uuid::new_v4().simple());
        let created = app.create_credential(&user, provider, env, &key).await;
        out.push((user.access.clone(), created["id"].as_i64().unwrap(), key));
    }
    out
}

async fn assert_every_key_opens(app: &TestApp, creds: &[(String, i64, String)]) {
    for (token, id, key) in creds {
        let res = app
            .get(
                &format!("/payments/credentials/{id}/get-private-key/"),
                token,
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "credential {id} does not open"
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(&body["private_key"], key);
    }
}

fn kek_counts(app: &TestApp) -> Vec<(i32, i64)> {
    hazina::repo::credentials::count_by_kek_version(&mut app.conn()).unwrap()
}

fn keyring_versions(app: &TestApp) -> Vec<u32> {
    Keyring::load_file(&app.keyring_path).unwrap().versions()
}

/// Waits (bounded) until no master-key rotation is unfinished.
async fn rotations_settle(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while hazina::repo::keys::unfinished_rotation(&mut app.conn())
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "a rotation never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After `rotations` rotations from a one-version keyring: exactly that many new versions,
/// every row under the newest one, every key opening.
async fn assert_rotated_cleanly(
    app: &TestApp,
    creds: &[(String, i64, String)],
    rotations: usize,
    round: usize,
) {
    let versions = keyring_versions(app);
    assert_eq!(
        versions.len(),
        1 + rotations,
        "round {round}: expected exactly one new version per rotation, have {versions:?}"
    );
    let newest = *versions.iter().max().unwrap() as i32;
    assert_eq!(
        kek_counts(app),
        vec![(newest, creds.len() as i64)],
        "round {round}: every row must be under the newest version"
    );
    // Rows only ever move forward: the newest key wrapped each stored key exactly once.
    let wear = hazina::repo::keys::wear(&mut app.conn()).unwrap();
    let newest_wear = wear
        .iter()
        .find(|(v, _)| *v == newest)
        .map_or(0, |(_, n)| *n);
    assert_eq!(
        newest_wear,
        creds.len() as i64,
        "round {round}: key wear {wear:?}"
    );
    assert_every_key_opens(app, creds).await;
}

#[tokio::test]
async fn a_missing_keyring_beside_a_database_that_holds_keys_is_refused_and_no_file_is_created() {
    let app = spawn_app().await;
    merchant_with_keys(&app, 1).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let missing = elsewhere.path().join("hazina.keyring");

    let config = node_config(&app.db, elsewhere.path(), &[]);
    let refused = Application::build(config, Clock::manual(app.clock.now()));
    let message = format!("{:#}", refused.err().expect("a fresh keyring was accepted"));
    assert!(message.contains("keyring"), "{message}");
    assert!(!missing.exists(), "a keyring file was created");

    for args in [&["serve"][..], &["keys", "status"], &["keys", "rotate"]] {
        let out = run_hazina(&app, &missing, args);
        assert_refused_in_one_line(&out, &args.join(" "));
        assert!(!missing.exists(), "`{}` created a keyring", args.join(" "));
    }
    // Nothing changed for the real keyring.
    assert_eq!(kek_counts(&app), vec![(1, 1)]);
}

#[tokio::test]
async fn a_foreign_keyring_is_refused_by_serve_and_by_every_key_command() {
    let app = spawn_app().await;
    let creds = merchant_with_keys(&app, 2).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let foreign = elsewhere.path().join("hazina.keyring");
    Keyring::generate().write_new_file(&foreign).unwrap();

    let config = node_config(&app.db, elsewhere.path(), &[]);
    let refused = Application::build(config, Clock::manual(app.clock.now()));
    assert!(refused.is_err(), "a foreign keyring was accepted");

    for args in [
        &["serve"][..],
        &["keys", "status"],
        &["keys", "rotate"],
        &["keys", "rotate", "--resume"],
    ] {
        let out = run_hazina(&app, &foreign, args);
        assert_refused_in_one_line(&out, &args.join(" "));
    }
    // The foreign keyring was not extended and no row moved.
    assert_eq!(Keyring::load_file(&foreign).unwrap().versions(), vec![1]);
    assert_eq!(kek_counts(&app), vec![(1, 2)]);
    assert_every_key_opens(&app, &creds).await;
}

#[tokio::test]
async fn a_development_keyring_is_still_created_for_an_empty_database() {
    let (db, dir) = create_test_database();
    let keyring = dir.path().join("hazina.keyring");
    assert!(!keyring.exists());
    let app = Application::build(node_config(&db, dir.path(), &[]), Clock::System);
    assert!(app.is_ok(), "{:#}", app.err().unwrap());
    assert!(keyring.exists());
}

#[tokio::test]
async fn two_cli_rotations_started_together_fifty_times_lose_no_key() {
    let app = spawn_app().await;
    let creds = merchant_with_keys(&app, 6).await;
    let keyring = app.keyring_path.clone();
    for round in 0..50 {
        let a = {
            let (app_db, dir, k) = (app.db.url(), app.dir.path().to_owned(), keyring.clone());
            std::thread::spawn(move || rotate_cli(&app_db, &dir, &k))
        };
        let b = {
            let (app_db, dir, k) = (app.db.url(), app.dir.path().to_owned(), keyring.clone());
            std::thread::spawn(move || rotate_cli(&app_db, &dir, &k))
        };
        for out in [a.join().unwrap(), b.join().unwrap()] {
            assert!(out.status.success(), "round {round}: {}", stderr_of(&out));
        }
        assert_rotated_cleanly(&app, &creds, 2 * (round + 1), round).await;
    }
}

fn rotate_cli(url: &str, dir: &Path, keyring: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(["keys", "rotate"])
        .current_dir(dir)
        .env("HAZINA_DATABASE_URL", url)
        .env("HAZINA_KEYRING", keyring)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_cli_rotation_and_an_api_rotation_started_together_fifty_times_lose_no_key() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let creds = merchant_with_keys(&app, 6).await;
    for round in 0..50 {
        let cli = {
            let (url, dir, k) = (
                app.db.url(),
                app.dir.path().to_owned(),
                app.keyring_path.clone(),
            );
            std::thread::spawn(move || rotate_cli(&url, &dir, &k))
        };
        let res = app.post_empty("/admin/keys/rotate/", &admin.access).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "round {round}");
        let out = cli.join().unwrap();
        assert!(out.status.success(), "round {round}: {}", stderr_of(&out));
        rotations_settle(&app).await;
        assert_rotated_cleanly(&app, &creds, 2 * (round + 1), round).await;
    }
}

#[tokio::test]
async fn api_rotations_on_two_nodes_started_together_fifty_times_lose_no_key() {
    let a = spawn_app().await;
    let b = a.spawn_node().await;
    let admin = a.user_with_role(Role::Admin).await;
    let creds = merchant_with_keys(&a, 6).await;
    for round in 0..50 {
        let (ra, rb) = tokio::join!(
            a.post_empty("/admin/keys/rotate/", &admin.access),
            b.post_empty("/admin/keys/rotate/", &admin.access)
        );
        assert_eq!(ra.status(), StatusCode::ACCEPTED, "round {round}");
        assert_eq!(rb.status(), StatusCode::ACCEPTED, "round {round}");
        rotations_settle(&a).await;
        assert_rotated_cleanly(&a, &creds, 2 * (round + 1), round).await;
        assert_every_key_opens(&b, &creds).await;
    }
}

#[tokio::test]
async fn a_retired_versions_tokens_are_refused_on_every_node_at_once() {
    let a = spawn_app().await;
    let b = a.spawn_node().await;
    let user = a.user().await;
    let key = "retired-version-key-0001";
    let created = a.create_credential(&user, "jpay", "live", key).await;
    let creds = [(
        user.access.clone(),
        created["id"].as_i64().unwrap(),
        key.to_owned(),
    )];
    // The token is signed under version 1 and works on both nodes.
    for node in [&a, &b] {
        assert_eq!(
            node.get("/payments/credentials/", &user.access)
                .await
                .status(),
            StatusCode::OK
        );
    }
    let out = run_hazina(&a, &a.keyring_path, &["keys", "rotate"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = run_hazina(&a, &a.keyring_path, &["keys", "retire", "--version", "1"]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    for node in [&a, &b] {
        let res = node.get("/payments/credentials/", &user.access).await;
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "a token of retired version 1 still works"
        );
        let refresh = node
            .client
            .post(node.url("/users/token/refresh/"))
            .json(&serde_json::json!({ "refresh_token": user.refresh }))
            .send()
            .await
            .unwrap();
        assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
    }
    // A fresh login is signed under the new version and works everywhere.
    let fresh: Value = a
        .login(&user.username, PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let token = fresh["access_token"].as_str().unwrap().to_owned();
    for node in [&a, &b] {
        let creds: Vec<_> = creds
            .iter()
            .map(|(_, id, key)| (token.clone(), *id, key.clone()))
            .collect();
        assert_every_key_opens(node, &creds).await;
    }
}

// ---------------------------------------------------------------------------------------
// A database writer without the keyring is never obeyed (SPEC §11).

/// `owner_id|reason` of every tampering entry in the audit log.
fn tampering_entries(app: &TestApp) -> Vec<String> {
    app.sql_lines(
        "SELECT COALESCE(CAST(owner_id AS TEXT), '-') || '|' || COALESCE(reason, '-') AS line \
         FROM audit_log WHERE action = 'integrity.violation' ORDER BY seq",
    )
}

fn assert_tampering_audited(app: &TestApp, owner_id: i64) {
    let entries = tampering_entries(app);
    assert!(
        entries.contains(&format!("{owner_id}|row_tampered")),
        "no tampering entry for owner {owner_id}: {entries:?}"
    );
}

#[tokio::test]
async fn a_password_hash_planted_in_the_database_logs_nobody_in_and_is_audited() {
    let app = spawn_app().await;
    let victim = app.user().await;
    let key = "victims-live-key-000001";
    let created = app.create_credential(&victim, "mpesa", "live", key).await;
    let planted = hazina::auth::password::hash(&secrecy::SecretString::from(
        "attacker-chosen-password".to_owned(),
    ))
    .unwrap();
    assert_eq!(
        app.sql_execute(&format!(
            "UPDATE users SET password_hash = '{planted}' WHERE id = {}",
            victim.id
        )),
        1
    );

    let res = app
        .login(&victim.username, "attacker-chosen-password")
        .await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "the planted hash was obeyed"
    );
    assert_tampering_audited(&app, victim.id);
    // The victim's own session rides on the same row: it is refused too, and nothing opens.
    let id = created["id"].as_i64().unwrap();
    let res = app
        .get(
            &format!("/payments/credentials/{id}/get-private-key/"),
            &victim.access,
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(!res.text().await.unwrap().contains(key));
}

#[tokio::test]
async fn a_role_raised_in_the_database_is_refused_and_audited() {
    let app = spawn_app().await;
    let user = app.user().await;
    assert_eq!(
        app.get("/admin/users/", &user.access).await.status(),
        StatusCode::FORBIDDEN
    );
    app.sql_execute(&format!(
        "UPDATE users SET role = 'admin' WHERE id = {}",
        user.id
    ));
    let res = app.get("/admin/users/", &user.access).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "the edited role was obeyed"
    );
    let res = app.login(&user.username, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_tampering_audited(&app, user.id);
}

#[tokio::test]
async fn a_disabled_flag_cleared_in_the_database_revives_nobody() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let user = app.user().await;
    let res = app
        .post_empty(
            &format!("/admin/users/{}/disable/", user.username),
            &admin.access,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    app.sql_execute(&format!(
        "UPDATE users SET is_disabled = {} WHERE id = {}",
        match backend() {
            Backend::Sqlite => "0",
            Backend::Postgres => "false",
        },
        user.id
    ));
    assert_eq!(
        app.login(&user.username, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED,
        "the cleared flag was obeyed"
    );
    assert_eq!(
        app.get("/payments/credentials/", &user.access)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_tampering_audited(&app, user.id);
    // An admin's change to an edited row is refused rather than signing the edit.
    let res = app
        .put(
            &format!("/admin/users/{}/allowlist/", user.username),
            &admin.access,
            &serde_json::json!({ "allowed_cidrs": ["127.0.0.0/8"] }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_refresh_token_of_an_edited_user_is_refused() {
    let app = spawn_app().await;
    let user = app.user().await;
    app.sql_execute(&format!(
        "UPDATE users SET role = 'auditor' WHERE id = {}",
        user.id
    ));
    let res = app
        .client
        .post(app.url("/users/token/refresh/"))
        .json(&serde_json::json!({ "refresh_token": user.refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_tampering_audited(&app, user.id);
}

#[tokio::test]
async fn a_credential_whose_owner_or_environment_was_edited_opens_nothing_for_its_owner() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let other = app.user().await;
    let key = "owner-edit-live-key-0001";
    let created = app.create_credential(&owner, "kopokopo", "live", key).await;
    let id = created["id"].as_i64().unwrap();
    // Move the row to another owner: the new "owner" finds it, but it does not open.
    app.sql_execute(&format!(
        "UPDATE credentials SET owner_id = {} WHERE id = {id}",
        other.id
    ));
    let res = app
        .get(
            &format!("/payments/credentials/{id}/get-private-key/"),
            &other.access,
        )
        .await;
    assert_ne!(res.status(), StatusCode::OK, "a moved row was revealed");
    assert!(!res.text().await.unwrap().contains(key));
    // Back to its owner, but flipped to sandbox: a rotation is refused (nothing is sealed to
    // the edited binding) and the reveal opens nothing.
    app.sql_execute(&format!(
        "UPDATE credentials SET owner_id = {}, environment = 'sandbox' WHERE id = {id}",
        owner.id
    ));
    let res = app
        .post(
            &format!("/payments/credentials/{id}/rotate/"),
            &owner.access,
            &serde_json::json!({ "private_key": "a-new-live-key-000002" }),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CONFLICT,
        "a new key was sealed to an edited row"
    );
    let res = app
        .get(
            &format!("/payments/credentials/{id}/get-private-key/"),
            &owner.access,
        )
        .await;
    assert_ne!(res.status(), StatusCode::OK);
    assert!(!res.text().await.unwrap().contains(key));
    assert_tampering_audited(&app, owner.id);
}

// ---------------------------------------------------------------------------------------
// Upgrading a populated database of the previous schema (migrations up to 000005).

#[tokio::test]
async fn a_database_from_before_row_macs_is_refused_and_nothing_in_it_is_signed() {
    use diesel::prelude::*;
    use diesel_migrations::MigrationHarness;
    use hazina::db::schema::users as u;

    let (db, dir) = create_test_database();
    let keyring_path = dir.path().join("hazina.keyring");
    Keyring::generate().write_new_file(&keyring_path).unwrap();
    let keyring = Keyring::load_file(&keyring_path).unwrap();
    let url = hazina::config::DatabaseUrl::parse(&db.url()).unwrap();
    let mut conn = hazina::db::establish(&url).unwrap();
    // The previous release's schema: every migration before this issue's.
    for _ in 0..5 {
        match &mut conn {
            hazina::db::DbConn::Sqlite(c) => {
                c.run_next_migration(hazina::db::SQLITE_MIGRATIONS).unwrap();
            }
            hazina::db::DbConn::Postgres(c) => {
                c.run_next_migration(hazina::db::POSTGRES_MIGRATIONS)
                    .unwrap();
            }
        }
    }
    let hash =
        hazina::auth::password::hash(&secrecy::SecretString::from(PASSWORD.to_owned())).unwrap();
    let (owner_id, cred_id, key) = (7_001_i64, 9_001_i64, "pre-upgrade-live-key-0001");
    diesel::insert_into(u::table)
        .values((
            u::id.eq(owner_id),
            u::username.eq("preupgrade"),
            u::password_hash.eq(&hash),
            u::role.eq("user"),
            u::is_disabled.eq(false),
            u::created_at.eq(0_i64),
        ))
        .execute(&mut conn)
        .unwrap();
    insert_earlier_release_credential(&mut conn, &keyring, owner_id, cred_id, key);
    drop(conn);

    // A database from before row MACs has rows that no keyring ever vouched for, exactly what
    // a writer who empties `key_versions` and clears every MAC leaves: the new release refuses
    // it (SPEC §14) instead of signing whatever it holds. Such a database is upgraded through
    // the release before this one.
    let config = node_config(&db, dir.path(), &[]);
    let err = match Application::build(config, Clock::manual(0)) {
        Ok(_) => panic!("a database from before row MACs was signed as it stood"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("no master-key versions"), "{err}");
    let mut conn = hazina::db::establish(&url).unwrap();
    let signed: i64 = u::table
        .filter(u::mac.is_not_null())
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(signed, 0, "nothing was signed");
}

// ---------------------------------------------------------------------------------------
// Every change has its audit entry: both commit, or neither does.

fn count(app: &TestApp, table: &str) -> usize {
    app.sql_lines(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) AS line FROM {table}"
    ))[0]
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_change_whose_audit_entry_cannot_be_written_does_not_happen() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let owner = app.user().await;
    let created = app
        .create_credential(&owner, "mpesa", "live", "audited-live-key-0001")
        .await;
    let id = created["id"].as_i64().unwrap();
    let before = (
        count(&app, "credentials"),
        count(&app, "credential_versions"),
        count(&app, "users"),
        count(&app, "services"),
        count(&app, "key_versions"),
    );
    refuse_audit_writes(&app);

    let res = app
        .post(
            "/payments/credentials/",
            &owner.access,
            &serde_json::json!({
                "provider": "jpay", "api_key": "app-key", "private_key": "jpay-secret-0001",
                "environment": "live",
            }),
        )
        .await;
    assert!(res.status().is_server_error(), "{}", res.status());
    let res = app
        .post(
            &format!("/payments/credentials/{id}/rotate/"),
            &owner.access,
            &serde_json::json!({ "private_key": "audited-live-key-0002" }),
        )
        .await;
    assert!(res.status().is_server_error(), "{}", res.status());
    let res = app
        .post_empty(
            &format!("/payments/credentials/{id}/toggle-status/"),
            &owner.access,
        )
        .await;
    assert!(res.status().is_server_error(), "{}", res.status());
    let res = app
        .post(
            "/admin/users/",
            &admin.access,
            &serde_json::json!({ "username": "unrecorded", "password": PASSWORD, "role": "user" }),
        )
        .await;
    assert!(res.status().is_server_error(), "{}", res.status());
    let res = app
        .post(
            "/admin/services/",
            &admin.access,
            &serde_json::json!({ "name": "unrecorded", "identity": "spiffe://x/unrecorded" }),
        )
        .await;
    assert!(res.status().is_server_error(), "{}", res.status());
    let res = app.post_empty("/admin/keys/rotate/", &admin.access).await;
    assert!(res.status().is_server_error(), "{}", res.status());
    for args in [
        &[
            "services",
            "create",
            "--name",
            "cli-svc",
            "--identity",
            "spiffe://x/cli",
        ][..],
        &["keys", "rotate"],
        &["users", "disable", "--username", &owner.username],
    ] {
        let out = run_hazina(&app, &app.keyring_path, args);
        assert!(
            !out.status.success(),
            "`{}` succeeded unrecorded",
            args.join(" ")
        );
    }

    // Nothing happened: no row, no version, no key state, no flag moved.
    let after = (
        count(&app, "credentials"),
        count(&app, "credential_versions"),
        count(&app, "users"),
        count(&app, "services"),
        count(&app, "key_versions"),
    );
    assert_eq!(before, after);
    let current: Value = app
        .get(&format!("/payments/credentials/{id}/"), &owner.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(current["version"], 1);
    assert_eq!(current["is_active"], true);
}

#[tokio::test]
async fn a_cli_change_killed_at_any_point_is_recorded_exactly_when_it_happened() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let out = run_hazina(
        &app,
        &app.keyring_path,
        &[
            "services",
            "create",
            "--name",
            "billing",
            "--identity",
            "spiffe://x/billing",
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    for round in 0..20u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hazina"))
            .args(["grants", "create", "--service", "billing", "--owner"])
            .arg(&owner.username)
            .args(["--provider", "mpesa", "--environment"])
            .arg(if round % 2 == 0 { "live" } else { "sandbox" })
            .current_dir(app.dir.path())
            .env("HAZINA_DATABASE_URL", app.db.url())
            .env("HAZINA_KEYRING", &app.keyring_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // SIGKILL somewhere between start-up and exit (no clean-up runs).
        std::thread::sleep(Duration::from_millis(round * 3));
        let _ = child.kill();
        child.wait().unwrap();
        let grants = count(&app, "grants");
        let entries = app
            .sql_lines(
                "SELECT CAST(seq AS TEXT) AS line FROM audit_log WHERE action = 'admin.grant_create'",
            )
            .len();
        assert_eq!(
            grants, entries,
            "round {round}: a grant without its entry (or the reverse)"
        );
        // Start the next round from no live grant.
        app.sql("DELETE FROM grants");
        app.sql("DELETE FROM audit_log WHERE action = 'admin.grant_create'");
    }
}

// ---------------------------------------------------------------------------------------
// Login throttling is atomic; allowlists apply to login and refresh; proxies are believed
// only when trusted.

#[tokio::test]
async fn fifty_concurrent_wrong_logins_for_one_account_get_at_most_the_limit_of_password_checks() {
    let app = spawn_app_with(&[
        ("HAZINA_LOGIN_MAX_FAILURES_ACCOUNT", "10"),
        ("HAZINA_LOGIN_MAX_FAILURES_ADDRESS", "100000"),
    ])
    .await;
    let victim = app.user().await;
    let attempts = (0..50).map(|i| {
        let app = &app;
        let name = victim.username.clone();
        async move {
            app.login(&name, &format!("wrong-guess-{i:04}"))
                .await
                .status()
        }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(checked + refused, 50, "{statuses:?}");
    assert!(
        checked <= 10,
        "{checked} passwords were checked, the limit is 10"
    );
    let bad_passwords = app.sql_lines(&format!(
        "SELECT CAST(seq AS TEXT) AS line FROM audit_log \
         WHERE action = 'auth.login' AND reason = 'bad_password' AND owner_id = {}",
        victim.id
    ));
    assert!(bad_passwords.len() <= 10, "{} hashed", bad_passwords.len());
    // The right password is refused too while the block lasts.
    assert_eq!(
        app.login(&victim.username, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_user_outside_their_allowlist_can_neither_log_in_nor_refresh() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let user = app.user().await;
    let res = app
        .put(
            &format!("/admin/users/{}/allowlist/", user.username),
            &admin.access,
            &serde_json::json!({ "allowed_cidrs": ["10.0.0.0/8"] }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.login(&user.username, PASSWORD).await.status(),
        StatusCode::FORBIDDEN,
        "a login from outside the allowlist"
    );
    let res = app
        .client
        .post(app.url("/users/token/refresh/"))
        .json(&serde_json::json!({ "refresh_token": user.refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "a refresh from outside the allowlist"
    );
}

/// The source address recorded for the latest login entry.
fn last_login_source(app: &TestApp) -> String {
    app.sql_lines(
        "SELECT COALESCE(source_ip, '-') AS line FROM audit_log \
         WHERE action = 'auth.login' ORDER BY seq DESC",
    )
    .into_iter()
    .next()
    .unwrap()
}

async fn login_via(app: &TestApp, user: &TestUser, forwarded: Option<&str>) -> StatusCode {
    let mut req = app
        .client
        .post(app.url("/users/login/"))
        .json(&serde_json::json!({ "username": user.username, "password": PASSWORD }));
    if let Some(f) = forwarded {
        req = req.header("X-Forwarded-For", f);
    }
    req.send().await.unwrap().status()
}

#[tokio::test]
async fn a_forwarded_for_header_is_believed_only_from_a_trusted_proxy() {
    // By default nobody is trusted: the header is the client's word and ignored.
    let app = spawn_app().await;
    let user = app.user().await;
    assert_eq!(
        login_via(&app, &user, Some("203.0.113.9")).await,
        StatusCode::OK
    );
    assert_eq!(last_login_source(&app), "127.0.0.1");

    // Behind a trusted proxy (the test client's loopback), the rightmost untrusted hop is the
    // client; what the client put left of it is not believed.
    let app = spawn_app_with(&[("HAZINA_TRUSTED_PROXIES", "127.0.0.1/32,10.0.0.0/8")]).await;
    let admin = app.user_with_role(Role::Admin).await;
    let user = app.user().await;
    let chain = "198.51.100.7, 203.0.113.9, 10.1.2.3";
    assert_eq!(login_via(&app, &user, Some(chain)).await, StatusCode::OK);
    assert_eq!(last_login_source(&app), "203.0.113.9");
    // The allowlist judges that address.
    let res = app
        .put(
            &format!("/admin/users/{}/allowlist/", user.username),
            &admin.access,
            &serde_json::json!({ "allowed_cidrs": ["203.0.113.0/24"] }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(login_via(&app, &user, Some(chain)).await, StatusCode::OK);
    assert_eq!(
        login_via(&app, &user, Some("203.0.113.9, 198.51.100.7")).await,
        StatusCode::FORBIDDEN,
        "a spoofed hop left of the real client was believed"
    );
    assert_eq!(login_via(&app, &user, None).await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn readyz_fails_when_the_keyring_file_is_swapped_under_a_running_server() {
    let app = spawn_app().await;
    merchant_with_keys(&app, 1).await;
    let ready = |app: &TestApp| {
        let url = app.url("/readyz");
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap().status() }
    };
    assert_eq!(ready(&app).await, StatusCode::OK);
    // Another installation's keyring lands on the same path (a wrong secret mounted).
    let elsewhere = tempfile::tempdir().unwrap();
    let foreign = elsewhere.path().join("foreign.keyring");
    Keyring::generate().write_new_file(&foreign).unwrap();
    std::fs::rename(&foreign, &app.keyring_path).unwrap();
    assert_eq!(ready(&app).await, StatusCode::SERVICE_UNAVAILABLE);
}
