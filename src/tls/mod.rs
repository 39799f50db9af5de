//! HTTPS and mutual TLS: the rustls server configuration, the client-certificate verifier,
//! and the peer's identity taken from the *leaf* certificate of a verified chain.
//!
//! ## What is guaranteed
//! - **TLS 1.2 and 1.3 only, forward secrecy only.** The crypto provider is aws-lc-rs's
//!   default with its cipher-suite list filtered through [`is_forward_secret`]: every TLS 1.3
//!   suite, and for TLS 1.2 only the `ECDHE_*` AEAD suites. A client that offers nothing
//!   else fails the handshake.
//! - **Client certificates are verified by webpki, never by us.** With
//!   `HAZINA_TLS_CLIENT_CA` the verifier is rustls's [`WebPkiClientVerifier`] over exactly
//!   that CA bundle (chain, validity period, signatures, key usage). There is no custom
//!   verifier and no `dangerous()` anywhere. Without `HAZINA_TLS_REQUIRE_CLIENT_CERT=true` a
//!   client may connect without a certificate (JWT callers); a certificate it does present
//!   must still verify, or the handshake fails.
//! - **Identity comes from the connection, never from a header.** [`on_connect`] stores a
//!   [`PeerIdentity`] in the connection's extensions only when rustls reports a verified
//!   chain; handlers read it with `req.conn_data::<PeerIdentity>()`.
//!
//! ## What is not
//! The server's private key is held in memory by rustls for the life of the process and is
//! not zeroized on drop (neither rustls nor `rustls-pki-types` does so).

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{CipherSuite, RootCertStore, ServerConfig, SupportedCipherSuite};
use sha2::{Digest, Sha256};

use crate::domain::looks_like_fingerprint;

mod settings;

pub use settings::{ClientCa, TlsSettings};

/// A TLS setting that cannot be used; `setting` names the environment variable.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct TlsError {
    pub setting: &'static str,
    pub problem: String,
}

fn tls_error(setting: &'static str, problem: impl Into<String>) -> TlsError {
    TlsError {
        setting,
        problem: problem.into(),
    }
}

/// The only TLS 1.2 suites hazina accepts: ephemeral ECDH key exchange with an AEAD cipher.
const FORWARD_SECRET_TLS12_SUITES: &[CipherSuite] = &[
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// Every TLS 1.3 suite is forward secret (its key exchange is always ephemeral); a TLS 1.2
/// suite is only when it is one of the `ECDHE_*` AEAD suites above.
pub fn is_forward_secret(suite: &SupportedCipherSuite) -> bool {
    match suite {
        SupportedCipherSuite::Tls13(_) => true,
        SupportedCipherSuite::Tls12(s) => FORWARD_SECRET_TLS12_SUITES.contains(&s.common.suite),
    }
}

/// aws-lc-rs's default provider, restricted to forward-secret suites.
pub fn crypto_provider() -> CryptoProvider {
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites.retain(is_forward_secret);
    provider
}

/// The server's configuration: TLS 1.3 and 1.2, forward-secret suites, the server chain and
/// key from the settings, and — with a client CA — webpki verification of client
/// certificates (optional unless `require_client_cert`).
pub fn server_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(crypto_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls_error("HAZINA_TLS_CERT", format!("no usable TLS version: {e}")))?;

    let verifier = match &settings.client_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in &ca.roots {
                roots.add(cert.clone()).map_err(|e| {
                    tls_error(
                        "HAZINA_TLS_CLIENT_CA",
                        format!(
                            "{} holds an unusable CA certificate: {e}",
                            ca.path.display()
                        ),
                    )
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if settings.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            verifier.build().map_err(|e| {
                tls_error(
                    "HAZINA_TLS_CLIENT_CA",
                    format!("cannot verify client certificates with it: {e}"),
                )
            })?
        }
    };

    builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(settings.cert_chain.clone(), settings.key.clone_key())
        .map_err(|e| {
            tls_error(
                "HAZINA_TLS_KEY",
                format!(
                    "cannot serve {} with this key: {e}",
                    settings.cert_path.display()
                ),
            )
        })
}

/// Every certificate in a PEM file, in file order (a server chain: leaf first).
pub fn read_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path)
        .map_err(|e| tls_error(setting, format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(setting, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(
            setting,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn read_private_key(
    setting: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path)
        .map_err(|e| tls_error(setting, format!("cannot read {}: {e}", path.display())))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        tls_error(
            setting,
            format!("{} holds no usable PEM private key: {e}", path.display()),
        )
    })
}

/// Who is at the other end of a mutually authenticated connection, from the leaf of the
/// chain rustls verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The leaf's first SAN URI, else its first DNS SAN, else `sha256:<fingerprint>`. The
    /// three kinds cannot collide: a DNS name has no `:`, and a URI that reads like a
    /// fingerprint (`sha256:…`) yields no identity at all.
    pub identity: String,
    /// Lowercase hex SHA-256 of the leaf certificate's DER.
    pub fingerprint: String,
    /// `HAZINA_TLS_CLIENT_CRL` revokes this certificate: it identifies nobody (the request
    /// is refused with 403 and audited, see `http::principal`).
    pub revoked: bool,
}

