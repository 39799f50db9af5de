//! Backend behaviour: start-up checks, byte-exact binary columns, clear failures.

use diesel::prelude::*;
use reqwest::StatusCode;

use hazina::clock::Clock;
use hazina::db::schema::credential_versions as cv;
use hazina::startup::Application;

use crate::helpers::*;

#[tokio::test]
async fn binary_columns_round_trip_byte_exact() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "jpay", "sandbox", "jpay-binary-roundtrip")
        .await;
    let id = created["id"].as_i64().unwrap();
    // Every byte value, NUL and invalid UTF-8 included, in each binary column.
    let all_bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();

    let mut conn = app.conn();
    diesel::update(cv::table.filter(cv::credential_id.eq(id)))
        .set((
            cv::wrapped_dek.eq(&all_bytes),
            cv::ciphertext.eq(&all_bytes),
            cv::verifier.eq(&all_bytes),
        ))
        .execute(&mut *conn)
        .unwrap();
    let read: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = cv::table
        .filter(cv::credential_id.eq(id))
        .select((cv::wrapped_dek, cv::ciphertext, cv::verifier))
        .load(&mut *conn)
        .unwrap();

    assert_eq!(read.len(), 1);
    assert_eq!(read[0].0, all_bytes);
    assert_eq!(read[0].1, all_bytes);
    assert_eq!(read[0].2, all_bytes);
}

#[tokio::test]
async fn sealed_envelopes_round_trip_byte_exact_through_the_api() {
    let app = spawn_app().await;
    let alice = app.user().await;
    // Multi-byte UTF-8 and JSON-escaped characters survive sealing, storage and reveal.
    let key = "ключ-🔑-\"quoted\"\\back\tslash-ñ";
    let created = app.create_credential(&alice, "kopokopo", "live", key).await;
    let id = created["id"].as_i64().unwrap();
    let res = app
        .get(
            &format!("/payments/credentials/{id}/get-private-key/"),
            &alice.access,
        )
        .await;
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["private_key"], key);
}

#[tokio::test]
async fn an_unreachable_postgres_is_one_clear_error_not_a_panic() {
    let (db, dir) = create_test_database();
    let mut config = node_config(&db, dir.path(), &[]);
    config.database_url =
        hazina::config::DatabaseUrl::parse("postgres://postgres@127.0.0.1:1/nowhere").unwrap();

    let err = Application::build(config, Clock::System)
        .err()
        .expect("start-up must fail");

    let text = format!("{err:#}");
    assert!(text.contains("cannot connect to PostgreSQL"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
}

#[tokio::test]
async fn the_cli_reports_an_unreachable_database_in_one_line_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
        .arg("migrate")
        .current_dir(dir.path())
        .env(
            "HAZINA_DATABASE_URL",
            "postgres://postgres:pw-not-shown@127.0.0.1:1/nowhere",
        )
        .output()
        .unwrap();

    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("hazina: error:"), "{stderr}");
    assert!(
        !stderr.contains("pw-not-shown"),
        "the password never reaches the output"
    );
    assert!(!stderr.contains("panicked"));
}

#[tokio::test]
async fn the_cli_names_a_bad_setting_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
        .arg("migrate")
        .current_dir(dir.path())
        .env("HAZINA_DATABASE_URL", "mysql://root@127.0.0.1/x")
        .output()
        .unwrap();

    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("HAZINA_DATABASE_URL"), "{stderr}");
}

#[tokio::test]
async fn serve_help_lists_every_setting_that_start_up_reads() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    // Every HAZINA_ name the configuration code reads, found in its source.
    let root = env!("CARGO_MANIFEST_DIR");
    let mut names = std::collections::BTreeSet::new();
    let mut files = vec![format!("{root}/src/telemetry.rs")];
    for entry in std::fs::read_dir(format!("{root}/src/config")).unwrap() {
        files.push(entry.unwrap().path().display().to_string());
    }
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        for piece in source.split('"').skip(1).step_by(2) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.starts_with("HAZINA_") && name.len() == piece.len() {
                names.insert(name);
            }
        }
    }
    assert!(names.len() > 30, "{names:?}");
    for name in &names {
        assert!(
            help.contains(name.as_str()),
            "serve --help does not list {name}"
        );
    }
}

#[tokio::test]
async fn a_bad_log_filter_is_refused_in_one_line_naming_hazina_log() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["[[[", "info,hazina=loud", "=debug"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
            .arg("migrate")
            .current_dir(dir.path())
            .env("HAZINA_LOG", bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{bad}: {stderr}");
        assert!(stderr.contains("HAZINA_LOG"), "{bad}: {stderr}");
    }
    // Nothing was started, so nothing was created.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // A good filter, from `.env` too, is taken.
    std::fs::write(dir.path().join(".env"), "HAZINA_LOG=warn,hazina=debug\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
        .arg("migrate")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_sqlite_database_and_its_wal_are_created_readable_by_the_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    if backend() != Backend::Sqlite {
        eprintln!("runs in the SQLite half");
        return;
    }
    let app = spawn_app().await;
    let user = app.user().await;
    app.create_credential(&user, "kopokopo", "sandbox", "k2-secret-0001")
        .await;
    let TestDatabase::Sqlite { path } = &*app.db else {
        unreachable!()
    };
    for file in [
        path.clone(),
        std::path::PathBuf::from(format!("{}-wal", path.display())),
        std::path::PathBuf::from(format!("{}-shm", path.display())),
        app.keyring_path.clone(),
    ] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

#[tokio::test]
async fn a_failed_start_leaves_no_file_behind() {
    if backend() != Backend::Sqlite {
        eprintln!("runs in the SQLite half");
        return;
    }
    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
        .arg("serve")
        .current_dir(dir.path())
        .env("HAZINA_BIND", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The keyring does not load: the database made for it goes again.
    let keyring = dir.path().join("elsewhere.keyring");
    std::fs::write(&keyring, "not a keyring").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
        .arg("serve")
        .current_dir(dir.path())
        .env("HAZINA_BIND", "127.0.0.1:0")
        .env("HAZINA_KEYRING", &keyring)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("elsewhere.keyring")]);
}

#[tokio::test]
async fn start_up_refuses_a_postgres_whose_synchronous_commit_is_off() {
    if backend() != Backend::Postgres {
        eprintln!("runs in the PostgreSQL half (HAZINA_TEST_BACKEND=postgres)");
        return;
    }
    let (db, dir) = create_test_database();
    let TestDatabase::Postgres { name, .. } = &*db else {
        unreachable!()
    };
    {
        use diesel::connection::SimpleConnection;
        let mut admin = crate::helpers::pg_connect(&db.url()).unwrap();
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {name} SET synchronous_commit = off"
            ))
            .unwrap();
    }
    let config = node_config(&db, dir.path(), &[]);

    let err = Application::build(config, Clock::System)
        .err()
        .expect("start-up must fail");

    let text = format!("{err:#}");
    assert!(text.contains("synchronous_commit = off"), "{text}");
}

#[tokio::test]
async fn readiness_reports_the_database_and_keyring() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["keyring_active_version"], 1);
}
