//! The provider token broker (SPEC §9.4), against stub providers on loopback
//! (`tests/api/stubs.rs`) that follow the published request and response shapes and check
//! what they receive.

use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use hazina::domain::Role;

use crate::helpers::*;
use crate::pki::{ClientCert, ClientCerts, TestPki, SERVICE_URI};
use crate::stubs::{Kind, Mode, Stub};

const KEY: &str = "consumer-key-0001";
const SECRET: &str = "consumer-secret-0001";

fn token_path(id: i64) -> String {
    format!("/payments/credentials/{id}/operations/access-token/")
}

fn provider_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Daraja => "mpesa",
        Kind::KopoKopo => "kopokopo",
        Kind::JPay => "jpay",
        Kind::PagamioFlat | Kind::PagamioWrapped => "pagamio",
    }
}

/// A vault whose sandbox base URL for the stub's provider is the stub.
async fn vault_for(stub: &Stub, kind: Kind, extra: &[(&str, &str)]) -> TestApp {
    let setting = format!(
        "HAZINA_PROVIDER_{}_SANDBOX_URL",
        provider_of(kind).to_uppercase()
    );
    let mut settings = vec![(setting.as_str(), stub.url.as_str())];
    settings.extend_from_slice(extra);
    spawn_app_with(&settings).await
}

async fn credential(app: &TestApp, owner: &TestUser, kind: Kind) -> i64 {
    let res = app
        .post(
            "/payments/credentials/",
            &owner.access,
            &json!({
                "provider": provider_of(kind),
                "environment": "sandbox",
                "api_key": KEY,
                "private_key": SECRET,
            }),
        )
        .await;
    body_of(res, StatusCode::CREATED).await["id"]
        .as_i64()
        .unwrap()
}

