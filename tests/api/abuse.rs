//! Abuse resistance (SPEC §7, §2.5): rate limits per user, per address and per service;
//! login throttling shared through the database; per-user IP allowlists; ending a user's
//! sessions; size limits on every route; `/metrics`; a zero core-file limit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use hazina::domain::Role;

use crate::helpers::{
    assert_error, create_test_database, spawn_app, spawn_app_with, TestApp, TestUser, PASSWORD,
};
use crate::pki::{spawn_tls_app, ClientCert, ClientCerts, TestPki};

const TOO_MANY: &str = "Too many requests; retry later";
const LOCKED_OUT: &str = "Too many failed login attempts; try again later";
const BAD_LOGIN: &str = "Invalid username or password";
const UNAUTHENTICATED: &str = "Authentication credentials were not provided or are invalid";
const OUTSIDE_ALLOWLIST: &str = "Requests from this address are not allowed for this principal";
const ADMINS_ONLY: &str = "Only administrators may do this";
const METRICS_FORBIDDEN: &str =
    "Metrics are available to administrators and to allowed addresses only";
const LIST: &str = "/payments/credentials/";
/// A path no route takes: any caller may ask, and it counts against a budget like any call.
const NO_ROUTE: &str = "/no-such-route/";

/// A header's value as text; panics when it is missing.
fn header(res: &Response, name: &str) -> String {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// `(X-RateLimit-Limit, X-RateLimit-Remaining)`.
fn budget(res: &Response) -> (u32, u32) {
    (
        header(res, "x-ratelimit-limit").parse().unwrap(),
        header(res, "x-ratelimit-remaining").parse().unwrap(),
    )
}

/// Spends `n` requests of `user`'s budget, asserting each one is served.
async fn spend(app: &TestApp, user: &TestUser, n: u32) {
    for i in 0..n {
        let res = app.get(LIST, &user.access).await;
        assert_eq!(res.status(), StatusCode::OK, "request {} of {n}", i + 1);
    }
}

/// Asserts a rate-limit refusal: 429, the JSON body, the limit, nothing remaining, and a
/// whole number of seconds in `Retry-After`. Returns `Retry-After`.
async fn assert_rate_limited(res: Response, limit: u32) -> u64 {
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(budget(&res), (limit, 0));
    let retry_after: u64 = header(&res, "retry-after").parse().unwrap();
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, TOO_MANY).await;
    retry_after
}

async fn login_status_and_body(app: &TestApp, username: &str, password: &str) -> (u16, Value) {
    let res = app.login(username, password).await;
    (res.status().as_u16(), res.json().await.unwrap())
}

/// `n` failed logins for `username`, each answered 401 like any bad password.
async fn fail_logins(app: &TestApp, username: &str, n: u32) {
    for _ in 0..n {
        let res = app.login(username, "not-the-password").await;
        assert_error(res, StatusCode::UNAUTHORIZED, BAD_LOGIN).await;
    }
}

async fn metrics_text(app: &TestApp) -> String {
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, "content-type").starts_with("application/openmetrics-text"));
    res.text().await.unwrap()
}

/// The value of the sample whose name-and-labels text is exactly `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

/// `action|actor_kind|actor_id|outcome|reason` of every audit entry with `action`.
fn audit_entries(app: &TestApp, action: &str) -> Vec<String> {
    app.sql_lines(&format!(
        "SELECT action || '|' || actor_kind || '|' || COALESCE(CAST(actor_id AS TEXT), '') \
         || '|' || outcome || '|' || COALESCE(reason, '') AS line \
         FROM audit_log WHERE action = '{action}' ORDER BY seq"
    ))
}

// ---------------------------------------------------------------------------------------
// Rate limits

#[tokio::test]
async fn the_101st_request_in_a_minute_from_one_user_gets_429_at_the_default_limit() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "100")]).await;
    let user = app.user().await;

    let mut remaining = Vec::new();
    for _ in 0..100 {
        let res = app.get(LIST, &user.access).await;
        assert_eq!(res.status(), StatusCode::OK);
        let (limit, left) = budget(&res);
        assert_eq!(limit, 100);
        remaining.push(left);
    }
    let refused = app.get(LIST, &user.access).await;

    assert_eq!(remaining, (0..100).rev().collect::<Vec<u32>>());
    assert_rate_limited(refused, 100).await;
}

#[tokio::test]
async fn one_users_spent_budget_leaves_other_users_unaffected() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "5")]).await;
    let alice = app.user().await;
    let bob = app.user().await;
    spend(&app, &alice, 5).await;

    let alice_again = app.get(LIST, &alice.access).await;
    let bob_first = app.get(LIST, &bob.access).await;

    assert_rate_limited(alice_again, 5).await;
    assert_eq!(bob_first.status(), StatusCode::OK);
    assert_eq!(budget(&bob_first), (5, 4));
}

