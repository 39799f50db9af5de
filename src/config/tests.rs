//! The settings as loaded from a test's own environment.

use super::*;
use crate::domain::{Environment, Provider};
use std::collections::HashMap;

fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| env.get(k).cloned())
}

#[test]
fn provider_urls_default_to_the_published_hosts_and_take_https_or_loopback_http() {
    let c = cfg(&[]).unwrap();
    assert_eq!(
        c.providers.url(Provider::Mpesa, Environment::Sandbox),
        "https://sandbox.safaricom.co.ke"
    );
    assert_eq!(
        c.providers.url(Provider::Pagamio, Environment::Live),
        "https://vas-api.pagamio.tech"
    );
    assert_eq!(c.providers.timeout, std::time::Duration::from_secs(5));
    let c = cfg(&[
        ("HAZINA_PROVIDER_JPAY_LIVE_URL", "http://127.0.0.1:9911/"),
        (
            "HAZINA_PROVIDER_KOPOKOPO_SANDBOX_URL",
            "https://gw.example.com/k2/",
        ),
        ("HAZINA_PROVIDER_MPESA_LIVE_URL", "http://[::1]:8000"),
        (
            "HAZINA_PROVIDER_PAGAMIO_SANDBOX_URL",
            "http://localhost:7000",
        ),
    ])
    .unwrap();
    assert_eq!(
        c.providers.url(Provider::JPay, Environment::Live),
        "http://127.0.0.1:9911"
    );
    assert_eq!(
        c.providers.url(Provider::KopoKopo, Environment::Sandbox),
        "https://gw.example.com/k2"
    );
    assert_eq!(
        c.providers.url(Provider::Mpesa, Environment::Live),
        "http://[::1]:8000"
    );
    for bad in [
        "http://api.example.com",
        "http://10.0.0.1:80",
        "ftp://127.0.0.1",
        "https://user:pw@api.example.com",
        "https://api.example.com/?x=1",
        "not a url",
        "",
    ] {
        let e = cfg(&[("HAZINA_PROVIDER_MPESA_SANDBOX_URL", bad)]).unwrap_err();
        assert_eq!(e.setting, "HAZINA_PROVIDER_MPESA_SANDBOX_URL", "{bad}");
    }
    for bad in ["0", "61", "five"] {
        let e = cfg(&[("HAZINA_PROVIDER_TIMEOUT_SECONDS", bad)]).unwrap_err();
        assert_eq!(e.setting, "HAZINA_PROVIDER_TIMEOUT_SECONDS");
    }
    let e = cfg(&[("HAZINA_PROVIDER_CA_FILE", "/nonexistent/ca.pem")]).unwrap_err();
    assert_eq!(e.setting, "HAZINA_PROVIDER_CA_FILE");
}

#[test]
fn defaults_need_no_configuration() {
    let c = cfg(&[]).unwrap();
    assert!(
        matches!(c.database_url, DatabaseUrl::Sqlite(ref p) if p == &PathBuf::from("hazina.db"))
    );
    assert_eq!(c.bind, "127.0.0.1:8080");
    assert!(c.owner_reveal);
    assert_eq!(c.audit_retention_min_days, 30);
}

#[test]
fn the_retention_minimum_is_a_number_of_days() {
    assert_eq!(
        cfg(&[("HAZINA_AUDIT_RETENTION_MIN_DAYS", "0")])
            .unwrap()
            .audit_retention_min_days,
        0
    );
    for nonsense in ["-1", "thirty", "", "36501"] {
        let e = cfg(&[("HAZINA_AUDIT_RETENTION_MIN_DAYS", nonsense)]).unwrap_err();
        assert_eq!(e.setting, "HAZINA_AUDIT_RETENTION_MIN_DAYS", "{nonsense}");
    }
}

