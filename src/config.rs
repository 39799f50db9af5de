//! Typed settings from the environment (and `.env`), validated at load. A missing or bad
//! setting is one [`ConfigError`] naming it; secrets are held as `SecretString`.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use secrecy::SecretString;

use crate::domain::{Environment, Provider};

/// Where the data lives; the scheme picks the backend.
#[derive(Debug, Clone)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    /// The full URL, which may hold a password.
    Postgres(SecretString),
}

impl DatabaseUrl {
    /// `sqlite://<path>`, `sqlite:<path>` or a bare path → SQLite; `postgres://` or
    /// `postgresql://` → PostgreSQL; any other scheme is refused.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(SecretString::from(raw.to_owned())));
        }
        let path = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
            .unwrap_or(raw);
        if path.is_empty() {
            return Err("the sqlite URL names no file".into());
        }
        if let Some((scheme, _)) = raw.split_once("://") {
            if scheme != "sqlite" {
                return Err(format!(
                    "unsupported scheme `{scheme}` (use sqlite:// or postgres://)"
                ));
            }
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            DatabaseUrl::Sqlite(_) => "sqlite",
            DatabaseUrl::Postgres(_) => "postgres",
        }
    }
}

/// Where the master keyring comes from.
#[derive(Debug, Clone)]
pub enum KeyringSource {
    /// A file (mode 0600). Created as a development keyring on first run when missing.
    File(PathBuf),
    /// The keyring JSON itself, from `HAZINA_KEYRING_DATA`.
    Inline(SecretString),
}

// The HTTPS settings' types live with TLS (which builds the server from them); they are
// read and checked here.
pub use crate::tls::{ClientCa, TlsSettings};

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: DatabaseUrl,
    pub bind: String,
    pub keyring: KeyringSource,
    pub owner_reveal: bool,
    /// Owners may run provider operations on their own credentials (`HAZINA_OWNER_OPERATIONS`,
    /// default true).
    pub owner_operations: bool,
    /// After a rotation, how long the previous version's webhook secret still validates
    /// (`HAZINA_WEBHOOK_GRACE_SECONDS`, default 86,400).
    pub webhook_grace_seconds: u32,
    /// The audit log's origin in its checkpoints (`HAZINA_AUDIT_ORIGIN`); `None` = the random
    /// name fixed in the database at the first start.
    pub audit_origin: Option<String>,
    /// Where a signed checkpoint is appended every `audit_checkpoint_seconds` while the log
    /// grows (`HAZINA_AUDIT_CHECKPOINT_FILE`; none by default).
    pub audit_checkpoint_file: Option<PathBuf>,
    pub audit_checkpoint_seconds: u64,
    /// `hazina audit archive` refuses to archive entries younger than this many days unless
    /// forced (`HAZINA_AUDIT_RETENTION_MIN_DAYS`, default 30).
    pub audit_retention_min_days: u32,
    /// Follow streams (`GET /audit/export/?follow=true`, the console's live view) open at
    /// once at most (`HAZINA_AUDIT_FOLLOW_MAX`, default 8); one more answers 429.
    pub audit_follow_max: u32,
    /// Versions a credential keeps at most (`HAZINA_MAX_VERSIONS`, default 50); writing one
    /// more shreds the oldest that is not current, in the same transaction, audited.
    pub max_versions: u32,
    /// Where browsers reach this vault (`HAZINA_PUBLIC_URL`), when a TLS-terminating proxy
    /// stands in front: `https://…` makes the console's cookies `__Host-` and `Secure` and
    /// sends HSTS, as hazina's own TLS does.
    pub public_url: Option<String>,
    pub max_body_bytes: usize,
    pub workers: Option<usize>,
    pub db_pool_size: u32,
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Abuse resistance (SPEC §7): rate limits, login throttling, who may read `/metrics`.
    pub abuse: AbuseSettings,
    /// Where the token broker reaches each provider (SPEC §9.4).
    pub providers: ProviderSettings,
}

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

