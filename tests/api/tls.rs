//! HTTPS and mutual TLS (SPEC §5, §7): who may complete a handshake, and that the API works
//! over it. The identity a verified certificate yields is unit-tested in `src/tls.rs`.

use reqwest::StatusCode;

use crate::pki::{openssl_probe, spawn_tls_app, ClientCert, ClientCerts, TestPki};

/// Every error in a reqwest error's source chain, for asserting *why* a request failed.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(" / ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[tokio::test]
async fn healthz_answers_over_tls() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::NotRequested).await;

    let res = app.client.get(app.url("/healthz")).send().await.unwrap();

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "status": "ok" }));
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::NotRequested).await;

    let res = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", app.port))
        .send()
        .await;

    assert!(res.is_err(), "plain HTTP got an answer: {res:?}");
}

#[tokio::test]
async fn every_https_response_carries_x_content_type_options() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::Optional).await;
    let user = app.user().await;

    let responses = [
        app.client.get(app.url("/healthz")).send().await.unwrap(),
        app.get("/payments/credentials/", &user.access).await,
        app.get("/payments/credentials/", "not-a-token").await,
        app.get("/no/such/path/", &user.access).await,
        app.client
            .patch(app.url("/payments/credentials/"))
            .send()
            .await
            .unwrap(),
    ];

    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 200, 401, 404, 405]);
    for res in &responses {
        assert_eq!(
            res.headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{} has no X-Content-Type-Options",
            res.status()
        );
    }
}

#[tokio::test]
async fn a_users_jwt_works_over_https_without_a_client_certificate_when_certificates_are_optional()
{
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::Optional).await;
    let user = app.user().await;
    app.create_credential(&user, "kopokopo", "sandbox", "a-private-key-0123")
        .await;

    let res = app.get("/payments/credentials/", &user.access).await;

    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value = res.json().await.unwrap();
    let listed = body.as_array().unwrap_or_else(|| panic!("a list: {body}"));
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["provider"], "kopokopo");
}

#[tokio::test]
async fn a_connection_without_a_client_certificate_is_refused_when_one_is_required() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::Required).await;

    let res = app.client.get(app.url("/healthz")).send().await;

    let err = res.expect_err("a certificate-less connection got an answer");
    let chain = error_chain(&err);
    assert!(
        chain.contains("CertificateRequired") || chain.contains("HandshakeFailure"),
        "{chain}"
    );
}

#[tokio::test]
async fn a_valid_client_certificate_completes_the_handshake_when_one_is_required() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::Required).await;
    let client = pki.https_client(Some(&pki.client(ClientCert::Valid)));

    let res = client.get(app.url("/healthz")).send().await.unwrap();

    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn client_certificates_with_only_a_dns_name_or_no_san_complete_the_handshake() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::Required).await;

    for kind in [ClientCert::DnsOnly, ClientCert::NoSan] {
        let client = pki.https_client(Some(&pki.client(kind)));
        let res = client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{kind:?}");
    }
}

#[tokio::test]
async fn a_client_certificate_from_a_foreign_ca_fails_the_handshake_even_when_optional() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::Optional).await;
    let client = pki.https_client(Some(&pki.client(ClientCert::ForeignCa)));

    let res = client.get(app.url("/healthz")).send().await;

    let err = res.expect_err("a foreign CA's certificate got an answer");
    let chain = error_chain(&err);
    assert!(
        chain.contains("UnknownCA") || chain.contains("BadCertificate"),
        "{chain}"
    );
}

#[tokio::test]
async fn an_expired_client_certificate_fails_the_handshake_even_when_optional() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::Optional).await;
    let client = pki.https_client(Some(&pki.client(ClientCert::Expired)));

    let res = client.get(app.url("/healthz")).send().await;

    let err = res.expect_err("an expired certificate got an answer");
    let chain = error_chain(&err);
    assert!(
        chain.contains("CertificateExpired") || chain.contains("BadCertificate"),
        "{chain}"
    );
}

#[tokio::test]
async fn a_tls_1_2_client_with_a_forward_secret_suite_is_served() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::NotRequested).await;

    let probe = openssl_probe(
        &pki,
        app.port,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    )
    .await;

    assert!(probe.connected, "{}", probe.output);
    assert!(
        probe.output.contains("ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{}",
        probe.output
    );
}

#[tokio::test]
async fn a_tls_1_1_client_is_refused() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::NotRequested).await;

    let probe = openssl_probe(&pki, app.port, &["-tls1_1"]).await;

    assert!(!probe.connected, "{}", probe.output);
    // An alert received from the server (rustls answers `handshake_failure`), not a client
    // that declined to offer TLS 1.1 in the first place.
    assert!(
        probe.output.contains("Protocol  : TLSv1.1"),
        "{}",
        probe.output
    );
    assert!(
        probe.output.contains("alert protocol version")
            || probe.output.contains("alert handshake failure"),
        "the server, not the client, must refuse: {}",
        probe.output
    );
}

#[tokio::test]
async fn a_client_offering_only_non_forward_secret_suites_is_refused() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::NotRequested).await;

    let probe = openssl_probe(
        &pki,
        app.port,
        &[
            "-tls1_2",
            "-cipher",
            "AES128-SHA256:AES128-GCM-SHA256:AES256-GCM-SHA384:@SECLEVEL=0",
        ],
    )
    .await;

    assert!(!probe.connected, "{}", probe.output);
    assert!(
        probe.output.contains("alert handshake failure"),
        "the server, not the client, must refuse: {}",
        probe.output
    );
}

#[tokio::test]
async fn an_https_client_asking_for_http2_is_answered_with_http_1_1() {
    let pki = TestPki::new();
    let app = spawn_tls_app(&pki, ClientCerts::NotRequested).await;

    let probe = openssl_probe(&pki, app.port, &["-alpn", "h2,http/1.1"]).await;

    assert!(probe.connected, "{}", probe.output);
    assert!(
        probe.output.contains("ALPN protocol: http/1.1"),
        "{}",
        probe.output
    );
}
