//! Integrity, second pass (issue 29, SPEC §14): nothing the database holds vouches for itself.
//! Each test is a database writer's second step after §11's defences held against the first.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use reqwest::StatusCode;
use serde_json::{json, Value};

use hazina::domain::Role;
use hazina::startup::Application;

use crate::helpers::*;
use crate::integrity::run_hazina;

/// Empties the master-key versions and clears every row MAC, then makes `mallory` an admin
/// and gives `victim` mallory's password hash: what a writer without the keyring does to
/// have the next start take the database for one from before row MACs.
const LAUNDER: &str = "DELETE FROM key_versions; \
     UPDATE users SET mac = NULL, mac_version = NULL; \
     UPDATE services SET mac = NULL, mac_version = NULL; \
     UPDATE grants SET mac = NULL, mac_version = NULL;";

fn launder(sql: &dyn Fn(&str), victim: i64, mallory: i64) {
    sql(LAUNDER);
    sql(&format!(
        "UPDATE users SET role = 'admin' WHERE id = {mallory}; \
         UPDATE users SET password_hash = (SELECT password_hash FROM \
         (SELECT password_hash FROM users WHERE id = {mallory}) AS x) WHERE id = {victim};"
    ));
}

fn signed_users(app: &TestApp) -> Vec<String> {
    app.sql_lines("SELECT CAST(COUNT(*) AS TEXT) AS line FROM users WHERE mac IS NOT NULL")
}

