//! A newcomer's first hour (issue 37): what a new operator meets with the binary and the API —
//! typos that must not pass silently, output that must not mislead, commands that must exist.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use hazina::domain::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// `hazina ARGS` against `app`'s database and keyring, with `stdin` on standard input.
fn hazina(app: &TestApp, args: &[&str], stdin: &str) -> Output {
    hazina_cli(app, args, stdin)
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// `hazina migrate` in an empty directory with `env` set: what a first command meets.
fn migrate_with(env: &[(&str, &str)]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hazina"));
    cmd.arg("migrate")
        .current_dir(dir.path())
        .env_remove("HAZINA_DATABASE_URL")
        .env_remove("HAZINA_KEYRING_DATA")
        .env_remove("HAZINA_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.output().unwrap(), dir)
}

#[test]
fn a_misspelled_setting_stops_every_command_in_one_line_naming_it() {
    let (out, dir) = migrate_with(&[("HAZINA_BIDN", "0.0.0.0:9999")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("HAZINA_BIDN"), "{stderr}");
    assert!(stderr.contains("did you mean HAZINA_BIND?"), "{stderr}");
    assert!(
        !dir.path().join("hazina.db").exists(),
        "nothing is created before the refusal"
    );
    // A name from the test suite's own environment is not a typo.
    let (out, _dir) = migrate_with(&[("HAZINA_TEST_SOMETHING", "1")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_log_filter_that_would_silence_errors_is_refused_and_real_filters_accepted() {
    let (out, _dir) = migrate_with(&[("HAZINA_LOG", "warning")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("HAZINA_LOG"), "{stderr}");
    assert!(stderr.contains("`warning` is neither a level"), "{stderr}");
    for fine in ["warn", "error", "warn,hazina=debug", "off"] {
        let (out, _dir) = migrate_with(&[("HAZINA_LOG", fine)]);
        assert!(
            out.status.success(),
            "{fine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn audit_verify_says_ok_false_on_stdout_when_a_checkpoint_fails() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let res = app.get("/audit/checkpoint/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let good = app.dir.path().join("good.checkpoint");
    std::fs::write(&good, res.text().await.unwrap()).unwrap();
    let bad = app.dir.path().join("bad.checkpoint");
    std::fs::write(&bad, "not a signed note\n").unwrap();

    let out = hazina(
        &app,
        &[
            "audit",
            "verify",
            "--checkpoint",
            good.to_str().unwrap(),
            "--checkpoint",
            bad.to_str().unwrap(),
        ],
        "",
    );
    assert!(!out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["checkpoints"][0]["ok"], true, "{answer}");
    assert_eq!(answer["checkpoints"][0]["file"], good.to_str().unwrap());
    assert_eq!(answer["checkpoints"][1]["ok"], false, "{answer}");
    assert!(answer["checkpoints"][1]["problem"].is_string(), "{answer}");
    // The good one alone verifies, and says so.
    let out = hazina(
        &app,
        &["audit", "verify", "--checkpoint", good.to_str().unwrap()],
        "",
    );
    let answer: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
}

#[tokio::test]
async fn a_second_grant_of_one_scope_names_the_first_and_update_changes_its_operations() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let owner = app.user().await;
    let res = app
        .post(
            "/admin/services/",
            &admin.access,
            &json!({ "name": "billing", "identity": "spiffe://payments/billing" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let scope = json!({
        "service": "billing", "owner": owner.username, "provider": "mpesa",
        "operations": ["stk-password"],
    });
    let first = body_of(
        app.post("/admin/grants/", &admin.access, &scope).await,
        StatusCode::CREATED,
    )
    .await;
    let id = first["id"].as_i64().unwrap();

    // The README's token-broker step: a second grant of the same scope.
    let mut again = scope.clone();
    again["operations"] = json!(["access-token"]);
    let res = app.post("/admin/grants/", &admin.access, &again).await;
    let body = body_of(res, StatusCode::CONFLICT).await;
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(&format!("A grant of this scope exists (id {id})")),
        "{message}"
    );
    let out = hazina(
        &app,
        &[
            "grants",
            "create",
            "--service",
            "billing",
            "--owner",
            &owner.username,
            "--provider",
            "mpesa",
            "--operation",
            "access-token",
        ],
        "",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("(id {id})")), "{stderr}");
    assert!(!stderr.contains("constraint"), "{stderr}");

    // Adding the operation instead: the same grant, both operations, audited.
    let path = format!("/admin/grants/{id}/");
    let res = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&admin.access)
        .json(&json!({ "add_operations": ["access-token"] }))
        .send()
        .await
        .unwrap();
    let grant = body_of(res, StatusCode::OK).await;
    assert_eq!(grant["id"], id);
    assert_eq!(grant["operations"], json!(["access-token", "stk-password"]));
    assert_eq!(grant["service"], "billing");
    let out = hazina(
        &app,
        &[
            "grants",
            "update",
            "--id",
            &id.to_string(),
            "--remove-operation",
            "stk-password",
            "--add-operation",
            "security-credential",
        ],
        "",
    );
    let said = stdout(&out);
    assert!(said.contains("access-token,security-credential"), "{said}");
    // A grant left with nothing is refused: revoking says that.
    let res = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&admin.access)
        .json(&json!({ "remove_operations": ["access-token", "security-credential"] }))
        .send()
        .await
        .unwrap();
    let body = assert_json_4xx(res).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("revoke it instead"),
        "{body}"
    );
    for nonsense in [
        json!({}),
        json!({ "add_operations": ["fly"] }),
        json!({ "x": 1 }),
    ] {
        let res = app
            .client
            .patch(app.url(&path))
            .bearer_auth(&admin.access)
            .json(&nonsense)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{nonsense}");
    }
    let res = app
        .client
        .patch(app.url("/admin/grants/12345/"))
        .bearer_auth(&admin.access)
        .json(&json!({ "add_operations": ["reveal"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let updates = app.sql_lines(
        "SELECT action AS line FROM audit_log WHERE action = 'admin.grant_update' ORDER BY seq",
    );
    assert_eq!(updates.len(), 2, "one entry per change: {updates:?}");

    // The list: a header, and `active` (not `live`, which names an environment here).
    let listed = stdout(&hazina(&app, &["grants", "list"], ""));
    let mut lines = listed.lines();
    assert_eq!(
        lines.next(),
        Some("ID\tSERVICE\tOWNER\tPROVIDER/ENVIRONMENT\tOPERATIONS\tSTATE")
    );
    let row = lines.next().unwrap();
    assert!(row.ends_with("\tactive"), "{row}");
    assert!(row.contains("mpesa/*"), "{row}");
}

#[tokio::test]
async fn unlock_lifts_a_lockout_and_enable_and_a_password_reset_say_one_holds() {
    let app = spawn_app_with(&[("HAZINA_LOGIN_MAX_FAILURES_ACCOUNT", "2")]).await;
    let admin = app.user_with_role(Role::Admin).await;
    let name = "carol-the-merchant";
    app.insert_user(name, Role::User);
    for _ in 0..2 {
        let res = app.login(name, "a wrong password, twice").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.login(name, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "locked out"
    );

    let res = app
        .post_empty(&format!("/admin/users/{name}/enable/"), &admin.access)
        .await;
    let body = body_of(res, StatusCode::OK).await;
    assert!(body["locked_out_until"].is_string(), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("unlock"),
        "enable says the lockout still holds: {body}"
    );
    let said = stdout(&hazina(&app, &["users", "enable", "--username", name], ""));
    assert!(said.contains("users unlock --username"), "{said}");
    let res = app
        .put(
            &format!("/admin/users/{name}/password/"),
            &admin.access,
            &json!({ "password": PASSWORD }),
        )
        .await;
    let body = body_of(res, StatusCode::OK).await;
    assert!(body["locked_out_until"].is_string(), "{body}");
    assert_eq!(
        app.login(name, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "neither enable nor a password reset lifts the lock"
    );

    let res = app
        .post_empty(&format!("/admin/users/{name}/unlock/"), &admin.access)
        .await;
    let body = body_of(res, StatusCode::OK).await;
    assert_eq!(body["was_locked_out"], true, "{body}");
    assert_eq!(app.login(name, PASSWORD).await.status(), StatusCode::OK);
    let res = app
        .post_empty(&format!("/admin/users/{name}/unlock/"), &admin.access)
        .await;
    let body = body_of(res, StatusCode::OK).await;
    assert_eq!(body["was_locked_out"], false, "{body}");
    let res = app
        .post_empty("/admin/users/nobody-at-all/unlock/", &admin.access)
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let owner = app.user().await;
    let res = app
        .post_empty(&format!("/admin/users/{name}/unlock/"), &owner.access)
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let unlocks = app.sql_lines(
        "SELECT outcome AS line FROM audit_log WHERE action = 'admin.user_unlock' ORDER BY seq",
    );
    assert_eq!(unlocks, vec!["success", "success", "denied"]);

    // The command line does the same.
    for _ in 0..2 {
        app.login(name, "a wrong password, again").await;
    }
    assert_eq!(
        app.login(name, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let said = stdout(&hazina(&app, &["users", "unlock", "--username", name], ""));
    assert!(said.contains("lifted the login lockout"), "{said}");
    assert_eq!(app.login(name, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_root_sends_a_browser_to_the_console() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/console/");
}

#[tokio::test]
async fn serve_prints_where_the_api_and_the_console_answer() {
    let (db, dir) = create_test_database();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hazina"))
        .arg("serve")
        .current_dir(dir.path())
        .env("HAZINA_DATABASE_URL", db.url())
        .env("HAZINA_BIND", "127.0.0.1:0")
        .env(
            "HAZINA_KEYRING",
            dir.path().join("hazina.keyring").display().to_string(),
        )
        .env("HAZINA_WORKERS", "1")
        .env("HAZINA_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.contains("serving on port"))
    })
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let line = line.expect("serve says where it answers");
    let port = line
        .split_once("serving on port ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap();
    assert!(
        line.contains(&format!("the API at http://127.0.0.1:{port}/")),
        "{line}"
    );
    assert!(
        line.contains(&format!("the console at http://127.0.0.1:{port}/console/")),
        "{line}"
    );
}

/// A self-signed RSA certificate made by the openssl command-line tool: PEM and DER.
fn rsa_certificate(dir: &std::path::Path) -> (String, Vec<u8>) {
    let (key, pem, der) = (dir.join("c.key"), dir.join("c.pem"), dir.join("c.cer"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=sandbox.safaricom.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&pem)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&pem)
        .arg("-out")
        .arg(&der)
        .output()
        .unwrap();
    assert!(out.status.success());
    (
        std::fs::read_to_string(&pem).unwrap(),
        std::fs::read(&der).unwrap(),
    )
}

#[tokio::test]
async fn a_der_certificate_is_installed_as_its_pem_would_be() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let (pem, der) = rsa_certificate(app.dir.path());
    let der_file = app.dir.path().join("SandboxCertificate.cer");
    std::fs::write(&der_file, &der).unwrap();
    let said = stdout(&hazina(
        &app,
        &[
            "certs",
            "set",
            "--provider",
            "mpesa",
            "--environment",
            "sandbox",
            "--file",
            der_file.to_str().unwrap(),
        ],
        "",
    ));
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&der));
    assert!(said.contains(&sha), "{said}");
    // The API takes either form too.
    for body in [der.clone(), pem.into_bytes()] {
        let res = app
            .client
            .put(app.url("/admin/provider-certificates/mpesa/live/"))
            .bearer_auth(&admin.access)
            .body(body)
            .send()
            .await
            .unwrap();
        let got = body_of(res, StatusCode::OK).await;
        assert_eq!(got["sha256"], sha, "{got}");
    }
    // Bytes that are neither say so, not "invalid UTF-8".
    let garbage = app.dir.path().join("garbage.cer");
    std::fs::write(&garbage, [0xff_u8, 0xfe, 0x00, 0x81]).unwrap();
    let out = hazina(
        &app,
        &[
            "certs",
            "set",
            "--provider",
            "mpesa",
            "--environment",
            "sandbox",
            "--file",
            garbage.to_str().unwrap(),
        ],
        "",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PEM") && stderr.contains("DER"), "{stderr}");
    assert!(!stderr.contains("UTF-8"), "{stderr}");
}

#[tokio::test]
async fn keys_status_says_active_once_per_version() {
    let app = spawn_app().await;
    let status = stdout(&hazina(&app, &["keys", "status"], ""));
    let line = status
        .lines()
        .find(|l| l.starts_with("version 1"))
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(line.matches("active").count(), 1, "{line}");
}

#[tokio::test]
async fn after_a_rollback_readyz_and_the_checkpoint_say_why() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let owner = app.user().await;
    app.create_credential(&owner, "pagamio", "live", "pagamio-password-0001")
        .await;
    let res = app.get("/audit/checkpoint/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let note = res.text().await.unwrap();
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    crate::transparency::truncate_log(&app, size - 2);

    let res = app.get("/audit/checkpoint/", &auditor.access).await;
    let body = body_of(res, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["reason"], "audit_log_rewritten", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("entries"),
        "the auditor reads what is wrong: {body}"
    );
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    let body = body_of(res, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["reason"], "audit_log_rewritten", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("rolled back"),
        "{body}"
    );
}

#[tokio::test]
async fn a_backup_into_a_missing_folder_names_the_folder_not_a_hidden_file() {
    let app = spawn_app().await;
    let to = app.dir.path().join("no-such-folder").join("hazina.db");
    let out = hazina(&app, &["backup", "--to", to.to_str().unwrap()], "");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-folder"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!stderr.contains("partial"), "{stderr}");
    assert!(
        !stderr.contains("/.hazina.db"),
        "no hidden file is named: {stderr}"
    );
}

/// Whether the user named `name` is disabled, and their role, as the API lists them.
async fn listed_user(app: &TestApp, admin: &TestUser, name: &str) -> (bool, String) {
    let users = body_of(
        app.get("/admin/users/", &admin.access).await,
        StatusCode::OK,
    )
    .await;
    let user = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == name)
        .unwrap()
        .clone();
    (
        user["is_disabled"].as_bool().unwrap(),
        user["role"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_consoles_user_page_changes_role_password_sessions_and_lockout_and_confirms_a_disable()
{
    use crate::console::Visitor;
    let app = spawn_app_with(&[("HAZINA_LOGIN_MAX_FAILURES_ACCOUNT", "2")]).await;
    let admin = app.user_with_role(Role::Admin).await;
    let name = "dana-the-merchant";
    app.insert_user(name, Role::User);
    let mut m = Visitor::signed_in(&app, &admin).await;

    // The list links each user to their page; it no longer holds a one-click Disable.
    let list = m.get("/console/admin/").await;
    let page_path = format!("/console/admin/users/{name}/");
    assert!(
        list.html.contains(&format!("href=\"{page_path}\"")),
        "{}",
        list.html
    );
    assert!(!list.html.contains(&format!("Disable {name}")));
    let page = m.get(&page_path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    for offered in [
        "Set the role",
        "Set the password",
        &format!("Lift the login lockout of {name}"),
        &format!("End every session of {name}"),
        &format!("Disable {name}"),
    ] {
        assert!(page.html.contains(offered), "{offered}: {}", page.html);
    }
    assert!(page
        .html
        .contains("name=\"confirm\" value=\"yes\" required"));
    let csrf = page.csrf();

    // Disable without its tick changes nothing; with it, the user is disabled.
    let res = m
        .post(&format!("{page_path}disable/"), &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.html);
    assert!(res.html.contains("Tick the box to confirm"));
    assert!(!listed_user(&app, &admin, name).await.0);
    let res = m
        .post(
            &format!("{page_path}disable/"),
            &[("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    assert!(listed_user(&app, &admin, name).await.0);
    let res = m
        .post(&format!("{page_path}enable/"), &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    assert!(!listed_user(&app, &admin, name).await.0);

    // Role and password.
    let res = m
        .post(
            &format!("{page_path}role/"),
            &[("csrf", &csrf), ("role", "auditor")],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    assert_eq!(listed_user(&app, &admin, name).await.1, "auditor");
    let new_password = "a brand-new password for dana";
    let res = m
        .post(
            &format!("{page_path}password/"),
            &[("csrf", &csrf), ("password", new_password)],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let res = m
        .post(
            &format!("{page_path}password/"),
            &[("csrf", &csrf), ("password", "short")],
        )
        .await;
    assert_eq!(
        res.status,
        StatusCode::BAD_REQUEST,
        "the API's rule, on the page"
    );

    // A lockout, lifted from the page.
    for _ in 0..2 {
        app.login(name, "not the password").await;
    }
    assert_eq!(
        app.login(name, new_password).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let res = m
        .post(&format!("{page_path}unlock/"), &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    assert!(
        res.location().ends_with("notice=unlocked"),
        "{}",
        res.location()
    );
    let session = body_of(app.login(name, new_password).await, StatusCode::OK).await;

    // Ending every session: refused without its tick, then done.
    let res = m
        .post(&format!("{page_path}sessions/revoke/"), &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let token = session["access_token"].as_str().unwrap();
    assert_eq!(
        app.get("/audit/events/", token).await.status(),
        StatusCode::OK
    );
    let res = m
        .post(
            &format!("{page_path}sessions/revoke/"),
            &[("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    assert_eq!(
        app.get("/audit/events/", token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let missing = m.get("/console/admin/users/nobody-here/").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_grant_form_ticks_no_operation_and_a_lockout_page_says_how_long_it_lasts() {
    use crate::console::Visitor;
    let app = spawn_app_with(&[("HAZINA_LOGIN_MAX_FAILURES_ACCOUNT", "2")]).await;
    let admin = app.user_with_role(Role::Admin).await;
    let mut m = Visitor::signed_in(&app, &admin).await;
    let form = m.get("/console/admin/grants/").await;
    assert!(form.html.contains("id=\"op-reveal\""), "{}", form.html);
    assert!(
        !form.html.contains("checked"),
        "use, don't reveal: nothing is ticked for the admin"
    );

    let owner = app.user().await;
    let mut v = Visitor::new(&app);
    for _ in 0..2 {
        v.sign_in(&owner.username, "not the password").await;
    }
    let res = v.sign_in(&owner.username, &owner.password).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1);
    assert!(res.html.contains("Try again in"), "{}", res.html);
}

#[tokio::test]
async fn the_consoles_own_files_are_served_outside_the_rate_limit() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "3")]).await;
    for _ in 0..10 {
        let res = app
            .client
            .get(app.url("/console/static/console.css"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let res = app
            .client
            .get(app.url("/console/login/"))
            .send()
            .await
            .unwrap();
        statuses.push(res.status());
        // The stylesheet still comes during the burst.
        let css = app
            .client
            .get(app.url("/console/static/console.css"))
            .send()
            .await
            .unwrap();
        assert_eq!(css.status(), StatusCode::OK);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "pages keep their budget: {statuses:?}"
    );
}

#[tokio::test]
async fn the_audit_log_lists_newest_first_on_request_and_the_console_names_owners() {
    use crate::console::Visitor;
    let app = spawn_app().await;
    let owner = app.user().await;
    app.create_credential(&owner, "mpesa", "sandbox", "mpesa-private-key-0001")
        .await;
    for _ in 0..3 {
        app.user().await;
    }
    let auditor = app.user_with_role(Role::Auditor).await;

    // The API: pages of 2, newest first, then oldest first: the same entries, reversed.
    let mut newest = Vec::new();
    let mut cursor = 0;
    loop {
        let page = body_of(
            app.get(
                &format!("/audit/events/?order=newest&limit=2&cursor={cursor}"),
                &auditor.access,
            )
            .await,
            StatusCode::OK,
        )
        .await;
        newest.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = next,
            None => break,
        }
    }
    let oldest = body_of(
        app.get("/audit/events/?limit=500", &auditor.access).await,
        StatusCode::OK,
    )
    .await;
    let mut oldest: Vec<i64> = oldest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    oldest.reverse();
    assert_eq!(newest, oldest);
    assert!(newest.len() > 6);
    let res = app
        .get("/audit/events/?order=sideways", &auditor.access)
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // The console: newest first, owners by name (their ids beside, in a quieter line).
    let mut a = Visitor::signed_in(&app, &auditor).await;
    let page = a.get("/console/audit/").await;
    assert_eq!(page.status, StatusCode::OK);
    let seqs: Vec<i64> = page
        .html
        .split("<td data-label=\"#\">")
        .skip(1)
        .map(|rest| rest[..rest.find('<').unwrap()].parse().unwrap())
        .collect();
    assert!(seqs.len() > 6, "{seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    assert!(
        page.html
            .contains(&format!("{}'s mpesa sandbox credential", owner.username)),
        "{}",
        page.html
    );
    assert!(page.html.contains(&format!("owner {}", owner.id)));
}

#[tokio::test]
async fn entries_that_arrive_live_are_named_as_the_page_names_them() {
    use crate::console::Visitor;
    let app = spawn_app().await;
    let owner = app.user().await;
    app.create_credential(&owner, "mpesa", "sandbox", "mpesa-private-key-0002")
        .await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let mut a = Visitor::signed_in(&app, &auditor).await;
    // The page hands follow.js the names it shows…
    let page = a.get("/console/audit/").await;
    let names = format!("&quot;{}&quot;:&quot;{}&quot;", owner.id, owner.username);
    assert!(page.html.contains(&names), "{}", page.html);
    // …and names the owners of entries that arrive later, for auditors only.
    let found = a
        .get(&format!("/console/audit/names/?owner={}&owner=1", owner.id))
        .await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.html);
    let found: Value = serde_json::from_str(&found.html).unwrap();
    assert_eq!(found, json!({ owner.id.to_string(): owner.username }));
    let bad = a.get("/console/audit/names/?owner=alice").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let mut o = Visitor::signed_in(&app, &owner).await;
    let refused = o
        .get(&format!("/console/audit/names/?owner={}", owner.id))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn console_pages_are_counted_under_their_own_label_in_metrics() {
    use crate::console::Visitor;
    let app = spawn_app().await;
    let owner = app.user().await;
    let mut v = Visitor::signed_in(&app, &owner).await;
    for path in ["/console/credentials/", "/console/credentials/1234/"] {
        v.get(path).await;
    }
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("route=\"/console/\""), "{metrics}");
    assert!(!metrics.contains("route=\"unmatched\""), "{metrics}");
    assert!(!metrics.contains("1234"), "no id reaches a label");
}