/// Why a verified certificate yields no identity (it is then treated as no certificate).
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the leaf certificate cannot be parsed")]
    Unparseable,
    #[error("the leaf certificate's subject alternative names cannot be read")]
    BadSubjectAltNames,
    #[error("the leaf certificate's first URI or DNS name holds unprintable characters")]
    UnprintableName,
    #[error("the leaf certificate's URI reads like a fingerprint identity (sha256:...)")]
    LooksLikeFingerprint,
}

impl PeerIdentity {
    /// The identity of a verified chain: always its **first** (leaf) certificate, never an
    /// intermediate or the CA that rustls may also report.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Result<Self, PeerIdentityError> {
        let leaf = chain.first().ok_or(PeerIdentityError::NoCertificate)?;
        Self::from_leaf(leaf)
    }

    /// The identity of one certificate: first SAN URI, else first DNS SAN, else its
    /// fingerprint. A name that is present but unprintable yields no identity at all rather
    /// than falling through to the next kind.
    pub fn from_leaf(leaf: &CertificateDer<'_>) -> Result<Self, PeerIdentityError> {
        let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|_| PeerIdentityError::Unparseable)?;
        let names = cert
            .subject_alternative_name()
            .map_err(|_| PeerIdentityError::BadSubjectAltNames)?
            .map(|ext| ext.value.general_names.as_slice())
            .unwrap_or_default();

        use x509_parser::extensions::GeneralName;
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
        let dns = names.iter().find_map(|n| match n {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        });
        let identity = match uri.or(dns) {
            Some(name) if looks_like_fingerprint(name) => {
                return Err(PeerIdentityError::LooksLikeFingerprint)
            }
            Some(name) if is_printable(name) => name.to_owned(),
            Some(_) => return Err(PeerIdentityError::UnprintableName),
            None => format!("sha256:{fingerprint}"),
        };
        Ok(PeerIdentity {
            identity,
            fingerprint,
            revoked: false,
        })
    }
}

fn is_printable(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic())
}

/// `HttpServer::on_connect` hook: after a TLS handshake that verified a client certificate,
/// stores the peer's [`PeerIdentity`] in the connection's extensions (marked revoked when the
/// CRL names it). A plain-TCP connection, or one without a client certificate, gets nothing.
pub fn on_connect(
    crl: Option<Arc<CrlCheck>>,
) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync + 'static {
    move |conn, ext| {
        let Some(stream) = conn.downcast_ref::<TlsStream<TcpStream>>() else {
            return;
        };
        let (_, session) = stream.get_ref();
        let Some(chain) = session.peer_certificates() else {
            return;
        };
        match PeerIdentity::from_chain(chain) {
            Ok(mut peer) => {
                peer.revoked = crl.as_ref().is_some_and(|crl| crl.revokes(chain));
                tracing::debug!(
                    peer.identity = %peer.identity,
                    peer.fingerprint = %peer.fingerprint,
                    peer.revoked = peer.revoked,
                    "client certificate verified"
                );
                ext.insert(peer);
            }
            Err(e) => tracing::warn!(
                error = %e,
                "a verified client certificate yields no identity; treating it as none"
            ),
        }
    }
}

/// The client-certificate revocation check of `HAZINA_TLS_CLIENT_CRL`. The CRLs are checked
/// by webpki (rustls's [`WebPkiClientVerifier`] with the CRLs, over the same CA, signatures
/// included), never by us; the file is re-read whenever its modification time, size or inode
/// changes, so a new CRL applies to the next connection without a restart. A CRL that can no
/// longer be read or parsed keeps the last good one in force (and says so in the log).
pub struct CrlCheck {
    path: std::path::PathBuf,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    current: std::sync::Mutex<
        Option<(
            CrlStamp,
            Arc<dyn rustls::server::danger::ClientCertVerifier>,
        )>,
    >,
}

type CrlStamp = (std::time::SystemTime, u64, u64);

fn crl_stamp(path: &Path) -> Option<CrlStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

impl CrlCheck {
    /// The check the settings ask for, if any (a CRL needs a client CA).
    pub fn new(settings: &TlsSettings) -> Result<Option<Arc<Self>>, TlsError> {
        let (Some(path), Some(ca)) = (&settings.client_crl, &settings.client_ca) else {
            return Ok(None);
        };
        let mut roots = RootCertStore::empty();
        for cert in &ca.roots {
            roots.add(cert.clone()).map_err(|e| {
                tls_error(
                    "HAZINA_TLS_CLIENT_CA",
                    format!("unusable CA certificate: {e}"),
                )
            })?;
        }
        Ok(Some(Arc::new(CrlCheck {
            path: path.clone(),
            roots: Arc::new(roots),
            provider: Arc::new(crypto_provider()),
            current: std::sync::Mutex::new(None),
        })))
    }