/// A fresh access token for `owner` (the clock may have moved past the old one).
async fn relogin(app: &TestApp, owner: &TestUser) -> String {
    body_of(
        app.login(&owner.username, &owner.password).await,
        StatusCode::OK,
    )
    .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn ask(app: &TestApp, token: &str, id: i64) -> Response {
    app.post(&token_path(id), token, &json!({ "reference": "order-77" }))
        .await
}

async fn token_of(app: &TestApp, token: &str, id: i64) -> String {
    let res = ask(app, token, id).await;
    assert_eq!(
        res.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body = body_of(res, StatusCode::OK).await;
    assert_eq!(body["token_type"], "Bearer");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample line of `/metrics`, 0 when absent.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn daraja_tokens_are_exchanged_with_basic_credentials_and_reused_until_a_minute_before_expiry(
) {
    let stub = Stub::start(Kind::Daraja, KEY, SECRET).await;
    let app = vault_for(&stub, Kind::Daraja, &[]).await;
    let owner = app.user().await;
    let id = credential(&app, &owner, Kind::Daraja).await;
    let issued_at = app.clock.now();

    let res = ask(&app, &owner.access, id).await;
    let body = body_of(res, StatusCode::OK).await;
    assert_eq!(
        body,
        json!({
            "access_token": stub.token(1),
            "token_type": "Bearer",
            "expires_at": hazina::clock::rfc3339(issued_at + 3599),
        })
    );
    let seen = stub.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].target,
        "/oauth/v1/generate?grant_type=client_credentials"
    );
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(Stub::basic(KEY, SECRET).as_str())
    );
    assert!(seen[0].body.is_empty());

    // Reused, without a call, until 60 s before expiry.
    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(1));
    app.clock.advance(3599 - 61);
    let t = relogin(&app, &owner).await;
    assert_eq!(token_of(&app, &t, id).await, stub.token(1));
    assert_eq!(stub.seen().len(), 1);
    // Then renewed by a new exchange (Daraja issues no refresh token).
    app.clock.advance(1);
    assert_eq!(token_of(&app, &t, id).await, stub.token(2));
    assert_eq!(stub.seen().len(), 2);
    assert_eq!(
        stub.seen()[1].authorization.as_deref(),
        Some(Stub::basic(KEY, SECRET).as_str())
    );

    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            r#"hazina_token_exchanges_total{provider="mpesa",kind="exchange"}"#
        ),
        2
    );
    assert_eq!(
        sample(&m, r#"hazina_token_cache_hits_total{provider="mpesa"}"#),
        2
    );
    assert_eq!(
        sample(
            &m,
            r#"hazina_token_exchange_duration_seconds_count{provider="mpesa",kind="exchange"}"#
        ),
        2
    );
    assert!(!m.contains(stub.nonce()));

    // Every issue is audited, with the operation and the caller's reference.
    let auditor = app.user_with_role(Role::Auditor).await;
    let events = body_of(
        app.get(
            "/audit/events/?action=credential.operation&limit=100",
            &auditor.access,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let issued: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "access-token" && e["outcome"] == "success")
        .collect();
    assert_eq!(issued.len(), 4, "{events}");
    assert!(issued.iter().all(|e| e["reference"] == "order-77"));
    assert!(issued
        .iter()
        .all(|e| e["target"]["credential_id"] == json!(id)));

    // Once expired, the sweep drops the token from memory.
    assert_eq!(app.state.broker.slots(), 1);
    app.state.broker.sweep(app.clock.now() + 3600);
    assert_eq!(app.state.broker.slots(), 0);
}

#[tokio::test]
async fn two_hundred_concurrent_callers_cause_exactly_one_exchange() {
    let stub = Stub::start(Kind::KopoKopo, KEY, SECRET).await;
    let app = vault_for(&stub, Kind::KopoKopo, &[]).await;
    let owner = app.user().await;
    let id = credential(&app, &owner, Kind::KopoKopo).await;

    // The provider holds its answer until every caller is waiting for it.
    stub.hold();
    let callers: Vec<_> = (0..200)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url(&token_path(id));
            let token = owner.access.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Until every caller waits on the broker and the one exchange has reached the provider.
    while app.state.broker.waiting(id) < 200 || stub.seen().is_empty() {
        assert!(
            Instant::now() < deadline,
            "only {} callers reached the broker; the provider saw {} calls",
            app.state.broker.waiting(id),
            stub.seen().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stub.seen().len(), 1, "one exchange in flight");
    stub.release();
    for caller in callers {
        let body = body_of(caller.await.unwrap(), StatusCode::OK).await;
        assert_eq!(body["access_token"], json!(stub.token(1)));
    }
    assert_eq!(stub.seen().len(), 1);
    assert_eq!(stub.issued(), 1);

    // KopoKopo's form, as published.
    let seen = &stub.seen()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/oauth/token");
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let form = seen.form();
    assert_eq!(form.len(), 3, "{form:?}");
    assert_eq!(form["client_id"], KEY);
    assert_eq!(form["client_secret"], SECRET);
    assert_eq!(form["grant_type"], "client_credentials");
    assert!(seen.authorization.is_none());
}

#[tokio::test]
async fn jpay_tokens_are_renewed_through_the_refresh_token_and_a_refused_refresh_falls_back_to_the_app_secret(
) {
    let stub = Stub::start(Kind::JPay, KEY, SECRET).await;
    let app = vault_for(&stub, Kind::JPay, &[]).await;
    let owner = app.user().await;
    let id = credential(&app, &owner, Kind::JPay).await;

    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(1));
    let first = &stub.seen()[0];
    assert_eq!(
        (first.method.as_str(), first.target.as_str()),
        ("POST", "/api/v1/auth/app/token")
    );
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        first.json(),
        json!({ "app_key": KEY, "app_secret": SECRET })
    );

    // JPay's access tokens live 15 minutes: renewed 60 s before, with the refresh token.
    app.clock.advance(900 - 61);
    let t = relogin(&app, &owner).await;
    assert_eq!(token_of(&app, &t, id).await, stub.token(1));
    app.clock.advance(1);
    assert_eq!(token_of(&app, &t, id).await, stub.token(2));
    let renewal = &stub.seen()[1];
    assert_eq!(renewal.target, "/api/v1/auth/refresh");
    assert_eq!(renewal.json(), json!({ "refresh": stub.refresh_token(1) }));

    // A refresh token the provider refuses: a full exchange with the app secret.
    stub.set_mode(Mode::RefuseRefresh);
    app.clock.advance(900 - 60);
    let t = relogin(&app, &owner).await;
    assert_eq!(token_of(&app, &t, id).await, stub.token(3));
    let targets: Vec<String> = stub.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(
        targets,
        [
            "/api/v1/auth/app/token",
            "/api/v1/auth/refresh",
            "/api/v1/auth/refresh",
            "/api/v1/auth/app/token",
        ]
    );
    assert_eq!(
        stub.seen()[2].json(),
        json!({ "refresh": stub.refresh_token(2) })
    );
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            r#"hazina_token_exchanges_total{provider="jpay",kind="refresh"}"#
        ),
        1
    );
    assert_eq!(
        sample(
            &m,
            r#"hazina_token_exchanges_total{provider="jpay",kind="exchange"}"#
        ),
        2
    );
    assert_eq!(
        sample(
            &m,
            r#"hazina_token_provider_errors_total{provider="jpay",error="status"}"#
        ),
        1
    );
}

