//! Internal services over mutual TLS (SPEC §1, §2.3): a verified client certificate whose
//! identity is a registered, enabled service reveals exactly the keys its live grants cover,
//! and nothing else; the admin API and the CLI manage services and grants.
//!
//! Every test makes its own PKI ([`TestPki`]) and serves hazina over HTTPS with optional
//! client certificates, so owners (bearer tokens, no certificate) and services (certificate,
//! no token) share one server, as in production.

use std::process::Output;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use hazina::clock::rfc3339;
use hazina::domain::Role;

use crate::helpers::*;
use crate::pki::{ClientCert, ClientCerts, ClientIdentity, TestPki, SERVICE_URI};

const UNAUTHENTICATED: &str = "Authentication credentials were not provided or are invalid";
const SERVICE_FORBIDDEN: &str = "Services may only fetch the keys they are granted";
const UNKNOWN_SERVICE: &str = "This client certificate is not a registered, enabled service";
const OUTSIDE_ALLOWLIST: &str = "Requests from this address are not allowed for this principal";
const ADMINS_ONLY: &str = "Only administrators may do this";
const LOOKUP_IS_FOR_SERVICES: &str =
    "This endpoint is for services; owners use /payments/credentials/provider/{provider}/";

/// A valid credential id that no row holds.
const MISSING_ID: i64 = 4_242_424_242;

/// [`crate::pki::spawn_tls_app`] with extra `HAZINA_*` settings.
async fn spawn_tls_app_with(
    pki: &TestPki,
    client_certs: ClientCerts,
    extra: &[(&str, &str)],
) -> TestApp {
    let cert = pki.server_cert_path.display().to_string();
    let key = pki.server_key_path.display().to_string();
    let ca = pki.ca_path.display().to_string();
    let mut settings = vec![
        ("HAZINA_TLS_CERT", cert.as_str()),
        ("HAZINA_TLS_KEY", key.as_str()),
    ];
    if client_certs != ClientCerts::NotRequested {
        settings.push(("HAZINA_TLS_CLIENT_CA", ca.as_str()));
    }
    if client_certs == ClientCerts::Required {
        settings.push(("HAZINA_TLS_REQUIRE_CLIENT_CERT", "true"));
    }
    settings.extend_from_slice(extra);
    let mut app = spawn_app_with(&settings).await;
    app.address = format!("https://127.0.0.1:{}", app.port);
    app.client = pki.https_client(None);
    app
}

/// Lowercase hex SHA-256 of a certificate's DER: what hazina records and matches.
fn fingerprint(identity: &ClientIdentity) -> String {
    hex::encode(Sha256::digest(identity.cert.as_ref()))
}

async fn status_and_bytes(res: Response) -> (StatusCode, Vec<u8>) {
    let status = res.status();
    (status, res.bytes().await.unwrap().to_vec())
}

fn key_of(owner: &TestUser, provider: &str, environment: &str) -> String {
    format!("{provider}-{environment}-private-key-of-{}", owner.username)
}

fn reveal_path(id: impl std::fmt::Display) -> String {
    format!("/payments/credentials/{id}/get-private-key/")
}

fn lookup_path(owner: &str, provider: &str, environment: &str) -> String {
    format!(
        "/payments/credentials/lookup/get-private-key/?owner={owner}&provider={provider}&environment={environment}"
    )
}

/// A vault served over HTTPS (client certificates optional) with an admin and a merchant.
struct Vault {
    app: TestApp,
    pki: TestPki,
    admin: TestUser,
    merchant: TestUser,
}

impl Vault {
    async fn new() -> Vault {
        Vault::with(&[]).await
    }

    async fn with(settings: &[(&str, &str)]) -> Vault {
        let pki = TestPki::new();
        let app = spawn_tls_app_with(&pki, ClientCerts::Optional, settings).await;
        let admin = app.user_with_role(Role::Admin).await;
        let merchant = app.user().await;
        Vault {
            app,
            pki,
            admin,
            merchant,
        }
    }

    /// An HTTPS client presenting a fresh certificate of `kind` (one per kind per test).
    fn service_client(&self, kind: ClientCert) -> reqwest::Client {
        self.pki.https_client(Some(&self.pki.client(kind)))
    }

    /// The client of the `billing` service: the valid certificate, SAN [`SERVICE_URI`].
    fn billing(&self) -> reqwest::Client {
        self.service_client(ClientCert::Valid)
    }

    /// Creates `owner`'s credential; its id.
    async fn credential(&self, owner: &TestUser, provider: &str, environment: &str) -> i64 {
        let created = self
            .app
            .create_credential(
                owner,
                provider,
                environment,
                &key_of(owner, provider, environment),
            )
            .await;
        created["id"].as_i64().unwrap()
    }

    async fn admin_post(&self, path: &str, body: Value) -> Response {
        self.app.post(path, &self.admin.access, &body).await
    }

    /// Registers a service through the admin API (asserting 201); its JSON.
    async fn register(&self, body: Value) -> Value {
        body_of(
            self.admin_post("/admin/services/", body).await,
            StatusCode::CREATED,
        )
        .await
    }

    /// Registers `billing`, identified by the valid certificate's SAN URI.
    async fn register_billing(&self) -> Value {
        self.register(json!({ "name": "billing", "identity": SERVICE_URI }))
            .await
    }

    /// Grants `service` read access to `owner`'s keys (asserting 201); its JSON.
    async fn grant(
        &self,
        service: &str,
        owner: &TestUser,
        provider: Option<&str>,
        environment: Option<&str>,
    ) -> Value {
        let mut body = json!({ "service": service, "owner": owner.username });
        if let Some(p) = provider {
            body["provider"] = json!(p);
        }
        if let Some(e) = environment {
            body["environment"] = json!(e);
        }
        body_of(
            self.admin_post("/admin/grants/", body).await,
            StatusCode::CREATED,
        )
        .await
    }

    /// `billing` registered and granted all of the merchant's keys.
    async fn billing_granted_the_merchant(&self) -> Value {
        self.register_billing().await;
        self.grant("billing", &self.merchant, None, None).await
    }

    /// A request with no bearer token: only the client's certificate speaks for it.
    async fn service_get(&self, client: &reqwest::Client, path: &str) -> Response {
        client.get(self.app.url(path)).send().await.unwrap()
    }

    async fn reveal(&self, client: &reqwest::Client, id: impl std::fmt::Display) -> Response {
        self.service_get(client, &reveal_path(id)).await
    }

    async fn lookup(
        &self,
        client: &reqwest::Client,
        owner: &str,
        provider: &str,
        environment: &str,
    ) -> Response {
        self.service_get(client, &lookup_path(owner, provider, environment))
            .await
    }

    /// What `client` is told about a credential id no row holds.
    async fn missing(&self, client: &reqwest::Client) -> (StatusCode, Vec<u8>) {
        status_and_bytes(self.reveal(client, MISSING_ID).await).await
    }

    /// The reveal body the owner gets for `id`, as bytes.
    async fn owners_reveal(&self, owner: &TestUser, id: i64) -> Vec<u8> {
        let res = self.app.get(&reveal_path(id), &owner.access).await;
        let (status, bytes) = status_and_bytes(res).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        bytes
    }
}

/// Asserts a refusal is byte-for-byte the answer for a missing id, and that it is that 404.
async fn assert_like_missing(refused: Response, missing: &(StatusCode, Vec<u8>)) {
    let (status, bytes) = status_and_bytes(refused).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&bytes)),
        (missing.0, String::from_utf8_lossy(&missing.1))
    );
    assert_eq!(missing.0, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_slice(&missing.1).unwrap();
    assert_eq!(body, json!({ "error": NOT_FOUND }));
}

/// Asserts a successful reveal of `owner`'s key for `provider`/`environment` with id `id`.
async fn assert_revealed(res: Response, id: i64, owner: &TestUser, provider: &str, env: &str) {
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    let display = match provider {
        "mpesa" => "M-Pesa Daraja",
        "kopokopo" => "KopoKopo",
        other => panic!("no display name for {other} in this test"),
    };
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "credentials_id": id,
            "provider": provider,
            "provider_display": display,
            "private_key": key_of(owner, provider, env),
            "message": "Private key retrieved successfully",
        })
    );
}

// ---------------------------------------------------------------------------------------
// A granted service reveals.

#[tokio::test]
async fn a_granted_service_reveals_the_key_exactly_as_its_owner_sees_it() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();

    let res = v.reveal(&billing, id).await;

    assert_eq!(
        res.headers()
            .get("cache-control")
            .map(|h| h.to_str().unwrap()),
        Some("no-store")
    );
    let (status, bytes) = status_and_bytes(res).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        String::from_utf8_lossy(&v.owners_reveal(&v.merchant, id).await)
    );
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        body,
        json!({
            "credentials_id": id,
            "provider": "mpesa",
            "provider_display": "M-Pesa Daraja",
            "private_key": key_of(&v.merchant, "mpesa", "sandbox"),
            "message": "Private key retrieved successfully",
        })
    );
}

#[tokio::test]
async fn a_granted_service_finds_a_key_by_owner_provider_and_environment() {
    let v = Vault::new().await;
    v.credential(&v.merchant, "mpesa", "sandbox").await;
    let live = v.credential(&v.merchant, "mpesa", "live").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();

    let res = v
        .lookup(&billing, &v.merchant.username, "mpesa", "live")
        .await;

    assert_revealed(res, live, &v.merchant, "mpesa", "live").await;
}

// ---------------------------------------------------------------------------------------
// Anything outside the grant answers exactly like a missing id.