    /// Reads and parses the CRL file now (start-up refuses a bad one).
    pub fn load(&self) -> Result<(), TlsError> {
        let stamp = crl_stamp(&self.path);
        let verifier = self.build()?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = stamp.map(|s| (s, verifier));
        Ok(())
    }

    fn build(&self) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        use rustls::pki_types::CertificateRevocationListDer;
        let setting = "HAZINA_TLS_CLIENT_CRL";
        let bytes = std::fs::read(&self.path)
            .map_err(|e| tls_error(setting, format!("cannot read {}: {e}", self.path.display())))?;
        let crls: Vec<CertificateRevocationListDer<'static>> = if bytes.starts_with(b"-----BEGIN") {
            CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| tls_error(setting, format!("not valid PEM: {e}")))?
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
        if crls.is_empty() {
            return Err(tls_error(setting, "holds no certificate revocation list"));
        }
        WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
            .with_crls(crls)
            // A CRL that does not cover a certificate's issuer leaves it unrevoked; the chain
            // itself was verified at the handshake.
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| tls_error(setting, format!("cannot use it: {e}")))
    }

    /// The verifier for the CRL file as it is now (re-read if it changed).
    fn verifier(&self) -> Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
        let stamp = crl_stamp(&self.path);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = match (&*current, stamp) {
            (Some((loaded, _)), Some(now)) => *loaded != now,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if fresh {
            match self.build() {
                Ok(verifier) => {
                    tracing::info!(path = %self.path.display(), "client CRL (re)loaded");
                    *current = stamp.map(|s| (s, verifier));
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "the client CRL changed but cannot be used; the previous one stays in force"
                ),
            }
        }
        current.as_ref().map(|(_, v)| v.clone())
    }

    /// Whether the CRL revokes the leaf of this verified chain. A check that fails for any
    /// other reason counts as revoked (fail closed).
    pub fn revokes(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some(verifier) = self.verifier() else {
            return false;
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        match verifier.verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now()) {
            Ok(_) => false,
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => true,
            Err(e) => {
                tracing::warn!(error = %e, "client certificate revocation check failed; refusing it");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::{ClientCa, TlsSettings};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    use std::path::PathBuf;

    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl Ca {
        fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let issuer =
                CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            Ca { issuer }
        }

        fn der(&self) -> CertificateDer<'static> {
            self.issuer.der().clone()
        }

        fn leaf(
            &self,
            sans: Vec<SanType>,
            eku: ExtendedKeyUsagePurpose,
        ) -> (CertificateDer<'static>, KeyPair) {
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, "leaf");
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![eku];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.der().clone(), key)
        }

        fn client(&self, sans: Vec<SanType>) -> CertificateDer<'static> {
            self.leaf(sans, ExtendedKeyUsagePurpose::ClientAuth).0
        }
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    fn fingerprint(der: &CertificateDer<'_>) -> String {
        hex::encode(Sha256::digest(der.as_ref()))
    }

    #[test]
    fn the_identity_is_the_first_san_uri() {
        let ca = Ca::new("test CA");
        let cert = ca.client(vec![
            dns("billing.payments.internal"),
            uri("spiffe://payments/billing"),
            uri("spiffe://payments/other"),
        ]);
        let peer = PeerIdentity::from_leaf(&cert).unwrap();
        assert_eq!(peer.identity, "spiffe://payments/billing");
        assert_eq!(peer.fingerprint, fingerprint(&cert));
        assert_eq!(peer.fingerprint.len(), 64);
    }

    #[test]
    fn without_a_uri_the_identity_is_the_first_dns_name() {
        let ca = Ca::new("test CA");
        let cert = ca.client(vec![
            dns("billing.payments.internal"),
            dns("other.internal"),
        ]);
        let peer = PeerIdentity::from_leaf(&cert).unwrap();
        assert_eq!(peer.identity, "billing.payments.internal");
    }

    #[test]
    fn without_a_san_the_identity_is_the_sha256_fingerprint() {
        let ca = Ca::new("test CA");
        let cert = ca.client(vec![]);
        let peer = PeerIdentity::from_leaf(&cert).unwrap();
        assert_eq!(peer.identity, format!("sha256:{}", fingerprint(&cert)));
    }

    #[test]
    fn the_leaf_not_the_last_certificate_of_the_chain_is_the_identity() {
        let ca = Ca::new("test CA");
        let leaf = ca.client(vec![uri("spiffe://payments/billing")]);
        let intermediate = ca.client(vec![uri("spiffe://payments/intermediate")]);
        let chain = vec![leaf.clone(), intermediate, ca.der()];
        let peer = PeerIdentity::from_chain(&chain).unwrap();
        assert_eq!(peer.identity, "spiffe://payments/billing");
        assert_eq!(peer.fingerprint, fingerprint(&leaf));
    }

    #[test]
    fn an_empty_chain_or_garbage_yields_no_identity() {
        assert!(matches!(
            PeerIdentity::from_chain(&[]),
            Err(PeerIdentityError::NoCertificate)
        ));
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            PeerIdentity::from_leaf(&garbage),
            Err(PeerIdentityError::Unparseable)
        ));
    }

    #[test]
    fn an_unprintable_uri_yields_no_identity_rather_than_the_next_name() {
        let ca = Ca::new("test CA");
        let cert = ca.client(vec![uri("spiffe://a b"), dns("fallback.internal")]);
        assert!(matches!(
            PeerIdentity::from_leaf(&cert),
            Err(PeerIdentityError::UnprintableName)
        ));
    }

    #[test]
    fn only_forward_secret_suites_are_offered() {
        let provider = crypto_provider();
        assert!(!provider.cipher_suites.is_empty());
        assert!(provider.cipher_suites.iter().all(is_forward_secret));
        for suite in &provider.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name} is not forward secret"
            );
            assert!(
                name.contains("_GCM_") || name.contains("CHACHA20_POLY1305"),
                "{name} is not AEAD"
            );
        }
        // Both protocol generations stay available.
        assert!(provider
            .cipher_suites
            .iter()
            .any(|s| matches!(s, SupportedCipherSuite::Tls12(_))));
        assert!(provider
            .cipher_suites
            .iter()
            .any(|s| matches!(s, SupportedCipherSuite::Tls13(_))));
    }

    // ---- end to end: a real TLS server with the on_connect hook -------------------------

    struct Pki {
        ca: Ca,
        settings: TlsSettings,
    }

    fn pki(client_ca: bool, require: bool) -> Pki {
        let ca = Ca::new("test CA");
        let (server, key) = ca.leaf(
            vec![dns("localhost"), SanType::IpAddress([127, 0, 0, 1].into())],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let settings = TlsSettings {
            cert_path: PathBuf::from("server.pem"),
            cert_chain: vec![server],
            key_path: PathBuf::from("server.key"),
            key: Arc::new(PrivateKeyDer::Pkcs8(key.serialize_der().into())),
            client_ca: client_ca.then(|| ClientCa {
                path: PathBuf::from("ca.pem"),
                roots: vec![ca.der()],
            }),
            require_client_cert: require,
            client_crl: None,
        };
        Pki { ca, settings }
    }

    async fn whoami(req: actix_web::HttpRequest) -> String {
        req.conn_data::<PeerIdentity>()
            .map(|p| p.identity.clone())
            .unwrap_or_else(|| "anonymous".into())
    }

    /// Starts a one-worker HTTPS server with `on_connect`; its URL.
    fn serve(settings: &TlsSettings) -> String {
        use actix_web::{web, App, HttpServer};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(|| App::new().route("/", web::get().to(whoami)))
            .on_connect(on_connect(None))
            .workers(1)
            .listen_rustls_0_23(listener, server_config(settings).unwrap())
            .unwrap()
            .run();
        actix_web::rt::spawn(server);
        format!("https://127.0.0.1:{port}/")
    }

    fn client(ca: &Ca, identity: Option<(CertificateDer<'static>, KeyPair)>) -> reqwest::Client {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der()).unwrap();
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(vec![cert], PrivateKeyDer::Pkcs8(key.serialize_der().into()))
                .unwrap(),
        };
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .build()
            .unwrap()
    }

    #[actix_web::test]
    async fn a_verified_client_certificate_reaches_handlers_as_the_peer_identity() {
        let pki = pki(true, false);
        let url = serve(&pki.settings);
        let identity = pki.ca.leaf(
            vec![uri("spiffe://payments/billing")],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let body = client(&pki.ca, Some(identity))
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "spiffe://payments/billing");
    }

    #[actix_web::test]
    async fn a_connection_without_a_client_certificate_has_no_peer_identity() {
        let pki = pki(true, false);
        let url = serve(&pki.settings);
        let body = client(&pki.ca, None)
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "anonymous");
    }

    #[actix_web::test]
    async fn without_a_client_ca_no_certificate_is_asked_for_and_none_is_taken() {
        let pki = pki(false, false);
        let url = serve(&pki.settings);
        let identity = pki.ca.leaf(
            vec![uri("spiffe://payments/billing")],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let body = client(&pki.ca, Some(identity))
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "anonymous");
    }
}
