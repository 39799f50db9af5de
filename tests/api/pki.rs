//! A test PKI made afresh for each test with rcgen: a CA, a server certificate for
//! 127.0.0.1/localhost, and client certificates of every kind the TLS tests need (valid with
//! a SAN URI, DNS SAN only, no SAN, expired, and one from a foreign CA). Everything is
//! written as PEM into a temporary directory, so hazina loads it exactly as in production.
//!
//! Clients: [`TestPki::https_client`] (reqwest over rustls/aws-lc-rs, trusting only the test
//! CA, with an optional client identity) and [`openssl_probe`] (the `openssl s_client` CLI,
//! for handshakes rustls cannot offer: TLS 1.1 and non-forward-secret suites).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::helpers::{spawn_app_with, TestApp};

/// The SAN URI of the one service the valid client certificate identifies.
pub const SERVICE_URI: &str = "spiffe://payments/billing";

/// The client certificates the test PKI issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// Signed by the test CA, SAN URI [`SERVICE_URI`].
    Valid,
    /// Signed by the test CA, only a DNS SAN (`billing.payments.internal`).
    DnsOnly,
    /// Signed by the test CA, no SAN at all (its identity is its SHA-256 fingerprint).
    NoSan,
    /// Signed by the test CA, but valid only in 2020.
    Expired,
    /// Signed by another CA that hazina does not trust; SAN URI [`SERVICE_URI`].
    ForeignCa,
}

/// A client certificate and its key, in memory and as PEM files.
pub struct ClientIdentity {
    pub cert: CertificateDer<'static>,
    key_der: Vec<u8>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl ClientIdentity {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }
}

pub struct TestPki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    foreign_ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_path: PathBuf,
    pub server_cert_path: PathBuf,
    pub server_key_path: PathBuf,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("hazina test CA");
        let foreign_ca = new_ca("a CA hazina does not trust");

        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "hazina test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let server = params.signed_by(&key, &ca).unwrap();

        let ca_path = dir.path().join("ca.pem");
        let server_cert_path = dir.path().join("server.pem");
        let server_key_path = dir.path().join("server.key");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        std::fs::write(&server_cert_path, server.pem()).unwrap();
        write_private(&server_key_path, &key.serialize_pem());
        TestPki {
            dir,
            ca,
            foreign_ca,
            ca_path,
            server_cert_path,
            server_key_path,
        }
    }

    /// Issues a client certificate of `kind` and writes it (and its 0600 key) as PEM.
    pub fn client(&self, kind: ClientCert) -> ClientIdentity {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{kind:?} client"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.subject_alt_names = match kind {
            ClientCert::Valid | ClientCert::Expired | ClientCert::ForeignCa => {
                vec![SanType::URI(SERVICE_URI.try_into().unwrap())]
            }
            ClientCert::DnsOnly => vec![SanType::DnsName(
                "billing.payments.internal".try_into().unwrap(),
            )],
            ClientCert::NoSan => vec![],
        };
        if kind == ClientCert::Expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let issuer = if kind == ClientCert::ForeignCa {
            &self.foreign_ca
        } else {
            &self.ca
        };
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();

        let name = format!("{kind:?}").to_lowercase();
        let cert_path = self.dir.path().join(format!("client-{name}.pem"));
        let key_path = self.dir.path().join(format!("client-{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_private(&key_path, &key.serialize_pem());
        ClientIdentity {
            cert: cert.der().clone(),
            key_der: key.serialize_der(),
            cert_path,
            key_path,
        }
    }

    /// A certificate revocation list signed by the test CA, revoking `revoked`, as PEM.
    pub fn crl_pem(&self, revoked: &[&ClientIdentity], number: u64) -> String {
        use rcgen::{
            CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams,
            SerialNumber,
        };
        let revoked_certs = revoked
            .iter()
            .map(|id| {
                let (_, cert) = x509_parser::parse_x509_certificate(id.cert.as_ref()).unwrap();
                RevokedCertParams {
                    serial_number: SerialNumber::from_slice(cert.tbs_certificate.raw_serial()),
                    revocation_time: date_time_ymd(2025, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                }
            })
            .collect();
        CertificateRevocationListParams {
            this_update: date_time_ymd(2025, 1, 1),
            next_update: date_time_ymd(2035, 1, 1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca)
        .unwrap()
        .pem()
        .unwrap()
    }

    /// A client certificate signed by the test CA whose only SAN is the URI `uri`.
    pub fn client_with_uri(&self, uri: &str, file: &str) -> ClientIdentity {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_private(&key_path, &key.serialize_pem());
        ClientIdentity {
            cert: cert.der().clone(),
            key_der: key.serialize_der(),
            cert_path,
            key_path,
        }
    }

    /// An HTTPS client that trusts only the test CA and presents `identity`, if any.
    pub fn https_client(&self, identity: Option<&ClientIdentity>) -> reqwest::Client {
        self.https_builder(identity).build().unwrap()
    }

    /// [`https_client`](Self::https_client), still to be configured.
    pub fn https_builder(&self, identity: Option<&ClientIdentity>) -> reqwest::ClientBuilder {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(vec![id.cert.clone()], id.key())
                .unwrap(),
        };
        reqwest::Client::builder().use_preconfigured_tls(config)
    }

    /// A rustls server config presenting the test server certificate (for 127.0.0.1 and
    /// localhost), e.g. for a stub provider over HTTPS.
    pub fn server_config(&self) -> rustls::ServerConfig {
        let certs = hazina::tls::read_certificates("test", &self.server_cert_path).unwrap();
        let key = hazina::tls::read_private_key("test", &self.server_key_path).unwrap();
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
    }

    fn path(p: &Path) -> String {
        p.display().to_string()
    }
}

/// How client certificates are handled by the app under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// No `HAZINA_TLS_CLIENT_CA`: none are asked for.
    NotRequested,
    /// A client CA; a connection without a certificate still works.
    Optional,
    /// A client CA and `HAZINA_TLS_REQUIRE_CLIENT_CERT=true`.
    Required,
}