fn provider_settings(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<ProviderSettings, ConfigError> {
    let mut urls = Vec::new();
    for (provider, sandbox, live) in PROVIDER_HOSTS {
        for (environment, default) in [(Environment::Sandbox, sandbox), (Environment::Live, live)] {
            let setting = provider_setting_name(provider, environment);
            let url = match get(setting) {
                None => default.to_owned(),
                Some(raw) => provider_url(&raw).map_err(|p| ConfigError {
                    setting,
                    problem: format!("`{}` {p}", raw.trim()),
                })?,
            };
            urls.push((provider, environment, url));
        }
    }
    let timeout = std::time::Duration::from_secs(u64::from(number(
        get,
        "HAZINA_PROVIDER_TIMEOUT_SECONDS",
        5,
        1..=60,
    )?));
    let extra_roots = match get("HAZINA_PROVIDER_CA_FILE") {
        None => Vec::new(),
        Some(path) => crate::tls::read_certificates(
            "HAZINA_PROVIDER_CA_FILE",
            std::path::Path::new(path.trim()),
        )
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

/// Rate limits, login throttling and the `/metrics` allowlist (`HAZINA_RATE_LIMIT_*`,
/// `HAZINA_LOGIN_*`, `HAZINA_METRICS_ALLOW_CIDRS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbuseSettings {
    /// Requests per minute for each user and for each unauthenticated source address;
    /// `0` turns rate limiting off (start-up says so loudly).
    pub rate_limit_per_minute: u32,
    /// Requests per minute for each service (by client-certificate fingerprint); `0` = off.
    pub service_rate_limit_per_minute: u32,
    /// Consecutive failed logins for one account before further attempts get 429.
    pub login_max_failures_account: u32,
    /// Failed logins from one address before further attempts from it get 429.
    pub login_max_failures_address: u32,
    /// The first lockout's length; each further failure doubles it (up to a cap).
    pub login_backoff_seconds: u32,
    /// Addresses that may read `/metrics` without an admin token.
    pub metrics_allow_cidrs: Vec<ipnet::IpNet>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (`HAZINA_TRUSTED_PROXIES`); by
    /// default none, and the TCP peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for AbuseSettings {
    fn default() -> Self {
        AbuseSettings {
            rate_limit_per_minute: 100,
            service_rate_limit_per_minute: 6000,
            login_max_failures_account: 10,
            login_max_failures_address: 30,
            login_backoff_seconds: 60,
            metrics_allow_cidrs: DEFAULT_METRICS_ALLOW_CIDRS
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl AbuseSettings {
    /// Whether a request from the TCP peer `peer` (never a forwarded-for address) may read
    /// `/metrics` without an admin token.
    pub fn metrics_allowed_from(&self, peer: Option<std::net::SocketAddr>) -> bool {
        peer.is_some_and(|peer| {
            let ip = peer.ip().to_canonical();
            self.metrics_allow_cidrs.iter().any(|net| net.contains(&ip))
        })
    }
}

pub const DEFAULT_METRICS_ALLOW_CIDRS: &[&str] = &["127.0.0.1/32", "::1/128"];

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

/// Every setting `serve` reads, with its default: what `hazina serve --help` prints (a test
/// checks that every setting this module reads is here).
pub const SETTINGS_HELP: &str = "\
Settings (environment variables; a .env file in the working directory is read too):
  HAZINA_DATABASE_URL                    sqlite://hazina.db   sqlite://<path> or postgres://user[:password]@host[:port]/db
  HAZINA_BIND                            127.0.0.1:8080       host:port to listen on
  HAZINA_KEYRING                         hazina.keyring       master keyring file (mode 0600)
  HAZINA_KEYRING_DATA                    (none)               the keyring JSON itself, instead of a file
  HAZINA_LOG                             info                 log filter (tracing EnvFilter syntax), checked at start-up
  HAZINA_OWNER_REVEAL                    true                 false leaves reveals (and stk-password) to services only
  HAZINA_OWNER_OPERATIONS                true                 false leaves provider operations to services only
  HAZINA_WEBHOOK_GRACE_SECONDS           86400                the previous webhook secret's validity after a rotation
  HAZINA_MAX_BODY_BYTES                  65536                larger request bodies answer 413
  HAZINA_WORKERS                         (CPU count)          HTTP worker threads
  HAZINA_DB_POOL_SIZE                    16                   database connections per process
  HAZINA_RATE_LIMIT_PER_MINUTE           100                  per user and per other address; 0 = off
  HAZINA_SERVICE_RATE_LIMIT_PER_MINUTE   6000                 per service certificate; 0 = unlimited
  HAZINA_LOGIN_MAX_FAILURES_ACCOUNT      10                   failed logins per name before 429
  HAZINA_LOGIN_MAX_FAILURES_ADDRESS      30                   failed logins per address before 429
  HAZINA_LOGIN_BACKOFF_SECONDS           60                   the first lockout; doubles per failure, at most an hour
  HAZINA_METRICS_ALLOW_CIDRS             127.0.0.1/32,::1/128 who reads /metrics without a token
  HAZINA_TRUSTED_PROXIES                 (none)               proxies whose X-Forwarded-For is believed
  HAZINA_TLS_CERT, HAZINA_TLS_KEY        (none)               serve HTTPS with this PEM chain and key
  HAZINA_TLS_CLIENT_CA                   (none)               verify client certificates signed by this CA
  HAZINA_TLS_REQUIRE_CLIENT_CERT         false                refuse connections without a client certificate
  HAZINA_TLS_CLIENT_CRL                  (none)               client-certificate revocation lists, re-read on change
  HAZINA_AUDIT_ORIGIN                    (random, fixed)      the audit log's name in its checkpoints
  HAZINA_AUDIT_CHECKPOINT_FILE           (none)               append signed checkpoints to this file
  HAZINA_AUDIT_CHECKPOINT_SECONDS        60                   how often
  HAZINA_AUDIT_RETENTION_MIN_DAYS        30                   audit archive keeps entries younger than this
  HAZINA_AUDIT_FOLLOW_MAX                8                    audit follow streams open at once; more answer 429
  HAZINA_MAX_VERSIONS                    50                   versions a credential keeps; one more shreds the oldest
  HAZINA_PUBLIC_URL                      (none)               where browsers reach the vault; https:// behind a proxy
                                                              makes console cookies __Host- and Secure, and sends HSTS
  HAZINA_PROVIDER_MPESA_SANDBOX_URL      https://sandbox.safaricom.co.ke
  HAZINA_PROVIDER_MPESA_LIVE_URL         https://api.safaricom.co.ke
  HAZINA_PROVIDER_KOPOKOPO_SANDBOX_URL   https://sandbox.kopokopo.com
  HAZINA_PROVIDER_KOPOKOPO_LIVE_URL      https://api.kopokopo.com
  HAZINA_PROVIDER_JPAY_SANDBOX_URL       https://sandbox.api.jpay.africa
  HAZINA_PROVIDER_JPAY_LIVE_URL          https://api.jpay.africa
  HAZINA_PROVIDER_PAGAMIO_SANDBOX_URL    https://vas-sandbox-api.pagamio.tech
  HAZINA_PROVIDER_PAGAMIO_LIVE_URL       https://vas-api.pagamio.tech
                                                              token broker base URLs (http:// only to loopback)
  HAZINA_PROVIDER_TIMEOUT_SECONDS        5                    every provider call's timeout
  HAZINA_PROVIDER_CA_FILE                (none)               extra PEM roots for provider calls
";

pub const DEFAULT_DATABASE_URL: &str = "sqlite://hazina.db";
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
pub const DEFAULT_KEYRING_FILE: &str = "hazina.keyring";

impl Config {
    /// Whether browsers reach this vault over HTTPS: its own TLS, or a TLS-terminating
    /// proxy named by `HAZINA_PUBLIC_URL=https://…`. Then the console's cookies are
    /// `__Host-` prefixed and `Secure`, and HSTS is sent (SPEC §15).
    pub fn served_over_https(&self) -> bool {
        self.tls.is_some()
            || self
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
    }

    /// Reads the process environment (call [`load_dotenv`] first to honour `.env`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get`, so tests can supply their own environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let database_url = DatabaseUrl::parse(
            &get("HAZINA_DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
        )
        .map_err(|p| bad("HAZINA_DATABASE_URL", p))?;

        let bind = get("HAZINA_BIND").unwrap_or_else(|| DEFAULT_BIND.into());
        if !bind
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.next().is_some())
        {
            return Err(bad(
                "HAZINA_BIND",
                format!("`{bind}` is not a host:port address"),
            ));
        }

        let keyring = match (get("HAZINA_KEYRING_DATA"), get("HAZINA_KEYRING")) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "HAZINA_KEYRING_DATA",
                    "set either HAZINA_KEYRING (a file) or HAZINA_KEYRING_DATA, not both",
                ))
            }
            (Some(data), None) => KeyringSource::Inline(SecretString::from(data)),
            (None, Some(path)) if path.trim().is_empty() => {
                return Err(bad("HAZINA_KEYRING", "must not be empty"))
            }
            (None, path) => KeyringSource::File(PathBuf::from(
                path.unwrap_or_else(|| DEFAULT_KEYRING_FILE.into()),
            )),
        };

        let owner_reveal = match get("HAZINA_OWNER_REVEAL") {
            None => true,
            Some(v) => {
                parse_bool(&v).ok_or_else(|| bad("HAZINA_OWNER_REVEAL", "must be true or false"))?
            }
        };

        let owner_operations = match get("HAZINA_OWNER_OPERATIONS") {
            None => true,
            Some(v) => parse_bool(&v)
                .ok_or_else(|| bad("HAZINA_OWNER_OPERATIONS", "must be true or false"))?,
        };
        let webhook_grace_seconds = number(
            &get,
            "HAZINA_WEBHOOK_GRACE_SECONDS",
            86_400,
            0..=30 * 86_400,
        )?;

        let audit_origin = match get("HAZINA_AUDIT_ORIGIN") {
            None => None,
            Some(v) => {
                let ok = !v.is_empty()
                    && v.len() <= 200
                    && v.chars().all(|c| c.is_ascii_graphic() && c != '+');
                if !ok {
                    return Err(bad(
                        "HAZINA_AUDIT_ORIGIN",
                        "must be 1 to 200 printable characters, with no space or `+` \
                         (a schema-less URL such as vault.example.com/audit)",
                    ));
                }
                Some(v)
            }
        };

        let audit_checkpoint_file = match get("HAZINA_AUDIT_CHECKPOINT_FILE") {
            Some(v) if v.trim().is_empty() => {
                return Err(bad("HAZINA_AUDIT_CHECKPOINT_FILE", "must not be empty"))
            }
            v => v.map(PathBuf::from),
        };
        let audit_checkpoint_seconds = u64::from(number(
            &get,
            "HAZINA_AUDIT_CHECKPOINT_SECONDS",
            60,
            1..=86_400,
        )?);
        let audit_retention_min_days =
            number(&get, "HAZINA_AUDIT_RETENTION_MIN_DAYS", 30, 0..=36_500)?;
        let audit_follow_max = number(&get, "HAZINA_AUDIT_FOLLOW_MAX", 8, 1..=1_000)?;
        let max_versions = number(&get, "HAZINA_MAX_VERSIONS", 50, 2..=10_000)?;
        let public_url = match get("HAZINA_PUBLIC_URL") {
            None => None,
            Some(v) => {
                let v = v.trim().trim_end_matches('/').to_owned();
                let host = v
                    .strip_prefix("https://")
                    .or_else(|| v.strip_prefix("http://"));
                if !host.is_some_and(|h| !h.is_empty() && !h.contains(char::is_whitespace)) {
                    return Err(bad(
                        "HAZINA_PUBLIC_URL",
                        "must be an http:// or https:// URL, such as https://vault.example.com",
                    ));
                }
                Some(v)
            }
        };

        let max_body_bytes = match get("HAZINA_MAX_BODY_BYTES") {
            None => 64 * 1024,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1024..=16 * 1024 * 1024).contains(n))
                .ok_or_else(|| {
                    bad(
                        "HAZINA_MAX_BODY_BYTES",
                        "must be a number of bytes from 1024 to 16777216",
                    )
                })?,
        };

        let workers = match get("HAZINA_WORKERS") {
            None => None,
            Some(v) => Some(
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| bad("HAZINA_WORKERS", "must be a number from 1 to 256"))?,
            ),
        };

        let db_pool_size = match get("HAZINA_DB_POOL_SIZE") {
            None => 16,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=512).contains(n))
                .ok_or_else(|| bad("HAZINA_DB_POOL_SIZE", "must be a number from 1 to 512"))?,
        };

        let tls = tls_settings(&get)?;
        let abuse = abuse_settings(&get)?;
        let providers = provider_settings(&get)?;

        Ok(Config {
            database_url,
            bind,
            keyring,
            owner_reveal,
            owner_operations,
            webhook_grace_seconds,
            audit_origin,
            audit_checkpoint_file,
            audit_checkpoint_seconds,
            audit_retention_min_days,
            audit_follow_max,
            max_versions,
            public_url,
            max_body_bytes,
            workers,
            db_pool_size,
            tls,
            abuse,
            providers,
        })
    }
}

