//! Hostile clients, second pass (SPEC §15): audit volume bounded by the limiter, `__Host-`
//! cookies and a server-issued sign-in token, the password-change oracle throttled, bounded
//! follow streams that end with their session, lockouts that spare a known source, and a cap
//! on a credential's versions. Every test runs on the backend `HAZINA_TEST_BACKEND` names.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use hazina::domain::Role;

use crate::console::Visitor;
use crate::helpers::{spawn_app_with, TestApp, PASSWORD};
use crate::pki::{spawn_tls_app_with, ClientCert, ClientCerts, TestPki};

/// The requests-per-minute limit these tests run under.
const N: u32 = 10;
const LIMIT: &str = "10";

fn entries(app: &TestApp) -> i64 {
    app.sql_lines("SELECT CAST(COUNT(*) AS TEXT) AS line FROM audit_log")[0]
        .parse()
        .unwrap()
}

fn entries_with(app: &TestApp, action: &str, reason: &str) -> i64 {
    app.sql_lines(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) AS line FROM audit_log \
         WHERE action = '{action}' AND reason = '{reason}'"
    ))[0]
        .parse()
        .unwrap()
}

/// The entries `requests` added stay within about the limit: the admitted requests' one
/// aggregated denial, and one rate-limit refusal.
fn assert_about_n(before: i64, after: i64, what: &str) {
    let added = after - before;
    assert!(
        added <= i64::from(N),
        "{what}: {} requests added {added} audit entries (limit {N} per minute)",
        10 * N
    );
}

/// A request without a principal is refused with `refused`, or meets the limiter first.
fn assert_refused_or_limited(status: StatusCode, refused: StatusCode) {
    assert!(
        status == refused || status == StatusCode::TOO_MANY_REQUESTS,
        "{status}"
    );
}

#[tokio::test]
async fn garbage_console_cookies_add_at_most_about_n_entries() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", LIMIT)]).await;
    let before = entries(&app);
    let mut limited = 0;
    for _ in 0..10 * N {
        let res = app
            .client
            .get(app.url("/console/"))
            .header("Cookie", "hazina_refresh=garbage.garbage.garbage")
            .send()
            .await
            .unwrap();
        limited += u32::from(res.status() == StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(
        limited >= 9 * N,
        "the limiter meets the cookie first: {limited}"
    );
    assert_eq!(entries_with(&app, "auth.refresh", "token_invalid"), 1);
    assert_about_n(before, entries(&app), "garbage console cookies");
}

#[tokio::test]
async fn garbage_refresh_tokens_add_at_most_about_n_entries() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", LIMIT)]).await;
    let before = entries(&app);
    for i in 0..10 * N {
        let res = app
            .client
            .post(app.url("/users/token/refresh/"))
            .json(&json!({ "refresh_token": format!("garbage-{i}") }))
            .send()
            .await
            .unwrap();
        assert_refused_or_limited(res.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(entries_with(&app, "auth.refresh", "token_invalid"), 1);
    assert_about_n(before, entries(&app), "garbage refresh tokens");
}

#[tokio::test]
async fn garbage_bearer_tokens_add_at_most_about_n_entries() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", LIMIT)]).await;
    let before = entries(&app);
    for i in 0..10 * N {
        let res = app
            .get("/payments/credentials/", &format!("garbage.{i}.token"))
            .await;
        assert_refused_or_limited(res.status(), StatusCode::UNAUTHORIZED);
    }
    assert_about_n(before, entries(&app), "garbage bearer tokens");
}

#[tokio::test]
async fn three_hundred_requests_with_a_revoked_certificate_add_at_most_about_n_entries() {
    let pki = TestPki::new();
    let app = spawn_tls_app_with(
        &pki,
        ClientCerts::Optional,
        &[("HAZINA_SERVICE_RATE_LIMIT_PER_MINUTE", LIMIT)],
    )
    .await;
    let admin = app.user_with_role(Role::Admin).await;
    let identity = pki.client(ClientCert::Valid);
    let service = pki.https_client(Some(&identity));
    let fingerprint = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(identity.cert.as_ref()))
    };
    let res = app
        .post(
            "/admin/certificates/revoked/",
            &admin.access,
            &json!({ "fingerprint": fingerprint }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    let before = entries(&app);
    for _ in 0..300 {
        let res = service
            .get(app.url("/payments/credentials/lookup/get-private-key/?owner=nobody&provider=kopokopo&environment=sandbox"))
            .send()
            .await
            .unwrap();
        assert_refused_or_limited(res.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(
        entries_with(&app, "service.authenticate", "certificate_revoked"),
        1
    );
    assert_about_n(before, entries(&app), "a revoked certificate");
}

// ---------------------------------------------------------------------------------------
// Cookies

fn set_cookie_named<'a>(cookies: &'a [String], name: &str) -> &'a str {
    cookies
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} in {cookies:?}"))
}