#[tokio::test]
async fn pagamio_tokens_are_read_in_both_published_shapes_and_renewed_through_refresh() {
    for kind in [Kind::PagamioFlat, Kind::PagamioWrapped] {
        let stub = Stub::start(kind, KEY, SECRET).await;
        let app = vault_for(&stub, kind, &[]).await;
        let owner = app.user().await;
        let id = credential(&app, &owner, kind).await;
        let issued_at = app.clock.now();
        let body = body_of(ask(&app, &owner.access, id).await, StatusCode::OK).await;
        assert_eq!(body["access_token"], json!(stub.token(1)), "{kind:?}");
        assert_eq!(
            body["expires_at"],
            json!(hazina::clock::rfc3339(issued_at + 1800))
        );
        let first = &stub.seen()[0];
        assert_eq!(first.target, "/api/v1/auth/token");
        assert_eq!(first.json(), json!({ "username": KEY, "password": SECRET }));

        app.clock.advance(1800 - 60);
        let t = relogin(&app, &owner).await;
        assert_eq!(token_of(&app, &t, id).await, stub.token(2));
        let renewal = &stub.seen()[1];
        match kind {
            // The flat shape carries no refresh token: a new exchange.
            Kind::PagamioFlat => assert_eq!(renewal.target, "/api/v1/auth/token"),
            _ => {
                assert_eq!(renewal.target, "/api/v1/auth/token/refresh");
                assert_eq!(
                    renewal.json(),
                    json!({ "refreshToken": stub.refresh_token(1) })
                );
            }
        }
    }
}