/// A whole number from `range`, or `default` when unset.
fn number(
    get: &impl Fn(&str) -> Option<String>,
    setting: &'static str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ConfigError> {
    match get(setting) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                bad(
                    setting,
                    format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )
            }),
    }
}

/// A comma-separated list of CIDR ranges (empty entries ignored); `default` when unset.
fn cidr_list(
    get: &impl Fn(&str) -> Option<String>,
    setting: &'static str,
    default: Vec<ipnet::IpNet>,
) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    match get(setting) {
        None => Ok(default),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<ipnet::IpNet>().map_err(|_| {
                    bad(
                        setting,
                        format!("`{c}` is not a CIDR range such as 127.0.0.1/32"),
                    )
                })
            })
            .collect(),
    }
}

fn abuse_settings(get: &impl Fn(&str) -> Option<String>) -> Result<AbuseSettings, ConfigError> {
    let d = AbuseSettings::default();
    let metrics_allow_cidrs = cidr_list(get, "HAZINA_METRICS_ALLOW_CIDRS", d.metrics_allow_cidrs)?;
    let trusted_proxies = cidr_list(get, "HAZINA_TRUSTED_PROXIES", d.trusted_proxies)?;
    Ok(AbuseSettings {
        rate_limit_per_minute: number(
            get,
            "HAZINA_RATE_LIMIT_PER_MINUTE",
            d.rate_limit_per_minute,
            0..=1_000_000,
        )?,
        service_rate_limit_per_minute: number(
            get,
            "HAZINA_SERVICE_RATE_LIMIT_PER_MINUTE",
            d.service_rate_limit_per_minute,
            0..=10_000_000,
        )?,
        login_max_failures_account: number(
            get,
            "HAZINA_LOGIN_MAX_FAILURES_ACCOUNT",
            d.login_max_failures_account,
            1..=1000,
        )?,
        login_max_failures_address: number(
            get,
            "HAZINA_LOGIN_MAX_FAILURES_ADDRESS",
            d.login_max_failures_address,
            1..=100_000,
        )?,
        login_backoff_seconds: number(
            get,
            "HAZINA_LOGIN_BACKOFF_SECONDS",
            d.login_backoff_seconds,
            1..=86_400,
        )?,
        metrics_allow_cidrs,
        trusted_proxies,
    })
}