#[tokio::test]
async fn a_spent_budget_refills_as_the_minute_passes() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "3")]).await;
    let user = app.user().await;
    spend(&app, &user, 3).await;
    let retry_after = assert_rate_limited(app.get(LIST, &user.access).await, 3).await;

    app.clock.advance(retry_after as i64);
    let one_refilled = app.get(LIST, &user.access).await;
    app.clock.advance(60);
    let full_again = app.get(LIST, &user.access).await;

    assert_eq!(
        retry_after, 20,
        "one request's worth of a 3-per-minute budget"
    );
    assert_eq!(one_refilled.status(), StatusCode::OK);
    assert_eq!(budget(&one_refilled), (3, 0));
    assert_eq!(full_again.status(), StatusCode::OK);
    assert_eq!(budget(&full_again), (3, 2));
}

#[tokio::test]
async fn unauthenticated_requests_are_limited_per_source_address() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "3")]).await;

    // An unauthenticated API call (health probes are outside every budget).
    let mut served = Vec::new();
    for _ in 0..3 {
        let res = app.client.get(app.url(NO_ROUTE)).send().await.unwrap();
        served.push((res.status(), budget(&res)));
    }
    let refused = app.client.get(app.url(NO_ROUTE)).send().await.unwrap();

    assert_eq!(
        served,
        vec![
            (StatusCode::NOT_FOUND, (3, 2)),
            (StatusCode::NOT_FOUND, (3, 1)),
            (StatusCode::NOT_FOUND, (3, 0)),
        ]
    );
    assert_rate_limited(refused, 3).await;
}

#[tokio::test]
async fn load_balancer_probes_never_spend_the_address_budget() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "100")]).await;

    for path in ["/healthz", "/readyz", "/metrics"] {
        for _ in 0..105 {
            let res = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert!(res.headers().get("x-ratelimit-limit").is_none(), "{path}");
        }
    }
    // The address's budget is whole for its API calls.
    let res = app.client.get(app.url(NO_ROUTE)).send().await.unwrap();
    assert_eq!(budget(&res), (100, 99));
    // /metrics stays guarded: from outside the allowlist a probe still needs an admin.
    let guarded = spawn_app_with(&[
        ("HAZINA_RATE_LIMIT_PER_MINUTE", "100"),
        ("HAZINA_METRICS_ALLOW_CIDRS", ""),
    ])
    .await;
    let res = guarded
        .client
        .get(guarded.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // And there it keeps its budget: a token is checked against the database each time.
    assert_eq!(budget(&res), (100, 99));
}

#[tokio::test]
async fn a_forged_token_spends_its_addresss_budget_never_the_named_users() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "4")]).await;
    let victim = app.user().await; // one login: the address has 3 requests left
    let (head, signature) = victim.access.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let forged = format!("{head}.{flipped}{}", &signature[1..]);

    let mut forged_answers = Vec::new();
    for _ in 0..3 {
        let res = app.get(LIST, &forged).await;
        forged_answers.push((res.status(), budget(&res).1));
        assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
    }
    let forged_refused = app.get(LIST, &forged).await;
    let victim_first = app.get(LIST, &victim.access).await;

    assert_eq!(
        forged_answers,
        vec![
            (StatusCode::UNAUTHORIZED, 2),
            (StatusCode::UNAUTHORIZED, 1),
            (StatusCode::UNAUTHORIZED, 0),
        ]
    );
    assert_rate_limited(forged_refused, 4).await;
    assert_eq!(victim_first.status(), StatusCode::OK);
    assert_eq!(
        budget(&victim_first),
        (4, 3),
        "the victim's budget is untouched"
    );
}

#[tokio::test]
async fn every_answer_under_a_limit_carries_the_budget_headers_errors_included() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "50")]).await;
    let user = app.user().await;

    let not_found = app.get("/no/such/route", &user.access).await;
    let wrong_method = app.delete(LIST, &user.access).await;
    let bad_body = app.post(LIST, &user.access, &json!({"nope": 1})).await;
    let missing = app.get("/payments/credentials/42/", &user.access).await;

    assert_eq!(not_found.status(), StatusCode::NOT_FOUND);
    assert_eq!(budget(&not_found), (50, 49));
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(budget(&wrong_method), (50, 48));
    assert_eq!(bad_body.status(), StatusCode::BAD_REQUEST);
    assert_eq!(budget(&bad_body), (50, 47));
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(budget(&missing), (50, 46));
}

