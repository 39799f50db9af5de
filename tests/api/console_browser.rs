//! The console in a real browser (SPEC §12): Debian's headless Chromium, driven by Playwright
//! (`tests/browser/console.mjs`), walks each role's main path against a spawned server. The
//! script checks every page for the seeded canary secrets, the security headers, labels,
//! contrast, a phone-width layout and console errors; these tests arrange the data, run it,
//! and check the database afterwards. Screenshots land in `target/console-screenshots/`.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CHROMIUM`) and `tests/browser/node_modules`
//! (`npm ci --prefix tests/browser`); `.ci/run` installs all three. Without them the tests
//! say so and pass locally, but fail under `CI=true`.

use std::path::{Path, PathBuf};

use reqwest::StatusCode;

use crate::helpers::*;
use hazina::domain::Role;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the browser tests can run here; under CI they must.
fn browser_ready() -> bool {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut missing = Vec::new();
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        missing.push("node".to_owned());
    }
    if !Path::new(&chromium).exists() {
        missing.push(chromium);
    }
    if !root()
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        missing.push("tests/browser/node_modules (npm ci --prefix tests/browser)".into());
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the browser tests cannot run under CI: missing {}",
        missing.join(", ")
    );
    eprintln!(
        "NOTE: browser test NOT run (missing {}); .ci/run installs these",
        missing.join(", ")
    );
    false
}

pub fn screenshots() -> PathBuf {
    root().join("target/console-screenshots")
}

/// Runs the script for `role` with `settings`; its report (asserting it passed).
async fn drive(app: &TestApp, role: &str, settings: &[(&str, String)]) -> String {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(root().join("tests/browser/console.mjs"))
        .arg(role)
        .env("HAZINA_URL", &app.address)
        .env("HAZINA_SCREENSHOTS", screenshots())
        .kill_on_drop(true);
    for (k, v) in settings {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("node runs");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "the {role}'s path failed in the browser:\n{report}\n{errors}"
    );
    assert!(!report.contains("FAIL"), "{report}");
    assert!(
        report.lines().filter(|l| l.starts_with("ok ")).count() >= 10,
        "{report}"
    );
    for width in [390, 1280] {
        assert!(screenshots().join(format!("{role}-{width}.png")).exists());
    }
    report
}

fn canary(label: &str) -> String {
    format!("canary-{label}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn a_user_manages_their_credential_in_a_real_browser_and_never_sees_a_secret() {
    if !browser_ready() {
        return;
    }
    let app = spawn_app().await;
    let owner = app.user().await;
    let stranger = app.user().await;
    let (first, second, theirs) = (canary("first"), canary("second"), canary("theirs"));
    let other = app
        .create_credential(&stranger, "mpesa", "sandbox", &theirs)
        .await;
    drive(
        &app,
        "user",
        &[
            ("HAZINA_USERNAME", owner.username.clone()),
            ("HAZINA_PASSWORD", owner.password.clone()),
            ("HAZINA_CANARIES", format!("{first}\n{second}\n{theirs}")),
            ("HAZINA_OTHER_CREDENTIAL", other["id"].to_string()),
        ],
    )
    .await;
    // What the browser did is what the vault holds: one credential, rotated, inactive.
    let mine = body_of(
        app.get("/payments/credentials/", &owner.access).await,
        StatusCode::OK,
    )
    .await;
    let mine = mine.as_array().unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["version"], 2);
    assert_eq!(mine[0]["is_active"], false);
    let revealed = body_of(
        reveal(&app, &owner.access, mine[0]["id"].as_i64().unwrap()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(revealed["private_key"], second.as_str());
    // The stranger's credential was never touched, and no log line holds a secret.
    let theirs_now = body_of(
        app.get(
            &format!("/payments/credentials/{}/", other["id"]),
            &stranger.access,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(theirs_now["is_active"], true);
    let logs = String::from_utf8_lossy(&captured_logs()).into_owned();
    for c in [&first, &second, &theirs] {
        assert!(!logs.contains(c.as_str()));
    }
}

#[tokio::test]
async fn an_admin_manages_users_grants_and_keys_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let owner = app.user().await;
    let secret = canary("owner");
    app.create_credential(&owner, "mpesa", "sandbox", &secret)
        .await;
    let newbie = format!("n{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    drive(
        &app,
        "admin",
        &[
            ("HAZINA_USERNAME", admin.username.clone()),
            ("HAZINA_PASSWORD", admin.password.clone()),
            ("HAZINA_CANARIES", secret.clone()),
            ("HAZINA_NEW_USER", newbie.clone()),
            ("HAZINA_OWNER", owner.username.clone()),
        ],
    )
    .await;
    let users = body_of(
        app.get("/admin/users/", &admin.access).await,
        StatusCode::OK,
    )
    .await;
    let made = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == newbie.as_str())
        .expect("the user the browser made");
    assert_eq!(made["is_disabled"], true);
    let grants = body_of(
        app.get("/admin/grants/", &admin.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(grants[0]["service"], "payments-api");
    assert_eq!(grants[0]["owner"], owner.username.as_str());
    // Only what the admin ticked: the form ticks nothing by default (use, don't reveal).
    assert_eq!(grants[0]["operations"], serde_json::json!(["access-token"]));
    let keys = body_of(app.get("/admin/keys/", &admin.access).await, StatusCode::OK).await;
    assert_eq!(keys["rotation"]["target_version"], 2);
}

#[tokio::test]
async fn an_auditor_reads_charts_follows_and_verifies_the_log_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let owner = app.user().await;
    let secret = canary("audited");
    let cred = app
        .create_credential(&owner, "kopokopo", "sandbox", &secret)
        .await;
    for _ in 0..3 {
        let res = reveal(&app, &owner.access, cred["id"].as_i64().unwrap()).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    for _ in 0..2 {
        let res = app.login(&owner.username, "not the password").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    drive(
        &app,
        "auditor",
        &[
            ("HAZINA_USERNAME", auditor.username.clone()),
            ("HAZINA_PASSWORD", auditor.password.clone()),
            ("HAZINA_CANARIES", secret.clone()),
            ("HAZINA_REVEALS", "3".into()),
            ("HAZINA_DENIALS", "2".into()),
        ],
    )
    .await;
    // The browser's reads are on the record like the API's.
    let reads = app.sql_lines(&format!(
        "SELECT action AS line FROM audit_log WHERE action = 'audit.read' AND actor_name = '{}'",
        auditor.username
    ));
    assert!(!reads.is_empty());
}
