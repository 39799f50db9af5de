//! Where the token broker reaches each provider (`HAZINA_PROVIDER_*`, SPEC §9.4).

use rustls::pki_types::CertificateDer;

use super::reader::{bad, Settings};
use super::ConfigError;
use crate::domain::{Environment, Provider};

/// Where the token broker reaches each provider, and how patiently (SPEC §9.4).
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Base URLs (no trailing slash), per provider and environment: the published hosts
    /// unless `HAZINA_PROVIDER_<PROVIDER>_<ENVIRONMENT>_URL` says otherwise.
    urls: Vec<(Provider, Environment, String)>,
    /// Every call's timeout (`HAZINA_PROVIDER_TIMEOUT_SECONDS`, default 5).
    pub timeout: std::time::Duration,
    /// Roots trusted besides the Mozilla set (`HAZINA_PROVIDER_CA_FILE`, PEM): a private
    /// gateway's CA, a test CA.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// The published token hosts: Safaricom Daraja, KopoKopo, JPay Africa, Pagamio VAS.
const PROVIDER_HOSTS: [(Provider, &str, &str); 4] = [
    (
        Provider::Mpesa,
        "https://sandbox.safaricom.co.ke",
        "https://api.safaricom.co.ke",
    ),
    (
        Provider::KopoKopo,
        "https://sandbox.kopokopo.com",
        "https://api.kopokopo.com",
    ),
    (
        Provider::JPay,
        "https://sandbox.api.jpay.africa",
        "https://api.jpay.africa",
    ),
    (
        Provider::Pagamio,
        "https://vas-sandbox-api.pagamio.tech",
        "https://vas-api.pagamio.tech",
    ),
];

impl ProviderSettings {
    /// The base URL for `provider` in `environment` (empty for a provider with no token
    /// endpoint; the broker never calls one).
    pub fn url(&self, provider: Provider, environment: Environment) -> &str {
        self.urls
            .iter()
            .find(|(p, e, _)| *p == provider && *e == environment)
            .map(|(_, _, u)| u.as_str())
            .unwrap_or_default()
    }
}

/// A provider base URL: `https://host[:port][/prefix]`, or `http://` to a loopback address
/// (tests, local stubs); no credentials, query or fragment. Returned without a trailing `/`.
pub fn provider_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|_| "is not a URL such as https://api.example.com".to_owned())?;
    let host = url.host_str().ok_or("names no host")?;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err("must be https:// (plain http:// only to a loopback address)".into()),
        _ => return Err("must be an https:// URL".into()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold a user name or password".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

pub(super) fn read(settings: &Settings<'_>) -> Result<ProviderSettings, ConfigError> {
    let mut urls = Vec::new();
    for (provider, sandbox, live) in PROVIDER_HOSTS {
        for (environment, default) in [(Environment::Sandbox, sandbox), (Environment::Live, live)] {
            let setting = provider_setting_name(provider, environment);
            let url = match settings.raw(setting) {
                None => default.to_owned(),
                Some(raw) => provider_url(&raw).map_err(|p| ConfigError {
                    setting: setting.into(),
                    problem: format!("`{}` {p}", raw.trim()),
                })?,
            };
            urls.push((provider, environment, url));
        }
    }
    let timeout = std::time::Duration::from_secs(u64::from(settings.number(
        "HAZINA_PROVIDER_TIMEOUT_SECONDS",
        5,
        1..=60,
    )?));
    let extra_roots = match settings.path("HAZINA_PROVIDER_CA_FILE")? {
        None => Vec::new(),
        Some(path) => crate::tls::read_certificates("HAZINA_PROVIDER_CA_FILE", &path)
            .map_err(|e| bad(e.setting, e.problem))?,
    };
    Ok(ProviderSettings {
        urls,
        timeout,
        extra_roots,
    })
}

/// The setting that names `provider`'s `environment` base URL (spelled out: `ConfigError`
/// names its setting with a `&'static str`).
fn provider_setting_name(provider: Provider, environment: Environment) -> &'static str {
    match (provider, environment) {
        (Provider::Mpesa, Environment::Sandbox) => "HAZINA_PROVIDER_MPESA_SANDBOX_URL",
        (Provider::Mpesa, Environment::Live) => "HAZINA_PROVIDER_MPESA_LIVE_URL",
        (Provider::KopoKopo, Environment::Sandbox) => "HAZINA_PROVIDER_KOPOKOPO_SANDBOX_URL",
        (Provider::KopoKopo, Environment::Live) => "HAZINA_PROVIDER_KOPOKOPO_LIVE_URL",
        (Provider::JPay, Environment::Sandbox) => "HAZINA_PROVIDER_JPAY_SANDBOX_URL",
        (Provider::JPay, Environment::Live) => "HAZINA_PROVIDER_JPAY_LIVE_URL",
        (Provider::Pagamio, Environment::Sandbox) => "HAZINA_PROVIDER_PAGAMIO_SANDBOX_URL",
        (Provider::Pagamio, Environment::Live) => "HAZINA_PROVIDER_PAGAMIO_LIVE_URL",
        // IntaSend has no token endpoint: never read.
        (Provider::InstaSend, _) => "HAZINA_PROVIDER_<PROVIDER>_<ENVIRONMENT>_URL",
    }
}