#[tokio::test]
async fn a_zero_limit_turns_rate_limiting_off_and_start_up_says_so() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "0")]).await;
    let user = app.user().await;

    let mut statuses = Vec::new();
    let mut with_headers = 0;
    for _ in 0..150 {
        let res = app.get(LIST, &user.access).await;
        with_headers += usize::from(res.headers().contains_key("x-ratelimit-limit"));
        statuses.push(res.status());
    }

    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(with_headers, 0, "no limit, no budget headers");
    let logs = String::from_utf8_lossy(&crate::helpers::captured_logs()).into_owned();
    assert!(
        logs.contains("RATE LIMITING IS OFF (HAZINA_RATE_LIMIT_PER_MINUTE=0)"),
        "start-up warns that limiting is off"
    );
}

#[tokio::test]
async fn rate_limit_refusals_are_audited_once_per_key_per_minute() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "2")]).await;
    let user = app.user().await;
    spend(&app, &user, 2).await;

    for _ in 0..20 {
        assert_rate_limited(app.get(LIST, &user.access).await, 2).await;
    }
    let after_a_flood = audit_entries(&app, "request.rate_limited");
    app.clock.advance(60);
    spend(&app, &user, 2).await;
    for _ in 0..5 {
        assert_rate_limited(app.get(LIST, &user.access).await, 2).await;
    }
    let a_minute_later = audit_entries(&app, "request.rate_limited");

    let entry = format!("request.rate_limited|user|{}|denied|rate_limited", user.id);
    assert_eq!(after_a_flood, vec![entry.clone()]);
    assert_eq!(a_minute_later, vec![entry.clone(), entry]);
}

#[tokio::test]
async fn a_service_has_its_own_budget_by_certificate() {
    let pki = TestPki::new();
    let cert = pki.server_cert_path.display().to_string();
    let key = pki.server_key_path.display().to_string();
    let ca = pki.ca_path.display().to_string();
    let mut app = spawn_app_with(&[
        ("HAZINA_TLS_CERT", &cert),
        ("HAZINA_TLS_KEY", &key),
        ("HAZINA_TLS_CLIENT_CA", &ca),
        ("HAZINA_RATE_LIMIT_PER_MINUTE", "2"),
        ("HAZINA_SERVICE_RATE_LIMIT_PER_MINUTE", "3"),
    ])
    .await;
    app.address = format!("https://127.0.0.1:{}", app.port);
    app.client = pki.https_client(None);
    let service = pki.https_client(Some(&pki.client(ClientCert::Valid)));

    let mut served = Vec::new();
    for _ in 0..3 {
        let res = service.get(app.url(NO_ROUTE)).send().await.unwrap();
        served.push((res.status(), budget(&res)));
    }
    let refused = service.get(app.url(NO_ROUTE)).send().await.unwrap();
    let anonymous = app.client.get(app.url(NO_ROUTE)).send().await.unwrap();

    assert_eq!(
        served,
        vec![
            (StatusCode::NOT_FOUND, (3, 2)),
            (StatusCode::NOT_FOUND, (3, 1)),
            (StatusCode::NOT_FOUND, (3, 0)),
        ]
    );
    assert_rate_limited(refused, 3).await;
    assert_eq!(anonymous.status(), StatusCode::NOT_FOUND);
    assert_eq!(budget(&anonymous), (2, 1), "the address budget is separate");
}

// ---------------------------------------------------------------------------------------
// Login throttling

#[tokio::test]
async fn a_login_flood_locks_the_account_so_even_the_right_password_gets_429() {
    let app = spawn_app().await;
    let victim = app.user().await;
    let bystander = app.user().await;
    fail_logins(&app, &victim.username, 10).await;

    let right_password = app.login(&victim.username, PASSWORD).await;
    let other_account = app.login(&bystander.username, PASSWORD).await;

    assert_eq!(header(&right_password, "retry-after"), "60");
    assert_error(right_password, StatusCode::TOO_MANY_REQUESTS, LOCKED_OUT).await;
    assert_eq!(
        other_account.status(),
        StatusCode::OK,
        "another account logs in"
    );
    let locked = app.sql_lines(&format!(
        "SELECT action || '|' || actor_kind || '|' || CAST(actor_id AS TEXT) || '|' \
         || outcome || '|' || reason AS line FROM audit_log \
         WHERE reason = 'locked_out' AND actor_id = {}",
        victim.id
    ));
    assert_eq!(
        locked,
        vec![format!("auth.login|user|{}|denied|locked_out", victim.id)]
    );
}