#[tokio::test]
async fn another_owners_key_answers_a_service_like_a_missing_id() {
    let v = Vault::new().await;
    let stranger = v.app.user().await;
    let theirs = v.credential(&stranger, "mpesa", "sandbox").await;
    v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();
    let missing = v.missing(&billing).await;

    let by_id = v.reveal(&billing, theirs).await;
    let by_lookup = v
        .lookup(&billing, &stranger.username, "mpesa", "sandbox")
        .await;

    assert_like_missing(by_id, &missing).await;
    assert_like_missing(by_lookup, &missing).await;
}

#[tokio::test]
async fn a_key_of_a_provider_outside_a_narrowed_grant_answers_like_a_missing_id() {
    let v = Vault::new().await;
    let mpesa = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let kopokopo = v.credential(&v.merchant, "kopokopo", "sandbox").await;
    v.register_billing().await;
    v.grant("billing", &v.merchant, Some("mpesa"), None).await;
    let billing = v.billing();
    let missing = v.missing(&billing).await;

    let granted = v.reveal(&billing, mpesa).await;
    let by_id = v.reveal(&billing, kopokopo).await;
    let by_lookup = v
        .lookup(&billing, &v.merchant.username, "kopokopo", "sandbox")
        .await;

    assert_revealed(granted, mpesa, &v.merchant, "mpesa", "sandbox").await;
    assert_like_missing(by_id, &missing).await;
    assert_like_missing(by_lookup, &missing).await;
}

#[tokio::test]
async fn a_key_of_an_environment_outside_a_narrowed_grant_answers_like_a_missing_id() {
    let v = Vault::new().await;
    let sandbox = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let live = v.credential(&v.merchant, "mpesa", "live").await;
    v.register_billing().await;
    v.grant("billing", &v.merchant, None, Some("sandbox")).await;
    let billing = v.billing();
    let missing = v.missing(&billing).await;

    let granted = v.reveal(&billing, sandbox).await;
    let by_id = v.reveal(&billing, live).await;
    let by_lookup = v
        .lookup(&billing, &v.merchant.username, "mpesa", "live")
        .await;

    assert_revealed(granted, sandbox, &v.merchant, "mpesa", "sandbox").await;
    assert_like_missing(by_id, &missing).await;
    assert_like_missing(by_lookup, &missing).await;
}

#[tokio::test]
async fn an_inactive_key_answers_a_service_like_a_missing_id() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();
    let missing = v.missing(&billing).await;
    let toggled = v
        .app
        .post_empty(
            &format!("/payments/credentials/{id}/toggle-status/"),
            &v.merchant.access,
        )
        .await;
    assert_eq!(
        body_of(toggled, StatusCode::OK).await["credentials"]["is_active"],
        false
    );

    let by_id = v.reveal(&billing, id).await;
    let by_lookup = v
        .lookup(&billing, &v.merchant.username, "mpesa", "sandbox")
        .await;

    assert_like_missing(by_id, &missing).await;
    assert_like_missing(by_lookup, &missing).await;
}

#[tokio::test]
async fn a_deleted_key_answers_a_service_like_a_missing_id() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();
    let missing = v.missing(&billing).await;
    let deleted = v
        .app
        .delete(&format!("/payments/credentials/{id}/"), &v.merchant.access)
        .await;
    assert_eq!(deleted.status(), StatusCode::OK);

    let by_id = v.reveal(&billing, id).await;
    let by_lookup = v
        .lookup(&billing, &v.merchant.username, "mpesa", "sandbox")
        .await;

    assert_like_missing(by_id, &missing).await;
    assert_like_missing(by_lookup, &missing).await;
}

#[tokio::test]
async fn ids_that_can_never_name_a_row_answer_a_service_like_a_missing_id() {
    let v = Vault::new().await;
    v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();
    let missing = v.missing(&billing).await;

    for id in ["0", "-1", "abc", "9007199254740992", "1e3"] {
        assert_like_missing(v.reveal(&billing, id).await, &missing).await;
    }
}

#[tokio::test]
async fn a_lookup_of_an_unknown_or_malformed_owner_answers_like_a_missing_id() {
    let v = Vault::new().await;
    v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();
    let missing = v.missing(&billing).await;

    for owner in ["nobody-here", "x", "%20%27%20OR%201%3D1"] {
        assert_like_missing(
            v.lookup(&billing, owner, "mpesa", "sandbox").await,
            &missing,
        )
        .await;
    }
}

#[tokio::test]
async fn a_lookup_with_an_unknown_provider_environment_or_missing_parameter_answers_400() {
    let v = Vault::new().await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();
    let owner = v.merchant.username.clone();

    let provider = v.lookup(&billing, &owner, "paypal", "sandbox").await;
    let environment = v.lookup(&billing, &owner, "mpesa", "staging").await;
    let no_environment = v
        .service_get(
            &billing,
            &format!("/payments/credentials/lookup/get-private-key/?owner={owner}&provider=mpesa"),
        )
        .await;

    assert_error(
        provider,
        StatusCode::BAD_REQUEST,
        "Invalid provider. Choose one of: kopokopo, instasend, jpay, mpesa, pagamio",
    )
    .await;
    assert_error(
        environment,
        StatusCode::BAD_REQUEST,
        "Invalid environment. Choose one of: sandbox, live",
    )
    .await;
    assert_error(
        no_environment,
        StatusCode::BAD_REQUEST,
        "Invalid query parameters",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Who counts as a service.

#[tokio::test]
async fn a_registered_service_without_a_grant_reveals_nothing() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.register_billing().await;
    let billing = v.billing();
    let missing = v.missing(&billing).await;

    let by_id = v.reveal(&billing, id).await;
    let by_lookup = v
        .lookup(&billing, &v.merchant.username, "mpesa", "sandbox")
        .await;

    assert_like_missing(by_id, &missing).await;
    assert_like_missing(by_lookup, &missing).await;
}

#[tokio::test]
async fn a_certificate_that_names_no_registered_service_is_refused_with_403() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;

    for kind in [ClientCert::DnsOnly, ClientCert::NoSan] {
        let client = v.service_client(kind);
        let by_id = v.reveal(&client, id).await;
        let by_lookup = v
            .lookup(&client, &v.merchant.username, "mpesa", "sandbox")
            .await;
        assert_error(by_id, StatusCode::FORBIDDEN, UNKNOWN_SERVICE).await;
        assert_error(by_lookup, StatusCode::FORBIDDEN, UNKNOWN_SERVICE).await;
    }
}

#[tokio::test]
async fn an_unregistered_certificate_is_audited_as_an_anonymous_denial_by_fingerprint() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let cert = v.pki.client(ClientCert::DnsOnly);
    let client = v.pki.https_client(Some(&cert));

    let res = v.reveal(&client, id).await;

    assert_error(res, StatusCode::FORBIDDEN, UNKNOWN_SERVICE).await;
    assert_eq!(
        v.app.sql_lines(
            "SELECT actor_kind || '|' || COALESCE(actor_name, '') || '|' || outcome || '|' \
             || COALESCE(reason, '') || '|' || COALESCE(cert_fingerprint, '') AS line \
             FROM audit_log WHERE action = 'service.authenticate' ORDER BY seq"
        ),
        [format!(
            "anonymous||denied|unknown_service|{}",
            fingerprint(&cert)
        )]
    );
}

#[tokio::test]
async fn a_service_registered_by_fingerprint_is_recognised_by_a_certificate_without_a_san() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let cert = v.pki.client(ClientCert::NoSan);
    let identity = format!("sha256:{}", fingerprint(&cert).to_ascii_uppercase());
    let registered = v
        .register(json!({ "name": "settlement", "identity": identity }))
        .await;
    v.grant("settlement", &v.merchant, None, None).await;
    let client = v.pki.https_client(Some(&cert));

    let res = v.reveal(&client, id).await;

    assert_eq!(
        registered["identity"],
        format!("sha256:{}", fingerprint(&cert))
    );
    assert_revealed(res, id, &v.merchant, "mpesa", "sandbox").await;
}

#[tokio::test]
async fn a_service_registered_by_dns_name_is_recognised_by_a_certificate_with_only_a_dns_san() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.register(json!({ "name": "ledger", "identity": "billing.payments.internal" }))
        .await;
    v.grant("ledger", &v.merchant, None, None).await;
    let client = v.service_client(ClientCert::DnsOnly);

    let res = v.reveal(&client, id).await;

    assert_revealed(res, id, &v.merchant, "mpesa", "sandbox").await;
}

#[tokio::test]
async fn a_disabled_service_is_refused_on_its_very_next_request() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();
    let before = v.reveal(&billing, id).await;
    assert_eq!(before.status(), StatusCode::OK);

    let disabled = v
        .app
        .post_empty("/admin/services/billing/disable/", &v.admin.access)
        .await;
    assert_eq!(disabled.status(), StatusCode::OK);
    // The same client, so very likely the same kept-alive TLS connection.
    let by_id = v.reveal(&billing, id).await;
    let by_lookup = v
        .lookup(&billing, &v.merchant.username, "mpesa", "sandbox")
        .await;

    assert_error(by_id, StatusCode::FORBIDDEN, UNKNOWN_SERVICE).await;
    assert_error(by_lookup, StatusCode::FORBIDDEN, UNKNOWN_SERVICE).await;
}

