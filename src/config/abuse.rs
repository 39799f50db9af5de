//! Abuse resistance (SPEC §7, §15): rate limits, login throttling, who may read `/metrics`,
//! which proxies are believed.

use super::reader::Settings;
use super::ConfigError;

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

pub(super) fn read(settings: &Settings<'_>) -> Result<AbuseSettings, ConfigError> {
    let d = AbuseSettings::default();
    let metrics_allow_cidrs =
        settings.cidrs("HAZINA_METRICS_ALLOW_CIDRS", d.metrics_allow_cidrs)?;
    let trusted_proxies = settings.cidrs("HAZINA_TRUSTED_PROXIES", d.trusted_proxies)?;
    Ok(AbuseSettings {
        rate_limit_per_minute: settings.number(
            "HAZINA_RATE_LIMIT_PER_MINUTE",
            d.rate_limit_per_minute,
            0..=1_000_000,
        )?,
        service_rate_limit_per_minute: settings.number(
            "HAZINA_SERVICE_RATE_LIMIT_PER_MINUTE",
            d.service_rate_limit_per_minute,
            0..=10_000_000,
        )?,
        login_max_failures_account: settings.number(
            "HAZINA_LOGIN_MAX_FAILURES_ACCOUNT",
            d.login_max_failures_account,
            1..=1000,
        )?,
        login_max_failures_address: settings.number(
            "HAZINA_LOGIN_MAX_FAILURES_ADDRESS",
            d.login_max_failures_address,
            1..=100_000,
        )?,
        login_backoff_seconds: settings.number(
            "HAZINA_LOGIN_BACKOFF_SECONDS",
            d.login_backoff_seconds,
            1..=86_400,
        )?,
        metrics_allow_cidrs,
        trusted_proxies,
    })
}
