//! The console over HTTP (SPEC §12): sessions by cookie, CSRF, headers, owner scope, and no
//! stored secret on any page. The same paths in a real browser: console_browser.rs.

use std::collections::BTreeMap;

use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;
use hazina::domain::Role;

/// A cookie-keeping client that never follows redirects, so each answer is seen as sent.
pub struct Visitor<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    pub cookies: BTreeMap<String, String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub html: String,
}

impl Answer {
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token of the page's forms.
    pub fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self.html.find(marker).expect("a form with a CSRF token") + marker.len();
        let end = start + self.html[start..].find('"').unwrap();
        self.html[start..end].to_owned()
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

impl<'a> Visitor<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Self::with(app, reqwest::Client::builder())
    }

    /// A visitor on its own client (e.g. one that trusts a test CA).
    pub fn with(app: &'a TestApp, client: reqwest::ClientBuilder) -> Self {
        Visitor {
            app,
            client: client
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn keep(&mut self, res: reqwest::Response) -> Answer {
        let status = res.status();
        let headers = res.headers().clone();
        for set in headers.get_all(SET_COOKIE) {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || set.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let html = res.text().await.unwrap();
        Answer {
            status,
            headers,
            html,
        }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        let mut req = self.client.get(self.app.url(path));
        if !self.cookies.is_empty() {
            req = req.header(COOKIE, self.cookie_header());
        }
        let res = req.send().await.unwrap();
        self.keep(res).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let mut req = self.client.post(self.app.url(path)).form(form);
        if !self.cookies.is_empty() {
            req = req.header(COOKIE, self.cookie_header());
        }
        let res = req.send().await.unwrap();
        self.keep(res).await
    }

    /// Signs in through the console's form; the answer to the post.
    pub async fn sign_in(&mut self, username: &str, password: &str) -> Answer {
        let form = self.get("/console/login/").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.csrf();
        self.post(
            "/console/login/",
            &[
                ("csrf", &csrf),
                ("username", username),
                ("password", password),
            ],
        )
        .await
    }

    /// Signs in and asserts it worked.
    pub async fn signed_in(app: &'a TestApp, user: &TestUser) -> Visitor<'a> {
        let mut v = Visitor::new(app);
        let res = v.sign_in(&user.username, &user.password).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
        assert_eq!(res.location(), "/console/");
        v
    }
}

/// A credential made through the console's form; its id.
async fn create_through_console(v: &mut Visitor<'_>, provider: &str, key: &str) -> String {
    let page = v.get("/console/credentials/").await;
    let csrf = page.csrf();
    let res = v
        .post(
            "/console/credentials/",
            &[
                ("csrf", &csrf),
                ("provider", provider),
                ("environment", "sandbox"),
                ("api_key", "console-api-key"),
                ("private_key", key),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let location = res.location().to_owned();
    let id = location
        .strip_prefix("/console/credentials/")
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_owned();
    assert!(id.parse::<i64>().is_ok(), "{location}");
    id
}

#[tokio::test]
async fn a_console_page_without_a_session_sends_the_browser_to_sign_in() {
    let app = spawn_app().await;
    let mut v = Visitor::new(&app);
    for path in [
        "/console/",
        "/console/credentials/",
        "/console/admin/",
        "/console/audit/",
    ] {
        let res = v.get(path).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(res.location(), "/console/login/", "{path}");
    }
    let form = v.get("/console/login/").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.html.contains("<label for=\"password\">"));
}

#[tokio::test]
async fn signing_in_sets_httponly_samesite_strict_cookies_for_the_console_only() {
    let app = spawn_app().await;
    let user = app.user().await;
    let mut v = Visitor::new(&app);
    let res = v.sign_in(&user.username, &user.password).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let cookies = res.set_cookies();
    for name in ["hazina_access=", "hazina_refresh="] {
        let c = cookies
            .iter()
            .find(|c| c.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {cookies:?}"));
        assert!(c.contains("HttpOnly"), "{c}");
        assert!(c.contains("SameSite=Strict"), "{c}");
        assert!(c.contains("Path=/console/"), "{c}");
        // Plain HTTP here (a test server): Secure would make the browser drop it.
        assert!(!c.contains("Secure"), "{c}");
    }
    // The session is an ordinary, audited login.
    let page = v.get("/console/").await;
    assert_eq!(page.location(), "/console/credentials/");
    let logins = app.sql_lines(&format!(
        "SELECT outcome AS line FROM audit_log WHERE action = 'auth.login' AND actor_name = '{}'",
        user.username
    ));
    assert_eq!(
        logins,
        vec!["success", "success"],
        "the API's login and the console's"
    );
}

#[tokio::test]
async fn the_console_session_cookie_never_authenticates_the_api() {
    let app = spawn_app().await;
    let user = app.user().await;
    let v = Visitor::signed_in(&app, &user).await;
    let access = v.cookies["hazina_access"].clone();
    let res = app
        .client
        .get(app.url("/payments/credentials/"))
        .header(COOKIE, format!("hazina_access={access}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_wrong_password_on_the_console_is_refused_and_throttled_like_the_api() {
    let app = spawn_app_with(&[("HAZINA_LOGIN_MAX_FAILURES_ACCOUNT", "2")]).await;
    let user = app.user().await;
    let mut v = Visitor::new(&app);
    for _ in 0..2 {
        let res = v.sign_in(&user.username, "not the password").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
        assert!(res.html.contains("Invalid username or password"));
        assert!(!v.cookies.contains_key("hazina_access"));
    }
    // The account is locked now: even the right password waits, on the console and the API.
    let res = v.sign_in(&user.username, &user.password).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers.get("retry-after").is_some());
    assert!(res.html.contains("Too many failed login attempts"));
    assert_eq!(
        app.login(&user.username, &user.password).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_sign_in_without_its_form_token_is_refused() {
    let app = spawn_app().await;
    let user = app.user().await;
    let mut v = Visitor::new(&app);
    let res = v
        .post(
            "/console/login/",
            &[("username", &user.username), ("password", &user.password)],
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(!v.cookies.contains_key("hazina_access"));
    // A token of its own making, without the matching cookie, is no better.
    let res = v
        .post(
            "/console/login/",
            &[
                ("csrf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                ("username", &user.username),
                ("password", &user.password),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_console_form_without_this_sessions_csrf_token_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let mut v = Visitor::signed_in(&app, &owner).await;
    let id = create_through_console(&mut v, "kopokopo", "first-private-key").await;
    let toggle = format!("/console/credentials/{id}/toggle/");
    // No token.
    let res = v.post(&toggle, &[("version", "1")]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(res
        .html
        .contains("This form has expired or did not come from this console"));
    // Another session's token (the same user, signed in elsewhere).
    let mut other = Visitor::signed_in(&app, &owner).await;
    let elsewhere = other.get("/console/credentials/").await.csrf();
    assert_ne!(elsewhere, v.get("/console/credentials/").await.csrf());
    let res = v
        .post(&toggle, &[("csrf", &elsewhere), ("version", "1")])
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    // Still active, and no toggle was ever audited.
    let cred = body_of(
        app.get(&format!("/payments/credentials/{id}/"), &owner.access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(cred["is_active"], true);
    assert!(app
        .sql_lines(
            "SELECT CAST(seq AS TEXT) AS line FROM audit_log WHERE action = 'credential.toggle'"
        )
        .is_empty());
    // With the page's own token it works.
    let csrf = v.get(&format!("/console/credentials/{id}/")).await.csrf();
    let res = v.post(&toggle, &[("csrf", &csrf), ("version", "1")]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert!(res.location().ends_with("?notice=deactivated"));
}

#[tokio::test]
async fn another_users_credential_answers_on_the_console_as_a_missing_one() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let stranger = app.user().await;
    let theirs = app
        .create_credential(&owner, "mpesa", "sandbox", "owner-private-key")
        .await;
    let mut v = Visitor::signed_in(&app, &stranger).await;
    let other = v
        .get(&format!("/console/credentials/{}/", theirs["id"]))
        .await;
    let missing = v.get("/console/credentials/999999/").await;
    let nonsense = v.get("/console/credentials/abc/").await;
    for res in [&other, &missing, &nonsense] {
        assert_eq!(res.status, StatusCode::NOT_FOUND);
        assert!(res
            .html
            .contains("Payment credentials not found or access denied"));
    }
    assert_eq!(
        other.html, missing.html,
        "the two answers are the same page"
    );
    // Posting to it is refused the same way, and touches nothing.
    let csrf = v.get("/console/credentials/").await.csrf();
    let res = v
        .post(
            &format!("/console/credentials/{}/toggle/", theirs["id"]),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let cred = body_of(
        app.get(
            &format!("/payments/credentials/{}/", theirs["id"]),
            &owner.access,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(cred["is_active"], true);
}

#[tokio::test]
async fn no_console_page_ever_shows_a_stored_secret() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let first = format!("canary-one-{}", uuid::Uuid::new_v4().simple());
    let second = format!("canary-two-{}", uuid::Uuid::new_v4().simple());
    let webhook = format!("canary-hook-{}", uuid::Uuid::new_v4().simple());
    let mut v = Visitor::signed_in(&app, &owner).await;
    let id = create_through_console(&mut v, "kopokopo", &first).await;
    let detail = format!("/console/credentials/{id}/");
    let mut pages = vec![v.get(&detail).await];
    // Check the key (right, then wrong), then rotate to a new key and a webhook secret.
    for candidate in [first.as_str(), "wrong-candidate-key"] {
        let csrf = pages.last().unwrap().csrf();
        let res = v
            .post(
                &format!("{detail}verify/"),
                &[("csrf", &csrf), ("private_key", candidate)],
            )
            .await;
        assert_eq!(res.status, StatusCode::SEE_OTHER);
        pages.push(v.get(res.location()).await);
    }
    assert!(pages[1]
        .html
        .contains("Match: the key you entered is the stored private key."));
    assert!(pages[2].html.contains("No match"));
    let csrf = pages.last().unwrap().csrf();
    let res = v
        .post(
            &format!("{detail}rotate/"),
            &[
                ("csrf", &csrf),
                ("version", "1"),
                ("private_key", &second),
                ("secret.webhook_secret", &webhook),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let rotated = v.get(res.location()).await;
    assert!(
        rotated.html.contains("webhook_secret"),
        "the secret's name is shown"
    );
    pages.push(rotated);
    // A rotation that fails keeps the page (and its answer) free of what was typed.
    let csrf = pages.last().unwrap().csrf();
    let refused = v
        .post(
            &format!("{detail}rotate/"),
            &[("csrf", &csrf), ("version", "1"), ("private_key", &first)],
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        refused.html
    );
    pages.push(refused);
    pages.push(v.get("/console/credentials/").await);
    // The security team's and the admin's pages too.
    let auditor = app.user_with_role(Role::Auditor).await;
    let mut a = Visitor::signed_in(&app, &auditor).await;
    for path in [
        "/console/audit/",
        "/console/audit/verify/",
        "/console/audit/export.jsonl",
    ] {
        let page = a.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        pages.push(page);
    }
    let admin = app.user_with_role(Role::Admin).await;
    let mut m = Visitor::signed_in(&app, &admin).await;
    for path in [
        "/console/admin/",
        "/console/admin/grants/",
        "/console/admin/keys/",
    ] {
        let page = m.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        pages.push(page);
    }
    for page in &pages {
        for canary in [&first, &second, &webhook] {
            assert!(
                !page.html.contains(canary.as_str()),
                "a page holds a secret"
            );
        }
    }
    let logs = String::from_utf8_lossy(&captured_logs()).into_owned();
    for canary in [&first, &second, &webhook] {
        assert!(!logs.contains(canary.as_str()), "a log line holds a secret");
    }
    // The keys themselves are what the console stored.
    let revealed = body_of(
        reveal(&app, &owner.access, id.parse().unwrap()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(revealed["private_key"], second.as_str());
}

#[tokio::test]
async fn every_console_answer_sends_the_csp_and_refuses_framing_and_caching() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let mut v = Visitor::new(&app);
    let mut answers = vec![
        v.get("/console/login/").await,
        v.get("/console/static/console.css").await,
        v.get("/console/static/follow.js").await,
        v.get("/console/no-such-page/").await,
    ];
    let mut v = Visitor::signed_in(&app, &owner).await;
    answers.push(v.get("/console/credentials/").await);
    answers.push(v.get("/console/credentials/12345/").await);
    answers.push(v.get("/console/audit/").await); // 403: not an auditor
    for res in &answers {
        let csp = res.headers["content-security-policy"].to_str().unwrap();
        assert_eq!(csp, hazina::console::CSP);
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
        assert_eq!(res.headers["x-frame-options"], "DENY");
        assert_eq!(res.headers["cache-control"], "no-store");
        assert_eq!(res.headers["x-content-type-options"], "nosniff");
    }
    assert_eq!(
        answers[1].headers["content-type"],
        "text/css; charset=utf-8"
    );
    assert_eq!(answers[3].status, StatusCode::NOT_FOUND);
    assert!(answers[3].headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(answers[6].status, StatusCode::FORBIDDEN);
    // No page carries inline script or style.
    for res in answers
        .iter()
        .filter(|r| r.html.starts_with("<!DOCTYPE html>"))
    {
        assert!(!res.html.contains("<script>"), "inline script");
        assert!(!res.html.contains("<style"), "inline style");
        assert!(!res.html.contains(" style="), "a style attribute");
    }
    // The API keeps its own, stricter policy.
    let api = app.get("/payments/credentials/", &owner.access).await;
    assert_eq!(
        api.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
}

#[tokio::test]
async fn an_expired_console_session_is_renewed_once_through_its_refresh_token() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let mut v = Visitor::signed_in(&app, &owner).await;
    let stale = v.cookies.clone();
    app.clock.advance(16 * 60);
    let page = v.get("/console/credentials/").await;
    assert_eq!(
        page.status,
        StatusCode::OK,
        "renewed without signing in again"
    );
    assert_ne!(v.cookies["hazina_refresh"], stale["hazina_refresh"]);
    assert_ne!(v.cookies["hazina_access"], stale["hazina_access"]);
    let renewed = v.cookies["hazina_access"].clone();
    // Replaying the spent refresh token ends the whole session (the API's reuse rule).
    let mut thief = Visitor::new(&app);
    thief.cookies = stale;
    let res = thief.get("/console/credentials/").await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/console/login/");
    assert_eq!(
        app.get("/payments/credentials/", &renewed).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = v.get("/console/credentials/").await;
    assert_eq!(res.location(), "/console/login/");
}

#[tokio::test]
async fn signing_out_of_the_console_revokes_the_session() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let mut v = Visitor::signed_in(&app, &owner).await;
    let access = v.cookies["hazina_access"].clone();
    let csrf = v.get("/console/credentials/").await.csrf();
    let res = v.post("/console/logout/", &[("csrf", &csrf)]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert!(!v.cookies.contains_key("hazina_access"));
    assert_eq!(
        app.get("/payments/credentials/", &access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let logouts = app.sql_lines(&format!(
        "SELECT outcome AS line FROM audit_log WHERE action = 'auth.logout' AND actor_name = '{}'",
        owner.username
    ));
    assert_eq!(logouts, vec!["success"]);
}

#[tokio::test]
async fn console_pages_spend_the_users_rate_limit() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "5")]).await;
    let owner = app.user().await;
    let mut v = Visitor::signed_in(&app, &owner).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(v.get("/console/credentials/").await.status);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // The user's budget, not the address's: another user from the same address goes on.
    let other = app.user().await;
    let res = app.get("/payments/credentials/", &other.access).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn each_role_sees_only_its_own_pages() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let mut u = Visitor::signed_in(&app, &owner).await;
    let res = u.get("/console/admin/").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = u.get("/console/audit/").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(res.html.contains("Only auditors may read the audit log"));
    let mut a = Visitor::signed_in(&app, &auditor).await;
    assert_eq!(a.get("/console/").await.location(), "/console/audit/");
    let res = a.get("/console/credentials/").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(res
        .html
        .contains("Auditors cannot access payment credentials"));
    // Each refusal is on the record, as the API's are.
    let denied = app.sql_lines(&format!(
        "SELECT action AS line FROM audit_log WHERE outcome = 'denied' AND actor_name = '{}'",
        owner.username
    ));
    assert_eq!(denied.len(), 2, "{denied:?}");
}

#[tokio::test]
async fn the_auditors_chart_counts_reveals_and_denials_in_their_hours() {
    let app = spawn_app().await;
    // Two hours ago: two reveals and one denial; now: one reveal and two denials.
    app.clock.advance(-2 * 3600);
    let early = app.user().await;
    let cred = app
        .create_credential(&early, "mpesa", "sandbox", "early-private-key")
        .await;
    for _ in 0..2 {
        let id = cred["id"].as_i64().unwrap();
        assert_eq!(
            reveal(&app, &early.access, id).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        app.login(&early.username, "wrong").await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.clock.advance(2 * 3600);
    let owner = app.user().await;
    let cred = app
        .create_credential(&owner, "kopokopo", "sandbox", "second-private-key")
        .await;
    assert_eq!(
        reveal(&app, &owner.access, cred["id"].as_i64().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    for _ in 0..2 {
        assert_eq!(
            app.login(&owner.username, "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let auditor = app.user_with_role(Role::Auditor).await;
    let mut a = Visitor::signed_in(&app, &auditor).await;
    let page = a.get("/console/audit/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains("reveals (3)"), "the caption's totals");
    assert!(page.html.contains("denials (3)"));
    let hour = |offset: i64| {
        let t = app.clock.now() - offset * 3600;
        chrono::DateTime::from_timestamp(t - t.rem_euclid(3600), 0)
            .unwrap()
            .format("%H:00")
            .to_string()
    };
    let row = |h: String, r: i64, d: i64| {
        format!(
            "<tr><td data-label=\"Hour (UTC)\">{h}</td><td data-label=\"Reveals\">{r}</td>\
             <td data-label=\"Denials\">{d}</td></tr>"
        )
    };
    assert!(page.html.contains(&row(hour(2), 2, 1)), "two hours ago");
    assert!(page.html.contains(&row(hour(1), 0, 0)), "an hour ago");
    assert!(page.html.contains(&row(hour(0), 1, 2)), "this hour");
    assert_eq!(page.html.matches("<rect class=\"reveal\"").count(), 24);
}

#[tokio::test]
async fn the_auditor_checks_a_checkpoint_in_plain_words() {
    let app = spawn_app().await;
    let owner = app.user().await;
    app.create_credential(&owner, "mpesa", "sandbox", "owner-private-key")
        .await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let mut a = Visitor::signed_in(&app, &auditor).await;
    let note = a.get("/console/audit/checkpoint.txt").await;
    assert_eq!(note.status, StatusCode::OK);
    assert!(note.headers["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let page = a.get("/console/audit/verify/").await;
    assert!(page.html.contains("The log is intact"));
    let csrf = page.csrf();
    let res = a
        .post(
            "/console/audit/verify/",
            &[("csrf", &csrf), ("checkpoint", &note.html)],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.html.contains("The checkpoint holds"), "{}", res.html);
    // A database writer cuts the log back below the checkpoint and fixes the head: the
    // chain alone is fooled, the kept checkpoint is not, and the page says which.
    let size: u64 = note.html.lines().nth(1).unwrap().parse().unwrap();
    crate::transparency::truncate_log(&app, size - 2);
    let page = a.get("/console/audit/verify/").await;
    assert!(
        page.html.contains("The log is intact"),
        "a self-consistent truncation"
    );
    let csrf = page.csrf();
    let res = a
        .post(
            "/console/audit/verify/",
            &[("csrf", &csrf), ("checkpoint", &note.html)],
        )
        .await;
    assert!(
        res.html.contains("The checkpoint does not hold"),
        "{}",
        res.html
    );
    assert!(
        res.html
            .contains(&format!("fewer than the checkpoint&#39;s {size}"))
            || res
                .html
                .contains(&format!("fewer than the checkpoint's {size}")),
        "{}",
        res.html
    );
}

#[tokio::test]
async fn an_admin_makes_a_user_and_a_grant_through_the_console_and_each_is_audited() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let admin = app.user_with_role(Role::Admin).await;
    let mut m = Visitor::signed_in(&app, &admin).await;
    let csrf = m.get("/console/admin/").await.csrf();
    let res = m
        .post(
            "/console/admin/users/",
            &[
                ("csrf", &csrf),
                ("username", "newmerchant"),
                ("password", "a-long-initial-password-1"),
                ("role", "user"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    assert_eq!(
        app.login("newmerchant", "a-long-initial-password-1")
            .await
            .status(),
        StatusCode::OK
    );
    let res = m
        .post(
            "/console/admin/services/",
            &[
                ("csrf", &csrf),
                ("name", "payments-api"),
                ("identity", "spiffe://hazina.test/payments-api"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let res = m
        .post(
            "/console/admin/grants/",
            &[
                ("csrf", &csrf),
                ("service", "payments-api"),
                ("owner", &owner.username),
                ("provider", "mpesa"),
                ("environment", "sandbox"),
                ("operation", "reveal"),
                ("operation", "stk-password"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let grants = body_of(
        app.get("/admin/grants/", &admin.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(grants[0]["operations"], json!(["reveal", "stk-password"]));
    assert_eq!(grants[0]["environment"], "sandbox");
    // A refusal is shown on the page with the API's words: a duplicate user.
    let res = m
        .post(
            "/console/admin/users/",
            &[
                ("csrf", &csrf),
                ("username", "newmerchant"),
                ("password", "a-long-initial-password-1"),
                ("role", "user"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::CONFLICT);
    assert!(res.html.contains("role=\"alert\""));
    let actions = app.sql_lines(&format!(
        "SELECT action AS line FROM audit_log WHERE actor_name = '{}' AND outcome = 'success' \
         AND action LIKE 'admin.%_create' ORDER BY seq",
        admin.username
    ));
    assert_eq!(
        actions,
        vec![
            "admin.user_create",
            "admin.service_create",
            "admin.grant_create"
        ]
    );
}

#[tokio::test]
async fn under_tls_the_console_cookies_are_secure() {
    let pki = crate::pki::TestPki::new();
    let app = crate::pki::spawn_tls_app(&pki, crate::pki::ClientCerts::Optional).await;
    let user = app.user().await;
    let mut v = Visitor::with(&app, pki.https_builder(None));
    let res = v.sign_in(&user.username, &user.password).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let cookies = res.set_cookies();
    assert!(cookies.len() >= 2, "{cookies:?}");
    for name in ["__Host-hazina_access=", "__Host-hazina_refresh="] {
        let c = cookies.iter().find(|c| c.starts_with(name)).unwrap();
        assert!(c.contains("; Secure") && c.contains("HttpOnly"), "{c}");
    }
    assert_eq!(v.get("/console/").await.location(), "/console/credentials/");
}

#[tokio::test]
async fn the_audit_log_pages_with_the_apis_cursor_and_keeps_the_filters() {
    let app = spawn_app().await;
    for _ in 0..4 {
        app.user().await;
    }
    let auditor = app.user_with_role(Role::Auditor).await;
    let mut a = Visitor::signed_in(&app, &auditor).await;
    let first = a.get("/console/audit/?action=auth.login&limit=2").await;
    assert_eq!(first.status, StatusCode::OK);
    let rows = |page: &Answer| {
        page.html
            .matches("<td data-label=\"What\">auth.login</td>")
            .count()
    };
    assert_eq!(rows(&first), 2);
    let marker = "<a href=\"/console/audit/?";
    let start = first.html.find(marker).expect("a next page link") + "<a href=\"".len();
    let next =
        first.html[start..start + first.html[start..].find('"').unwrap()].replace("&amp;", "&");
    assert!(
        next.contains("action=auth%2Elogin") && next.contains("cursor="),
        "{next}"
    );
    let second = a.get(&next).await;
    assert_eq!(rows(&second), 2);
    assert_ne!(first.html, second.html);
    // Blank boxes mean "any"; an unknown filter or a bad value is a 400 page, never a 5xx.
    let blank = a.get("/console/audit/?actor=&action=&outcome=").await;
    assert_eq!(blank.status, StatusCode::OK);
    for bad in [
        "?secret=1",
        "?limit=abc",
        "?since=yesterday",
        "?credential=-x",
    ] {
        let res = a.get(&format!("/console/audit/{bad}")).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(res.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
}

#[tokio::test]
async fn an_edited_entry_is_named_in_plain_words() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.user().await;
    }
    let auditor = app.user_with_role(Role::Auditor).await;
    let mut a = Visitor::signed_in(&app, &auditor).await;
    app.sql("UPDATE audit_log SET actor_name = 'mallory' WHERE seq = 2");
    let page = a.get("/console/audit/verify/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.html
            .contains("The log has been altered: entry #2 is not the entry that was written"),
        "{}",
        page.html
    );
}

#[tokio::test]
async fn hostile_console_input_gets_a_4xx_page_never_a_5xx() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let cred = app
        .create_credential(&owner, "kopokopo", "sandbox", "owner-private-key")
        .await;
    let mut v = Visitor::signed_in(&app, &owner).await;
    let csrf = v.get("/console/credentials/").await.csrf();
    for path in [
        "/console/credentials/-1/",
        "/console/credentials/1e3/",
        "/console/credentials/99999999999999999999999/",
        "/console/credentials/%00/",
        "/console/credentials/1/../../",
    ] {
        let res = v.get(path).await;
        assert!(
            res.status.is_client_error() || res.status.is_redirection(),
            "{path}: {}",
            res.status
        );
    }
    let detail = format!("/console/credentials/{}/", cred["id"]);
    let cookie = v
        .cookies
        .iter()
        .map(|(k, c)| format!("{k}={c}"))
        .collect::<Vec<_>>()
        .join("; ");
    let raw = |body: Vec<u8>, kind: &'static str| {
        app.client
            .post(app.url(&format!("{detail}verify/")))
            .header(COOKIE, cookie.clone())
            .header("content-type", kind)
            .body(body)
    };
    let huge = format!("csrf={csrf}&private_key={}", "k".repeat(2_000_000));
    for (body, kind) in [
        (b"{\"private_key\": \"x\"}".to_vec(), "application/json"),
        (b"%%%%=%%%".to_vec(), "application/x-www-form-urlencoded"),
        (vec![0xff, 0xfe, 0x00], "application/x-www-form-urlencoded"),
        (huge.into_bytes(), "application/x-www-form-urlencoded"),
        (
            format!("csrf={csrf}&private_key=%00").into_bytes(),
            "application/x-www-form-urlencoded",
        ),
    ] {
        let res = raw(body, kind).send().await.unwrap();
        assert!(res.status().is_client_error(), "{kind}: {}", res.status());
    }
    // A rotation with nothing in it, a bad version, a provider the API does not know.
    let res = v
        .post(
            &format!("{detail}rotate/"),
            &[("csrf", &csrf), ("version", "x")],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res = v
        .post(
            "/console/credentials/",
            &[
                ("csrf", &csrf),
                ("provider", "paypal"),
                ("api_key", "k"),
                ("private_key", "0123456789"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.html.contains("role=\"alert\""));
    // The credential is as it was.
    let now = body_of(
        app.get(&detail.replace("/console", "/payments"), &owner.access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(now["version"], 1);
}

#[tokio::test]
async fn the_console_warns_on_the_grant_form_and_after_a_grant_that_stk_password_discloses_the_passkey(
) {
    let app = spawn_app().await;
    let owner = app.user().await;
    let admin = app.user_with_role(Role::Admin).await;
    let service =
        json!({ "name": "payments-api", "identity": "spiffe://hazina.test/payments-api" });
    assert_eq!(
        app.post("/admin/services/", &admin.access, &service)
            .await
            .status(),
        StatusCode::CREATED
    );
    let mut m = Visitor::signed_in(&app, &admin).await;
    let form = m.get("/console/admin/grants/").await;
    let csrf = form.csrf();
    let grant = |provider: &'static str, operation: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("service", "payments-api".to_owned()),
            ("owner", owner.username.clone()),
            ("provider", provider.to_owned()),
            ("environment", "sandbox".to_owned()),
            ("operation", operation.to_owned()),
        ]
    };

    let made = m
        .post(
            "/console/admin/grants/",
            &pairs(&grant("mpesa", "stk-password")),
        )
        .await;
    let after = m.get(made.location()).await;
    let made_plain = m
        .post(
            "/console/admin/grants/",
            &pairs(&grant("kopokopo", "webhook-verify")),
        )
        .await;
    let after_plain = m.get(made_plain.location()).await;

    let warning = "stk-password discloses the M-Pesa passkey: the password is \
                   base64(shortcode + passkey + timestamp)";
    assert!(form.html.contains(warning), "{}", form.html);
    assert!(
        form.html
            .contains("aria-describedby=\"op-stk-password-warning\""),
        "{}",
        form.html
    );
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.html);
    assert_eq!(
        made.location(),
        "/console/admin/grants/?notice=grant-created-disclosing"
    );
    assert!(
        after
            .html
            .contains(&format!("The grant was made. Warning: {warning}")),
        "{}",
        after.html
    );
    assert_eq!(
        made_plain.status,
        StatusCode::SEE_OTHER,
        "{}",
        made_plain.html
    );
    assert_eq!(
        made_plain.location(),
        "/console/admin/grants/?notice=grant-created"
    );
    assert!(after_plain.html.contains("The grant was made."));
    assert!(!after_plain.html.contains("The grant was made. Warning"));
}

/// A form's fields as `post` takes them.
fn pairs<'a>(fields: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    fields.iter().map(|(k, v)| (*k, v.as_str())).collect()
}
