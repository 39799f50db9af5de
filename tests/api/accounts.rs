//! Accounts (SPEC §13): an admin lists, enables, re-roles and resets users (API and command
//! line); a user changes their own password, which ends their other sessions.

use reqwest::StatusCode;
use serde_json::json;

use hazina::domain::Role;

use crate::helpers::*;

const LIST: &str = "/payments/credentials/";
const NEW_PASSWORD: &str = "a brand new password 0001";

/// `action|outcome|reason` of every audit entry with `action`, oldest first.
fn audited(app: &TestApp, action: &str) -> Vec<String> {
    app.sql_lines(&format!(
        "SELECT outcome || '|' || COALESCE(reason, '') AS line FROM audit_log \
         WHERE action = '{action}' ORDER BY seq"
    ))
}

#[tokio::test]
async fn an_admin_enables_re_roles_and_resets_users_and_each_change_is_audited() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let carol = app.user().await;
    let name = carol.username.clone();

    // Disabled, then enabled: carol logs in again.
    let res = app
        .post_empty(&format!("/admin/users/{name}/disable/"), &admin.access)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.login(&name, &carol.password).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = app
        .post_empty(&format!("/admin/users/{name}/enable/"), &admin.access)
        .await;
    assert_eq!(
        body_of(res, StatusCode::OK).await["message"],
        "User enabled; they may log in again"
    );
    let res = app.login(&name, &carol.password).await;
    let token = body_of(res, StatusCode::OK).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.get(LIST, &token).await.status(), StatusCode::OK);

    // An auditor from the next request on: credentials are refused, the audit log is open.
    let res = app
        .put(
            &format!("/admin/users/{name}/role/"),
            &admin.access,
            &json!({ "role": "auditor" }),
        )
        .await;
    assert_eq!(
        body_of(res, StatusCode::OK).await,
        json!({ "username": name, "role": "auditor" })
    );
    assert_eq!(app.get(LIST, &token).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/audit/events/", &token).await.status(),
        StatusCode::OK
    );
    let res = app
        .put(
            &format!("/admin/users/{name}/role/"),
            &admin.access,
            &json!({ "role": "root" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // A reset password: every session ends, the old password is gone, the new one works.
    let res = app
        .put(
            &format!("/admin/users/{name}/password/"),
            &admin.access,
            &json!({ "password": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.get("/audit/events/", &token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&name, &carol.password).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&name, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
    let res = app
        .put(
            &format!("/admin/users/{name}/password/"),
            &admin.access,
            &json!({ "password": "short" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    for (path, body) in [
        ("enable/", None),
        ("role/", Some(json!({ "role": "user" }))),
        ("password/", Some(json!({ "password": NEW_PASSWORD }))),
    ] {
        let url = format!("/admin/users/nobody-here/{path}");
        let res = match body {
            None => app.post_empty(&url, &admin.access).await,
            Some(body) => app.put(&url, &admin.access, &body).await,
        };
        assert_error(res, StatusCode::NOT_FOUND, "No such user").await;
    }
    // Users are refused all of it.
    let res = app
        .post_empty(&format!("/admin/users/{name}/enable/"), &carol.access)
        .await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "carol's old session"
    );
    let mallory = app.user().await;
    let res = app
        .put(
            &format!("/admin/users/{}/role/", mallory.username),
            &mallory.access,
            &json!({ "role": "admin" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let listed = body_of(
        app.get("/admin/users/", &admin.access).await,
        StatusCode::OK,
    )
    .await;
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == json!(name))
        .unwrap()
        .clone();
    assert_eq!(row["role"], "auditor");
    assert_eq!(row["is_disabled"], false);
    assert_eq!(audited(&app, "admin.user_enable"), ["success|"]);
    assert_eq!(
        audited(&app, "admin.user_role"),
        ["success|", "denied|role_forbidden"]
    );
    assert_eq!(audited(&app, "admin.user_password"), ["success|"]);
}

#[tokio::test]
async fn the_last_enabled_admin_can_be_neither_demoted_nor_disabled() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let me = admin.username.clone();
    let last = "That would leave no enabled administrator; make another user an admin first";

    let res = app
        .put(
            &format!("/admin/users/{me}/role/"),
            &admin.access,
            &json!({ "role": "user" }),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, last).await;
    let res = app
        .post_empty(&format!("/admin/users/{me}/disable/"), &admin.access)
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, last).await;

    // With a second admin, the first may step down.
    let second = app.user_with_role(Role::Admin).await;
    let res = app
        .put(
            &format!("/admin/users/{me}/role/"),
            &second.access,
            &json!({ "role": "user" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .post_empty(
            &format!("/admin/users/{}/disable/", second.username),
            &second.access,
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, last).await;
}

#[tokio::test]
async fn a_user_changes_their_own_password_and_every_other_session_ends() {
    let app = spawn_app().await;
    let user = app.user().await;
    let other = body_of(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
    let other_access = other["access_token"].as_str().unwrap().to_owned();
    let other_refresh = other["refresh_token"].as_str().unwrap().to_owned();

    // The current password is required; a wrong one is refused and audited.
    let res = app
        .post(
            "/users/password/",
            &user.access,
            &json!({ "old_password": "not the password at all", "new_password": NEW_PASSWORD }),
        )
        .await;
    assert_error(res, StatusCode::FORBIDDEN, "The current password is wrong").await;
    for bad in [
        json!({ "old_password": user.password, "new_password": "short" }),
        json!({ "new_password": NEW_PASSWORD }),
        json!({ "old_password": user.password, "new_password": NEW_PASSWORD, "role": "admin" }),
    ] {
        let res = app.post("/users/password/", &user.access, &bad).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_json_4xx(res).await;
    }
    assert_eq!(app.get(LIST, &other_access).await.status(), StatusCode::OK);

    let res = app
        .post(
            "/users/password/",
            &user.access,
            &json!({ "old_password": user.password, "new_password": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(
        body_of(res, StatusCode::OK).await["message"],
        "Password changed; your other sessions have ended"
    );
    // This session goes on; the other one is over, its refresh token too.
    assert_eq!(app.get(LIST, &user.access).await.status(), StatusCode::OK);
    assert_eq!(
        app.get(LIST, &other_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = app
        .client
        .post(app.url("/users/token/refresh/"))
        .json(&json!({ "refresh_token": other_refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.login(&user.username, &user.password).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&user.username, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        audited(&app, "user.password_change"),
        ["denied|bad_password", "success|"]
    );
    let logs = String::from_utf8_lossy(&captured_logs()).into_owned();
    assert!(!logs.contains(NEW_PASSWORD));
}

#[tokio::test]
async fn the_command_line_lists_enables_re_roles_and_resets_users() {
    let app = spawn_app().await;
    let carol = app.user().await;
    let name = carol.username.clone();
    let cli = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
            .args(args)
            .env("HAZINA_DATABASE_URL", app.db.url())
            .env("HAZINA_KEYRING", &app.keyring_path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{input}\n").as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    let (ok, out) = cli(&["users", "disable", "--username", &name], None);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["users", "list"], None);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap()
        .to_owned();
    assert!(line.contains("user") && line.contains("disabled"), "{line}");
    let (ok, out) = cli(&["users", "enable", "--username", &name], None);
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &[
            "users",
            "set-role",
            "--username",
            &name,
            "--role",
            "auditor",
        ],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &[
            "users",
            "set-password",
            "--username",
            &name,
            "--password-stdin",
        ],
        Some(NEW_PASSWORD),
    );
    assert!(ok, "{out}");
    assert!(!out.contains(NEW_PASSWORD));
    let (ok, out) = cli(&["users", "list"], None);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("auditor") && line.contains("enabled"),
        "{line}"
    );
    assert_eq!(
        app.get("/audit/events/", &carol.access).await.status(),
        StatusCode::UNAUTHORIZED,
        "the reset ended carol's sessions"
    );
    assert_eq!(
        app.login(&name, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
    let (ok, out) = cli(&["users", "enable", "--username", "nobody-here"], None);
    assert!(!ok);
    assert!(out.contains("no user named `nobody-here`"), "{out}");
    assert_eq!(
        audited(&app, "admin.user_role"),
        ["success|"],
        "the command line's changes are audited too"
    );
}