#[tokio::test]
async fn rotating_or_deactivating_the_credential_forces_a_new_exchange_with_the_new_secret() {
    let stub = Stub::start(Kind::Daraja, KEY, SECRET).await;
    let app = vault_for(&stub, Kind::Daraja, &[]).await;
    let other_node = app
        .spawn_node_with(&[("HAZINA_PROVIDER_MPESA_SANDBOX_URL", stub.url.as_str())])
        .await;
    let owner = app.user().await;
    let id = credential(&app, &owner, Kind::Daraja).await;
    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(1));
    assert_eq!(
        token_of(&other_node, &owner.access, id).await,
        stub.token(2)
    );

    // The merchant rotates the consumer secret at Safaricom and in the vault.
    let new_secret = "consumer-secret-0002";
    stub.set_secret(new_secret);
    let res = app
        .post(
            &format!("/payments/credentials/{id}/rotate/"),
            &owner.access,
            &json!({ "private_key": new_secret }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(3));
    assert_eq!(
        stub.seen()[2].authorization.as_deref(),
        Some(Stub::basic(KEY, new_secret).as_str())
    );
    // The other node held a token for version 1: it finds version 2 and exchanges too.
    assert_eq!(
        token_of(&other_node, &owner.access, id).await,
        stub.token(4)
    );
    assert_eq!(
        stub.seen()[3].authorization.as_deref(),
        Some(Stub::basic(KEY, new_secret).as_str())
    );

    // Deactivated: no token (409), and the cached one is gone.
    let toggle = format!("/payments/credentials/{id}/toggle-status/");
    let res = app.post_empty(&toggle, &owner.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = ask(&app, &owner.access, id).await;
    assert_error(
        res,
        StatusCode::CONFLICT,
        "This credential is inactive; activate it before asking for a provider token",
    )
    .await;
    assert_eq!(app.state.broker.slots(), 0);
    let res = app.post_empty(&toggle, &owner.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(5));
    assert_eq!(stub.issued(), 5);
}

#[tokio::test]
async fn a_provider_that_fails_answers_502_with_its_status_and_the_next_call_recovers() {
    let stub = Stub::start(Kind::KopoKopo, KEY, SECRET).await;
    let app = vault_for(&stub, Kind::KopoKopo, &[]).await;
    let owner = app.user().await;
    let id = credential(&app, &owner, Kind::KopoKopo).await;

    stub.set_mode(Mode::Status(500));
    let body = body_of(ask(&app, &owner.access, id).await, StatusCode::BAD_GATEWAY).await;
    assert_eq!(
        body,
        json!({
            "error": "The provider's token endpoint failed; try again later",
            "provider_status": 500,
        })
    );
    // Wrong stored credentials: the provider's 401 is passed on as its status.
    stub.set_mode(Mode::Answer);
    stub.set_secret("the-secret-changed-at-the-provider");
    let body = body_of(ask(&app, &owner.access, id).await, StatusCode::BAD_GATEWAY).await;
    assert_eq!(body["provider_status"], 401);
    // Nothing is cached from a failure: the next call asks again and recovers.
    stub.set_secret(SECRET);
    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(1));
    assert_eq!(stub.seen().len(), 3);

    let auditor = app.user_with_role(Role::Auditor).await;
    let events = body_of(
        app.get(
            "/audit/events/?action=credential.operation&outcome=error",
            &auditor.access,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let failed = events["events"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{events}");
    assert!(failed
        .iter()
        .all(|e| e["reason"] == "provider_error" && e["operation"] == "access-token"));
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            r#"hazina_token_provider_errors_total{provider="kopokopo",error="status"}"#
        ),
        2
    );
}

#[tokio::test]
async fn a_provider_429_backs_off_for_its_retry_after_and_says_so() {
    let stub = Stub::start(Kind::Daraja, KEY, SECRET).await;
    let app = vault_for(&stub, Kind::Daraja, &[]).await;
    let owner = app.user().await;
    let id = credential(&app, &owner, Kind::Daraja).await;

    stub.set_mode(Mode::RateLimited(30));
    let res = ask(&app, &owner.access, id).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "30");
    let body = body_of(res, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        body["error"],
        "The provider is rate limiting token requests; hazina will not ask it again for 30 s"
    );
    // Inside the backoff no call is made, and the caller is told how long is left.
    stub.set_mode(Mode::Answer);
    app.clock.advance(10);
    let res = ask(&app, &owner.access, id).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "20");
    assert_eq!(stub.seen().len(), 1);
    // After it, the next call recovers.
    app.clock.advance(20);
    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(1));
    assert_eq!(stub.seen().len(), 2);
    let auditor = app.user_with_role(Role::Auditor).await;
    let events = body_of(
        app.get("/audit/events/?outcome=error", &auditor.access)
            .await,
        StatusCode::OK,
    )
    .await;
    let reasons: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["reason"])
        .collect();
    assert_eq!(reasons.len(), 2);
    assert!(reasons.iter().all(|r| *r == "provider_rate_limited"));
}

#[tokio::test]
async fn a_provider_that_hangs_times_out_with_504_and_the_next_call_recovers() {
    let stub = Stub::start(Kind::JPay, KEY, SECRET).await;
    let app = vault_for(
        &stub,
        Kind::JPay,
        &[("HAZINA_PROVIDER_TIMEOUT_SECONDS", "1")],
    )
    .await;
    let owner = app.user().await;
    let id = credential(&app, &owner, Kind::JPay).await;

    stub.set_mode(Mode::Hang);
    let started = Instant::now();
    let res = ask(&app, &owner.access, id).await;
    let waited = started.elapsed();
    let body = body_of(res, StatusCode::GATEWAY_TIMEOUT).await;
    assert_eq!(
        body,
        json!({ "error": "The provider's token endpoint did not answer in time; try again" })
    );
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    stub.set_mode(Mode::Answer);
    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(1));
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            r#"hazina_token_provider_errors_total{provider="jpay",error="timeout"}"#
        ),
        1
    );
}