/// `HAZINA_TLS_CERT` + `HAZINA_TLS_KEY` (both or neither), `HAZINA_TLS_CLIENT_CA` (needs
/// both), `HAZINA_TLS_REQUIRE_CLIENT_CERT` (`true` needs the CA). The files are read and a
/// server configuration is built from them, so a bad file stops start-up naming its setting.
fn tls_settings(get: &impl Fn(&str) -> Option<String>) -> Result<Option<TlsSettings>, ConfigError> {
    let path = |setting: &'static str| match get(setting) {
        Some(v) if v.trim().is_empty() => Err(bad(setting, "must not be empty")),
        v => Ok(v.map(PathBuf::from)),
    };
    let cert = path("HAZINA_TLS_CERT")?;
    let key = path("HAZINA_TLS_KEY")?;
    let client_ca = path("HAZINA_TLS_CLIENT_CA")?;
    let client_crl = path("HAZINA_TLS_CLIENT_CRL")?;
    let require_client_cert = match get("HAZINA_TLS_REQUIRE_CLIENT_CERT") {
        None => false,
        Some(v) => parse_bool(&v)
            .ok_or_else(|| bad("HAZINA_TLS_REQUIRE_CLIENT_CERT", "must be true or false"))?,
    };

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

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Reads `.env` from the working directory if there is one; a malformed file is an error.
pub fn load_dotenv() -> Result<(), ConfigError> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(bad(".env", e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