#[tokio::test]
async fn emptied_key_versions_and_cleared_macs_are_refused_at_start_and_by_the_cli_and_nothing_is_re_signed(
) {
    let app = spawn_app().await;
    let victim = app.user().await;
    let mallory = app.user().await;
    app.create_credential(&victim, "mpesa", "live", "victims-live-key-00001")
        .await;
    launder(&|s| app.sql(s), victim.id, mallory.id);

    let config = node_config(&app.db, app.dir.path(), &[]);
    let err = match Application::build(config, app.clock.clone()) {
        Ok(_) => panic!("a node started on the laundered database"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("no master-key versions"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for args in [
        &["users", "list"][..],
        &["keys", "status"],
        &["audit", "verify"],
    ] {
        let out = run_hazina(&app, &app.keyring_path, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "`hazina {}` obeyed it",
            args.join(" ")
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    assert_eq!(
        signed_users(&app),
        vec!["0".to_owned()],
        "a row was re-signed"
    );
}

fn hazina_on(app: &TestApp, database: &str, keyring: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(args)
        .current_dir(app.dir.path())
        .env("HAZINA_DATABASE_URL", database)
        .env("HAZINA_KEYRING", keyring)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_laundered_backup_is_refused_by_restore_and_nothing_is_re_signed() {
    if backend() == Backend::Postgres {
        // PostgreSQL restores through pg_restore; `hazina restore` is SQLite's.
        return;
    }
    let app = spawn_app().await;
    let victim = app.user().await;
    let mallory = app.user().await;
    let backup = app.dir.path().join("laundered.db");
    let out = run_hazina(
        &app,
        &app.keyring_path,
        &["backup", "--to", backup.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let c = std::cell::RefCell::new(
            diesel::SqliteConnection::establish(backup.to_str().unwrap()).unwrap(),
        );
        launder(
            &|s| c.borrow_mut().batch_execute(s).unwrap(),
            victim.id,
            mallory.id,
        );
    }
    let target = app.dir.path().join("target.db");
    let target_url = format!("sqlite://{}", target.display());
    let out = hazina_on(
        &app,
        &target_url,
        &app.keyring_path,
        &["restore", "--from", backup.to_str().unwrap()],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the laundered backup was restored: {said}"
    );
    assert!(said.contains("no master-key versions"), "{said}");
    assert!(!target.exists(), "nothing left behind");
}

fn sql_bool(b: bool) -> &'static str {
    match (backend(), b) {
        (Backend::Sqlite, true) => "1",
        (Backend::Sqlite, false) => "0",
        (Backend::Postgres, true) => "true",
        (Backend::Postgres, false) => "false",
    }
}

/// A blob literal for hex bytes.
fn sql_blob(hex: &str) -> String {
    match backend() {
        Backend::Sqlite => format!("X'{hex}'"),
        Backend::Postgres => format!("decode('{hex}', 'hex')"),
    }
}

/// The hex of a blob column, as text.
fn hex_of(column: &str) -> String {
    match backend() {
        Backend::Sqlite => format!("lower(hex({column}))"),
        Backend::Postgres => format!("encode({column}, 'hex')"),
    }
}

/// `reason` of every integrity entry about `owner_id`.
fn violations(app: &TestApp, owner_id: i64) -> Vec<String> {
    app.sql_lines(&format!(
        "SELECT COALESCE(reason, '-') AS line FROM audit_log \
         WHERE action = 'integrity.violation' AND owner_id = {owner_id} ORDER BY seq"
    ))
}

/// Starting a node on the app's database fails; its error, in one line.
fn start_is_refused(app: &TestApp) -> String {
    let config = node_config(&app.db, app.dir.path(), &[]);
    let err = match Application::build(config, app.clock.clone()) {
        Ok(_) => panic!("a node started on the edited database"),
        Err(e) => format!("{e:#}"),
    };
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[tokio::test]
async fn a_database_whose_integrity_marker_was_deleted_or_edited_is_refused_at_start() {
    let app = spawn_app().await;
    app.user().await;
    app.sql("UPDATE integrity_marker SET marked_at = marked_at + 1");
    let err = start_is_refused(&app);
    assert!(err.contains("integrity marker"), "{err}");
    app.sql("DELETE FROM integrity_marker");
    let err = start_is_refused(&app);
    assert!(err.contains("integrity marker"), "{err}");
    let out = run_hazina(&app, &app.keyring_path, &["users", "list"]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn a_user_row_written_back_after_a_disable_and_a_password_reset_is_refused_as_replayed() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let victim = app.user().await;
    let saved = app.sql_lines(&format!(
        "SELECT password_hash || '|' || {} || '|' || CAST(mac_version AS TEXT) || '|' || \
         CAST(generation AS TEXT) AS line FROM users WHERE id = {}",
        hex_of("mac"),
        victim.id
    ));
    let saved: Vec<&str> = saved[0].split('|').collect();

    let path = |what: &str| format!("/admin/users/{}/{what}/", victim.username);
    let res = app
        .put(
            &path("password"),
            &admin.access,
            &json!({ "password": "a-brand-new-password-42" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app.post_empty(&path("disable"), &admin.access).await;
    assert_eq!(res.status(), StatusCode::OK);

    app.sql_execute(&format!(
        "UPDATE users SET password_hash = '{}', is_disabled = {}, mac = {}, mac_version = {}, \
         generation = {} WHERE id = {}",
        saved[0],
        sql_bool(false),
        sql_blob(saved[1]),
        saved[2],
        saved[3],
        victim.id
    ));
    let res = app.login(&victim.username, &victim.password).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "the old password logged in"
    );
    assert!(
        violations(&app, victim.id).contains(&"row_replayed".to_owned()),
        "{:?}",
        violations(&app, victim.id)
    );
}

#[tokio::test]
async fn a_revoked_session_cleared_or_written_back_in_the_database_stays_revoked() {
    let app = spawn_app().await;
    let user = app.user().await;
    let saved = app.sql_lines(&format!(
        "SELECT id || '|' || {} || '|' || CAST(generation AS TEXT) AS line FROM sessions \
         WHERE user_id = {}",
        hex_of("mac"),
        user.id
    ));
    let saved: Vec<&str> = saved[0].split('|').collect();
    let res = app.post_empty("/users/logout/", &user.access).await;
    assert_eq!(res.status(), StatusCode::OK);

    app.sql_execute(&format!(
        "UPDATE sessions SET revoked_at = NULL WHERE id = '{}'",
        saved[0]
    ));
    let res = app.get("/payments/credentials/", &user.access).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "cleared revocation");
    app.sql_execute(&format!(
        "UPDATE sessions SET revoked_at = NULL, mac = {}, generation = {} WHERE id = '{}'",
        sql_blob(saved[1]),
        saved[2],
        saved[0]
    ));
    let res = app.get("/payments/credentials/", &user.access).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "written-back session"
    );
    assert!(violations(&app, user.id).contains(&"row_replayed".to_owned()));
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn webhook_verify(app: &TestApp, token: &str, id: i64, secret: &str) -> Value {
    use base64::Engine;
    let body = br#"{"topic":"buygoods_transaction_received","amount":"1000000"}"#;
    let res = app
        .post(
            &format!("/payments/credentials/{id}/operations/webhook-verify/"),
            token,
            &json!({
                "body_base64": base64::engine::general_purpose::STANDARD.encode(body),
                "signature": hmac_hex(secret, body),
            }),
        )
        .await;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    json!({ "status": status.as_u16(), "body": body })
}

/// A KopoKopo credential whose webhook secret was rotated away from a leaked one, with the
/// grace window over.
async fn rotated_away_from_a_leak(app: &TestApp) -> (TestUser, i64) {
    let owner = app.user().await;
    let res = app
        .post(
            "/payments/credentials/",
            &owner.access,
            &json!({
                "provider": "kopokopo", "environment": "live", "api_key": "client-id",
                "private_key": "client-secret-0123",
                "secrets": { "webhook_secret": "leaked-webhook-secret" },
            }),
        )
        .await;
    let id = body_of(res, StatusCode::CREATED).await["id"]
        .as_i64()
        .unwrap();
    let res = app
        .post(
            &format!("/payments/credentials/{id}/rotate/"),
            &owner.access,
            &json!({ "secrets": { "webhook_secret": "fresh-webhook-secret" } }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    app.clock.advance(86_400 + 60);
    let login: Value = app
        .login(&owner.username, &owner.password)
        .await
        .json()
        .await
        .unwrap();
    let owner = TestUser {
        access: login["access_token"].as_str().unwrap().to_owned(),
        ..owner
    };
    let leaked = webhook_verify(app, &owner.access, id, "leaked-webhook-secret").await;
    assert_eq!(leaked["body"], json!({ "valid": false }), "{leaked}");
    (owner, id)
}

#[tokio::test]
async fn a_current_version_pointed_back_at_a_leaked_secret_verifies_no_forged_webhook() {
    let app = spawn_app().await;
    let (owner, id) = rotated_away_from_a_leak(&app).await;
    app.sql_execute(&format!(
        "UPDATE credentials SET current_version = 1 WHERE id = {id}"
    ));
    let forged = webhook_verify(&app, &owner.access, id, "leaked-webhook-secret").await;
    assert_ne!(forged["body"]["valid"], json!(true), "{forged}");
    assert!(violations(&app, owner.id).contains(&"row_tampered".to_owned()));
}

#[tokio::test]
async fn a_version_time_moved_into_the_grace_window_verifies_no_forged_webhook() {
    let app = spawn_app().await;
    let (owner, id) = rotated_away_from_a_leak(&app).await;
    app.sql_execute(&format!(
        "UPDATE credential_versions SET created_at = created_at + 86400 * 30 \
         WHERE credential_id = {id} AND version = 2"
    ));
    let forged = webhook_verify(&app, &owner.access, id, "leaked-webhook-secret").await;
    assert_ne!(forged["body"]["valid"], json!(true), "{forged}");
}

#[tokio::test]
async fn a_credential_state_written_back_from_before_a_rotation_is_refused_as_replayed() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let created = app
        .create_credential(&owner, "mpesa", "live", "first-live-key-000001")
        .await;
    let id = created["id"].as_i64().unwrap();
    let saved = app.sql_lines(&format!(
        "SELECT {} || '|' || CAST(generation AS TEXT) AS line FROM credentials WHERE id = {id}",
        hex_of("mac")
    ));
    let saved: Vec<&str> = saved[0].split('|').collect();
    let res = app
        .post(
            &format!("/payments/credentials/{id}/rotate/"),
            &owner.access,
            &json!({ "private_key": "second-live-key-000002" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    app.sql_execute(&format!(
        "UPDATE credentials SET current_version = 1, mac = {}, generation = {} WHERE id = {id}",
        sql_blob(saved[0]),
        saved[1]
    ));
    let res = reveal(&app, &owner.access, id).await;
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "the rolled-back key was revealed"
    );
    assert!(violations(&app, owner.id).contains(&"row_replayed".to_owned()));
}

#[tokio::test]
async fn a_deactivation_flipped_back_in_the_database_is_refused_and_toggle_does_not_sign_it() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let created = app
        .create_credential(&owner, "jpay", "live", "jpay-live-secret-000001")
        .await;
    let id = created["id"].as_i64().unwrap();
    let toggle = format!("/payments/credentials/{id}/toggle-status/");
    let res = app.post_empty(&toggle, &owner.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    app.sql_execute(&format!(
        "UPDATE credentials SET is_active = {} WHERE id = {id}",
        sql_bool(true)
    ));
    let res = reveal(&app, &owner.access, id).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app.post_empty(&toggle, &owner.access).await;
    assert_eq!(
        res.status(),
        StatusCode::CONFLICT,
        "a tampered row was re-signed"
    );
}

#[tokio::test]
async fn key_wear_reset_or_deleted_in_the_database_refuses_the_next_write() {
    let app = spawn_app().await;
    let owner = app.user().await;
    app.create_credential(&owner, "mpesa", "live", "wear-live-key-0000001")
        .await;
    app.sql("UPDATE key_wear SET encryptions = 0");
    let res = app
        .post(
            "/payments/credentials/",
            &owner.access,
            &json!({ "provider": "jpay", "environment": "live", "api_key": "k", "private_key": "wear-jpay-key-0001" }),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CONFLICT,
        "a reset count was obeyed"
    );
    app.sql("DELETE FROM key_wear");
    let res = app
        .post(
            "/payments/credentials/",
            &owner.access,
            &json!({ "provider": "jpay", "environment": "live", "api_key": "k", "private_key": "wear-jpay-key-0001" }),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CONFLICT,
        "a deleted count was restarted"
    );
}

/// A database of the previous release (every migration before row generations), built as that
/// release left it: key versions with check values, users signed in format 1, a credential.
/// `edited` is a user whose role was raised in the database before the upgrade.
#[tokio::test]
async fn an_in_place_upgrade_signs_every_genuine_row_once_and_still_refuses_one_edited_before_it() {
    use diesel::prelude::*;
    use diesel_migrations::MigrationHarness;
    use hazina::crypto::rowmac::{self, Row};
    use hazina::crypto::Keyring;
    use hazina::db::schema::{key_versions as kv, users as u};

    let (db, dir) = create_test_database();
    let keyring_path = dir.path().join("hazina.keyring");
    Keyring::generate().write_new_file(&keyring_path).unwrap();
    let keyring = Keyring::load_file(&keyring_path).unwrap();
    let url = hazina::config::DatabaseUrl::parse(&db.url()).unwrap();
    let mut conn = hazina::db::establish(&url).unwrap();
    for _ in 0..11 {
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
    diesel::insert_into(kv::table)
        .values((
            kv::version.eq(1),
            kv::check_value.eq(keyring.check_value(1).unwrap().to_vec()),
            kv::state.eq("active"),
            kv::created_at.eq(0_i64),
        ))
        .execute(&mut conn)
        .unwrap();
    let hash =
        hazina::auth::password::hash(&secrecy::SecretString::from(PASSWORD.to_owned())).unwrap();
    for (id, name, role) in [(7_001_i64, "genuine", "user"), (7_002, "edited", "user")] {
        let mac = rowmac::sign_format1(
            &keyring,
            1,
            &Row::User {
                id,
                username: name,
                password_hash: &hash,
                role,
                is_disabled: false,
                allowed_cidrs: None,
                generation: 0,
            },
        )
        .unwrap();
        diesel::insert_into(u::table)
            .values((
                u::id.eq(id),
                u::username.eq(name),
                u::password_hash.eq(&hash),
                u::role.eq(role),
                u::is_disabled.eq(false),
                u::created_at.eq(0_i64),
                u::mac.eq(Some(mac)),
                u::mac_version.eq(Some(1)),
            ))
            .execute(&mut conn)
            .unwrap();
    }
    // Edited before the upgrade: the previous release would have refused it too.
    diesel::update(u::table.filter(u::id.eq(7_002_i64)))
        .set(u::role.eq("admin"))
        .execute(&mut conn)
        .unwrap();
    let (cred_id, key) = (9_001_i64, "pre-upgrade-live-key-0001");
    insert_earlier_release_credential(&mut conn, &keyring, 7_001, cred_id, key);
    drop(conn);

    let app = start_on(db.clone(), dir.clone()).await;
    let login: serde_json::Value = app.login("genuine", PASSWORD).await.json().await.unwrap();
    let token = login["access_token"]
        .as_str()
        .expect("the genuine user logs in after the upgrade");
    let res = reveal(&app, token, cred_id).await;
    let body = body_of(res, StatusCode::OK).await;
    assert_eq!(body["private_key"], key);
    assert_eq!(
        app.login("edited", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED,
        "a row edited before the upgrade was signed by it"
    );
    let marked = app.sql_lines(
        "SELECT CAST(COUNT(*) AS TEXT) AS line FROM audit_log WHERE action = 'integrity.marked'",
    );
    assert_eq!(marked, vec!["1".to_owned()]);
    // Once: a restart signs nothing more, and the edited row stays refused.
    let again = app.spawn_node().await;
    assert_eq!(
        again.login("edited", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        again.sql_lines(
            "SELECT CAST(COUNT(*) AS TEXT) AS line FROM audit_log WHERE action = 'integrity.marked'"
        ),
        vec!["1".to_owned()]
    );
}

#[tokio::test]
async fn a_deleted_row_change_index_entry_fails_verification_naming_its_entry() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    app.user().await;
    let verdict = body_of(
        app.get("/audit/verify/", &auditor.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    let seq: i64 = app.sql_lines("SELECT CAST(MAX(seq) AS TEXT) AS line FROM audit_subjects")[0]
        .parse()
        .unwrap();
    assert!(app.sql_execute(&format!("DELETE FROM audit_subjects WHERE seq = {seq}")) >= 1);

    let verdict = body_of(
        app.get("/audit/verify/", &auditor.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert_eq!(verdict["first_bad_seq"], seq, "{verdict}");
}
