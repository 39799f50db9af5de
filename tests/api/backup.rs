//! Backups and restores (issue 16, SPEC §13): `hazina backup` under load, `hazina restore`
//! and what it refuses, and `keys retire` that never silently makes a backup undecryptable.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};

use hazina::domain::Role;

use crate::helpers::*;

/// `hazina <args>` on the app's keyring, against `database` (a URL).
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

fn hazina(app: &TestApp, args: &[&str]) -> Output {
    hazina_on(app, &app.db.url(), &app.keyring_path, args)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Owners' credentials: (token, id, key), and the owners.
async fn seed(app: &TestApp, n: usize) -> Vec<(String, i64, String)> {
    seed_owners(app, n).await.0
}

async fn seed_owners(app: &TestApp, n: usize) -> (Vec<(String, i64, String)>, Vec<TestUser>) {
    let (mut creds, mut owners) = (Vec::new(), Vec::new());
    for i in 0..n {
        let owner = app.user().await;
        let key = format!("backup-key-{i}-{}", uuid::Uuid::new_v4().simple());
        let created = app
            .create_credential(&owner, "kopokopo", "sandbox", &key)
            .await;
        creds.push((owner.access.clone(), created["id"].as_i64().unwrap(), key));
        owners.push(owner);
    }
    (creds, owners)
}

async fn relogin(app: &TestApp, user: &TestUser) -> TestUser {
    let body = body_of(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
    TestUser {
        id: user.id,
        username: user.username.clone(),
        password: user.password.clone(),
        access: body["access_token"].as_str().unwrap().to_owned(),
        refresh: body["refresh_token"].as_str().unwrap().to_owned(),
    }
}

/// Reveals in a loop until stopped: (successes, failures).
fn reveal_load(
    app: &TestApp,
    creds: &[(String, i64, String)],
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<(usize, usize)>,
    Arc<AtomicUsize>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let (client, base) = (app.client.clone(), app.address.clone());
    let creds = creds.to_vec();
    let (stop2, started2) = (stop.clone(), started.clone());
    let task = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        let mut i = 0;
        while !stop2.load(Ordering::SeqCst) {
            let (token, id, key) = &creds[i % creds.len()];
            i += 1;
            let res = client
                .get(format!("{base}/payments/credentials/{id}/get-private-key/"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let good = res.status() == StatusCode::OK
                && res.json::<Value>().await.unwrap()["private_key"] == *key;
            if good {
                ok += 1;
            } else {
                failed += 1;
            }
            started2.fetch_add(1, Ordering::SeqCst);
        }
        (ok, failed)
    });
    (stop, task, started)
}

/// Waits (without sleeping for order) until the load has answered `n` requests.
async fn until_answered(started: &AtomicUsize, n: usize) {
    while started.load(Ordering::SeqCst) < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_backup_taken_under_reveal_load_restores_with_every_key_opening_and_the_audit_verifying()
{
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let creds = seed(&app, 6).await;
    let backup = app.dir.path().join("hazina-backup.db");

    let (stop, load, answered) = reveal_load(&app, &creds);
    until_answered(&answered, 20).await;
    let (app2, to) = (app.db.url(), backup.clone());
    let keyring = app.keyring_path.clone();
    let dir = app.dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_hazina"))
            .args(["backup", "--to"])
            .arg(&to)
            .current_dir(dir.path())
            .env("HAZINA_DATABASE_URL", app2)
            .env("HAZINA_KEYRING", keyring)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let during = answered.load(Ordering::SeqCst);
    until_answered(&answered, during + 20).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("backed up to"), "{}", text(&out));
    assert_eq!(failed, 0, "every reveal during the backup answered");
    assert!(ok >= 40);
    assert_eq!(mode_of(&backup), 0o600);
    // Written after the backup: not in it.
    let later = app.user().await;
    let after = app
        .create_credential(&later, "jpay", "sandbox", "made-after-the-backup")
        .await;
    let after_id = after["id"].as_i64().unwrap();

    let restored = match backend() {
        Backend::Sqlite => {
            let path = app.dir.path().join("restored.db");
            let url = format!("sqlite://{}", path.display());
            let out = hazina_on(
                &app,
                &url,
                &app.keyring_path,
                &["restore", "--from", backup.to_str().unwrap()],
            );
            assert!(out.status.success(), "{}", text(&out));
            assert!(text(&out).contains("audit log verified"), "{}", text(&out));
            assert_eq!(mode_of(&path), 0o600);
            TestDatabase::Sqlite { path }
        }
        Backend::Postgres => {
            // `hazina restore` points at the documented pg_restore procedure ...
            let out = hazina(&app, &["restore", "--from", backup.to_str().unwrap()]);
            assert!(!out.status.success());
            assert!(text(&out).contains("pg_restore"), "{}", text(&out));
            // ... which is what this does.
            restored_postgres(&backup)
        }
    };
    let node = start_on(Arc::new(restored), app.dir.clone()).await;
    assert_all_reveal(&node, &creds).await;
    let res = reveal(&node, &later.access, after_id).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "the later user is not in the backup"
    );
    let verdict = body_of(
        node.get("/audit/verify/", &auditor.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    let restores =
        node.sql_lines("SELECT action AS line FROM audit_log WHERE action = 'backup.restore'");
    assert_eq!(restores.len(), usize::from(backend() == Backend::Sqlite));
    let backups =
        node.sql_lines("SELECT action AS line FROM audit_log WHERE action = 'backup.create'");
    assert!(
        backups.is_empty(),
        "the copy was taken before its own entry"
    );
    let recorded =
        app.sql_lines("SELECT action AS line FROM audit_log WHERE action = 'backup.create'");
    assert_eq!(recorded.len(), 1);
}

/// The README's PostgreSQL procedure: a new database, pg_restore into it.
fn restored_postgres(archive: &Path) -> TestDatabase {
    use diesel::connection::SimpleConnection;
    let admin_url = std::env::var("HAZINA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("hazina_restored_{}", uuid::Uuid::new_v4().simple());
    let mut admin = crate::helpers::pg_connect(&admin_url).unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    let out = Command::new("pg_restore")
        .args(["--no-owner", "--exit-on-error", "--dbname", &url])
        .arg(archive)
        .output()
        .expect("pg_restore runs");
    assert!(out.status.success(), "{}", text(&out));
    TestDatabase::Postgres {
        admin_url,
        name,
        url,
    }
}

#[tokio::test]
async fn a_backup_never_overwrites_a_file_and_names_what_it_needs() {
    let app = spawn_app().await;
    seed(&app, 1).await;
    let existing = app.dir.path().join("exists.db");
    std::fs::write(&existing, b"keep me").unwrap();
    let out = hazina(&app, &["backup", "--to", existing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("never overwrites"), "{}", text(&out));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let to = app.dir.path().join("b1.db");
    let out = hazina(&app, &["backup", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("master-key versions 1 of this keyring"),
        "{}",
        text(&out)
    );
    // Nothing but the backup was left beside it.
    let mut names: Vec<String> = std::fs::read_dir(app.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("b1.db"))
        .collect();
    names.sort();
    assert_eq!(names, vec!["b1.db".to_string()]);
    let recorded = app.sql_lines("SELECT key_versions AS line FROM backups");
    assert_eq!(recorded, vec!["1".to_string()]);
}

#[tokio::test]
async fn keys_retire_refuses_a_version_a_backup_needs_unless_forced() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let (creds, owners) = seed_owners(&app, 3).await;
    let relogin_all = |app: &TestApp, creds: &[(String, i64, String)]| {
        let creds = creds.to_vec();
        let owners: Vec<(String, String)> = owners
            .iter()
            .map(|o| (o.username.clone(), o.password.clone()))
            .collect();
        let app_login = app.client.clone();
        let base = app.address.clone();
        async move {
            let mut out = Vec::new();
            for ((_, id, key), (username, password)) in creds.into_iter().zip(owners) {
                let body: Value = app_login
                    .post(format!("{base}/users/login/"))
                    .json(&json!({"username": username, "password": password}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                out.push((body["access_token"].as_str().unwrap().to_owned(), id, key));
            }
            out
        }
    };
    let to = app.dir.path().join("before-rotation.db");
    let out = hazina(&app, &["backup", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = hazina(&app, &["keys", "rotate"]);
    assert!(out.status.success(), "{}", text(&out));

    // Nothing stored needs version 1 any more, but the backup does.
    let out = hazina(&app, &["keys", "retire", "--version", "1"]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("needed by the backup taken"), "{said}");
    assert!(
        said.contains("before-rotation.db") && said.contains("--force"),
        "{said}"
    );
    let res = app
        .post("/admin/keys/retire/", &admin.access, &json!({"version": 1}))
        .await;
    let body = body_of(res, StatusCode::CONFLICT).await;
    assert!(body["error"].as_str().unwrap().contains("force"), "{body}");
    assert!(app.state.keyring.has_version(1), "still in the keyring");
    assert_all_reveal(&app, &creds).await;

    let res = app
        .post(
            "/admin/keys/retire/",
            &admin.access,
            &json!({"version": 1, "force": "yes"}),
        )
        .await;
    assert_json_4xx(res).await;
    let out = hazina(&app, &["keys", "retire", "--version", "1", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no longer open with this keyring"),
        "{}",
        text(&out)
    );
    // Tokens signed under version 1 ended with it: everyone logs in again.
    let admin = relogin(&app, &admin).await;
    let creds = relogin_all(&app, &creds).await;
    assert_all_reveal(&app, &creds).await;

    // A backup taken now needs only version 2; after another rotation, 2 is protected.
    let to = app.dir.path().join("after-rotation.db");
    assert!(hazina(&app, &["backup", "--to", to.to_str().unwrap()])
        .status
        .success());
    assert!(hazina(&app, &["keys", "rotate"]).status.success());
    let res = app
        .post("/admin/keys/retire/", &admin.access, &json!({"version": 2}))
        .await;
    body_of(res, StatusCode::CONFLICT).await;
    let res = app
        .post(
            "/admin/keys/retire/",
            &admin.access,
            &json!({"version": 2, "force": true}),
        )
        .await;
    let body = body_of(res, StatusCode::OK).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("after-rotation.db"),
        "{body}"
    );
    let creds = relogin_all(&app, &creds).await;
    assert_all_reveal(&app, &creds).await;
}

/// A backup of `app` (SQLite, or pg_dump), at a new path in its directory.
fn backup_to(app: &TestApp, name: &str) -> PathBuf {
    let to = app.dir.path().join(name);
    let out = hazina(app, &["backup", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    to
}

#[tokio::test]
async fn a_restore_refuses_a_running_servers_database_the_wrong_keyring_and_an_edited_backup() {
    if backend() == Backend::Postgres {
        // PostgreSQL restores through pg_restore (the test above); `hazina restore` refuses.
        return;
    }
    let app = spawn_app().await;
    let creds = seed(&app, 2).await;
    let backup = backup_to(&app, "b.db");
    let from = backup.to_str().unwrap();

    // The running server has its database open.
    let before = app.sql_lines("SELECT CAST(COUNT(*) AS TEXT) AS line FROM credentials");
    let out = hazina(&app, &["restore", "--from", from]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("in use by a running hazina server"),
        "{}",
        text(&out)
    );
    assert_eq!(
        app.sql_lines("SELECT CAST(COUNT(*) AS TEXT) AS line FROM credentials"),
        before
    );
    assert_all_reveal(&app, &creds).await;

    // Another installation's keyring.
    let other = app.dir.path().join("other.keyring");
    let target = app.dir.path().join("target.db");
    let target_url = format!("sqlite://{}", target.display());
    let out = hazina_on(&app, &target_url, &other, &["keys", "init"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = hazina_on(&app, &target_url, &other, &["restore", "--from", from]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("does not open with this keyring"), "{said}");
    assert!(said.contains("check value"), "{said}");
    assert!(!target.exists(), "nothing left behind");
    let missing = app.dir.path().join("missing.keyring");
    let out = hazina_on(&app, &target_url, &missing, &["restore", "--from", from]);
    assert!(text(&out).contains("no keyring at"), "{}", text(&out));
    assert!(!missing.exists() && !target.exists());

    // A backup whose audit log was edited.
    let edited = app.dir.path().join("edited.db");
    std::fs::copy(&backup, &edited).unwrap();
    {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut c = diesel::SqliteConnection::establish(edited.to_str().unwrap()).unwrap();
        c.batch_execute("UPDATE audit_log SET outcome = 'denied' WHERE seq = 2")
            .unwrap();
    }
    let out = hazina_on(
        &app,
        &target_url,
        &app.keyring_path,
        &["restore", "--from", edited.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("audit log does not verify"),
        "{}",
        text(&out)
    );
    assert!(!target.exists());
    let garbage = app.dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
    let out = hazina_on(
        &app,
        &target_url,
        &app.keyring_path,
        &["restore", "--from", garbage.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not a usable hazina backup"),
        "{}",
        text(&out)
    );

    // Over a stopped database: the one it replaces is kept beside it.
    for round in 0..2 {
        let out = hazina_on(
            &app,
            &target_url,
            &app.keyring_path,
            &["restore", "--from", from],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            text(&out).contains("is kept at"),
            round == 1,
            "{}",
            text(&out)
        );
    }
    let kept: Vec<PathBuf> = std::fs::read_dir(app.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("target.db.before-restore-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(mode_of(&kept[0]), 0o600);
    let leftovers: Vec<String> = std::fs::read_dir(app.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring") || n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let node = start_on(
        Arc::new(TestDatabase::Sqlite { path: target }),
        app.dir.clone(),
    )
    .await;
    assert_all_reveal(&node, &creds).await;
}

#[tokio::test]
async fn a_populated_database_from_before_backups_upgrades_in_place_and_backs_up() {
    let app = spawn_app().await;
    let creds = seed(&app, 3).await;
    assert_eq!(
        app.revert_migrations(4),
        [
            "20261208000014",
            "20261207000013",
            "20261207000012",
            "20261201000011"
        ]
    );
    let node = app.spawn_node().await;
    assert_all_reveal(&node, &creds).await;
    let to = backup_to(&node, "after-upgrade.db");
    assert!(to.exists());
    assert_eq!(
        node.sql_lines("SELECT key_versions AS line FROM backups"),
        vec!["1".to_string()]
    );
}

/// Issue 29 (SPEC §14): the audit log remembers a backup, so deleting its record does not let
/// `keys retire` destroy the version it needs.
#[tokio::test]
async fn a_deleted_backup_record_still_holds_back_keys_retire() {
    let app = spawn_app().await;
    seed(&app, 1).await;
    let to = backup_to(&app, "kept.db");
    assert!(to.exists());
    assert_eq!(app.sql_execute("DELETE FROM backups"), 1);
    let out = hazina(&app, &["keys", "rotate"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = hazina(&app, &["keys", "retire", "--version", "1"]);
    assert!(
        !out.status.success(),
        "a version a backup needs was retired: {}",
        text(&out)
    );
    assert!(text(&out).contains("--force"), "{}", text(&out));
}