#[test]
fn abuse_settings_default_to_the_spec_and_refuse_nonsense() {
    let a = cfg(&[]).unwrap().abuse;
    assert_eq!(a.rate_limit_per_minute, 100);
    assert_eq!(a.login_max_failures_account, 10);
    assert_eq!(a.login_max_failures_address, 30);
    assert_eq!(a.metrics_allow_cidrs.len(), 2);
    let off = cfg(&[("HAZINA_RATE_LIMIT_PER_MINUTE", "0")]).unwrap();
    assert_eq!(off.abuse.rate_limit_per_minute, 0);
    let none = cfg(&[("HAZINA_METRICS_ALLOW_CIDRS", "")]).unwrap();
    assert!(none.abuse.metrics_allow_cidrs.is_empty());
    for (setting, value) in [
        ("HAZINA_RATE_LIMIT_PER_MINUTE", "-1"),
        ("HAZINA_RATE_LIMIT_PER_MINUTE", "lots"),
        ("HAZINA_SERVICE_RATE_LIMIT_PER_MINUTE", "1.5"),
        ("HAZINA_LOGIN_MAX_FAILURES_ACCOUNT", "0"),
        ("HAZINA_LOGIN_MAX_FAILURES_ADDRESS", "0"),
        ("HAZINA_LOGIN_BACKOFF_SECONDS", "0"),
        ("HAZINA_METRICS_ALLOW_CIDRS", "127.0.0.1/32,localhost"),
    ] {
        let e = cfg(&[(setting, value)]).unwrap_err();
        assert_eq!(e.setting, setting, "{value}");
    }
}

#[test]
fn database_urls_pick_the_backend_by_scheme() {
    assert_eq!(
        DatabaseUrl::parse("sqlite:///tmp/x.db").unwrap().backend(),
        "sqlite"
    );
    assert_eq!(DatabaseUrl::parse("/tmp/x.db").unwrap().backend(), "sqlite");
    assert_eq!(
        DatabaseUrl::parse("postgres://u@h/db").unwrap().backend(),
        "postgres"
    );
    assert_eq!(
        DatabaseUrl::parse("postgresql://u@h/db").unwrap().backend(),
        "postgres"
    );
    assert!(DatabaseUrl::parse("mysql://u@h/db").is_err());
    assert!(DatabaseUrl::parse("").is_err());
}

#[test]
fn a_bad_setting_names_itself() {
    let e = cfg(&[("HAZINA_BIND", "nonsense")]).unwrap_err();
    assert_eq!(e.setting, "HAZINA_BIND");
    let e = cfg(&[("HAZINA_OWNER_REVEAL", "maybe")]).unwrap_err();
    assert_eq!(e.setting, "HAZINA_OWNER_REVEAL");
    assert!(e.to_string().contains("HAZINA_OWNER_REVEAL"));
}

/// A CA, a server certificate and key, and an unrelated key, as PEM files.
struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text);
        write("ca.pem", ca.pem()).unwrap();
        write("server.pem", server.pem()).unwrap();
        write("server.key", key.serialize_pem()).unwrap();
        write("other.key", KeyPair::generate().unwrap().serialize_pem()).unwrap();
        write("empty.pem", String::new()).unwrap();
        TlsFiles { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[test]
fn tls_is_off_unless_configured() {
    assert!(cfg(&[]).unwrap().tls.is_none());
}

#[test]
fn a_certificate_and_key_turn_tls_on_with_client_certificates_optional() {
    let f = TlsFiles::new();
    let c = cfg(&[
        ("HAZINA_TLS_CERT", &f.path("server.pem")),
        ("HAZINA_TLS_KEY", &f.path("server.key")),
    ])
    .unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.cert_chain.len(), 1);
    assert!(tls.client_ca.is_none());
    assert!(!tls.require_client_cert);

    let c = cfg(&[
        ("HAZINA_TLS_CERT", &f.path("server.pem")),
        ("HAZINA_TLS_KEY", &f.path("server.key")),
        ("HAZINA_TLS_CLIENT_CA", &f.path("ca.pem")),
        ("HAZINA_TLS_REQUIRE_CLIENT_CERT", "true"),
    ])
    .unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.client_ca.unwrap().roots.len(), 1);
    assert!(tls.require_client_cert);
}

#[test]
fn a_certificate_without_its_key_or_a_key_without_its_certificate_is_refused() {
    let f = TlsFiles::new();
    let e = cfg(&[("HAZINA_TLS_CERT", &f.path("server.pem"))]).unwrap_err();
    assert_eq!(e.setting, "HAZINA_TLS_KEY");
    let e = cfg(&[("HAZINA_TLS_KEY", &f.path("server.key"))]).unwrap_err();
    assert_eq!(e.setting, "HAZINA_TLS_CERT");
    let e = cfg(&[("HAZINA_TLS_CERT", ""), ("HAZINA_TLS_KEY", "x")]).unwrap_err();
    assert_eq!(e.setting, "HAZINA_TLS_CERT");
}

