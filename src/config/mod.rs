//! Typed settings from the environment (and `.env`), validated at load. A missing or bad
//! setting is one [`ConfigError`] naming it; secrets are held as `SecretString`.

mod abuse;
pub mod names;
mod providers;
mod reader;
mod tls;

use std::net::ToSocketAddrs;
use std::path::PathBuf;

use secrecy::SecretString;

pub use abuse::{AbuseSettings, DEFAULT_METRICS_ALLOW_CIDRS};
pub use providers::{provider_url, ProviderSettings};
use reader::{bad, Settings};

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

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {setting}: {problem}")]
pub struct ConfigError {
    pub setting: std::borrow::Cow<'static, str>,
    pub problem: String,
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
        let settings = Settings::new(&get);
        let database_url = DatabaseUrl::parse(
            &settings
                .raw("HAZINA_DATABASE_URL")
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
        )
        .map_err(|p| bad("HAZINA_DATABASE_URL", p))?;

        let bind = settings
            .raw("HAZINA_BIND")
            .unwrap_or_else(|| DEFAULT_BIND.into());
        if !bind
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.next().is_some())
        {
            return Err(bad(
                "HAZINA_BIND",
                format!("`{bind}` is not a host:port address"),
            ));
        }

        let keyring = match (
            settings.raw("HAZINA_KEYRING_DATA"),
            settings.path("HAZINA_KEYRING")?,
        ) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "HAZINA_KEYRING_DATA",
                    "set either HAZINA_KEYRING (a file) or HAZINA_KEYRING_DATA, not both",
                ))
            }
            (Some(data), None) => KeyringSource::Inline(SecretString::from(data)),
            (None, path) => {
                KeyringSource::File(path.unwrap_or_else(|| PathBuf::from(DEFAULT_KEYRING_FILE)))
            }
        };

        let owner_reveal = settings.flag("HAZINA_OWNER_REVEAL", true)?;
        let owner_operations = settings.flag("HAZINA_OWNER_OPERATIONS", true)?;
        let webhook_grace_seconds =
            settings.number("HAZINA_WEBHOOK_GRACE_SECONDS", 86_400, 0..=30 * 86_400)?;

        let audit_origin = match settings.raw("HAZINA_AUDIT_ORIGIN") {
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

        let audit_checkpoint_file = settings.path("HAZINA_AUDIT_CHECKPOINT_FILE")?;
        let audit_checkpoint_seconds =
            u64::from(settings.number("HAZINA_AUDIT_CHECKPOINT_SECONDS", 60, 1..=86_400)?);
        let audit_retention_min_days =
            settings.number("HAZINA_AUDIT_RETENTION_MIN_DAYS", 30, 0..=36_500)?;
        let audit_follow_max = settings.number("HAZINA_AUDIT_FOLLOW_MAX", 8, 1..=1_000)?;
        let max_versions = settings.number("HAZINA_MAX_VERSIONS", 50, 2..=10_000)?;
        let public_url = match settings.raw("HAZINA_PUBLIC_URL") {
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

        // Whole numbers of bytes and threads: each fits a u32.
        let max_body_bytes =
            settings.number("HAZINA_MAX_BODY_BYTES", 64 * 1024, 1024..=16 * 1024 * 1024)? as usize;
        let workers = settings
            .optional_number("HAZINA_WORKERS", 1..=256)?
            .map(|n| n as usize);
        let db_pool_size = settings.number("HAZINA_DB_POOL_SIZE", 16, 1..=512)?;

        let tls = tls::read(&settings)?;
        let abuse = abuse::read(&settings)?;
        let providers = providers::read(&settings)?;

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

/// Reads `.env` from the working directory if there is one; a malformed file is an error.
pub fn load_dotenv() -> Result<(), ConfigError> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(bad(".env", e.to_string())),
    }
}

#[cfg(test)]
mod tests;
