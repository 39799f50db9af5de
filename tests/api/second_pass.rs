//! Integrity, second pass (issue 29, SPEC §14): nothing the database holds vouches for itself.
//! Each test is a database writer's second step after §11's defences held against the first.

use std::path::Path;
use std::process::{Command, Output, Stdio};

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