#[tokio::test]
async fn a_revoked_grant_stops_working_on_the_very_next_request() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let grant = v.billing_granted_the_merchant().await;
    let billing = v.billing();
    let missing = v.missing(&billing).await;
    let before = v.reveal(&billing, id).await;
    assert_eq!(before.status(), StatusCode::OK);

    let revoked = v
        .app
        .delete(&format!("/admin/grants/{}/", grant["id"]), &v.admin.access)
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    let by_id = v.reveal(&billing, id).await;
    let by_lookup = v
        .lookup(&billing, &v.merchant.username, "mpesa", "sandbox")
        .await;

    assert_like_missing(by_id, &missing).await;
    assert_like_missing(by_lookup, &missing).await;
}

#[tokio::test]
async fn revoking_one_of_two_grants_leaves_the_other_working() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.register_billing().await;
    let broad = v.grant("billing", &v.merchant, None, None).await;
    v.grant("billing", &v.merchant, Some("mpesa"), Some("sandbox"))
        .await;
    let billing = v.billing();

    let revoked = v
        .app
        .delete(&format!("/admin/grants/{}/", broad["id"]), &v.admin.access)
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    let res = v.reveal(&billing, id).await;

    assert_revealed(res, id, &v.merchant, "mpesa", "sandbox").await;
}

// ---------------------------------------------------------------------------------------
// Only a verified certificate makes a service; headers never do.

/// Headers a proxy might set to vouch for a client: hazina must ignore every one.
fn spoofed_identity_headers(
    req: reqwest::RequestBuilder,
    fingerprint: &str,
) -> reqwest::RequestBuilder {
    req.header("X-Client-Cert", format!("URI={SERVICE_URI}"))
        .header(
            "X-Forwarded-Client-Cert",
            format!("Hash={fingerprint};URI={SERVICE_URI}"),
        )
        .header("X-SSL-Client-S-DN", "CN=Valid client")
        .header("X-SSL-Client-Verify", "SUCCESS")
        .header("X-SSL-Client-Fingerprint", fingerprint)
        .header("X-Forwarded-For", "10.1.2.3")
        .header("X-Real-IP", "10.1.2.3")
}