#[tokio::test]
async fn tokens_come_over_https_verified_against_the_configured_ca_and_never_unverified() {
    let pki = TestPki::new();
    let stub = Stub::start_with(Kind::Daraja, KEY, SECRET, Some(pki.server_config())).await;
    assert!(stub.url.starts_with("https://"));
    let ca = pki.ca_path.display().to_string();
    let app = vault_for(
        &stub,
        Kind::Daraja,
        &[("HAZINA_PROVIDER_CA_FILE", ca.as_str())],
    )
    .await;
    let owner = app.user().await;
    let id = credential(&app, &owner, Kind::Daraja).await;
    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(1));

    // Without the CA the stub's certificate is not trusted: no token, and no status (the
    // provider never answered).
    let untrusting = vault_for(&stub, Kind::Daraja, &[]).await;
    let owner = untrusting.user().await;
    let id = credential(&untrusting, &owner, Kind::Daraja).await;
    let body = body_of(
        ask(&untrusting, &owner.access, id).await,
        StatusCode::BAD_GATEWAY,
    )
    .await;
    assert_eq!(
        body,
        json!({ "error": "The provider's token endpoint failed; try again later" })
    );
    assert_eq!(stub.seen().len(), 1);
}

#[tokio::test]
async fn services_get_tokens_only_through_a_grant_that_names_access_token() {
    let stub = Stub::start(Kind::Daraja, KEY, SECRET).await;
    let pki = TestPki::new();
    let app = crate::pki::spawn_tls_app_with(
        &pki,
        ClientCerts::Optional,
        &[("HAZINA_PROVIDER_MPESA_SANDBOX_URL", stub.url.as_str())],
    )
    .await;
    let admin = app.user_with_role(Role::Admin).await;
    let owner = app.user().await;
    let id = credential(&app, &owner, Kind::Daraja).await;
    let res = app
        .post(
            "/admin/services/",
            &admin.access,
            &json!({ "name": "billing", "identity": SERVICE_URI }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let billing = pki.https_client(Some(&pki.client(ClientCert::Valid)));
    let lookup = format!(
        "/payments/credentials/lookup/operations/access-token/?owner={}&provider=mpesa&environment=sandbox",
        owner.username
    );
    let post = |path: String| {
        let billing = billing.clone();
        let url = app.url(&path);
        async move { billing.post(url).json(&json!({})).send().await.unwrap() }
    };

    // A grant for STK passwords only: 403, and the provider is never called.
    let grant = body_of(
        app.post(
            "/admin/grants/",
            &admin.access,
            &json!({ "service": "billing", "owner": owner.username, "provider": "mpesa",
                     "operations": ["stk-password"] }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_error(
        post(lookup.clone()).await,
        StatusCode::FORBIDDEN,
        "This service's grant does not allow this operation",
    )
    .await;
    assert!(stub.seen().is_empty());
    let res = app
        .delete(&format!("/admin/grants/{}/", grant["id"]), &admin.access)
        .await;
    assert!(res.status().is_success());

    body_of(
        app.post(
            "/admin/grants/",
            &admin.access,
            &json!({ "service": "billing", "owner": owner.username, "provider": "mpesa",
                     "operations": ["access-token"] }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let by_lookup = body_of(post(lookup).await, StatusCode::OK).await;
    assert_eq!(by_lookup["access_token"], json!(stub.token(1)));
    let by_id = body_of(post(token_path(id)).await, StatusCode::OK).await;
    assert_eq!(by_id["access_token"], json!(stub.token(1)));
    // The grant names access-token only: reveal is still refused.
    let res = billing
        .get(app.url(&format!("/payments/credentials/{id}/get-private-key/")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(stub.seen().len(), 1);
}

#[tokio::test]
async fn access_token_refuses_what_it_cannot_do_with_a_clear_4xx() {
    let stub = Stub::start(Kind::Daraja, KEY, SECRET).await;
    let app = vault_for(&stub, Kind::Daraja, &[]).await;
    let owner = app.user().await;
    let id = credential(&app, &owner, Kind::Daraja).await;
    let other = app.user().await;

    // IntaSend has no token endpoint.
    let instasend = app
        .create_credential(
            &owner,
            "instasend",
            "sandbox",
            "ISSecretKey_test_0123456789",
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let res = ask(&app, &owner.access, instasend).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_json_4xx(res).await;
    // Another owner's credential: the same 404 as a missing one.
    let res = ask(&app, &other.access, id).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = ask(&app, &owner.access, 999_999).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    for bad in [
        json!({ "timestamp": "20260101000000" }),
        json!({ "reference": "has space" }),
        json!({ "unknown": 1 }),
        json!([]),
    ] {
        let res = app.post(&token_path(id), &owner.access, &bad).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_json_4xx(res).await;
    }
    assert!(stub.seen().is_empty());
}

#[tokio::test]
async fn no_token_or_secret_appears_in_logs_the_database_the_audit_export_or_metrics() {
    let stub = Stub::start(Kind::PagamioWrapped, KEY, SECRET).await;
    let app = vault_for(&stub, Kind::PagamioWrapped, &[]).await;
    let owner = app.user().await;
    let id = credential(&app, &owner, Kind::PagamioWrapped).await;
    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(1));
    app.clock.advance(1800 - 60);
    let t = relogin(&app, &owner).await;
    assert_eq!(token_of(&app, &t, id).await, stub.token(2));
    // A failure logs too: its line must not carry anything either.
    stub.set_mode(Mode::Status(503));
    app.clock.advance(1800 - 60);
    let t = relogin(&app, &owner).await;
    assert_eq!(ask(&app, &t, id).await.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(stub.seen()[1].target, "/api/v1/auth/token/refresh");

    let auditor = app.user_with_role(Role::Auditor).await;
    let export = app.get("/audit/export/", &auditor.access).await;
    assert_eq!(export.status(), StatusCode::OK);
    let export = export.text().await.unwrap();
    assert!(
        export.contains("access-token"),
        "the issues are in the export"
    );
    let logs = String::from_utf8_lossy(&captured_logs()).into_owned();
    assert!(logs.contains("provider token call failed"));
    let stored = String::from_utf8_lossy(&app.stored_bytes()).into_owned();
    let metrics = metrics(&app).await;
    for (place, text) in [
        ("logs", &logs),
        ("database", &stored),
        ("audit export", &export),
        ("metrics", &metrics),
    ] {
        assert!(!text.contains(stub.nonce()), "a token reached the {place}");
        assert!(!text.contains(SECRET), "the secret reached the {place}");
    }
}

#[tokio::test]
async fn a_cached_token_is_never_handed_out_for_a_row_edited_in_the_database() {
    let stub = Stub::start(Kind::Daraja, KEY, SECRET).await;
    let app = vault_for(&stub, Kind::Daraja, &[]).await;
    let owner = app.user().await;
    let mallory = app.user().await;
    let id = credential(&app, &owner, Kind::Daraja).await;
    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(1));

    // A database writer moves the credential to mallory: the SQL now finds it for her, but the
    // row's MAC (SPEC §14) no longer verifies, so it is answered like a missing credential,
    // audited as tampering, and no token. (Before rows carried MACs, the envelope's AAD caught
    // it one step later, as a 500.)
    app.sql_execute(&format!(
        "UPDATE credentials SET owner_id = {} WHERE id = {id}",
        mallory.id
    ));
    let res = ask(&app, &mallory.access, id).await;
    let body = body_of(res, StatusCode::NOT_FOUND).await;
    assert_eq!(
        body,
        json!({ "error": "Payment credentials not found or access denied" })
    );
    // Moved back: the cached token is good again, without a call.
    app.sql_execute(&format!(
        "UPDATE credentials SET owner_id = {} WHERE id = {id}",
        owner.id
    ));
    assert_eq!(token_of(&app, &owner.access, id).await, stub.token(1));
    assert_eq!(stub.seen().len(), 1);
    let violations =
        app.sql_lines("SELECT reason AS line FROM audit_log WHERE action = 'integrity.violation'");
    assert_eq!(violations, ["row_tampered"]);
}