#[test]
fn a_client_ca_needs_a_server_certificate_and_requiring_one_needs_a_ca() {
    let f = TlsFiles::new();
    let e = cfg(&[("HAZINA_TLS_CLIENT_CA", &f.path("ca.pem"))]).unwrap_err();
    assert_eq!(e.setting, "HAZINA_TLS_CLIENT_CA");
    let e = cfg(&[("HAZINA_TLS_REQUIRE_CLIENT_CERT", "true")]).unwrap_err();
    assert_eq!(e.setting, "HAZINA_TLS_REQUIRE_CLIENT_CERT");
    let e = cfg(&[
        ("HAZINA_TLS_CERT", &f.path("server.pem")),
        ("HAZINA_TLS_KEY", &f.path("server.key")),
        ("HAZINA_TLS_REQUIRE_CLIENT_CERT", "true"),
    ])
    .unwrap_err();
    assert_eq!(e.setting, "HAZINA_TLS_REQUIRE_CLIENT_CERT");
    let e = cfg(&[
        ("HAZINA_TLS_CERT", &f.path("server.pem")),
        ("HAZINA_TLS_KEY", &f.path("server.key")),
        ("HAZINA_TLS_CLIENT_CA", &f.path("ca.pem")),
        ("HAZINA_TLS_REQUIRE_CLIENT_CERT", "sometimes"),
    ])
    .unwrap_err();
    assert_eq!(e.setting, "HAZINA_TLS_REQUIRE_CLIENT_CERT");
    // `false` without a CA is simply the default.
    assert!(cfg(&[("HAZINA_TLS_REQUIRE_CLIENT_CERT", "false")])
        .unwrap()
        .tls
        .is_none());
}

#[test]
fn an_unreadable_or_empty_tls_file_names_its_setting() {
    let f = TlsFiles::new();
    let cases = [
        ("HAZINA_TLS_CERT", "missing.pem", "server.key", "ca.pem"),
        ("HAZINA_TLS_CERT", "empty.pem", "server.key", "ca.pem"),
        ("HAZINA_TLS_KEY", "server.pem", "missing.key", "ca.pem"),
        ("HAZINA_TLS_KEY", "server.pem", "server.pem", "ca.pem"),
        (
            "HAZINA_TLS_CLIENT_CA",
            "server.pem",
            "server.key",
            "missing.pem",
        ),
        (
            "HAZINA_TLS_CLIENT_CA",
            "server.pem",
            "server.key",
            "empty.pem",
        ),
    ];
    for (setting, cert, key, ca) in cases {
        let e = cfg(&[
            ("HAZINA_TLS_CERT", &f.path(cert)),
            ("HAZINA_TLS_KEY", &f.path(key)),
            ("HAZINA_TLS_CLIENT_CA", &f.path(ca)),
        ])
        .unwrap_err();
        assert_eq!(e.setting, setting, "{cert} {key} {ca}: {e}");
        assert!(e.to_string().contains(setting));
    }
}

#[test]
fn a_key_that_does_not_match_the_certificate_names_the_key() {
    let f = TlsFiles::new();
    let e = cfg(&[
        ("HAZINA_TLS_CERT", &f.path("server.pem")),
        ("HAZINA_TLS_KEY", &f.path("other.key")),
    ])
    .unwrap_err();
    assert_eq!(e.setting, "HAZINA_TLS_KEY", "{e}");
}

#[test]
fn the_tls_private_key_never_appears_in_debug() {
    let f = TlsFiles::new();
    let c = cfg(&[
        ("HAZINA_TLS_CERT", &f.path("server.pem")),
        ("HAZINA_TLS_KEY", &f.path("server.key")),
    ])
    .unwrap();
    let pem = std::fs::read_to_string(f.path("server.key")).unwrap();
    let body_line = pem.lines().nth(1).unwrap();
    let debug = format!("{c:?}");
    assert!(debug.contains("[elided]"));
    assert!(!debug.contains(body_line));
}

#[test]
fn a_postgres_password_never_appears_in_debug() {
    let c = cfg(&[("HAZINA_DATABASE_URL", "postgres://u:hunter2pw@h/db")]).unwrap();
    assert!(!format!("{c:?}").contains("hunter2pw"));
}
