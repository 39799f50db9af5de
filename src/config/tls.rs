//! HTTPS (`HAZINA_TLS_*`): the files are read and a server configuration is built from them
//! at load, so a bad file stops start-up naming its setting. The settings' types live with
//! TLS ([`crate::tls`]), which builds the server from them.

use std::sync::Arc;

use super::reader::{bad, Settings};
use super::ConfigError;
use crate::tls::{ClientCa, TlsSettings};

/// `HAZINA_TLS_CERT` + `HAZINA_TLS_KEY` (both or neither), `HAZINA_TLS_CLIENT_CA` (needs
/// both), `HAZINA_TLS_REQUIRE_CLIENT_CERT` (`true` needs the CA). The files are read and a
/// server configuration is built from them, so a bad file stops start-up naming its setting.
pub(super) fn read(settings: &Settings<'_>) -> Result<Option<TlsSettings>, ConfigError> {
    let cert = settings.path("HAZINA_TLS_CERT")?;
    let key = settings.path("HAZINA_TLS_KEY")?;
    let client_ca = settings.path("HAZINA_TLS_CLIENT_CA")?;
    let client_crl = settings.path("HAZINA_TLS_CLIENT_CRL")?;
    let require_client_cert = settings.flag("HAZINA_TLS_REQUIRE_CLIENT_CERT", false)?;

    let (cert_path, key_path) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            return Err(bad(
                "HAZINA_TLS_KEY",
                "must be set together with HAZINA_TLS_CERT",
            ))
        }
        (None, Some(_)) => {
            return Err(bad(
                "HAZINA_TLS_CERT",
                "must be set together with HAZINA_TLS_KEY",
            ))
        }
        (None, None) if client_ca.is_some() => {
            return Err(bad(
                "HAZINA_TLS_CLIENT_CA",
                "needs HAZINA_TLS_CERT and HAZINA_TLS_KEY (client certificates are verified \
                 only over HTTPS)",
            ))
        }
        (None, None) if require_client_cert => {
            return Err(bad(
                "HAZINA_TLS_REQUIRE_CLIENT_CERT",
                "true needs HAZINA_TLS_CERT, HAZINA_TLS_KEY and HAZINA_TLS_CLIENT_CA",
            ))
        }
        (None, None) => return Ok(None),
    };
    if client_crl.is_some() && client_ca.is_none() {
        return Err(bad(
            "HAZINA_TLS_CLIENT_CRL",
            "needs HAZINA_TLS_CLIENT_CA (the CA whose client certificates it revokes)",
        ));
    }
    if require_client_cert && client_ca.is_none() {
        return Err(bad(
            "HAZINA_TLS_REQUIRE_CLIENT_CERT",
            "true needs HAZINA_TLS_CLIENT_CA (the CA that signs client certificates)",
        ));
    }

    let tls_bad = |e: crate::tls::TlsError| bad(e.setting, e.problem);
    let cert_chain =
        crate::tls::read_certificates("HAZINA_TLS_CERT", &cert_path).map_err(tls_bad)?;
    let key = crate::tls::read_private_key("HAZINA_TLS_KEY", &key_path).map_err(tls_bad)?;
    let client_ca = match client_ca {
        None => None,
        Some(path) => Some(ClientCa {
            roots: crate::tls::read_certificates("HAZINA_TLS_CLIENT_CA", &path).map_err(tls_bad)?,
            path,
        }),
    };
    let settings = TlsSettings {
        cert_path,
        cert_chain,
        key_path,
        key: Arc::new(key),
        client_ca,
        require_client_cert,
        client_crl,
    };
    crate::tls::server_config(&settings).map_err(tls_bad)?;
    if let Some(check) = crate::tls::CrlCheck::new(&settings).map_err(tls_bad)? {
        check.load().map_err(tls_bad)?;
    }
    Ok(Some(settings))
}
