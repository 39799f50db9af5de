//! HTTPS settings as loaded (`HAZINA_TLS_*`, read and checked by `config`): what the TLS
//! server and the client-certificate checks are built from.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// HTTPS settings, read and checked at load (`HAZINA_TLS_*`): the server's chain and key,
/// and optionally the CA whose client certificates are verified (mutual TLS).
#[derive(Clone)]
pub struct TlsSettings {
    pub cert_path: PathBuf,
    /// Leaf first, as in the PEM file.
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key_path: PathBuf,
    /// The server's private key; never printed (see the `Debug` below).
    pub key: Arc<PrivateKeyDer<'static>>,
    pub client_ca: Option<ClientCa>,
    /// Refuse connections that present no client certificate (needs `client_ca`).
    pub require_client_cert: bool,
    /// Certificate revocation lists for client certificates (`HAZINA_TLS_CLIENT_CRL`, PEM or
    /// DER), re-read whenever the file changes; needs `client_ca`.
    pub client_crl: Option<PathBuf>,
}

/// The CA bundle that signs client certificates (`HAZINA_TLS_CLIENT_CA`).
#[derive(Clone)]
pub struct ClientCa {
    pub path: PathBuf,
    pub roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert_path", &self.cert_path)
            .field("certificates", &self.cert_chain.len())
            .field("key_path", &self.key_path)
            .field("key", &"[elided]")
            .field("client_ca", &self.client_ca)
            .field("require_client_cert", &self.require_client_cert)
            .field("client_crl", &self.client_crl)
            .finish()
    }
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("path", &self.path)
            .field("certificates", &self.roots.len())
            .finish()
    }
}