#[tokio::test]
async fn spoofed_identity_headers_without_a_certificate_answer_401() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let cert = v.pki.client(ClientCert::Valid);
    v.billing_granted_the_merchant().await;
    let no_certificate = v.pki.https_client(None);
    let fp = fingerprint(&cert);

    let by_id = spoofed_identity_headers(no_certificate.get(v.app.url(&reveal_path(id))), &fp)
        .send()
        .await
        .unwrap();
    let by_lookup = spoofed_identity_headers(
        no_certificate.get(
            v.app
                .url(&lookup_path(&v.merchant.username, "mpesa", "sandbox")),
        ),
        &fp,
    )
    .send()
    .await
    .unwrap();

    assert_error(by_id, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
    assert_error(by_lookup, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn spoofed_identity_headers_do_not_widen_a_services_grants() {
    let v = Vault::new().await;
    let stranger = v.app.user().await;
    let theirs = v.credential(&stranger, "mpesa", "sandbox").await;
    let own = v.credential(&v.merchant, "mpesa", "sandbox").await;
    // `settlement` may read the stranger's keys; billing may read only the merchant's.
    let settlement = v.pki.client(ClientCert::NoSan);
    v.register(json!({
        "name": "settlement",
        "identity": format!("sha256:{}", fingerprint(&settlement)),
    }))
    .await;
    v.grant("settlement", &stranger, None, None).await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();
    let missing = v.missing(&billing).await;
    let fp = fingerprint(&settlement);

    let granted = spoofed_identity_headers(billing.get(v.app.url(&reveal_path(own))), &fp)
        .send()
        .await
        .unwrap();
    let by_id = spoofed_identity_headers(billing.get(v.app.url(&reveal_path(theirs))), &fp)
        .send()
        .await
        .unwrap();
    let by_lookup = spoofed_identity_headers(
        billing.get(
            v.app
                .url(&lookup_path(&stranger.username, "mpesa", "sandbox")),
        ),
        &fp,
    )
    .send()
    .await
    .unwrap();

    assert_revealed(granted, own, &v.merchant, "mpesa", "sandbox").await;
    assert_like_missing(by_id, &missing).await;
    assert_like_missing(by_lookup, &missing).await;
    // The audit trail names the real service, certificate and TCP peer, not the headers.
    let recorded = v.app.sql_lines(
        "SELECT DISTINCT COALESCE(actor_name, '') || '|' || COALESCE(cert_fingerprint, '') \
         || '|' || COALESCE(source_ip, '') AS line FROM audit_log \
         WHERE action = 'credential.reveal'",
    );
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(recorded[0].starts_with("billing|"), "{recorded:?}");
    assert!(recorded[0].ends_with("|127.0.0.1"), "{recorded:?}");
    assert!(!recorded[0].contains(&fp), "{recorded:?}");
}

#[tokio::test]
async fn a_forwarded_for_header_does_not_move_a_service_inside_its_allowlist() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.register(json!({
        "name": "billing",
        "identity": SERVICE_URI,
        "allowed_cidrs": ["10.0.0.0/8"],
    }))
    .await;
    v.grant("billing", &v.merchant, None, None).await;
    let billing = v.billing();

    let res = billing
        .get(v.app.url(&reveal_path(id)))
        .header("X-Forwarded-For", "10.1.2.3")
        .header("X-Real-IP", "10.1.2.3")
        .header("Forwarded", "for=10.1.2.3")
        .send()
        .await
        .unwrap();

    assert_error(res, StatusCode::FORBIDDEN, OUTSIDE_ALLOWLIST).await;
}

#[tokio::test]
async fn a_bearer_token_alongside_a_service_certificate_makes_the_caller_that_user() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let stranger = v.app.user().await;
    let billing = v.billing();

    let reveal = billing
        .get(v.app.url(&reveal_path(id)))
        .bearer_auth(&stranger.access)
        .send()
        .await
        .unwrap();
    let lookup = billing
        .get(
            v.app
                .url(&lookup_path(&v.merchant.username, "mpesa", "sandbox")),
        )
        .bearer_auth(&stranger.access)
        .send()
        .await
        .unwrap();
    let bad_token = billing
        .get(v.app.url(&reveal_path(id)))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();

    assert_error(reveal, StatusCode::NOT_FOUND, NOT_FOUND).await;
    assert_error(lookup, StatusCode::FORBIDDEN, LOOKUP_IS_FOR_SERVICES).await;
    assert_error(bad_token, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn a_user_calling_the_lookup_gets_403() {
    let v = Vault::new().await;
    v.credential(&v.merchant, "mpesa", "sandbox").await;

    let res = v
        .app
        .get(
            &lookup_path(&v.merchant.username, "mpesa", "sandbox"),
            &v.merchant.access,
        )
        .await;

    assert_error(res, StatusCode::FORBIDDEN, LOOKUP_IS_FOR_SERVICES).await;
}

// ---------------------------------------------------------------------------------------
// A service does nothing but reveal.

#[tokio::test]
async fn a_service_cannot_use_any_other_credentials_endpoint() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();
    let one = format!("/payments/credentials/{id}/");
    let key = json!({ "private_key": "a-replacement-private-key" });
    let create = json!({
        "provider": "kopokopo",
        "api_key": "api-kopokopo",
        "private_key": "a-new-private-key",
        "environment": "sandbox",
    });

    let answers = [
        billing.get(v.app.url("/payments/credentials/")),
        billing
            .post(v.app.url("/payments/credentials/"))
            .json(&create),
        billing.get(v.app.url(&one)),
        billing.get(v.app.url("/payments/credentials/provider/mpesa/")),
        billing
            .put(v.app.url(&one))
            .json(&json!({ "api_key": "api-changed" })),
        billing
            .post(v.app.url(&format!("{one}update-private-key/")))
            .json(&key),
        billing.post(v.app.url(&format!("{one}rotate/"))).json(&key),
        billing.post(v.app.url(&format!("{one}toggle-status/"))),
        billing.post(v.app.url(&format!("{one}verify/"))).json(&key),
        billing.delete(v.app.url(&one)),
    ];
    let mut refused = 0;
    for req in answers {
        assert_error(
            req.send().await.unwrap(),
            StatusCode::FORBIDDEN,
            SERVICE_FORBIDDEN,
        )
        .await;
        refused += 1;
    }

    assert_eq!(refused, 10);
    // Nothing changed: the owner still sees one active, version-1 credential with its key.
    let listed = body_of(
        v.app
            .get("/payments/credentials/", &v.merchant.access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        (
            &listed[0]["is_active"],
            &listed[0]["version"],
            &listed[0]["api_key"]
        ),
        (&json!(true), &json!(1), &json!("api-mpesa-sandbox"))
    );
    assert_revealed(
        v.app.get(&reveal_path(id), &v.merchant.access).await,
        id,
        &v.merchant,
        "mpesa",
        "sandbox",
    )
    .await;
}

#[tokio::test]
async fn a_service_cannot_call_the_admin_or_audit_apis() {
    let v = Vault::new().await;
    let grant = v.billing_granted_the_merchant().await;
    let billing = v.billing();
    let grants = format!("/admin/grants/{}/", grant["id"]);

    let answers = [
        billing.get(v.app.url("/admin/users/")),
        billing.post(v.app.url("/admin/users/")).json(&json!({
            "username": "mallory", "password": "a long enough password", "role": "admin",
        })),
        billing.post(
            v.app
                .url(&format!("/admin/users/{}/disable/", v.merchant.username)),
        ),
        billing.get(v.app.url("/admin/services/")),
        billing.post(v.app.url("/admin/services/")).json(&json!({
            "name": "mallory", "identity": "spiffe://payments/mallory",
        })),
        billing.post(v.app.url("/admin/services/billing/disable/")),
        billing.get(v.app.url("/admin/grants/")),
        billing.post(v.app.url("/admin/grants/")).json(&json!({
            "service": "billing", "owner": v.admin.username,
        })),
        billing.delete(v.app.url(&grants)),
        billing.get(v.app.url("/audit/events/")),
        billing.get(v.app.url("/audit/export/")),
        billing.get(v.app.url("/audit/verify/")),
    ];
    let mut refused = 0;
    for req in answers {
        assert_error(
            req.send().await.unwrap(),
            StatusCode::FORBIDDEN,
            SERVICE_FORBIDDEN,
        )
        .await;
        refused += 1;
    }

    assert_eq!(refused, 12);
    let listed = body_of(
        v.app.get("/admin/grants/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["revoked_at"], Value::Null);
}

// ---------------------------------------------------------------------------------------
// Allowlists, policy and the audit trail.

#[tokio::test]
async fn a_service_calling_from_outside_its_allowlist_is_refused_and_audited() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let registered = v
        .register(json!({
            "name": "billing",
            "identity": SERVICE_URI,
            "allowed_cidrs": ["10.0.0.0/8"],
        }))
        .await;
    v.grant("billing", &v.merchant, None, None).await;
    let cert = v.pki.client(ClientCert::Valid);
    let billing = v.pki.https_client(Some(&cert));

    let by_id = v.reveal(&billing, id).await;
    let by_lookup = v
        .lookup(&billing, &v.merchant.username, "mpesa", "sandbox")
        .await;

    assert_eq!(registered["allowed_cidrs"], json!(["10.0.0.0/8"]));
    assert_error(by_id, StatusCode::FORBIDDEN, OUTSIDE_ALLOWLIST).await;
    assert_error(by_lookup, StatusCode::FORBIDDEN, OUTSIDE_ALLOWLIST).await;
    let entry = format!(
        "service|billing|{}|127.0.0.1|{}|denied|outside_allowlist",
        registered["id"],
        fingerprint(&cert)
    );
    assert_eq!(
        v.app.sql_lines(
            "SELECT actor_kind || '|' || COALESCE(actor_name, '') || '|' \
             || CAST(COALESCE(actor_id, 0) AS TEXT) || '|' || COALESCE(source_ip, '') || '|' \
             || COALESCE(cert_fingerprint, '') || '|' || outcome || '|' \
             || COALESCE(reason, '') AS line \
             FROM audit_log WHERE action = 'service.authenticate' ORDER BY seq"
        ),
        [entry.clone(), entry]
    );
    assert_eq!(
        v.app.sql_lines(
            "SELECT CAST(COUNT(*) AS TEXT) AS line FROM audit_log \
             WHERE action = 'credential.reveal' AND outcome = 'success'"
        ),
        ["0"]
    );
}

#[tokio::test]
async fn a_service_calling_from_inside_its_allowlist_reveals() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let registered = v
        .register(json!({
            "name": "billing",
            "identity": SERVICE_URI,
            "allowed_cidrs": ["10.0.0.0/8", "127.0.0.0/8"],
        }))
        .await;
    v.grant("billing", &v.merchant, None, None).await;
    let billing = v.billing();

    let res = v.reveal(&billing, id).await;

    assert_eq!(
        registered["allowed_cidrs"],
        json!(["10.0.0.0/8", "127.0.0.0/8"])
    );
    assert_revealed(res, id, &v.merchant, "mpesa", "sandbox").await;
}

#[tokio::test]
async fn with_owner_reveal_off_the_owner_is_refused_but_a_granted_service_still_reveals() {
    let v = Vault::with(&[("HAZINA_OWNER_REVEAL", "false")]).await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();

    let owner = v.app.get(&reveal_path(id), &v.merchant.access).await;
    let service = v.reveal(&billing, id).await;

    assert_error(
        owner,
        StatusCode::FORBIDDEN,
        "Revealing private keys is reserved for services on this vault",
    )
    .await;
    assert_revealed(service, id, &v.merchant, "mpesa", "sandbox").await;
}

#[tokio::test]
async fn a_services_reveal_is_audited_with_its_name_and_certificate_fingerprint() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let registered = v.register_billing().await;
    v.grant("billing", &v.merchant, None, None).await;
    let cert = v.pki.client(ClientCert::Valid);
    let billing = v.pki.https_client(Some(&cert));

    let res = v.reveal(&billing, id).await;
    assert_eq!(res.status(), StatusCode::OK);

    assert_eq!(
        v.app.sql_lines(
            "SELECT actor_kind || '|' || COALESCE(actor_name, '') || '|' \
             || CAST(COALESCE(actor_id, 0) AS TEXT) || '|' || COALESCE(cert_fingerprint, '') \
             || '|' || CAST(COALESCE(credential_id, 0) AS TEXT) || '|' \
             || CAST(COALESCE(owner_id, 0) AS TEXT) || '|' || COALESCE(provider, '') || '|' \
             || COALESCE(environment, '') || '|' || outcome AS line \
             FROM audit_log WHERE action = 'credential.reveal' ORDER BY seq"
        ),
        [format!(
            "service|billing|{}|{}|{id}|{}|mpesa|sandbox|success",
            registered["id"],
            fingerprint(&cert),
            v.merchant.id
        )]
    );
}

#[tokio::test]
async fn a_services_refused_reveal_is_audited_as_denied() {
    let v = Vault::new().await;
    let stranger = v.app.user().await;
    let theirs = v.credential(&stranger, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();

    let res = v.reveal(&billing, theirs).await;

    assert_error(res, StatusCode::NOT_FOUND, NOT_FOUND).await;
    assert_eq!(
        v.app.sql_lines(
            "SELECT actor_kind || '|' || COALESCE(actor_name, '') || '|' \
             || CAST(COALESCE(credential_id, 0) AS TEXT) || '|' || outcome || '|' \
             || COALESCE(reason, '') AS line \
             FROM audit_log WHERE action = 'credential.reveal' ORDER BY seq"
        ),
        [format!(
            "service|billing|{theirs}|denied|not_found_or_not_owner"
        )]
    );
}

#[tokio::test]
async fn every_refused_lookup_is_audited_as_denied() {
    let v = Vault::new().await;
    v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();

    // An owner no user has, and one no user could have: both refused alike (SPEC §4: every
    // denial is recorded).
    for owner in ["nobody-here", "x"] {
        let res = v.lookup(&billing, owner, "mpesa", "sandbox").await;
        assert_error(res, StatusCode::NOT_FOUND, NOT_FOUND).await;
    }

    assert_eq!(
        v.app.sql_lines(
            "SELECT actor_kind || '|' || COALESCE(actor_name, '') || '|' || outcome || '|' \
             || COALESCE(reason, '') AS line \
             FROM audit_log WHERE action = 'credential.reveal' ORDER BY seq"
        ),
        ["service|billing|denied|not_found_or_not_owner"; 2]
    );
}

#[tokio::test]
async fn a_services_attempt_on_the_owners_api_is_audited_as_denied() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let cert = v.pki.client(ClientCert::Valid);
    let billing = v.pki.https_client(Some(&cert));

    let res = billing
        .delete(v.app.url(&format!("/payments/credentials/{id}/")))
        .send()
        .await
        .unwrap();

    assert_error(res, StatusCode::FORBIDDEN, SERVICE_FORBIDDEN).await;
    // SPEC §4: every denial is recorded, with the certificate that made it.
    assert_eq!(
        v.app.sql_lines(&format!(
            "SELECT outcome || '|' || COALESCE(source_ip, '') AS line FROM audit_log \
             WHERE cert_fingerprint = '{}' ORDER BY seq",
            fingerprint(&cert)
        )),
        ["denied|127.0.0.1"]
    );
}

#[tokio::test]
async fn a_non_admins_denied_listing_is_not_recorded_as_a_denied_creation() {
    let v = Vault::new().await;

    for path in ["/admin/users/", "/admin/services/", "/admin/grants/"] {
        let res = v.app.get(path, &v.merchant.access).await;
        assert_error(res, StatusCode::FORBIDDEN, ADMINS_ONLY).await;
    }

    // Each attempt is recorded as denied, but not as an attempt to create something.
    assert_eq!(
        v.app.sql_lines(
            "SELECT CAST(COUNT(*) AS TEXT) AS line FROM audit_log \
             WHERE outcome = 'denied' AND reason = 'role_forbidden'"
        ),
        ["3"]
    );
    assert_eq!(
        v.app.sql_lines(
            "SELECT action AS line FROM audit_log \
             WHERE action IN ('admin.user_create', 'admin.service_create', 'admin.grant_create') \
             AND actor_kind <> 'system'"
        ),
        Vec::<String>::new()
    );
}

// ---------------------------------------------------------------------------------------
// The admin API.

fn timestamp_now(app: &TestApp) -> String {
    rfc3339(app.clock.now())
}

/// Takes the `id` out of an object, asserting it is a positive integer.
fn without_id(mut body: Value) -> (i64, Value) {
    let id = body
        .as_object_mut()
        .unwrap()
        .remove("id")
        .and_then(|v| v.as_i64())
        .unwrap_or_else(|| panic!("an integer id in {body}"));
    assert!(id > 0, "{id}");
    (id, body)
}

#[tokio::test]
async fn an_admin_creates_lists_and_disables_users() {
    let v = Vault::new().await;
    let now = timestamp_now(&v.app);

    let created = v
        .admin_post(
            "/admin/users/",
            json!({ "username": "carol", "password": "a long enough password", "role": "user" }),
        )
        .await;
    let (id, created) = without_id(body_of(created, StatusCode::CREATED).await);
    let login = v.app.login("carol", "a long enough password").await;
    let carol_token = body_of(login, StatusCode::OK).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let listed = body_of(
        v.app.get("/admin/users/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;
    let disabled = v.admin_post("/admin/users/carol/disable/", json!({})).await;

    assert_eq!(
        created,
        json!({ "username": "carol", "role": "user", "is_disabled": false, "created_at": now })
    );
    let carol = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "carol")
        .unwrap_or_else(|| panic!("carol in {listed}"));
    assert_eq!(
        carol,
        &json!({ "id": id, "username": "carol", "role": "user", "is_disabled": false, "created_at": now })
    );
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    assert_eq!(
        body_of(disabled, StatusCode::OK).await,
        json!({ "message": "User disabled; their sessions no longer work" })
    );
    assert_error(
        v.app.get("/payments/credentials/", &carol_token).await,
        StatusCode::UNAUTHORIZED,
        UNAUTHENTICATED,
    )
    .await;
    assert_error(
        v.app.login("carol", "a long enough password").await,
        StatusCode::UNAUTHORIZED,
        "Invalid username or password",
    )
    .await;
    let relisted = body_of(
        v.app.get("/admin/users/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;
    let carol = relisted
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "carol")
        .unwrap();
    assert_eq!(carol["is_disabled"], true);
}

#[tokio::test]
async fn an_admin_registers_lists_and_disables_services() {
    let v = Vault::new().await;
    let now = timestamp_now(&v.app);

    let plain = v.register_billing().await;
    let fenced = v
        .register(json!({
            "name": "ledger",
            "identity": "Ledger.Payments.Internal",
            "allowed_cidrs": ["10.0.0.0/8", "2001:db8::/32"],
        }))
        .await;
    let listed = body_of(
        v.app.get("/admin/services/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;
    let disabled = v
        .admin_post("/admin/services/ledger/disable/", json!({}))
        .await;

    let (billing_id, plain) = without_id(plain);
    let (ledger_id, fenced) = without_id(fenced);
    assert_eq!(
        plain,
        json!({
            "name": "billing",
            "identity": SERVICE_URI,
            "is_enabled": true,
            "allowed_cidrs": [],
            "created_at": now,
        })
    );
    assert_eq!(
        fenced,
        json!({
            "name": "ledger",
            "identity": "ledger.payments.internal",
            "is_enabled": true,
            "allowed_cidrs": ["10.0.0.0/8", "2001:db8::/32"],
            "created_at": now,
        })
    );
    assert_eq!(
        listed,
        json!([
            {
                "id": billing_id, "name": "billing", "identity": SERVICE_URI,
                "is_enabled": true, "allowed_cidrs": [], "created_at": now,
            },
            {
                "id": ledger_id, "name": "ledger", "identity": "ledger.payments.internal",
                "is_enabled": true, "allowed_cidrs": ["10.0.0.0/8", "2001:db8::/32"],
                "created_at": now,
            },
        ])
    );
    assert_eq!(
        body_of(disabled, StatusCode::OK).await,
        json!({
            "id": ledger_id, "name": "ledger", "identity": "ledger.payments.internal",
            "is_enabled": false, "allowed_cidrs": ["10.0.0.0/8", "2001:db8::/32"],
            "created_at": now,
        })
    );
}

#[tokio::test]
async fn an_admin_creates_lists_and_revokes_grants() {
    let v = Vault::new().await;
    let now = timestamp_now(&v.app);
    v.register_billing().await;

    let broad = v.grant("billing", &v.merchant, None, None).await;
    let narrow = v
        .grant("billing", &v.merchant, Some("mpesa"), Some("live"))
        .await;
    v.app.clock.advance(60);
    let later = timestamp_now(&v.app);
    let revoked = v
        .app
        .delete(&format!("/admin/grants/{}/", broad["id"]), &v.admin.access)
        .await;
    let listed = body_of(
        v.app.get("/admin/grants/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;

    let (broad_id, broad) = without_id(broad);
    let (narrow_id, narrow) = without_id(narrow);
    let owner = v.merchant.username.as_str();
    assert_eq!(
        broad,
        json!({
            "service": "billing", "owner": owner, "provider": null, "environment": null,
            "created_at": now, "revoked_at": null, "operations": ["reveal"],
        })
    );
    assert_eq!(
        narrow,
        json!({
            "service": "billing", "owner": owner, "provider": "mpesa", "environment": "live",
            "created_at": now, "revoked_at": null, "operations": ["reveal"],
        })
    );
    assert_eq!(
        body_of(revoked, StatusCode::OK).await,
        json!({ "message": "Grant revoked", "id": broad_id })
    );
    let mut listed = listed.as_array().unwrap().clone();
    listed.sort_by_key(|g| g["provider"].is_string());
    assert_eq!(
        listed,
        [
            json!({
                "id": broad_id, "service": "billing", "owner": owner, "provider": null,
                "environment": null, "created_at": now, "revoked_at": later,
                "operations": ["reveal"],
            }),
            json!({
                "id": narrow_id, "service": "billing", "owner": owner, "provider": "mpesa",
                "environment": "live", "created_at": now, "revoked_at": null,
                "operations": ["reveal"],
            }),
        ]
    );
}

#[tokio::test]
async fn admin_changes_are_audited_as_the_admin_who_made_them() {
    let v = Vault::new().await;

    let grant = v.billing_granted_the_merchant().await;
    let revoked = v
        .app
        .delete(&format!("/admin/grants/{}/", grant["id"]), &v.admin.access)
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    let disabled = v
        .admin_post("/admin/services/billing/disable/", json!({}))
        .await;
    assert_eq!(disabled.status(), StatusCode::OK);

    assert_eq!(
        v.app.sql_lines(
            "SELECT action || '|' || actor_kind || '|' || COALESCE(actor_name, '') || '|' \
             || outcome AS line FROM audit_log WHERE action LIKE 'admin.%' \
             AND actor_kind <> 'system' ORDER BY seq"
        ),
        [
            "admin.service_create",
            "admin.grant_create",
            "admin.grant_revoke",
            "admin.service_disable",
        ]
        .map(|a| format!("{a}|user|{}|success", v.admin.username))
    );
}

#[tokio::test]
async fn users_and_auditors_get_403_on_every_admin_route() {
    let v = Vault::new().await;
    let grant = v.billing_granted_the_merchant().await;
    let auditor = v.app.user_with_role(Role::Auditor).await;
    let grant_path = format!("/admin/grants/{}/", grant["id"]);
    let user_body =
        json!({ "username": "mallory", "password": "a long enough password", "role": "admin" });
    let service_body = json!({ "name": "mallory", "identity": "spiffe://payments/mallory" });
    let grant_body = json!({ "service": "billing", "owner": auditor.username });

    let mut refused = 0;
    for caller in [&v.merchant, &auditor] {
        let t = caller.access.as_str();
        for res in [
            v.app.get("/admin/users/", t).await,
            v.app.post("/admin/users/", t, &user_body).await,
            v.app
                .post_empty(&format!("/admin/users/{}/disable/", v.admin.username), t)
                .await,
            v.app.get("/admin/services/", t).await,
            v.app.post("/admin/services/", t, &service_body).await,
            v.app
                .post_empty("/admin/services/billing/disable/", t)
                .await,
            v.app.get("/admin/grants/", t).await,
            v.app.post("/admin/grants/", t, &grant_body).await,
            v.app.delete(&grant_path, t).await,
        ] {
            assert_error(res, StatusCode::FORBIDDEN, ADMINS_ONLY).await;
            refused += 1;
        }
    }

    assert_eq!(refused, 18);
    // Nothing changed.
    assert_eq!(
        v.app
            .login("mallory", "a long enough password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let services = body_of(
        v.app.get("/admin/services/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (
            services.as_array().unwrap().len(),
            &services[0]["is_enabled"]
        ),
        (1, &json!(true))
    );
    let grants = body_of(
        v.app.get("/admin/grants/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(grants.as_array().unwrap().len(), 1, "{grants}");
    assert_eq!(grants[0]["revoked_at"], Value::Null);
}

#[tokio::test]
async fn the_admin_api_refuses_invalid_input_with_400() {
    let v = Vault::new().await;
    v.register_billing().await;
    let owner = v.merchant.username.as_str();
    let identity_rule = "identity must be a certificate SAN URI (scheme://...), a DNS name, or sha256:<64 hex digits>";
    let cidr_rule = "allowed_cidrs must be CIDR ranges such as 10.0.0.0/8";

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/admin/services/",
            json!({ "name": "ledger", "identity": "has space" }),
            identity_rule,
        ),
        (
            "/admin/services/",
            json!({ "name": "ledger", "identity": "sha256:abc" }),
            identity_rule,
        ),
        (
            "/admin/services/",
            json!({ "name": "ledger", "identity": "spiffe://payments/ledger", "allowed_cidrs": ["10.0.0.0/33"] }),
            cidr_rule,
        ),
        (
            "/admin/services/",
            json!({ "name": "ledger", "identity": "spiffe://payments/ledger", "allowed_cidrs": ["everywhere"] }),
            cidr_rule,
        ),
        (
            "/admin/services/",
            json!({ "name": "x", "identity": "spiffe://payments/ledger" }),
            "service name must be 3 to 100 characters of letters, digits and .-_",
        ),
        (
            "/admin/services/",
            json!({ "name": "ledger", "identity": "spiffe://payments/ledger", "is_enabled": false }),
            "Unknown field: is_enabled",
        ),
        (
            "/admin/grants/",
            json!({ "service": "billing", "owner": owner, "provider": "paypal" }),
            "Invalid provider. Choose one of: kopokopo, instasend, jpay, mpesa, pagamio",
        ),
        (
            "/admin/grants/",
            json!({ "service": "billing", "owner": owner, "environment": "staging" }),
            "Invalid environment. Choose one of: sandbox, live",
        ),
        (
            "/admin/grants/",
            json!({ "service": "billing" }),
            "Missing required field: owner",
        ),
        (
            "/admin/users/",
            json!({ "username": "carol", "password": "a long enough password", "role": "root" }),
            "role must be one of: user, admin, auditor",
        ),
        (
            "/admin/users/",
            json!({ "username": "carol", "password": "short", "role": "user" }),
            "password must be 12 to 1024 characters long",
        ),
        (
            "/admin/users/",
            json!({ "username": "no spaces allowed", "password": "a long enough password", "role": "user" }),
            "username must be 3 to 150 characters of letters, digits and @.+-_",
        ),
    ];
    for (path, body, message) in cases {
        assert_error(
            v.admin_post(path, body).await,
            StatusCode::BAD_REQUEST,
            message,
        )
        .await;
    }

    // Nothing was created.
    let services = body_of(
        v.app.get("/admin/services/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(services.as_array().unwrap().len(), 1, "{services}");
    let grants = body_of(
        v.app.get("/admin/grants/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(grants, json!([]));
}

#[tokio::test]
async fn duplicate_users_and_services_answer_409() {
    let v = Vault::new().await;
    v.register_billing().await;

    let same_user = v
        .admin_post(
            "/admin/users/",
            json!({ "username": v.merchant.username, "password": "a long enough password", "role": "user" }),
        )
        .await;
    let same_name = v
        .admin_post(
            "/admin/services/",
            json!({ "name": "billing", "identity": "spiffe://payments/other" }),
        )
        .await;
    let same_identity = v
        .admin_post(
            "/admin/services/",
            json!({ "name": "other", "identity": SERVICE_URI }),
        )
        .await;

    assert_error(
        same_user,
        StatusCode::CONFLICT,
        "A user with this username already exists",
    )
    .await;
    for res in [same_name, same_identity] {
        assert_error(
            res,
            StatusCode::CONFLICT,
            "A service with this name or identity already exists",
        )
        .await;
    }
}

#[tokio::test]
async fn the_same_live_grant_twice_answers_409() {
    let v = Vault::new().await;
    v.register_billing().await;
    v.grant("billing", &v.merchant, Some("mpesa"), None).await;

    let again = v
        .admin_post(
            "/admin/grants/",
            json!({ "service": "billing", "owner": v.merchant.username, "provider": "mpesa" }),
        )
        .await;

    // A second, identical live grant would survive the revocation of the first.
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_json_4xx(again).await;
    let grants = body_of(
        v.app.get("/admin/grants/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(grants.as_array().unwrap().len(), 1, "{grants}");
}

#[tokio::test]
async fn unknown_users_services_owners_and_grants_answer_404() {
    let v = Vault::new().await;
    let grant = v.billing_granted_the_merchant().await;
    let revoked = v
        .app
        .delete(&format!("/admin/grants/{}/", grant["id"]), &v.admin.access)
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    let owner = v.merchant.username.as_str();

    let answers = [
        (
            v.admin_post("/admin/users/nobody-here/disable/", json!({}))
                .await,
            "No such user",
        ),
        (
            v.admin_post("/admin/services/nothing/disable/", json!({}))
                .await,
            "No such service",
        ),
        (
            v.admin_post(
                "/admin/grants/",
                json!({ "service": "nothing", "owner": owner }),
            )
            .await,
            "No such service",
        ),
        (
            v.admin_post(
                "/admin/grants/",
                json!({ "service": "billing", "owner": "nobody-here" }),
            )
            .await,
            "No such owner",
        ),
        (
            v.app
                .delete("/admin/grants/4242424242/", &v.admin.access)
                .await,
            "No such live grant",
        ),
        (
            v.app
                .delete("/admin/grants/not-a-number/", &v.admin.access)
                .await,
            "No such live grant",
        ),
        (
            v.app
                .delete(&format!("/admin/grants/{}/", grant["id"]), &v.admin.access)
                .await,
            "No such live grant",
        ),
    ];
    for (res, message) in answers {
        assert_error(res, StatusCode::NOT_FOUND, message).await;
    }
}

// ---------------------------------------------------------------------------------------
// The command line.

/// Runs the `hazina` binary on the app's database and keyring.
async fn hazina(app: &TestApp, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"));
    cmd.args(args)
        .current_dir(app.dir.path())
        .env("HAZINA_DATABASE_URL", app.db.url())
        .env("HAZINA_KEYRING", &app.keyring_path)
        .env_remove("HAZINA_KEYRING_DATA")
        .env_remove("HAZINA_LOG");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Asserts the command succeeded; its standard output.
fn succeeded(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Asserts the command failed with exactly one line on standard error; that line.
fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_owned()
}

#[tokio::test]
async fn the_cli_registers_a_service_and_grants_it_an_owners_keys() {
    let v = Vault::new().await;
    let mpesa = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let kopokopo = v.credential(&v.merchant, "kopokopo", "sandbox").await;
    let owner = v.merchant.username.as_str();

    let created = hazina(
        &v.app,
        &[
            "services",
            "create",
            "--name",
            "billing",
            "--identity",
            SERVICE_URI,
        ],
    )
    .await;
    let granted = hazina(
        &v.app,
        &[
            "grants",
            "create",
            "--service",
            "billing",
            "--owner",
            owner,
            "--provider",
            "mpesa",
        ],
    )
    .await;
    let billing = v.billing();
    let granted_key = v.reveal(&billing, mpesa).await;
    let other_key = v.reveal(&billing, kopokopo).await;

    assert!(
        succeeded(&created).starts_with(&format!(
            "created service `billing` (identity {SERVICE_URI}, id "
        )),
        "{created:?}"
    );
    assert!(
        succeeded(&granted).starts_with(&format!(
            "granted `billing` reveal on `{owner}`'s mpesa credentials, every environment, live included (narrow it with --environment) (grant id "
        )),
        "{granted:?}"
    );
    assert_revealed(granted_key, mpesa, &v.merchant, "mpesa", "sandbox").await;
    assert_like_missing(other_key, &v.missing(&billing).await).await;
    let services = succeeded(&hazina(&v.app, &["services", "list"]).await);
    assert_eq!(
        services,
        format!("billing\t{SERVICE_URI}\tenabled\tany address\n")
    );
    let grants = body_of(
        v.app.get("/admin/grants/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (
            &grants[0]["service"],
            &grants[0]["owner"],
            &grants[0]["provider"],
            &grants[0]["environment"]
        ),
        (
            &json!("billing"),
            &json!(owner),
            &json!("mpesa"),
            &Value::Null
        )
    );
}

/// The grant id in `grants create`'s output.
fn grant_id(stdout: &str) -> String {
    stdout
        .trim_end()
        .rsplit_once("(grant id ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("a grant id in {stdout}"))
        .to_owned()
}

#[tokio::test]
async fn the_cli_lists_and_revokes_grants() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let owner = v.merchant.username.as_str();
    let create = |extra: &'static [&'static str]| {
        let mut args = vec!["grants", "create", "--service", "billing", "--owner", owner];
        args.extend_from_slice(extra);
        args
    };
    succeeded(
        &hazina(
            &v.app,
            &[
                "services",
                "create",
                "--name",
                "billing",
                "--identity",
                SERVICE_URI,
            ],
        )
        .await,
    );
    let broad = grant_id(&succeeded(&hazina(&v.app, &create(&[])).await));
    let narrow = grant_id(&succeeded(
        &hazina(
            &v.app,
            &create(&["--provider", "mpesa", "--environment", "sandbox"]),
        )
        .await,
    ));
    let billing = v.billing();
    let missing = v.missing(&billing).await;

    let revoke_broad = hazina(&v.app, &["grants", "revoke", "--id", &broad]).await;
    let with_narrow = v.reveal(&billing, id).await;
    let revoke_narrow = hazina(&v.app, &["grants", "revoke", "--id", &narrow]).await;
    let with_none = v.reveal(&billing, id).await;
    let listed = succeeded(&hazina(&v.app, &["grants", "list"]).await);

    assert_eq!(succeeded(&revoke_broad), format!("revoked grant {broad}\n"));
    assert_eq!(
        succeeded(&revoke_narrow),
        format!("revoked grant {narrow}\n")
    );
    assert_revealed(with_narrow, id, &v.merchant, "mpesa", "sandbox").await;
    assert_like_missing(with_none, &missing).await;
    let mut lines: Vec<&str> = listed.lines().collect();
    assert_eq!(
        lines.remove(0),
        "ID\tSERVICE\tOWNER\tPROVIDER/ENVIRONMENT\tOPERATIONS\tSTATE"
    );
    lines.sort();
    let mut expected = vec![
        format!("{broad}\tbilling\t{owner}\t*/*\treveal\trevoked"),
        format!("{narrow}\tbilling\t{owner}\tmpesa/sandbox\treveal\trevoked"),
    ];
    expected.sort();
    assert_eq!(lines, expected);
}

#[tokio::test]
async fn a_service_disabled_by_the_cli_is_refused_on_its_next_request() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "sandbox").await;
    v.billing_granted_the_merchant().await;
    let billing = v.billing();
    assert_eq!(v.reveal(&billing, id).await.status(), StatusCode::OK);

    let disabled = hazina(&v.app, &["services", "disable", "--name", "billing"]).await;
    let res = v.reveal(&billing, id).await;

    assert_eq!(
        succeeded(&disabled),
        "disabled service `billing`; its next request is refused\n"
    );
    assert_error(res, StatusCode::FORBIDDEN, UNKNOWN_SERVICE).await;
    assert_eq!(
        succeeded(&hazina(&v.app, &["services", "list"]).await),
        format!("billing\t{SERVICE_URI}\tdisabled\tany address\n")
    );
}

#[tokio::test]
async fn cli_errors_exit_non_zero_with_one_line() {
    let v = Vault::new().await;
    v.register_billing().await;
    let owner = v.merchant.username.as_str();

    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["services", "create", "--name", "billing", "--identity", "spiffe://payments/x"],
            "hazina: error: a service with this name or identity already exists".into(),
        ),
        (
            vec!["services", "create", "--name", "ledger", "--identity", "not an identity"],
            "hazina: error: identity must be a certificate SAN URI (scheme://...), a DNS name, or sha256:<64 hex digits>".into(),
        ),
        (
            vec![
                "services", "create", "--name", "ledger", "--identity", "spiffe://payments/ledger",
                "--allow-cidr", "10.0.0.0/33",
            ],
            "hazina: error: allowed_cidrs must be CIDR ranges such as 10.0.0.0/8".into(),
        ),
        (
            vec!["services", "disable", "--name", "nothing"],
            "hazina: error: no service named `nothing`".into(),
        ),
        (
            vec!["grants", "create", "--service", "nothing", "--owner", owner],
            "hazina: error: No such service".into(),
        ),
        (
            vec!["grants", "create", "--service", "billing", "--owner", "nobody-here"],
            "hazina: error: No such owner".into(),
        ),
        (
            vec!["grants", "create", "--service", "billing", "--owner", owner, "--provider", "paypal"],
            "hazina: error: Invalid provider. Choose one of: kopokopo, instasend, jpay, mpesa, pagamio".into(),
        ),
        (
            vec!["grants", "revoke", "--id", "4242424242"],
            "hazina: error: no live grant with id 4242424242".into(),
        ),
    ];
    for (args, line) in cases {
        let out = hazina(&v.app, &args).await;
        assert_eq!(failed(&out), line, "{args:?}");
    }

    let services = body_of(
        v.app.get("/admin/services/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(services.as_array().unwrap().len(), 1, "{services}");
    assert_eq!(
        body_of(
            v.app.get("/admin/grants/", &v.admin.access).await,
            StatusCode::OK
        )
        .await,
        json!([])
    );
}

// ---------------------------------------------------------------------------------------
// A database writer without the keyring is never obeyed (SPEC §11, issue 11).

fn tampering_count(app: &TestApp) -> usize {
    app.sql_lines(
        "SELECT CAST(seq AS TEXT) AS line FROM audit_log \
         WHERE action = 'integrity.violation' AND reason = 'row_tampered'",
    )
    .len()
}

#[tokio::test]
async fn a_grant_planted_in_the_database_opens_nothing_and_is_audited() {
    let v = Vault::new().await;
    let billing = v.register_billing().await;
    let id = v.credential(&v.merchant, "mpesa", "live").await;
    v.app.sql_execute(&format!(
        "INSERT INTO grants (id, service_id, owner_id, provider, environment, created_at) \
         VALUES (4242, {}, {}, NULL, NULL, 0)",
        billing["id"], v.merchant.id
    ));
    let client = v.billing();
    let (status, bytes) = status_and_bytes(v.reveal(&client, id).await).await;
    assert_eq!(
        (status, bytes),
        v.missing(&client).await,
        "a planted grant was obeyed"
    );
    assert!(tampering_count(&v.app) >= 1);
}

#[tokio::test]
async fn a_grant_widened_in_the_database_opens_nothing() {
    let v = Vault::new().await;
    v.register_billing().await;
    let grant = v
        .grant("billing", &v.merchant, Some("mpesa"), Some("sandbox"))
        .await;
    let live = v.credential(&v.merchant, "mpesa", "live").await;
    let sandbox = v.credential(&v.merchant, "mpesa", "sandbox").await;
    let client = v.billing();
    assert_eq!(v.reveal(&client, sandbox).await.status(), StatusCode::OK);
    v.app.sql_execute(&format!(
        "UPDATE grants SET environment = NULL WHERE id = {}",
        grant["id"]
    ));
    let (status, bytes) = status_and_bytes(v.reveal(&client, live).await).await;
    assert_eq!(
        (status, bytes),
        v.missing(&client).await,
        "a widened grant was obeyed"
    );
    // The edited grant opens nothing at all now, not even what it covered before.
    assert_ne!(v.reveal(&client, sandbox).await.status(), StatusCode::OK);
    assert!(tampering_count(&v.app) >= 1);
}

#[tokio::test]
async fn a_live_credential_flipped_to_sandbox_in_the_database_reveals_nothing() {
    let v = Vault::new().await;
    v.register_billing().await;
    v.grant("billing", &v.merchant, None, Some("sandbox")).await;
    let live = v.credential(&v.merchant, "jpay", "live").await;
    let live_key = key_of(&v.merchant, "jpay", "live");
    v.app.sql_execute(&format!(
        "UPDATE credentials SET environment = 'sandbox' WHERE id = {live}"
    ));
    let client = v.billing();
    for res in [
        v.reveal(&client, live).await,
        v.lookup(&client, &v.merchant.username, "jpay", "sandbox")
            .await,
    ] {
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_ne!(
            status,
            StatusCode::OK,
            "the live key went to a sandbox service"
        );
        assert!(!text.contains(&live_key), "{text}");
    }
    assert!(tampering_count(&v.app) >= 1);
}

#[tokio::test]
async fn a_service_identity_or_flag_edited_in_the_database_is_refused_and_audited() {
    let v = Vault::new().await;
    let ops = v
        .register(json!({ "name": "ops", "identity": "spiffe://payments/ops" }))
        .await;
    v.grant("ops", &v.merchant, None, None).await;
    let id = v.credential(&v.merchant, "pagamio", "live").await;
    // The billing certificate's identity written over another service's row.
    v.app.sql_execute(&format!(
        "UPDATE services SET identity = '{SERVICE_URI}' WHERE id = {}",
        ops["id"]
    ));
    let client = v.billing();
    let res = v.reveal(&client, id).await;
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "an edited identity was obeyed"
    );
    assert_error(res, StatusCode::FORBIDDEN, UNKNOWN_SERVICE).await;
    assert!(tampering_count(&v.app) >= 1);

    // A disabled service switched back on in the database stays off.
    let v = Vault::new().await;
    v.billing_granted_the_merchant().await;
    let id = v.credential(&v.merchant, "pagamio", "live").await;
    let client = v.billing();
    assert_eq!(v.reveal(&client, id).await.status(), StatusCode::OK);
    let res = v
        .app
        .post_empty("/admin/services/billing/disable/", &v.admin.access)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    v.app.sql_execute(&format!(
        "UPDATE services SET is_enabled = {} WHERE name = 'billing'",
        match backend() {
            Backend::Sqlite => "1",
            Backend::Postgres => "true",
        }
    ));
    assert_eq!(
        v.reveal(&client, id).await.status(),
        StatusCode::FORBIDDEN,
        "a re-enabled service was obeyed"
    );
}

// ---------------------------------------------------------------------------------------
// Certificate revocation and identity kinds (SPEC §11, issue 11).

const REVOKED: &str = "This client certificate has been revoked";

#[tokio::test]
async fn a_certificate_revoked_with_the_cli_or_the_api_is_refused_on_its_next_request() {
    let v = Vault::new().await;
    v.billing_granted_the_merchant().await;
    let id = v.credential(&v.merchant, "mpesa", "live").await;
    let cert = v.pki.client(ClientCert::Valid);
    let client = v.pki.https_client(Some(&cert));
    assert_eq!(v.reveal(&client, id).await.status(), StatusCode::OK);

    let fp = fingerprint(&cert);
    let out = hazina(
        &v.app,
        &[
            "services",
            "revoke-certificate",
            "--fingerprint",
            &format!("sha256:{fp}"),
        ],
    )
    .await;
    succeeded(&out);
    assert_error(v.reveal(&client, id).await, StatusCode::FORBIDDEN, REVOKED).await;
    assert_error(
        v.lookup(&client, &v.merchant.username, "mpesa", "live")
            .await,
        StatusCode::FORBIDDEN,
        REVOKED,
    )
    .await;
    let refused = v.app.sql_lines(
        "SELECT COALESCE(cert_fingerprint, '-') AS line FROM audit_log \
         WHERE reason = 'certificate_revoked'",
    );
    assert!(refused.contains(&fp), "{refused:?}");

    // Another certificate of the same service keeps working; the API revokes it too.
    let other = v.pki.client_with_uri(SERVICE_URI, "second-billing");
    let second = v.pki.https_client(Some(&other));
    assert_eq!(v.reveal(&second, id).await.status(), StatusCode::OK);
    let res = v
        .admin_post(
            "/admin/certificates/revoked/",
            json!({ "fingerprint": fingerprint(&other).to_uppercase() }),
        )
        .await;
    let body = body_of(res, StatusCode::OK).await;
    assert_eq!(body["fingerprint"], fingerprint(&other));
    assert_error(v.reveal(&second, id).await, StatusCode::FORBIDDEN, REVOKED).await;
    let listed = body_of(
        v.app
            .get("/admin/certificates/revoked/", &v.admin.access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    // Bad fingerprints are a 400, never a 5xx.
    for bad in ["", "sha256:", "abc", &"g".repeat(64)] {
        let res = v
            .admin_post(
                "/admin/certificates/revoked/",
                json!({ "fingerprint": bad }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad:?}");
    }
}

#[tokio::test]
async fn a_certificate_in_the_client_crl_is_refused_and_a_new_crl_applies_without_a_restart() {
    let pki = TestPki::new();
    let crl_path = pki.dir.path().join("clients.crl");
    let revoked = pki.client(ClientCert::Valid);
    std::fs::write(&crl_path, pki.crl_pem(&[], 1)).unwrap();
    let crl = crl_path.display().to_string();
    let app = spawn_tls_app_with(
        &pki,
        ClientCerts::Optional,
        &[("HAZINA_TLS_CLIENT_CRL", crl.as_str())],
    )
    .await;
    let admin = app.user_with_role(Role::Admin).await;
    let merchant = app.user().await;
    let body = json!({ "name": "billing", "identity": SERVICE_URI });
    assert_eq!(
        app.post("/admin/services/", &admin.access, &body)
            .await
            .status(),
        StatusCode::CREATED
    );
    let grant = json!({ "service": "billing", "owner": merchant.username });
    assert_eq!(
        app.post("/admin/grants/", &admin.access, &grant)
            .await
            .status(),
        StatusCode::CREATED
    );
    let created = app
        .create_credential(&merchant, "jpay", "live", "jpay-live-secret-0001")
        .await;
    let path = reveal_path(created["id"].as_i64().unwrap());
    // A fresh client (new connection) per request: the CRL is checked per connection.
    let reveal = || async {
        let client = pki.https_client(Some(&revoked));
        client.get(app.url(&path)).send().await.unwrap()
    };
    assert_eq!(reveal().await.status(), StatusCode::OK);

    // The CA revokes the certificate: the next connection is refused, no restart.
    std::fs::write(&crl_path, pki.crl_pem(&[&revoked], 2)).unwrap();
    let res = reveal().await;
    assert_error(res, StatusCode::FORBIDDEN, REVOKED).await;

    // A CRL file that turns unusable keeps the last good one in force.
    std::fs::write(&crl_path, "not a CRL").unwrap();
    assert_eq!(reveal().await.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_uri_that_reads_like_another_services_fingerprint_identifies_nobody() {
    let v = Vault::new().await;
    // `ops` is registered by its certificate's fingerprint.
    let ops_cert = v.pki.client(ClientCert::NoSan);
    let ops_fp = fingerprint(&ops_cert);
    v.register(json!({ "name": "ops", "identity": format!("sha256:{ops_fp}") }))
        .await;
    v.grant("ops", &v.merchant, None, None).await;
    let id = v.credential(&v.merchant, "kopokopo", "live").await;
    let ops = v.pki.https_client(Some(&ops_cert));
    assert_eq!(v.reveal(&ops, id).await.status(), StatusCode::OK);

    // Another certificate whose URI SAN spells `ops`'s fingerprint identity is not `ops`.
    let forged = v
        .pki
        .client_with_uri(&format!("sha256:{ops_fp}"), "looks-like-ops");
    let client = v.pki.https_client(Some(&forged));
    let res = v.reveal(&client, id).await;
    assert_ne!(
        res.status(),
        StatusCode::OK,
        "a look-alike URI was taken for a fingerprint"
    );
    assert!(res.status().is_client_error());
}

/// What a grant naming `stk-password` says (SPEC §14).
const STK_PASSWORD_WARNING: &str =
    "stk-password discloses the M-Pesa passkey: the password is base64(shortcode + passkey + timestamp)";

#[tokio::test]
async fn a_grant_naming_stk_password_says_in_its_answer_and_listing_that_it_discloses_the_passkey()
{
    let v = Vault::new().await;
    v.register_billing().await;

    let stk = v
        .admin_post(
            "/admin/grants/",
            json!({
                "service": "billing", "owner": v.merchant.username, "provider": "mpesa",
                "operations": ["reveal", "stk-password"],
            }),
        )
        .await;
    let other = v
        .admin_post(
            "/admin/grants/",
            json!({
                "service": "billing", "owner": v.merchant.username, "provider": "kopokopo",
                "operations": ["webhook-verify", "access-token"],
            }),
        )
        .await;
    let listed = body_of(
        v.app.get("/admin/grants/", &v.admin.access).await,
        StatusCode::OK,
    )
    .await;

    let stk = body_of(stk, StatusCode::CREATED).await;
    assert_eq!(stk["warnings"], json!([STK_PASSWORD_WARNING]));
    let other = body_of(other, StatusCode::CREATED).await;
    assert!(other.get("warnings").is_none(), "{other}");
    let listed_stk: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["id"] == stk["id"])
        .collect();
    assert_eq!(listed_stk, [&stk]);
}

#[tokio::test]
async fn the_cli_warns_on_stderr_when_a_grant_names_stk_password() {
    let v = Vault::new().await;
    v.register_billing().await;
    let owner = v.merchant.username.as_str();
    let grant = |provider: &'static str, operation: &'static str| {
        [
            "grants",
            "create",
            "--service",
            "billing",
            "--owner",
            owner,
            "--provider",
            provider,
            "--operation",
            operation,
        ]
    };

    let stk = hazina(&v.app, &grant("mpesa", "stk-password")).await;
    let verify = hazina(&v.app, &grant("kopokopo", "webhook-verify")).await;

    succeeded(&stk);
    assert_eq!(
        String::from_utf8_lossy(&stk.stderr).trim_end(),
        format!("hazina: warning: {STK_PASSWORD_WARNING}")
    );
    succeeded(&verify);
    assert_eq!(String::from_utf8_lossy(&verify.stderr), "");
}

// ---------------------------------------------------------------------------------------
// Integrity, second pass (issue 29, SPEC §14): an older genuine row written back, or a
// revocation deleted, gives nothing back.

/// `(mac hex, generation)` of one row, to write back later.
fn saved_mac(app: &TestApp, table: &str, id: i64) -> (String, String) {
    let hex = match backend() {
        Backend::Sqlite => "lower(hex(mac))",
        Backend::Postgres => "encode(mac, 'hex')",
    };
    let line = app.sql_lines(&format!(
        "SELECT {hex} || '|' || CAST(generation AS TEXT) AS line FROM {table} WHERE id = {id}"
    ));
    let (mac, generation) = line[0].split_once('|').unwrap();
    (mac.to_owned(), generation.to_owned())
}

fn blob(hex: &str) -> String {
    match backend() {
        Backend::Sqlite => format!("X'{hex}'"),
        Backend::Postgres => format!("decode('{hex}', 'hex')"),
    }
}

fn replays_audited(app: &TestApp) -> usize {
    app.sql_lines(
        "SELECT reason AS line FROM audit_log WHERE action = 'integrity.violation' \
         AND reason = 'row_replayed'",
    )
    .len()
}

#[tokio::test]
async fn a_grant_written_back_after_its_revocation_stays_revoked_and_is_audited_as_replayed() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "live").await;
    let grant = v.billing_granted_the_merchant().await;
    let grant_id = grant["id"].as_i64().unwrap();
    let billing = v.billing();
    assert_eq!(v.reveal(&billing, id).await.status(), StatusCode::OK);
    let (mac, generation) = saved_mac(&v.app, "grants", grant_id);
    let missing = v.missing(&billing).await;

    let revoked = v
        .app
        .delete(&format!("/admin/grants/{grant_id}/"), &v.admin.access)
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    v.app.sql_execute(&format!(
        "UPDATE grants SET revoked_at = NULL, mac = {}, generation = {generation} WHERE id = {grant_id}",
        blob(&mac)
    ));

    assert_like_missing(v.reveal(&billing, id).await, &missing).await;
    assert!(replays_audited(&v.app) >= 1, "the replay was not audited");
}

#[tokio::test]
async fn a_service_written_back_after_it_was_disabled_stays_disabled() {
    let v = Vault::new().await;
    let id = v.credential(&v.merchant, "mpesa", "live").await;
    let service = v.register_billing().await;
    v.grant("billing", &v.merchant, None, None).await;
    let service_id = service["id"].as_i64().unwrap();
    let billing = v.billing();
    assert_eq!(v.reveal(&billing, id).await.status(), StatusCode::OK);
    let (mac, generation) = saved_mac(&v.app, "services", service_id);

    let disabled = v
        .admin_post("/admin/services/billing/disable/", json!({}))
        .await;
    assert_eq!(disabled.status(), StatusCode::OK);
    v.app.sql_execute(&format!(
        "UPDATE services SET is_enabled = {}, mac = {}, generation = {generation} WHERE id = {service_id}",
        match backend() {
            Backend::Sqlite => "1",
            Backend::Postgres => "true",
        },
        blob(&mac)
    ));

    assert_error(
        v.reveal(&billing, id).await,
        StatusCode::FORBIDDEN,
        UNKNOWN_SERVICE,
    )
    .await;
    assert!(replays_audited(&v.app) >= 1, "the replay was not audited");
}

#[tokio::test]
async fn a_deleted_certificate_revocation_still_refuses_the_certificate() {
    let v = Vault::new().await;
    v.billing_granted_the_merchant().await;
    let id = v.credential(&v.merchant, "mpesa", "live").await;
    let cert = v.pki.client(ClientCert::Valid);
    let client = v.pki.https_client(Some(&cert));
    let res = v
        .admin_post(
            "/admin/certificates/revoked/",
            json!({ "fingerprint": fingerprint(&cert) }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_error(v.reveal(&client, id).await, StatusCode::FORBIDDEN, REVOKED).await;

    assert_eq!(v.app.sql_execute("DELETE FROM revoked_certificates"), 1);
    assert_error(v.reveal(&client, id).await, StatusCode::FORBIDDEN, REVOKED).await;
}