/// Spawns hazina over HTTPS with the test PKI. The returned app's `address` is
/// `https://127.0.0.1:<port>` and its `client` trusts the test CA and presents no
/// certificate, so every `TestApp` helper (`user()`, `get`, …) speaks HTTPS.
pub async fn spawn_tls_app(pki: &TestPki, client_certs: ClientCerts) -> TestApp {
    spawn_tls_app_with(pki, client_certs, &[]).await
}

/// As [`spawn_tls_app`], with extra `HAZINA_*` settings.
pub async fn spawn_tls_app_with(
    pki: &TestPki,
    client_certs: ClientCerts,
    extra: &[(&str, &str)],
) -> TestApp {
    let cert = TestPki::path(&pki.server_cert_path);
    let key = TestPki::path(&pki.server_key_path);
    let ca = TestPki::path(&pki.ca_path);
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

/// What `openssl s_client` saw.
#[derive(Debug)]
pub struct Probe {
    /// The handshake completed (exit status 0 and a negotiated cipher).
    pub connected: bool,
    /// stdout and stderr together.
    pub output: String,
}

/// Runs `openssl s_client` against 127.0.0.1:`port`, trusting the test CA, with `args`
/// (e.g. `["-tls1_1"]` or `["-tls1_2", "-cipher", "AES128-SHA256"]`). The security level is
/// lowered to 0 so the *client* really offers what it is told to, and it is the server that
/// refuses or accepts.
pub async fn openssl_probe(pki: &TestPki, port: u16, args: &[&str]) -> Probe {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-CAfile",
            &TestPki::path(&pki.ca_path),
            "-verify_return_error",
        ])
        .args(args)
        .stdin(Stdio::null());
    if !args.contains(&"-cipher") {
        cmd.args(["-cipher", "DEFAULT:@SECLEVEL=0"]);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("the openssl CLI runs"))
        .await
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let negotiated = output
        .lines()
        .any(|l| l.trim_start().starts_with("Cipher is ") || l.contains(", Cipher is "));
    Probe {
        connected: out.status.success() && negotiated && !output.contains("Cipher is (NONE)"),
        output,
    }
}