fn assert_host_cookie(cookie: &str) {
    assert!(cookie.contains("Secure"), "{cookie}");
    assert!(
        cookie.contains("Path=/;") || cookie.ends_with("Path=/"),
        "{cookie}"
    );
    assert!(!cookie.contains("Domain="), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
}

#[tokio::test]
async fn over_tls_the_consoles_cookies_are_host_prefixed_and_secure() {
    let pki = TestPki::new();
    let app = spawn_tls_app_with(&pki, ClientCerts::NotRequested, &[]).await;
    let user = app.user().await;
    let mut v = Visitor::with(&app, pki.https_builder(None));

    let form = v.get("/console/login/").await;
    let signed_in = v.sign_in(&user.username, &user.password).await;

    assert_host_cookie(set_cookie_named(
        &form.set_cookies(),
        "__Host-hazina_signin",
    ));
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.html
    );
    let cookies = signed_in.set_cookies();
    assert_host_cookie(set_cookie_named(&cookies, "__Host-hazina_access"));
    assert_host_cookie(set_cookie_named(&cookies, "__Host-hazina_refresh"));
    assert!(
        !cookies.iter().any(|c| c.starts_with("hazina_access=")),
        "{cookies:?}"
    );
    let home = v.get("/console/").await;
    assert_eq!(
        home.location(),
        "/console/credentials/",
        "the prefixed session works"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_with_an_https_public_url_the_cookies_are_secure_and_hsts_is_sent() {
    let app = spawn_app_with(&[
        ("HAZINA_PUBLIC_URL", "https://vault.example.com"),
        ("HAZINA_TRUSTED_PROXIES", "127.0.0.1/32"),
    ])
    .await;
    let user = app.user().await;
    let mut v = Visitor::new(&app);

    let signed_in = v.sign_in(&user.username, &user.password).await;

    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.html
    );
    let cookies = signed_in.set_cookies();
    assert_host_cookie(set_cookie_named(&cookies, "__Host-hazina_access"));
    assert_host_cookie(set_cookie_named(&cookies, "__Host-hazina_refresh"));
    assert_eq!(
        signed_in.headers["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
}

#[tokio::test]
async fn a_sign_in_token_the_client_chose_is_refused_and_nobody_is_signed_in() {
    let app = spawn_app_with(&[]).await;
    let user = app.user().await;
    let logins_before = entries_with_outcome(&app, "auth.login", "success");
    let chosen = "A".repeat(43);

    let res = app
        .client
        .post(app.url("/console/login/"))
        .header("Cookie", format!("hazina_signin={chosen}"))
        .form(&[
            ("csrf", chosen.as_str()),
            ("username", user.username.as_str()),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(
        !res.headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("hazina_access=")),
        "no session cookie"
    );
    assert_eq!(
        entries_with_outcome(&app, "auth.login", "success"),
        logins_before
    );
}

fn entries_with_outcome(app: &TestApp, action: &str, outcome: &str) -> i64 {
    app.sql_lines(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) AS line FROM audit_log \
         WHERE action = '{action}' AND outcome = '{outcome}'"
    ))[0]
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Password change, lockouts

#[tokio::test]
async fn a_wrong_current_password_counts_against_the_login_throttle() {
    let app = spawn_app_with(&[]).await;
    let user = app.user().await;
    let wrong =
        json!({ "old_password": "not-the-password", "new_password": "a brand new password 0123" });

    let mut statuses = Vec::new();
    for _ in 0..11 {
        statuses.push(
            app.post("/users/password/", &user.access, &wrong)
                .await
                .status(),
        );
    }
    let right = json!({ "old_password": PASSWORD, "new_password": "a brand new password 0123" });
    let locked = app.post("/users/password/", &user.access, &right).await;

    assert!(
        statuses[..10].iter().all(|s| *s == StatusCode::FORBIDDEN),
        "{statuses:?}"
    );
    assert_eq!(statuses[10], StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        locked.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right one"
    );
}

async fn login_from(app: &TestApp, address: &str, username: &str, password: &str) -> StatusCode {
    app.client
        .post(app.url("/users/login/"))
        .header("X-Forwarded-For", address)
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn an_admin_who_logged_in_from_one_address_still_logs_in_from_it_after_60_failures_from_others(
) {
    let app = spawn_app_with(&[("HAZINA_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let admin = app.user_with_role(Role::Admin).await;
    let home = "203.0.113.7";
    assert_eq!(
        login_from(&app, home, &admin.username, PASSWORD).await,
        StatusCode::OK
    );

    for i in 0..60 {
        let attacker = format!("198.51.100.{}", i % 3 + 1);
        let status = login_from(&app, &attacker, &admin.username, "guess").await;
        assert!(
            matches!(
                status,
                StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
            ),
            "{status}"
        );
    }
    let from_elsewhere = login_from(&app, "192.0.2.50", &admin.username, PASSWORD).await;
    let from_home = login_from(&app, home, &admin.username, PASSWORD).await;

    assert_eq!(
        from_elsewhere,
        StatusCode::TOO_MANY_REQUESTS,
        "the account is locked"
    );
    assert_eq!(from_home, StatusCode::OK, "the known source is not");
    // The known source still meets a limit of its own.
    for _ in 0..10 {
        login_from(&app, home, &admin.username, "guess").await;
    }
    assert_eq!(
        login_from(&app, home, &admin.username, PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

// ---------------------------------------------------------------------------------------
// Follow streams

async fn follow(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(app.url("/audit/export/?follow=true"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Reads `res` to its end; panics if it is still open after 30 s.
async fn read_to_end(mut res: reqwest::Response) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, res.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) | Ok(Err(_)) => return,
            Err(_) => panic!("the stream is still open 30 s later"),
        }
    }
}

#[tokio::test]
async fn a_ninth_follow_stream_is_refused_and_a_closed_one_frees_its_place() {
    let app = spawn_app_with(&[]).await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let mut open = Vec::new();
    for _ in 0..8 {
        let res = follow(&app, &auditor.access).await;
        assert_eq!(res.status(), StatusCode::OK);
        open.push(res);
    }
    let ninth = follow(&app, &auditor.access).await;
    assert_eq!(ninth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(ninth.headers().contains_key("retry-after"));
    let body: Value = ninth.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("follow"), "{body}");
    drop(open);
}

#[tokio::test]
async fn a_disabled_auditors_stream_ends() {
    let app = spawn_app_with(&[]).await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let res = follow(&app, &auditor.access).await;
    assert_eq!(res.status(), StatusCode::OK);

    app.disable_user(&auditor.username).unwrap();

    read_to_end(res).await;
}

#[tokio::test]
async fn a_follow_stream_ends_when_its_session_logs_out() {
    let app = spawn_app_with(&[]).await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let res = follow(&app, &auditor.access).await;
    assert_eq!(res.status(), StatusCode::OK);

    let out = app.post_empty("/users/logout/", &auditor.access).await;
    assert_eq!(out.status(), StatusCode::OK);

    read_to_end(res).await;
}

#[tokio::test]
async fn the_follow_stream_cap_is_a_setting() {
    let app = spawn_app_with(&[("HAZINA_AUDIT_FOLLOW_MAX", "1")]).await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let first = follow(&app, &auditor.access).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = follow(&app, &auditor.access).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(first);
}

// ---------------------------------------------------------------------------------------
// Versions

#[tokio::test]
async fn one_version_past_the_cap_shreds_the_oldest_and_is_audited() {
    let app = spawn_app_with(&[("HAZINA_MAX_VERSIONS", "3")]).await;
    let user = app.user().await;
    let created = app
        .create_credential(&user, "kopokopo", "sandbox", "key-version-1")
        .await;
    let id = created["id"].as_i64().unwrap();
    for n in 2..=4 {
        let res = app
            .post(
                &format!("/payments/credentials/{id}/rotate/"),
                &user.access,
                &json!({ "private_key": format!("key-version-{n}") }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
    }

    let listed: Value = app
        .get(
            &format!("/payments/credentials/{id}/versions/"),
            &user.access,
        )
        .await
        .json()
        .await
        .unwrap();
    let numbers: Vec<i64> = listed["versions"]
        .as_array()
        .or_else(|| listed.as_array())
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    let stored = app.sql_lines(&format!(
        "SELECT CAST(version AS TEXT) AS line FROM credential_versions \
         WHERE credential_id = {id} ORDER BY version"
    ));
    let rollback = app
        .post(
            &format!("/payments/credentials/{id}/rollback/"),
            &user.access,
            &json!({ "version": 1 }),
        )
        .await;
    let reveal: Value = app
        .get(
            &format!("/payments/credentials/{id}/get-private-key/"),
            &user.access,
        )
        .await
        .json()
        .await
        .unwrap();

    let mut sorted = numbers.clone();
    sorted.sort();
    assert_eq!(sorted, vec![2, 3, 4]);
    assert_eq!(stored, vec!["2", "3", "4"]);
    assert_eq!(
        entries_with(&app, "credential.version_shred", "max_versions"),
        1
    );
    assert!(rollback.status().is_client_error(), "{}", rollback.status());
    assert_eq!(reveal["private_key"], "key-version-4");
}