#[tokio::test]
async fn a_lockout_ends_after_the_backoff_and_a_success_forgives_the_failures() {
    let app = spawn_app().await;
    let user = app.user().await;
    fail_logins(&app, &user.username, 10).await;
    assert_eq!(
        app.login(&user.username, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    app.clock.advance(60);
    let after_backoff = app.login(&user.username, PASSWORD).await;
    // Forgiven: nine more failures do not lock the account again.
    fail_logins(&app, &user.username, 9).await;
    let still_open = app.login(&user.username, PASSWORD).await;

    assert_eq!(after_backoff.status(), StatusCode::OK);
    assert_eq!(still_open.status(), StatusCode::OK);
}

#[tokio::test]
async fn each_failure_after_a_lockout_doubles_the_next_one() {
    let app = spawn_app().await;
    let user = app.user().await;
    fail_logins(&app, &user.username, 10).await;
    app.clock.advance(60);

    fail_logins(&app, &user.username, 1).await;
    let locked = app.login(&user.username, PASSWORD).await;
    app.clock.advance(60);
    let still_locked = app.login(&user.username, PASSWORD).await;
    app.clock.advance(60);
    let open = app.login(&user.username, PASSWORD).await;

    assert_eq!(header(&locked, "retry-after"), "120");
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&still_locked, "retry-after"), "60");
    assert_eq!(still_locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(open.status(), StatusCode::OK);
}

#[tokio::test]
async fn known_and_unknown_usernames_answer_alike_before_and_during_a_lockout() {
    let app = spawn_app().await;
    let known = app.user().await;
    let unknown = "nobody-by-this-name";

    let mut failures = Vec::new();
    for _ in 0..10 {
        failures.push((
            login_status_and_body(&app, &known.username, "wrong-password").await,
            login_status_and_body(&app, unknown, "wrong-password").await,
        ));
    }
    let known_locked = app.login(&known.username, PASSWORD).await;
    let unknown_locked = app.login(unknown, PASSWORD).await;

    for (known_answer, unknown_answer) in &failures {
        assert_eq!(known_answer, unknown_answer);
        assert_eq!(known_answer.0, 401);
    }
    let known_retry = header(&known_locked, "retry-after");
    let unknown_retry = header(&unknown_locked, "retry-after");
    assert_eq!(known_retry, unknown_retry);
    let known_locked = (known_locked.status(), known_locked.text().await.unwrap());
    let unknown_locked = (
        unknown_locked.status(),
        unknown_locked.text().await.unwrap(),
    );
    assert_eq!(known_locked, unknown_locked);
    assert_eq!(known_locked.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        serde_json::from_str::<Value>(&known_locked.1).unwrap(),
        json!({ "error": LOCKED_OUT })
    );
}

#[tokio::test]
async fn thirty_failures_from_one_address_lock_the_address_for_every_account() {
    let app = spawn_app().await;
    let user = app.user().await;
    for i in 0..30 {
        let res = app
            .login(&format!("guess-{i:02}"), "not-the-password")
            .await;
        assert_error(res, StatusCode::UNAUTHORIZED, BAD_LOGIN).await;
    }

    let from_the_same_address = app.login(&user.username, PASSWORD).await;

    assert_eq!(header(&from_the_same_address, "retry-after"), "60");
    assert_error(
        from_the_same_address,
        StatusCode::TOO_MANY_REQUESTS,
        LOCKED_OUT,
    )
    .await;
}

#[tokio::test]
async fn login_throttling_is_shared_by_every_node() {
    let first = spawn_app_with(&[("HAZINA_LOGIN_MAX_FAILURES_ACCOUNT", "4")]).await;
    let second = first.spawn_node().await;
    let user = first.user().await;
    fail_logins(&first, &user.username, 2).await;
    fail_logins(&second, &user.username, 1).await;
    fail_logins(&first, &user.username, 1).await;

    let on_the_other_node = second.login(&user.username, PASSWORD).await;

    assert_error(on_the_other_node, StatusCode::TOO_MANY_REQUESTS, LOCKED_OUT).await;
}

#[tokio::test]
async fn login_throttling_settings_are_honoured() {
    let app = spawn_app_with(&[
        ("HAZINA_LOGIN_MAX_FAILURES_ACCOUNT", "2"),
        ("HAZINA_LOGIN_BACKOFF_SECONDS", "300"),
    ])
    .await;
    let user = app.user().await;
    fail_logins(&app, &user.username, 2).await;

    let locked = app.login(&user.username, PASSWORD).await;
    app.clock.advance(299);
    let still_locked = app.login(&user.username, PASSWORD).await;
    app.clock.advance(1);
    let open = app.login(&user.username, PASSWORD).await;

    assert_eq!(header(&locked, "retry-after"), "300");
    assert_eq!(still_locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&still_locked, "retry-after"), "1");
    assert_eq!(open.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------
// IP allowlists and sessions

#[tokio::test]
async fn a_request_from_outside_a_users_allowlist_gets_403_and_is_audited() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let user = app.user().await;

    let set = app
        .put(
            &format!("/admin/users/{}/allowlist/", user.username),
            &admin.access,
            &json!({ "allowed_cidrs": ["10.0.0.0/8", "192.0.2.0/24"] }),
        )
        .await;
    let outside = app.get(LIST, &user.access).await;

    assert_eq!(set.status(), StatusCode::OK);
    assert_eq!(
        set.json::<Value>().await.unwrap(),
        json!({
            "username": user.username,
            "allowed_cidrs": ["10.0.0.0/8", "192.0.2.0/24"],
        })
    );
    assert_error(outside, StatusCode::FORBIDDEN, OUTSIDE_ALLOWLIST).await;
    assert_eq!(
        audit_entries(&app, "user.authenticate"),
        vec![format!(
            "user.authenticate|user|{}|denied|outside_allowlist",
            user.id
        )]
    );
    assert_eq!(
        audit_entries(&app, "admin.user_allowlist"),
        vec![format!("admin.user_allowlist|user|{}|success|", admin.id)]
    );
}

#[tokio::test]
async fn a_request_from_inside_the_allowlist_or_with_none_is_served() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let user = app.user().await;
    let path = format!("/admin/users/{}/allowlist/", user.username);

    app.put(
        &path,
        &admin.access,
        &json!({ "allowed_cidrs": ["127.0.0.1/32"] }),
    )
    .await;
    let inside = app.get(LIST, &user.access).await;
    app.put(
        &path,
        &admin.access,
        &json!({ "allowed_cidrs": ["10.0.0.0/8"] }),
    )
    .await;
    let outside = app.get(LIST, &user.access).await;
    let cleared = app
        .put(&path, &admin.access, &json!({ "allowed_cidrs": [] }))
        .await;
    let anywhere = app.get(LIST, &user.access).await;

    assert_eq!(inside.status(), StatusCode::OK);
    assert_eq!(outside.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        cleared.json::<Value>().await.unwrap()["allowed_cidrs"],
        json!([])
    );
    assert_eq!(anywhere.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_allowlist_must_be_cidr_ranges_for_a_real_user() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let user = app.user().await;

    let bad = app
        .put(
            &format!("/admin/users/{}/allowlist/", user.username),
            &admin.access,
            &json!({ "allowed_cidrs": ["10.0.0.0/8", "the office"] }),
        )
        .await;
    let nobody = app
        .put(
            "/admin/users/nobody-here/allowlist/",
            &admin.access,
            &json!({ "allowed_cidrs": ["10.0.0.0/8"] }),
        )
        .await;
    let unknown_field = app
        .put(
            &format!("/admin/users/{}/allowlist/", user.username),
            &admin.access,
            &json!({ "allowed_cidrs": [], "role": "admin" }),
        )
        .await;

    assert_error(
        bad,
        StatusCode::BAD_REQUEST,
        "allowed_cidrs must be CIDR ranges such as 10.0.0.0/8",
    )
    .await;
    assert_error(nobody, StatusCode::NOT_FOUND, "No such user").await;
    assert_error(
        unknown_field,
        StatusCode::BAD_REQUEST,
        "Unknown field: role",
    )
    .await;
    assert_eq!(
        app.get(LIST, &user.access).await.status(),
        StatusCode::OK,
        "nothing was set"
    );
}

#[tokio::test]
async fn only_admins_set_allowlists_or_end_sessions() {
    let app = spawn_app().await;
    let user = app.user().await;
    let other = app.user().await;

    let allowlist = app
        .put(
            &format!("/admin/users/{}/allowlist/", other.username),
            &user.access,
            &json!({ "allowed_cidrs": ["10.0.0.0/8"] }),
        )
        .await;
    let revoke = app
        .post_empty(
            &format!("/admin/users/{}/sessions/revoke/", other.username),
            &user.access,
        )
        .await;

    assert_error(allowlist, StatusCode::FORBIDDEN, ADMINS_ONLY).await;
    assert_error(revoke, StatusCode::FORBIDDEN, ADMINS_ONLY).await;
    assert_eq!(app.get(LIST, &other.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_admin_ending_a_users_sessions_stops_their_tokens_at_once() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let user = app.user().await;
    let second_session = app.login(&user.username, PASSWORD).await;
    let second: Value = second_session.json().await.unwrap();
    assert_eq!(app.get(LIST, &user.access).await.status(), StatusCode::OK);

    let ended = app
        .post_empty(
            &format!("/admin/users/{}/sessions/revoke/", user.username),
            &admin.access,
        )
        .await;
    let access = app.get(LIST, &user.access).await;
    let other_access = app
        .get(LIST, second["access_token"].as_str().unwrap())
        .await;
    let refresh = app
        .client
        .post(app.url("/users/token/refresh/"))
        .json(&json!({ "refresh_token": user.refresh }))
        .send()
        .await
        .unwrap();
    let fresh_login = app.login(&user.username, PASSWORD).await;

    assert_eq!(ended.status(), StatusCode::OK);
    assert_eq!(
        ended.json::<Value>().await.unwrap(),
        json!({ "message": "Sessions revoked", "revoked": 2 })
    );
    assert_error(access, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
    assert_error(other_access, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
    assert_error(
        refresh,
        StatusCode::UNAUTHORIZED,
        "Invalid or expired refresh token",
    )
    .await;
    assert_eq!(
        fresh_login.status(),
        StatusCode::OK,
        "the account stays enabled"
    );
    assert_eq!(
        audit_entries(&app, "admin.sessions_revoke"),
        vec![format!("admin.sessions_revoke|user|{}|success|", admin.id)]
    );
}

#[tokio::test]
async fn ending_the_sessions_of_a_user_who_does_not_exist_answers_404() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;

    let res = app
        .post_empty("/admin/users/nobody-here/sessions/revoke/", &admin.access)
        .await;

    assert_error(res, StatusCode::NOT_FOUND, "No such user").await;
}

#[tokio::test]
async fn a_disabled_users_still_valid_access_token_gets_401_at_once() {
    let app = spawn_app().await;
    let admin = app.user_with_role(Role::Admin).await;
    let user = app.user().await;
    assert_eq!(app.get(LIST, &user.access).await.status(), StatusCode::OK);

    let disabled = app
        .post_empty(
            &format!("/admin/users/{}/disable/", user.username),
            &admin.access,
        )
        .await;
    let next = app.get(LIST, &user.access).await;

    assert_eq!(disabled.status(), StatusCode::OK);
    assert_error(next, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

// ---------------------------------------------------------------------------------------
// Sizes and headers

#[tokio::test]
async fn a_2_mib_body_gets_413_on_every_route_and_the_server_stays_healthy() {
    let app = spawn_app().await;
    let user = app.user().await;
    let two_mib = format!(
        r#"{{"provider":"mpesa","private_key":"{}"}}"#,
        "k".repeat(2 * 1024 * 1024)
    );

    let mut answers = Vec::new();
    for (method, path) in [
        (reqwest::Method::POST, LIST),
        (reqwest::Method::POST, "/users/logout/"),
        (reqwest::Method::GET, LIST),
        (reqwest::Method::GET, "/healthz"),
        (reqwest::Method::POST, "/users/login/"),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(&user.access)
            .header("content-type", "application/json")
            .body(two_mib.clone())
            .send()
            .await
            .unwrap();
        answers.push(format!("{method} {path}"));
        assert_error(
            res,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body is too large",
        )
        .await;
    }
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    let still_served = app.get(LIST, &user.access).await;

    assert_eq!(answers.len(), 5);
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(still_served.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_oversized_request_head_gets_431_as_json() {
    let app = spawn_app().await;

    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-padding", "p".repeat(40 * 1024))
        .send()
        .await
        .unwrap();

    assert_error(
        res,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "Request header fields are too large",
    )
    .await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn strict_transport_security_is_sent_over_https_only() {
    let pki = TestPki::new();
    let https = spawn_tls_app(&pki, ClientCerts::NotRequested).await;
    let http = spawn_app().await;

    let over_tls = https
        .client
        .get(https.url("/healthz"))
        .send()
        .await
        .unwrap();
    let error_over_tls = https
        .client
        .get(https.url("/nowhere"))
        .send()
        .await
        .unwrap();
    let plain = http.client.get(http.url("/healthz")).send().await.unwrap();

    assert_eq!(
        header(&over_tls, "strict-transport-security"),
        "max-age=63072000; includeSubDomains"
    );
    assert_eq!(
        header(&error_over_tls, "strict-transport-security"),
        "max-age=63072000; includeSubDomains"
    );
    assert!(!plain.headers().contains_key("strict-transport-security"));
}

// ---------------------------------------------------------------------------------------
// Health and metrics

#[tokio::test]
async fn healthz_and_readyz_answer() {
    let app = spawn_app().await;

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();

    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
}

#[tokio::test]
async fn metrics_show_requests_and_rate_limit_rejections() {
    let app = spawn_app_with(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "3")]).await;
    let user = app.user().await;
    spend(&app, &user, 3).await;
    assert_rate_limited(app.get(LIST, &user.access).await, 3).await;
    assert_rate_limited(app.get(LIST, &user.access).await, 3).await;

    let metrics = metrics_text(&app).await;

    let series = |s: &str| sample(&metrics, s);
    assert_eq!(
        series(r#"hazina_rate_limited_total{budget="user"}"#),
        Some(2.0)
    );
    assert_eq!(
        series(
            r#"hazina_http_requests_total{route="/payments/credentials/",method="GET",status="200"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        series(
            r#"hazina_http_requests_total{route="/payments/credentials/",method="GET",status="429"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        series(
            r#"hazina_http_request_duration_seconds_count{route="/payments/credentials/",method="GET",status="200"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        series(r#"hazina_http_requests_total{route="/users/login/",method="POST",status="200"}"#),
        Some(1.0)
    );
    assert!(series("hazina_audit_entries_written_total").unwrap() >= 2.0);
    assert_eq!(series("hazina_audit_write_failures_total"), Some(0.0));
    assert!(!metrics.contains(&user.username), "no label names a user");
}

#[tokio::test]
async fn metrics_show_login_lockouts_reveals_and_denials() {
    let app = spawn_app().await;
    let user = app.user().await;
    let credential = app
        .create_credential(&user, "mpesa", "sandbox", "mpesa-private-key-0001")
        .await;
    let reveal = format!(
        "/payments/credentials/{}/get-private-key/",
        credential["id"]
    );
    assert_eq!(
        app.get(&reveal, &user.access).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get("/payments/credentials/42/get-private-key/", &user.access)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    fail_logins(&app, "someone-else", 10).await;
    let throttled = app.login("someone-else", PASSWORD).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);

    let metrics = metrics_text(&app).await;

    let series = |s: &str| sample(&metrics, s);
    assert_eq!(series("hazina_reveals_total"), Some(1.0));
    assert_eq!(
        series(r#"hazina_login_lockouts_total{subject="account"}"#),
        Some(1.0)
    );
    assert_eq!(series("hazina_login_throttled_total"), Some(1.0));
    assert_eq!(
        series(
            r#"hazina_denials_total{route="/payments/credentials/{id}/get-private-key/",method="GET",status="404"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        series(r#"hazina_denials_total{route="/users/login/",method="POST",status="401"}"#),
        Some(10.0)
    );
    assert!(!metrics.contains("mpesa-private-key-0001"));
}

#[tokio::test]
async fn metrics_refuse_a_non_admin_user_from_a_non_allowed_address() {
    let app = spawn_app_with(&[("HAZINA_METRICS_ALLOW_CIDRS", "10.0.0.0/8")]).await;
    let user = app.user().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let admin = app.user_with_role(Role::Admin).await;

    let anonymous = app.client.get(app.url("/metrics")).send().await.unwrap();
    let as_user = app.get("/metrics", &user.access).await;
    let as_auditor = app.get("/metrics", &auditor.access).await;
    let as_admin = app.get("/metrics", &admin.access).await;

    assert_error(anonymous, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
    assert_error(as_user, StatusCode::FORBIDDEN, METRICS_FORBIDDEN).await;
    assert_error(as_auditor, StatusCode::FORBIDDEN, METRICS_FORBIDDEN).await;
    assert_eq!(as_admin.status(), StatusCode::OK);
    assert!(as_admin
        .text()
        .await
        .unwrap()
        .contains("# TYPE hazina_http_requests counter"));
}

// ---------------------------------------------------------------------------------------
// Hardening of the running process

#[tokio::test]
async fn the_running_server_has_a_zero_core_file_limit() {
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
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let port = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr).lines().find_map(|line| {
            let line = line.ok()?;
            let rest = line.split_once("serving on port ")?.1;
            rest.split_whitespace().next()?.parse::<u16>().ok()
        })
    })
    .await
    .unwrap();

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"));
    let health = match port {
        Some(port) => reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .map(|r| r.status()),
        None => Ok(StatusCode::IM_A_TEAPOT),
    };
    child.kill().unwrap();
    child.wait().unwrap();

    let port = port.expect("the server reports `serving on port N` on stderr");
    assert_ne!(port, 0);
    assert_eq!(health.unwrap(), StatusCode::OK);
    let limits = limits.unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core-file limit line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        &fields[4..],
        &["0", "0", "bytes"],
        "soft and hard core-file limits: {core}"
    );
}

#[tokio::test]
async fn the_cli_creates_a_user_with_an_ip_allowlist() {
    let app = spawn_app().await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hazina"));
    cmd.args([
        "users",
        "create",
        "--username",
        "branch-office",
        "--role",
        "user",
        "--password-stdin",
        "--allow-cidr",
        "10.0.0.0/8",
        "--allow-cidr",
        "192.0.2.0/24",
    ])
    .current_dir(app.dir.path())
    .env("HAZINA_DATABASE_URL", app.db.url())
    .env("HAZINA_KEYRING", &app.keyring_path)
    .env_remove("HAZINA_KEYRING_DATA")
    .env_remove("HAZINA_LOG")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The allowlist applies from the login on: signing in from outside it is refused.
    let login = app.login("branch-office", PASSWORD).await;
    assert_error(login, StatusCode::FORBIDDEN, OUTSIDE_ALLOWLIST).await;
    assert_eq!(
        app.sql_lines("SELECT allowed_cidrs AS line FROM users WHERE username = 'branch-office'"),
        vec!["10.0.0.0/8,192.0.2.0/24"]
    );
}

#[tokio::test]
async fn the_cli_refuses_a_bad_allowlist_and_creates_nobody() {
    let app = spawn_app().await;
    let out = Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args([
            "users",
            "create",
            "--username",
            "branch-office",
            "--role",
            "user",
            "--password-stdin",
            "--allow-cidr",
            "the office",
        ])
        .current_dir(app.dir.path())
        .env("HAZINA_DATABASE_URL", app.db.url())
        .env("HAZINA_KEYRING", &app.keyring_path)
        .env_remove("HAZINA_KEYRING_DATA")
        .stdin(Stdio::null())
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim(),
        "hazina: error: allowed_cidrs must be CIDR ranges such as 10.0.0.0/8"
    );
    assert!(app
        .sql_lines("SELECT username AS line FROM users WHERE username = 'branch-office'")
        .is_empty());
}

/// A raw body and its content type.
type Raw = (&'static str, String);

#[tokio::test]
async fn no_error_body_names_a_file_a_query_a_type_or_a_crate() {
    let app = spawn_app().await;
    let user = app.user().await;
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let requests: Vec<(reqwest::Method, String, Option<Raw>)> = vec![
        (
            reqwest::Method::POST,
            LIST.into(),
            Some(("application/json", deep)),
        ),
        (
            reqwest::Method::POST,
            LIST.into(),
            Some(("application/json", "{\"provider\": 5}".into())),
        ),
        (
            reqwest::Method::POST,
            LIST.into(),
            Some(("application/json", "\u{0}".into())),
        ),
        (
            reqwest::Method::POST,
            LIST.into(),
            Some(("text/xml", "<a/>".into())),
        ),
        (
            reqwest::Method::PUT,
            "/payments/credentials/%FF%FE/".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/payments/credentials/provider/mpesa/?environment=%FF".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/payments/credentials/provider/mpesa/?environment=a&environment=b".into(),
            None,
        ),
        (
            reqwest::Method::POST,
            "/admin/users/%00/disable/".into(),
            None,
        ),
        (
            reqwest::Method::PUT,
            "/admin/users/x/allowlist/".into(),
            Some((
                "application/json",
                "{\"allowed_cidrs\": \"10.0.0.0/8\"}".into(),
            )),
        ),
        (
            reqwest::Method::DELETE,
            "/admin/grants/99999999999999999999999/".into(),
            None,
        ),
        (
            reqwest::Method::from_bytes(b"BREW").unwrap(),
            LIST.into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/audit/events/?limit=-1&since=yesterday".into(),
            None,
        ),
    ];

    for (method, path, body) in requests {
        let mut req = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(&user.access);
        if let Some((content_type, body)) = body {
            req = req.header("content-type", content_type).body(body);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert!(status.is_client_error(), "{method} {path}: {status} {text}");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert!(body["error"].is_string(), "{method} {path}: {text}");
        for needle in [
            ".rs",
            "::",
            "diesel",
            "serde",
            "actix",
            "sqlite",
            "postgres",
            "SELECT",
            "INSERT",
            "anyhow",
            "invalid type",
            "src/",
            "hazina",
        ] {
            assert!(
                !text
                    .to_ascii_lowercase()
                    .contains(&needle.to_ascii_lowercase()),
                "{method} {path} names {needle:?}: {text}"
            );
        }
    }
}

#[tokio::test]
async fn concurrent_correct_logins_never_deadlock_into_a_5xx() {
    // The throttle's rows (the account's and the address's) are locked in one order by every
    // login and every success; once they were not, and PostgreSQL answered "deadlock
    // detected" (500) under a burst of correct logins.
    let app = spawn_app_with(&[("HAZINA_DB_POOL_SIZE", "8"), ("HAZINA_WORKERS", "2")]).await;
    let user = app.user().await;
    for _ in 0..3 {
        let burst = (0..24).map(|_| login_status_and_body(&app, &user.username, &user.password));
        for (status, body) in futures_util::future::join_all(burst).await {
            assert!(status == 200 || status == 429, "{status} {body}");
        }
    }
}
