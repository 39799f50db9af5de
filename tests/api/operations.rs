//! Provider fluency (SPEC §9): profiles, provider certificates, operations, purpose-bound
//! grants and the owner's access log. Every expected value is computed here independently:
//! the published Daraja example, HMAC-SHA256 from the `hmac` crate, RSA decryption with the
//! `openssl` command-line tool.

use std::process::Command;

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use hazina::domain::Role;

use crate::helpers::*;
use crate::pki::{ClientCert, ClientCerts, TestPki, SERVICE_URI};

/// Safaricom's public sandbox passkey for shortcode 174379.
const SANDBOX_PASSKEY: &str = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919";
/// 2020-04-30 18:39:49 in Nairobi.
const DARAJA_EXAMPLE_UNIX: i64 = 1_588_261_189;
const DARAJA_EXAMPLE_PASSWORD: &str = "MTc0Mzc5YmZiMjc5ZjlhYTliZGJjZjE1OGU5N2RkNzFhNDY3Y2QyZTBjODkzMDU5YjEwZjc4ZTZiNzJhZGExZWQyYzkxOTIwMjAwNDMwMTgzOTQ5";
const NOT_GRANTED: &str = "This service's grant does not allow this operation";

fn op_path(id: i64, name: &str) -> String {
    format!("/payments/credentials/{id}/operations/{name}/")
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Creates a credential with a profile; its id (asserting 201).
async fn create(app: &TestApp, owner: &TestUser, body: Value) -> i64 {
    let res = app
        .post("/payments/credentials/", &owner.access, &body)
        .await;
    body_of(res, StatusCode::CREATED).await["id"]
        .as_i64()
        .unwrap()
}

async fn daraja(
    app: &TestApp,
    owner: &TestUser,
    environment: &str,
    initiator_password: &str,
) -> i64 {
    create(
        app,
        owner,
        json!({
            "provider": "mpesa",
            "environment": environment,
            "api_key": "daraja-consumer-key",
            "private_key": "daraja-consumer-secret",
            "secrets": { "passkey": SANDBOX_PASSKEY, "initiator_password": initiator_password },
            "settings": { "business_short_code": "174379", "initiator_name": "testapi" },
        }),
    )
    .await
}

/// Moves the app's clock to `unix` (users made afterwards get tokens valid then).
fn set_clock(app: &TestApp, unix: i64) {
    app.clock.advance(unix - app.clock.now());
}

/// The auditor API's entries for a reference.
async fn entries_with_reference(app: &TestApp, auditor: &TestUser, reference: &str) -> Vec<Value> {
    let page = body_of(
        app.get(
            &format!("/audit/events/?reference={reference}"),
            &auditor.access,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    page["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn stk_password_reproduces_the_published_daraja_example_and_is_audited_with_its_reference() {
    let app = spawn_app().await;
    set_clock(&app, DARAJA_EXAMPLE_UNIX);
    let owner = app.user().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let id = daraja(&app, &owner, "sandbox", "initiator-password").await;

    let res = app
        .post(
            &op_path(id, "stk-password"),
            &owner.access,
            &json!({ "timestamp": "20200430183949", "reference": "ws_CO_191220191020363925" }),
        )
        .await;
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body = body_of(res, StatusCode::OK).await;
    assert_eq!(
        body,
        json!({
            "business_short_code": "174379",
            "password": DARAJA_EXAMPLE_PASSWORD,
            "timestamp": "20200430183949",
        })
    );
    // Without a timestamp: now, in Nairobi time.
    let body = body_of(
        app.post(&op_path(id, "stk-password"), &owner.access, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["timestamp"], "20200430183949");
    assert_eq!(body["password"], DARAJA_EXAMPLE_PASSWORD);

    // More than five minutes from the vault's clock, or not a timestamp: 400.
    for bad in [
        "20200430184450",
        "20200430153949",
        "2020-04-30T18:",
        "20201330183949",
    ] {
        let res = app
            .post(
                &op_path(id, "stk-password"),
                &owner.access,
                &json!({ "timestamp": bad }),
            )
            .await;
        assert_json_4xx(res).await;
    }
    for bad in [
        json!({ "reference": "has space" }),
        json!({ "reference": "x".repeat(65) }),
        json!({ "unknown": 1 }),
    ] {
        let res = app
            .post(&op_path(id, "stk-password"), &owner.access, &bad)
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }

    let entries = entries_with_reference(&app, &auditor, "ws_CO_191220191020363925").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["action"], "credential.operation");
    assert_eq!(entries[0]["operation"], "stk-password");
    assert_eq!(entries[0]["outcome"], "success");
    assert_eq!(entries[0]["target"]["credential_id"], id);
    let by_op = body_of(
        app.get("/audit/events/?operation=stk-password", &auditor.access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_op["events"].as_array().unwrap().len(), 2);
    let res = app
        .get("/audit/events/?reference=bad%20ref", &auditor.access)
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // The chain still verifies with the new fields in it.
    let verdict = body_of(
        app.get("/audit/verify/", &auditor.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(verdict["ok"], true, "{verdict}");
}

/// A self-signed RSA certificate and its key, made by the openssl CLI.
fn openssl_certificate(dir: &std::path::Path, name: &str) -> (String, std::path::PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={name}.safaricom.test"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (std::fs::read_to_string(&cert).unwrap(), key)
}

/// SHA-256 of the certificate's DER, from the PEM by hand.
fn pem_sha256(pem: &str) -> String {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    hex::encode(Sha256::digest(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    ))
}

/// RSA-decrypts `ciphertext` with the openssl CLI under `padding` (`pkcs1` or `oaep`).
fn openssl_decrypt(
    dir: &std::path::Path,
    key: &std::path::Path,
    ciphertext: &[u8],
    padding: &str,
) -> Option<Vec<u8>> {
    let input = dir.join("ciphertext.bin");
    std::fs::write(&input, ciphertext).unwrap();
    let out = Command::new("openssl")
        .args(["pkeyutl", "-decrypt", "-inkey"])
        .arg(key)
        .arg("-in")
        .arg(&input)
        .args(["-pkeyopt", &format!("rsa_padding_mode:{padding}")])
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

async fn put_pem(app: &TestApp, admin: &TestUser, environment: &str, pem: &str) -> Response {
    app.client
        .put(app.url(&format!(
            "/admin/provider-certificates/mpesa/{environment}/"
        )))
        .bearer_auth(&admin.access)
        .header("Content-Type", "application/x-pem-file")
        .body(pem.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_security_credential_decrypts_with_the_certificate_key_under_pkcs1_v15_and_not_oaep() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (pem, key) = openssl_certificate(dir.path(), "sandbox");
    let admin = app.user_with_role(Role::Admin).await;
    let owner = app.user().await;
    let id = daraja(&app, &owner, "sandbox", "Safaricom999!*!").await;

    // No certificate yet: 409 naming what to install.
    let res = app
        .post(
            &op_path(id, "security-credential"),
            &owner.access,
            &json!({}),
        )
        .await;
    let err = body_of(res, StatusCode::CONFLICT).await;
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("provider certificate"),
        "{err}"
    );

    // Only admins install; garbage is 400; a PEM certificate is listed with its fingerprint.
    let res = put_pem(&app, &owner, "sandbox", &pem).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    for bad in [
        "not a certificate",
        "",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        assert_json_4xx(put_pem(&app, &admin, "sandbox", bad).await).await;
    }
    let res = app
        .client
        .put(app.url("/admin/provider-certificates/kopokopo/sandbox/"))
        .bearer_auth(&admin.access)
        .body(pem.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let installed = body_of(put_pem(&app, &admin, "sandbox", &pem).await, StatusCode::OK).await;
    assert_eq!(installed["sha256"], pem_sha256(&pem));
    assert!(installed["subject"]
        .as_str()
        .unwrap()
        .contains("sandbox.safaricom.test"));
    let listed = body_of(
        app.get("/admin/provider-certificates/", &admin.access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed[0]["sha256"], pem_sha256(&pem));
    assert_eq!(listed[0]["intact"], true);

    let body = body_of(
        app.post(
            &op_path(id, "security-credential"),
            &owner.access,
            &json!({ "reference": "b2c-42" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["certificate_sha256"], pem_sha256(&pem));
    let ciphertext = base64::engine::general_purpose::STANDARD
        .decode(body["security_credential"].as_str().unwrap())
        .unwrap();
    assert_eq!(ciphertext.len(), 256);
    assert_eq!(
        openssl_decrypt(dir.path(), &key, &ciphertext, "pkcs1").as_deref(),
        Some(b"Safaricom999!*!".as_slice())
    );
    assert_ne!(
        openssl_decrypt(dir.path(), &key, &ciphertext, "oaep").as_deref(),
        Some(b"Safaricom999!*!".as_slice())
    );
    // Fresh randomness every time (PKCS#1 v1.5 padding is random).
    let again = body_of(
        app.post(
            &op_path(id, "security-credential"),
            &owner.access,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_ne!(again["security_credential"], body["security_credential"]);

    // The live environment has no certificate: its credential answers 409.
    let live = daraja(&app, &owner, "live", "live-initiator").await;
    let res = app
        .post(
            &op_path(live, "security-credential"),
            &owner.access,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);

    // Every change is audited; removal works and is audited too.
    let auditor = app.user_with_role(Role::Auditor).await;
    let page = body_of(
        app.get(
            "/audit/events/?action=admin.provider_certificate_set&outcome=success",
            &auditor.access,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    let res = app
        .delete("/admin/provider-certificates/mpesa/sandbox/", &admin.access)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .delete("/admin/provider-certificates/mpesa/sandbox/", &admin.access)
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_certs_command_installs_and_lists_a_certificate() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (pem, _) = openssl_certificate(dir.path(), "live");
    let file = dir.path().join("live.pem");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hazina"))
            .args(args)
            .current_dir(app.dir.path())
            .env("HAZINA_DATABASE_URL", app.db.url())
            .env("HAZINA_KEYRING", &app.keyring_path)
            .output()
            .unwrap()
    };
    let out = run(&[
        "certs",
        "set",
        "--provider",
        "mpesa",
        "--environment",
        "live",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["certs", "list"]);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        listed.contains(&pem_sha256(&pem)) && listed.contains("intact"),
        "{listed}"
    );
    let out = run(&[
        "certs",
        "set",
        "--provider",
        "jpay",
        "--environment",
        "live",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn webhook_signatures_validate_and_the_previous_secret_only_inside_the_grace_window() {
    let app = spawn_app().await;
    let body =
        br#"{"topic":"buygoods_transaction_received","id":"2133dbfb-24b9-40fc-ae57-2d7559785760"}"#;
    for (provider, old, new) in [
        ("kopokopo", "kopokopo-api-key-one", "kopokopo-api-key-two"),
        ("jpay", "jpay-webhook-secret-one", "jpay-webhook-secret-two"),
    ] {
        let owner = app.user().await;
        let id = create(
            &app,
            &owner,
            json!({
                "provider": provider, "environment": "live", "api_key": "client-id",
                "private_key": "client-secret-0123", "secrets": { "webhook_secret": old },
            }),
        )
        .await;
        let verify = |signature: String, raw: &[u8], token: String| {
            let raw = b64(raw);
            let app = &app;
            async move {
                body_of(
                    app.post(
                        &op_path(id, "webhook-verify"),
                        &token,
                        &json!({ "body_base64": raw, "signature": signature, "reference": "evt-1" }),
                    )
                    .await,
                    StatusCode::OK,
                )
                .await
            }
        };
        let t: String = app
            .login(&owner.username, &owner.password)
            .await
            .json::<Value>()
            .await
            .unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            verify(hmac_hex(old, body), body, t.clone()).await,
            json!({ "valid": true, "version": 1 })
        );
        assert_eq!(
            verify(hmac_hex(old, body).to_uppercase(), body, t.clone()).await["valid"],
            true
        );
        let mut changed = body.to_vec();
        changed[10] ^= 1;
        assert_eq!(
            verify(hmac_hex(old, body), &changed, t.clone()).await,
            json!({ "valid": false })
        );
        assert_eq!(
            verify("00".repeat(32), body, t.clone()).await["valid"],
            false
        );
        assert_eq!(
            verify("not hex".into(), body, t.clone()).await["valid"],
            false
        );

        // Rotate the webhook secret alone: the private key carries over.
        let res = app
            .post(
                &format!("/payments/credentials/{id}/rotate/"),
                &t,
                &json!({ "secrets": { "webhook_secret": new } }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let revealed = body_of(
            app.get(&format!("/payments/credentials/{id}/get-private-key/"), &t)
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(revealed["private_key"], "client-secret-0123");
        assert_eq!(revealed["secrets"]["webhook_secret"], new);

        assert_eq!(
            verify(hmac_hex(new, body), body, t.clone()).await,
            json!({ "valid": true, "version": 2 })
        );
        assert_eq!(
            verify(hmac_hex(old, body), body, t.clone()).await,
            json!({ "valid": true, "version": 1 })
        );
        app.clock.advance(86_400 + 1);
        let t: String = app
            .login(&owner.username, &owner.password)
            .await
            .json::<Value>()
            .await
            .unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            verify(hmac_hex(old, body), body, t.clone()).await,
            json!({ "valid": false })
        );
        assert_eq!(
            verify(hmac_hex(new, body), body, t.clone()).await,
            json!({ "valid": true, "version": 2 })
        );
    }
    // A webhook-verify without its fields, or with bad base64: 400.
    let owner = app.user().await;
    let id = create(
        &app,
        &owner,
        json!({
            "provider": "kopokopo", "environment": "sandbox", "api_key": "client-id",
            "private_key": "client-secret-0123", "secrets": { "webhook_secret": "k" },
        }),
    )
    .await;
    for bad in [
        json!({}),
        json!({ "body_base64": "!!!", "signature": "00" }),
        json!({ "signature": "00" }),
    ] {
        let res = app
            .post(&op_path(id, "webhook-verify"), &owner.access, &bad)
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn an_intasend_challenge_is_compared_and_operations_outside_a_provider_answer_404() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let id = create(
        &app,
        &owner,
        json!({
            "provider": "instasend", "environment": "sandbox", "api_key": "ISPubKey_test_abc",
            "private_key": "ISSecretKey_test_abcdef", "secrets": { "webhook_challenge": "challenge-canary" },
        }),
    )
    .await;
    let path = op_path(id, "webhook-verify");
    let check = |challenge: &str| {
        let body = json!({ "challenge": challenge });
        let (app, owner, path) = (&app, &owner, &path);
        async move { app.post(path, &owner.access, &body).await }
    };
    assert_eq!(
        body_of(check("challenge-canary").await, StatusCode::OK).await,
        json!({ "valid": true })
    );
    assert_eq!(
        body_of(check("challenge-canar").await, StatusCode::OK).await,
        json!({ "valid": false })
    );

    for name in [
        "stk-password",
        "security-credential",
        "reveal",
        "no-such-operation",
    ] {
        let res = app
            .post(&op_path(id, name), &owner.access, &json!({}))
            .await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{name}");
        assert_json_4xx(res).await;
    }
    let pagamio = app
        .create_credential(&owner, "pagamio", "live", "pagamio-password-01")
        .await["id"]
        .as_i64()
        .unwrap();
    // A missing secret is 409 naming it.
    let res = app
        .post(
            &op_path(pagamio, "webhook-verify"),
            &owner.access,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let kk = app
        .create_credential(&owner, "kopokopo", "live", "kopokopo-secret-01")
        .await["id"]
        .as_i64()
        .unwrap();
    let res = app
        .post(
            &op_path(kk, "webhook-verify"),
            &owner.access,
            &json!({ "body_base64": "e30=", "signature": "00" }),
        )
        .await;
    let err = body_of(res, StatusCode::CONFLICT).await;
    assert!(
        err["error"].as_str().unwrap().contains("webhook_secret"),
        "{err}"
    );
    // Another owner's credential answers exactly like a missing one.
    let other = app.user().await;
    let theirs = app
        .post(
            &op_path(id, "webhook-verify"),
            &other.access,
            &json!({ "challenge": "x" }),
        )
        .await;
    let missing = app
        .post(
            &op_path(4_242_424_242, "webhook-verify"),
            &other.access,
            &json!({ "challenge": "x" }),
        )
        .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        theirs.bytes().await.unwrap(),
        missing.bytes().await.unwrap()
    );
}

#[tokio::test]
async fn profiles_are_checked_per_provider_and_metadata_names_secrets_without_their_values() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let base = |extra: Value| {
        let mut b =
            json!({ "provider": "mpesa", "api_key": "ck", "private_key": "consumer-secret-1" });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for bad in [
        base(json!({ "secrets": { "webhook_secret": "x" } })),
        base(json!({ "secrets": { "passkey": "" } })),
        base(json!({ "secrets": { "passkey": "x".repeat(4097) } })),
        base(json!({ "settings": { "business_short_code": "1234" } })),
        base(json!({ "settings": { "business_short_code": "17437a" } })),
        base(json!({ "settings": { "till": "174379" } })),
        base(json!({ "secrets": "passkey" })),
        json!({ "provider": "pagamio", "api_key": "u", "private_key": "password-01", "secrets": { "passkey": "x" } }),
    ] {
        let res = app
            .post("/payments/credentials/", &owner.access, &bad)
            .await;
        let err = assert_json_4xx(res).await;
        assert!(!err.to_string().contains("xxxx"), "{err}");
    }
    let res = app
        .post(
            "/payments/credentials/",
            &owner.access,
            &base(json!({ "secrets": { "webhook_secret": "x" } })),
        )
        .await;
    let err = body_of(res, StatusCode::BAD_REQUEST).await;
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("initiator_password, passkey"),
        "{err}"
    );

    let id = daraja(&app, &owner, "sandbox", "initiator-canary-77").await;
    let meta = body_of(
        app.get(&format!("/payments/credentials/{id}/"), &owner.access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(meta["secrets"], json!(["initiator_password", "passkey"]));
    assert_eq!(meta["settings"]["business_short_code"], "174379");
    assert!(!meta.to_string().contains(SANDBOX_PASSKEY));
    assert!(!meta.to_string().contains("initiator-canary-77"));
    let listed = body_of(
        app.get("/payments/credentials/", &owner.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        listed[0]["secrets"],
        json!(["initiator_password", "passkey"])
    );

    // New settings make a new version, which the operation uses; secrets carry over.
    let res = app
        .put(
            &format!("/payments/credentials/{id}/"),
            &owner.access,
            &json!({ "settings": { "business_short_code": "600000", "initiator_name": "testapi" } }),
        )
        .await;
    let updated = body_of(res, StatusCode::OK).await;
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["settings"]["business_short_code"], "600000");
    let stk = body_of(
        app.post(&op_path(id, "stk-password"), &owner.access, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(stk["business_short_code"], "600000");
    let expected = b64(format!(
        "600000{SANDBOX_PASSKEY}{}",
        stk["timestamp"].as_str().unwrap()
    )
    .as_bytes());
    assert_eq!(stk["password"], expected);
    let res = app
        .put(
            &format!("/payments/credentials/{id}/"),
            &owner.access,
            &json!({ "settings": { "business_short_code": "12" } }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // A rotation of the private key alone keeps the secrets and settings; verify still works.
    let res = app
        .post(
            &format!("/payments/credentials/{id}/rotate/"),
            &owner.access,
            &json!({ "private_key": "consumer-secret-2" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let revealed = body_of(
        app.get(
            &format!("/payments/credentials/{id}/get-private-key/"),
            &owner.access,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(revealed["private_key"], "consumer-secret-2");
    assert_eq!(revealed["secrets"]["passkey"], SANDBOX_PASSKEY);
    let verified = body_of(
        app.post(
            &format!("/payments/credentials/{id}/verify/"),
            &owner.access,
            &json!({ "private_key": "consumer-secret-2" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(verified["is_valid"], true);
    // Rollback restores an earlier version's whole profile.
    let res = app
        .post(
            &format!("/payments/credentials/{id}/rollback/"),
            &owner.access,
            &json!({ "version": 1 }),
        )
        .await;
    let rolled = body_of(res, StatusCode::OK).await;
    assert_eq!(
        rolled["credentials"]["settings"]["business_short_code"],
        "174379"
    );
    let res = app
        .post(
            &format!("/payments/credentials/{id}/rotate/"),
            &owner.access,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // A master-key rotation re-wraps profile versions too, and they still open.
    let out = Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(["keys", "rotate"])
        .current_dir(app.dir.path())
        .env("HAZINA_DATABASE_URL", app.db.url())
        .env("HAZINA_KEYRING", &app.keyring_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = app.sql_lines(
        "SELECT CAST(COUNT(*) AS TEXT) AS line FROM credential_versions WHERE kek_version = 1",
    );
    assert_eq!(left, ["0"]);
    let stk = app
        .post(&op_path(id, "stk-password"), &owner.access, &json!({}))
        .await;
    assert_eq!(stk.status(), StatusCode::OK);
    for v in 1..=4 {
        let res = app
            .post(
                &format!("/payments/credentials/{id}/rollback/"),
                &owner.access,
                &json!({ "version": v }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK, "rollback to {v}");
    }
}

#[tokio::test]
async fn an_edited_setting_or_a_swapped_certificate_row_makes_the_operation_fail() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = app.user_with_role(Role::Admin).await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let owner = app.user().await;
    let id = daraja(&app, &owner, "sandbox", "initiator-secret").await;
    // A database writer points the STK password at their own till.
    app.sql(&format!(
        "UPDATE credential_versions SET profile = replace(profile, '174379', '999999') WHERE credential_id = {id}"
    ));
    let res = app
        .post(&op_path(id, "stk-password"), &owner.access, &json!({}))
        .await;
    assert!(res.status().is_server_error() || res.status().is_client_error());
    let text = res.text().await.unwrap();
    assert!(
        !text.contains("999999") && !text.contains("password\""),
        "{text}"
    );
    let page = body_of(
        app.get("/audit/events/?action=integrity.violation", &auditor.access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");

    // A certificate swapped in the database (the attacker's own, fingerprint and all).
    let id = daraja(&app, &owner, "live", "live-initiator-secret").await;
    let (genuine, _) = openssl_certificate(dir.path(), "genuine");
    let (attacker, _) = openssl_certificate(dir.path(), "attacker");
    assert_eq!(
        put_pem(&app, &admin, "live", &genuine).await.status(),
        StatusCode::OK
    );
    let ok = app
        .post(
            &op_path(id, "security-credential"),
            &owner.access,
            &json!({}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    app.sql(&format!(
        "UPDATE provider_certificates SET pem = '{attacker}', sha256 = '{}' WHERE environment = 'live'",
        pem_sha256(&attacker)
    ));
    let res = app
        .post(
            &op_path(id, "security-credential"),
            &owner.access,
            &json!({}),
        )
        .await;
    let err = body_of(res, StatusCode::CONFLICT).await;
    assert!(
        err["error"].as_str().unwrap().contains("integrity"),
        "{err}"
    );
    let listed = body_of(
        app.get("/admin/provider-certificates/", &admin.access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed[0]["intact"], false);
    let page = body_of(
        app.get("/audit/events/?action=integrity.violation", &auditor.access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2, "{page}");
}

#[tokio::test]
async fn no_answer_log_line_audit_entry_or_stored_byte_holds_a_stored_secret() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = app.user_with_role(Role::Admin).await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let owner = app.user().await;
    let canaries = [
        "CANARY-private-key-0001",
        "CANARY-passkey-0002",
        "CANARY-initiator-0003",
        "CANARY-webhook-kk-0004",
        "CANARY-webhook-jp-0005",
        "CANARY-challenge-0006",
    ];
    let (pem, _) = openssl_certificate(dir.path(), "canary");
    assert_eq!(
        put_pem(&app, &admin, "sandbox", &pem).await.status(),
        StatusCode::OK
    );
    let mpesa = create(
        &app,
        &owner,
        json!({
            "provider": "mpesa", "api_key": "ck", "private_key": canaries[0],
            "secrets": { "passkey": canaries[1], "initiator_password": canaries[2] },
            "settings": { "business_short_code": "174379" },
        }),
    )
    .await;
    let kk = create(
        &app,
        &owner,
        json!({ "provider": "kopokopo", "api_key": "id", "private_key": canaries[0], "secrets": { "webhook_secret": canaries[3] } }),
    )
    .await;
    let jp = create(
        &app,
        &owner,
        json!({ "provider": "jpay", "api_key": "id", "private_key": canaries[0], "secrets": { "webhook_secret": canaries[4] } }),
    )
    .await;
    let is = create(
        &app,
        &owner,
        json!({ "provider": "instasend", "api_key": "ISPubKey_test_x", "private_key": "ISSecretKey_test_CANARY", "secrets": { "webhook_challenge": canaries[5] } }),
    )
    .await;
    let mut answers = Vec::new();
    let calls = [
        (mpesa, "stk-password", json!({ "reference": "r1" })),
        (mpesa, "security-credential", json!({ "reference": "r2" })),
        (
            kk,
            "webhook-verify",
            json!({ "body_base64": b64(b"{}"), "signature": hmac_hex(canaries[3], b"{}") }),
        ),
        (
            jp,
            "webhook-verify",
            json!({ "body_base64": b64(b"{}"), "signature": "ab" }),
        ),
        (is, "webhook-verify", json!({ "challenge": "wrong" })),
        (is, "webhook-verify", json!({ "challenge": canaries[5] })),
    ];
    for (id, name, body) in calls {
        let res = app.post(&op_path(id, name), &owner.access, &body).await;
        assert_eq!(res.status(), StatusCode::OK, "{name}");
        answers.push(res.text().await.unwrap());
    }
    for id in [mpesa, kk, jp, is] {
        answers.push(
            app.get(&format!("/payments/credentials/{id}/"), &owner.access)
                .await
                .text()
                .await
                .unwrap(),
        );
        answers.push(
            app.get(
                &format!("/payments/credentials/{id}/versions/"),
                &owner.access,
            )
            .await
            .text()
            .await
            .unwrap(),
        );
        answers.push(
            app.get(
                &format!("/payments/credentials/{id}/access-log/"),
                &owner.access,
            )
            .await
            .text()
            .await
            .unwrap(),
        );
    }
    answers.push(
        app.get("/payments/credentials/", &owner.access)
            .await
            .text()
            .await
            .unwrap(),
    );
    answers.push(
        app.get("/audit/export/", &auditor.access)
            .await
            .text()
            .await
            .unwrap(),
    );
    answers.push(
        app.client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let haystacks: Vec<(&str, Vec<u8>)> = vec![
        ("answers", answers.join("\n").into_bytes()),
        ("logs", captured_logs()),
        ("database", app.stored_bytes()),
    ];
    for (what, hay) in &haystacks {
        for canary in canaries {
            assert!(
                !hay.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{canary} found in {what}"
            );
        }
    }
    // Nor encoded: no answer but the STK password carries a secret's base64 either. (The STK
    // password is Daraja's own base64(shortcode ‖ passkey ‖ timestamp), which a holder can
    // decode: the README says so; it is what a service granted `stk-password` is given.)
    let stk = &answers[0];
    let rest = answers[1..].join("\n");
    for canary in canaries {
        for shift in 0..3 {
            // base64 of the canary at each alignment, trimmed to the stable middle.
            let padded = format!("{}{canary}", "x".repeat(shift));
            let enc = b64(padded.as_bytes());
            let middle = &enc[4..enc.len() - 4];
            assert!(
                !rest.contains(middle),
                "{canary} found base64-encoded in an answer"
            );
        }
    }
    let password = serde_json::from_str::<Value>(stk).unwrap()["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(password)
        .unwrap();
    assert!(String::from_utf8(decoded).unwrap().contains(canaries[1]));
}

/// A vault over HTTPS with the `billing` service registered, an admin and a merchant.
struct ServiceVault {
    app: TestApp,
    pki: TestPki,
    admin: TestUser,
    merchant: TestUser,
}

impl ServiceVault {
    async fn new() -> Self {
        let pki = TestPki::new();
        let app = crate::pki::spawn_tls_app(&pki, ClientCerts::Optional).await;
        let admin = app.user_with_role(Role::Admin).await;
        let merchant = app.user().await;
        let res = app
            .post(
                "/admin/services/",
                &admin.access,
                &json!({ "name": "billing", "identity": SERVICE_URI }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        ServiceVault {
            app,
            pki,
            admin,
            merchant,
        }
    }

    fn billing(&self) -> reqwest::Client {
        self.pki
            .https_client(Some(&self.pki.client(ClientCert::Valid)))
    }

    async fn grant(&self, owner: &TestUser, operations: Option<Value>) -> Value {
        let mut body =
            json!({ "service": "billing", "owner": owner.username, "provider": "mpesa" });
        if let Some(ops) = operations {
            body["operations"] = ops;
        }
        body_of(
            self.app
                .post("/admin/grants/", &self.admin.access, &body)
                .await,
            StatusCode::CREATED,
        )
        .await
    }

    async fn service_post(&self, client: &reqwest::Client, path: &str, body: Value) -> Response {
        client
            .post(self.app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_service_granted_only_stk_password_is_refused_reveal_and_security_credential() {
    let v = ServiceVault::new().await;
    let auditor = v.app.user_with_role(Role::Auditor).await;
    let id = daraja(&v.app, &v.merchant, "sandbox", "initiator-secret").await;
    let grant = v.grant(&v.merchant, Some(json!(["stk-password"]))).await;
    assert_eq!(grant["operations"], json!(["stk-password"]));
    let billing = v.billing();

    let ok = v
        .service_post(
            &billing,
            &op_path(id, "stk-password"),
            json!({ "reference": "order-9" }),
        )
        .await;
    let ok = body_of(ok, StatusCode::OK).await;
    assert_eq!(ok["business_short_code"], "174379");
    let lookup = format!(
        "/payments/credentials/lookup/operations/stk-password/?owner={}&provider=mpesa&environment=sandbox",
        v.merchant.username
    );
    let by_owner = body_of(
        v.service_post(&billing, &lookup, json!({})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_owner["business_short_code"], "174379");
    // Owners may not use the lookup.
    let res = v.app.post(&lookup, &v.merchant.access, &json!({})).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let res = billing
        .get(
            v.app
                .url(&format!("/payments/credentials/{id}/get-private-key/")),
        )
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::FORBIDDEN, NOT_GRANTED).await;
    let res = v
        .service_post(&billing, &op_path(id, "security-credential"), json!({}))
        .await;
    assert_error(res, StatusCode::FORBIDDEN, NOT_GRANTED).await;
    let denied = body_of(
        v.app
            .get(
                "/audit/events/?outcome=denied&actor=billing",
                &auditor.access,
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let reasons: Vec<&Value> = denied["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["reason"])
        .collect();
    assert_eq!(
        reasons,
        [
            &json!("operation_not_granted"),
            &json!("operation_not_granted")
        ]
    );

    // With no grant at all, exactly what a missing id gets.
    let other = v.app.user().await;
    let theirs = daraja(&v.app, &other, "sandbox", "other-initiator").await;
    let refused = v
        .service_post(&billing, &op_path(theirs, "stk-password"), json!({}))
        .await;
    let missing = v
        .service_post(&billing, &op_path(4_242_424_242, "stk-password"), json!({}))
        .await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        refused.bytes().await.unwrap(),
        missing.bytes().await.unwrap()
    );

    // A grant made without operations allows reveal only, as grants did before.
    let legacy = v.grant(&other, None).await;
    assert_eq!(legacy["operations"], json!(["reveal"]));
    let res = billing
        .get(
            v.app
                .url(&format!("/payments/credentials/{theirs}/get-private-key/")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = v
        .service_post(&billing, &op_path(theirs, "stk-password"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // A grant widened in the database is refused like a missing id, and audited.
    v.app.sql(&format!(
        "UPDATE grants SET operations = 'reveal,stk-password' WHERE id = {}",
        legacy["id"]
    ));
    let res = v
        .service_post(&billing, &op_path(theirs, "stk-password"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // A disabled owner's grants stop working.
    let res = v
        .app
        .post(
            &format!("/admin/users/{}/disable/", v.merchant.username),
            &v.admin.access,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = v
        .service_post(&billing, &op_path(id, "stk-password"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // Unknown operation names in a grant are 400.
    let res = v
        .app
        .post(
            "/admin/grants/",
            &v.admin.access,
            &json!({ "service": "billing", "owner": other.username, "operations": ["pay-out"] }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_grants_command_names_operations() {
    let v = ServiceVault::new().await;
    let id = daraja(&v.app, &v.merchant, "live", "initiator").await;
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hazina"))
            .args(args)
            .current_dir(v.app.dir.path())
            .env("HAZINA_DATABASE_URL", v.app.db.url())
            .env("HAZINA_KEYRING", &v.app.keyring_path)
            .output()
            .unwrap()
    };
    let out = run(&[
        "grants",
        "create",
        "--service",
        "billing",
        "--owner",
        &v.merchant.username,
        "--operation",
        "stk-password",
        "--operation",
        "webhook-verify",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8(run(&["grants", "list"]).stdout).unwrap();
    assert!(listed.contains("stk-password,webhook-verify"), "{listed}");
    let billing = v.billing();
    let res = v
        .service_post(&billing, &op_path(id, "stk-password"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = billing
        .get(
            v.app
                .url(&format!("/payments/credentials/{id}/get-private-key/")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let out = run(&[
        "grants",
        "create",
        "--service",
        "billing",
        "--owner",
        &v.merchant.username,
        "--operation",
        "pay-out",
    ]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn the_owner_sees_every_use_of_their_credential_with_cursor_pages() {
    let v = ServiceVault::new().await;
    let id = daraja(&v.app, &v.merchant, "sandbox", "initiator").await;
    v.grant(&v.merchant, Some(json!(["stk-password", "reveal"])))
        .await;
    let billing = v.billing();
    for n in 0..3 {
        let res = v
            .service_post(
                &billing,
                &op_path(id, "stk-password"),
                json!({ "reference": format!("order-{n}") }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let page = body_of(
        v.app
            .get(
                &format!("/payments/credentials/{id}/access-log/?limit=2"),
                &v.merchant.access,
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let first = page["entries"].as_array().unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["action"], "credential.create");
    assert_eq!(first[1]["actor_kind"], "service");
    assert_eq!(first[1]["actor_name"], "billing");
    assert_eq!(first[1]["operation"], "stk-password");
    assert_eq!(first[1]["reference"], "order-0");
    let cursor = page["next_cursor"].as_i64().unwrap();
    let rest = body_of(
        v.app
            .get(
                &format!("/payments/credentials/{id}/access-log/?cursor={cursor}&limit=50"),
                &v.merchant.access,
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let refs: Vec<&Value> = rest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["reference"])
        .collect();
    assert_eq!(refs, [&json!("order-1"), &json!("order-2")]);
    assert!(rest["next_cursor"].is_null());
    // Another owner, or a bad limit: like a missing credential / 400.
    let other = v.app.user().await;
    let theirs = v
        .app
        .get(
            &format!("/payments/credentials/{id}/access-log/"),
            &other.access,
        )
        .await;
    let missing = v
        .app
        .get(
            "/payments/credentials/4242424242/access-log/",
            &other.access,
        )
        .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        theirs.bytes().await.unwrap(),
        missing.bytes().await.unwrap()
    );
    for bad in ["limit=0", "limit=501", "cursor=x", "foo=1"] {
        let res = v
            .app
            .get(
                &format!("/payments/credentials/{id}/access-log/?{bad}"),
                &v.merchant.access,
            )
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn with_owner_operations_off_owners_are_refused_but_granted_services_still_compute() {
    let pki = TestPki::new();
    let cert = pki.server_cert_path.display().to_string();
    let key = pki.server_key_path.display().to_string();
    let ca = pki.ca_path.display().to_string();
    let mut app = spawn_app_with(&[
        ("HAZINA_TLS_CERT", cert.as_str()),
        ("HAZINA_TLS_KEY", key.as_str()),
        ("HAZINA_TLS_CLIENT_CA", ca.as_str()),
        ("HAZINA_OWNER_OPERATIONS", "false"),
    ])
    .await;
    app.address = format!("https://127.0.0.1:{}", app.port);
    app.client = pki.https_client(None);
    let admin = app.user_with_role(Role::Admin).await;
    let owner = app.user().await;
    let id = daraja(&app, &owner, "sandbox", "initiator").await;
    let res = app
        .post(&op_path(id, "stk-password"), &owner.access, &json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    app.post(
        "/admin/services/",
        &admin.access,
        &json!({ "name": "billing", "identity": SERVICE_URI }),
    )
    .await;
    app.post(
        "/admin/grants/",
        &admin.access,
        &json!({ "service": "billing", "owner": owner.username, "operations": ["stk-password"] }),
    )
    .await;
    let billing = pki.https_client(Some(&pki.client(ClientCert::Valid)));
    let res = billing
        .post(app.url(&op_path(id, "stk-password")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // An auditor is refused like everywhere else.
    let auditor = app.user_with_role(Role::Auditor).await;
    let res = app
        .post(&op_path(id, "stk-password"), &auditor.access, &json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_existing_database_upgrades_in_place_and_its_grants_allow_reveal_only() {
    use hazina::vault::Operation;

    let v = ServiceVault::new().await;
    let auditor = v.app.user_with_role(Role::Auditor).await;
    let id = v
        .app
        .create_credential(&v.merchant, "mpesa", "live", "consumer-secret-pre-upgrade")
        .await["id"]
        .as_i64()
        .unwrap();
    v.grant(&v.merchant, None).await;
    // Back to the previous release's schema with the rows in place, then a node of this
    // release starts on it and migrates it up again.
    assert_eq!(
        v.app.revert_migrations(7),
        [
            "20261208000014",
            "20261207000013",
            "20261207000012",
            "20261201000011",
            "20261201000010",
            "20261201000009",
            "20261201000008"
        ]
    );
    let node = v.app.spawn_node().await;
    let token = node
        .login(&v.merchant.username, &v.merchant.password)
        .await
        .json::<Value>()
        .await
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let revealed = body_of(
        node.get(
            &format!("/payments/credentials/{id}/get-private-key/"),
            &token,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(revealed["private_key"], "consumer-secret-pre-upgrade");
    assert!(revealed.get("secrets").is_none());
    // Its grant allows reveal and nothing else, and still passes its integrity check.
    let mut conn = node.conn();
    let grants = hazina::repo::services::list_grants(&mut conn).unwrap();
    assert_eq!(grants.len(), 1);
    let grant = &grants[0].0;
    assert_eq!(grant.operations, "reveal");
    assert!(grant.intact(&node.state.keyring));
    assert!(grant.allows(Operation::Reveal) && !grant.allows(Operation::StkPassword));
    // The old entries hash as they did: the chain verifies.
    let verdict = body_of(
        node.get("/audit/verify/", &auditor.access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    // And the upgraded credential takes a profile from here on.
    let res = node
        .post(
            &format!("/payments/credentials/{id}/rotate/"),
            &token,
            &json!({ "secrets": { "passkey": SANDBOX_PASSKEY } }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// A POST of exactly these bytes, with this Content-Type and, if given, this bearer token.
async fn raw_post(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Response {
    let mut req = app
        .client
        .post(app.url(path))
        .header("Content-Type", content_type)
        .body(body.to_vec());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

/// The body is read once the caller is authenticated: whoever sends no credentials, or a
/// token that is not one, learns nothing about what the body should be (401 whatever it
/// holds); an authenticated caller's bad body is a JSON 400 (or 413) before any operation.
#[tokio::test]
async fn an_operation_body_is_judged_only_after_the_caller_is_authenticated() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let id = daraja(&app, &owner, "sandbox", "initiator-password").await;
    let path = op_path(id, "stk-password");
    let send = |token, content_type, body| raw_post(&app, &path, token, content_type, body);
    let bad_bodies: [(&str, &[u8]); 5] = [
        ("application/json", b"{not json"),
        ("text/plain", b"{}"),
        ("application/json", b"[\"order-1\"]"),
        ("application/json", br#"{"reference":"a b"}"#),
        ("application/json", br#"{"unknown":1}"#),
    ];
    for (content_type, body) in &bad_bodies {
        let res = send(None, content_type, body).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{content_type}");
        assert_json_4xx(res).await;
        let res = send(Some("not-a-token"), content_type, body).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{content_type}");
        assert_json_4xx(res).await;
    }
    // Unknown operations too are answered only to an authenticated caller.
    let unknown = op_path(id, "no-such-operation");
    let res = raw_post(&app, &unknown, None, "application/json", b"{}").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // The owner is told what is wrong with each, and nothing was computed or audited.
    let audited = || {
        app.sql_lines("SELECT CAST(COUNT(*) AS TEXT) AS line FROM audit_log WHERE action = 'credential.operation'")
    };
    let before = audited();
    let mut messages = Vec::new();
    for (content_type, body) in &bad_bodies {
        let res = send(Some(&owner.access), content_type, body).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{content_type}");
        messages.push(
            assert_json_4xx(res).await["error"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(messages[1], "Content-Type must be application/json");
    assert!(
        messages[3].starts_with("reference must be"),
        "{}",
        messages[3]
    );
    let big = format!(r#"{{"reference":"{}"}}"#, "a".repeat(70_000));
    let res = send(Some(&owner.access), "application/json", big.as_bytes()).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_json_4xx(res).await;
    let res = app.post(&unknown, &owner.access, &json!({})).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // The lookup address is for services: an owner learns that first, whatever the body.
    let lookup = "/payments/credentials/lookup/operations/stk-password/?owner=1&provider=mpesa&environment=sandbox";
    for (content_type, body) in &bad_bodies {
        let res = raw_post(&app, lookup, Some(&owner.access), content_type, body).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{content_type}");
    }
    assert_eq!(audited(), before);

    // And a good body still computes.
    let res = app
        .post(&path, &owner.access, &json!({ "reference": "order-1" }))
        .await;
    let body = body_of(res, StatusCode::OK).await;
    assert_eq!(body["business_short_code"], "174379");
}

#[tokio::test]
async fn with_owner_reveal_off_an_owners_stk_password_is_refused_and_audited_but_other_operations_run(
) {
    let app = spawn_app_with(&[("HAZINA_OWNER_REVEAL", "false")]).await;
    let owner = app.user().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let mpesa = daraja(&app, &owner, "sandbox", "initiator").await;
    let kopokopo = create(
        &app,
        &owner,
        json!({
            "provider": "kopokopo", "environment": "sandbox", "api_key": "client-id",
            "private_key": "client-secret-0123", "secrets": { "webhook_secret": "k" },
        }),
    )
    .await;

    let refused = app
        .post(
            &op_path(mpesa, "stk-password"),
            &owner.access,
            &json!({ "reference": "stk-owner-refused" }),
        )
        .await;
    let verified = app
        .post(
            &op_path(kopokopo, "webhook-verify"),
            &owner.access,
            &json!({ "body_base64": b64(b"{}"), "signature": hmac_hex("k", b"{}") }),
        )
        .await;

    assert_error(
        refused,
        StatusCode::FORBIDDEN,
        "stk-password discloses the M-Pesa passkey, and revealing is reserved for services on this vault",
    )
    .await;
    let entries = entries_with_reference(&app, &auditor, "stk-owner-refused").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["action"], "credential.operation");
    assert_eq!(entries[0]["operation"], "stk-password");
    assert_eq!(entries[0]["outcome"], "denied");
    assert_eq!(entries[0]["reason"], "owner_reveal_disabled");
    assert_eq!(
        body_of(verified, StatusCode::OK).await,
        json!({ "valid": true, "version": 1 })
    );
}

#[tokio::test]
async fn with_owner_reveal_off_a_service_granted_stk_password_still_computes_it() {
    let pki = TestPki::new();
    let app = crate::pki::spawn_tls_app_with(
        &pki,
        ClientCerts::Optional,
        &[("HAZINA_OWNER_REVEAL", "false")],
    )
    .await;
    let admin = app.user_with_role(Role::Admin).await;
    let owner = app.user().await;
    let id = daraja(&app, &owner, "sandbox", "initiator").await;
    let service = json!({ "name": "billing", "identity": SERVICE_URI });
    body_of(
        app.post("/admin/services/", &admin.access, &service).await,
        StatusCode::CREATED,
    )
    .await;
    let grant =
        json!({ "service": "billing", "owner": owner.username, "operations": ["stk-password"] });
    body_of(
        app.post("/admin/grants/", &admin.access, &grant).await,
        StatusCode::CREATED,
    )
    .await;
    let billing = pki.https_client(Some(&pki.client(ClientCert::Valid)));

    let res = billing
        .post(app.url(&op_path(id, "stk-password")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();

    let body = body_of(res, StatusCode::OK).await;
    assert_eq!(body["business_short_code"], "174379");
}
