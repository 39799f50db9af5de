//! Rate limits and request-size limits (SPEC §7): the budgets, counted here, and applied by
//! the guard middleware ([`crate::http::guard`]) to every request before it reaches a
//! handler.
//!
//! ## What is guaranteed
//! - **Who is counted.** A request with a bearer token that *validates* (signature, claims,
//!   type; `state.tokens.validate`) counts against that user; a request with a verified
//!   client certificate and no token counts against that certificate (the service budget);
//!   anything else counts against its source address: the TCP peer, never a forwarded-for
//!   header, with IPv6 addresses taken by their /64 (one host usually holds a whole /64).
//!   An unvalidated `sub` is never trusted, so garbage tokens cannot spend someone else's
//!   budget; they spend their address's.
//! - **What the caller sees.** Every response under a limit carries `X-RateLimit-Limit` and
//!   `X-RateLimit-Remaining`; a refusal is `429 {"error": "Too many requests; retry later"}`
//!   with `Retry-After` (seconds). Refusals are counted in `/metrics` and audited at most
//!   once per key per minute, so a flood cannot flood the audit log.
//! - **Probes.** `GET`/`HEAD` of `/healthz` and `/readyz`, and of `/metrics` from an address
//!   its allowlist admits, count against no budget (a load balancer's probes would lock out
//!   its own address); nor do the console's compiled-in files under `/console/static/` (its
//!   pages keep their stylesheet during a burst). The size limits below still apply.
//! - **Sizes.** A `Content-Length` over `HAZINA_MAX_BODY_BYTES` is refused with 413 on every
//!   route, before the body is read; request heads over [`MAX_HEADER_BYTES`] (or with more
//!   than [`MAX_HEADERS`] fields) get 431. Both answer JSON. (Heads larger than actix-http's
//!   own 128 KiB parse buffer are refused by actix-http itself with an empty 431.)
//!
//! ## What is not
//! - **Rate-limit state is per process.** Several nodes behind a load balancer each allow the
//!   full budget, so a cluster of N nodes admits up to N × the limit per key. (Login
//!   throttling, which guards passwords, is shared through the database: see
//!   [`crate::repo::throttle`].)
//! - Memory stays bounded: keys whose budget has fully refilled are dropped every minute
//!   (`retain_recent`), and at once when more than [`MAX_TRACKED_KEYS`] are tracked.
//!
//! Time comes from the application [`Clock`], so tests move time instead of sleeping.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::audit::{Actor, ActorKind, Reason, RequestMeta};
use crate::clock::{Clock, UnixSeconds};
use crate::config::AbuseSettings;
use crate::metrics::Budget;

/// Request heads larger than this (all header names and values) answer 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Requests with more header fields than this answer 431.
pub const MAX_HEADERS: usize = 64;
/// Above this many tracked keys, stale ones are dropped at once rather than each minute.
pub const MAX_TRACKED_KEYS: usize = 100_000;
/// Keys remembered for audit aggregation at most; beyond it refusals are counted, not audited.
const MAX_AUDITED_KEYS: usize = 10_000;

/// Whose budget a request spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A user, by the id of a validated access token.
    User(i64),
    /// A source address (IPv6 by its /64).
    Address(IpAddr),
    /// A service, by its verified client certificate's SHA-256 fingerprint.
    Service(String),
}

impl RateKey {
    pub fn audit_key(&self) -> String {
        match self {
            RateKey::User(id) => format!("rate:user:{id}"),
            RateKey::Address(ip) => format!("rate:address:{ip}"),
            RateKey::Service(fingerprint) => format!("rate:service:{fingerprint}"),
        }
    }

    pub fn budget(&self) -> Budget {
        match self {
            RateKey::User(_) => Budget::User,
            RateKey::Address(_) => Budget::Address,
            RateKey::Service(_) => Budget::Service,
        }
    }

    pub fn actor(&self) -> Actor {
        match self {
            RateKey::User(id) => Actor {
                kind: ActorKind::User,
                id: Some(*id),
                name: None,
            },
            // The certificate fingerprint is in the entry's request metadata.
            RateKey::Service(_) => Actor {
                kind: ActorKind::Service,
                id: None,
                name: None,
            },
            RateKey::Address(_) => Actor::anonymous(),
        }
    }
}

/// The address a per-address limit (or login throttle) counts: IPv4 as is (IPv4-mapped IPv6
/// too), IPv6 by its /64 prefix.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
    }
}

/// Drives governor from the application clock: a manual clock (tests) moves only when told.
#[derive(Debug, Clone)]
pub struct LimiterClock {
    clock: Clock,
    origin: std::time::Instant,
}

impl governor::clock::Clock for LimiterClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        match &self.clock {
            Clock::System => self.origin.elapsed(),
            Clock::Manual(_) => Duration::from_secs(u64::try_from(self.clock.now()).unwrap_or(0)),
        }
    }
}

type Limiter =
    RateLimiter<RateKey, HashMapStateStore<RateKey>, LimiterClock, StateInformationMiddleware>;

/// One budget: a per-minute quota and the keyed limiter that enforces it.
struct Bucket {
    per_minute: u32,
    limiter: Limiter,
}

impl Bucket {
    fn new(per_minute: u32, clock: &LimiterClock) -> Option<Self> {
        let n = NonZeroU32::new(per_minute)?;
        let limiter = RateLimiter::hashmap_with_clock(Quota::per_minute(n), clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        Some(Bucket {
            per_minute,
            limiter,
        })
    }
}

/// The outcome of counting one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No limit applies (limiting is off for this kind of caller).
    Unlimited,
    Allowed {
        limit: u32,
        remaining: u32,
    },
    Refused {
        limit: u32,
        retry_after: u64,
        key: RateKey,
    },
}

/// The process's rate limiters. Per process by design (see the module documentation).
pub struct Limits {
    principals: Option<Bucket>,
    services: Option<Bucket>,
    clock: LimiterClock,
    /// The minute in which each key's refusals were last audited.
    audited: Mutex<HashMap<String, i64>>,
    last_maintenance: AtomicI64,
    last_login_cleanup: AtomicI64,
    checks: AtomicU64,
    /// Audit follow streams open now (see [`Limits::follow_permit`]).
    follow_streams: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field(
                "per_minute",
                &self.principals.as_ref().map(|b| b.per_minute),
            )
            .field(
                "service_per_minute",
                &self.services.as_ref().map(|b| b.per_minute),
            )
            .finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(settings: &AbuseSettings, clock: Clock) -> Self {
        let clock = LimiterClock {
            clock,
            origin: std::time::Instant::now(),
        };
        Limits {
            principals: Bucket::new(settings.rate_limit_per_minute, &clock),
            services: Bucket::new(settings.service_rate_limit_per_minute, &clock),
            audited: Mutex::new(HashMap::new()),
            last_maintenance: AtomicI64::new(clock.clock.now()),
            last_login_cleanup: AtomicI64::new(i64::MIN),
            checks: AtomicU64::new(0),
            follow_streams: Default::default(),
            clock,
        }
    }

    /// Counts one request against `key`'s budget.
    pub fn check(&self, key: &RateKey) -> Decision {
        self.maintain();
        let bucket = match key {
            RateKey::Service(_) => &self.services,
            RateKey::User(_) | RateKey::Address(_) => &self.principals,
        };
        let Some(bucket) = bucket else {
            return Decision::Unlimited;
        };
        match bucket.limiter.check_key(key) {
            Ok(snapshot) => Decision::Allowed {
                limit: bucket.per_minute,
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => {
                use governor::clock::Clock as _;
                let wait = not_until.wait_time_from(self.clock.now());
                Decision::Refused {
                    limit: bucket.per_minute,
                    retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                    key: key.clone(),
                }
            }
        }
    }

    /// Whether a refusal for `key` should be audited now: once per key per minute (for rate
    /// limits here, and for throttled logins), so a flood cannot flood the audit log.
    pub fn once_per_minute(&self, key: String) -> bool {
        let minute = self.clock.clock.now().div_euclid(60);
        let Ok(mut audited) = self.audited.lock() else {
            return false;
        };
        let full = audited.len() >= MAX_AUDITED_KEYS;
        match audited.get_mut(&key) {
            Some(last) if *last == minute => false,
            Some(last) => {
                *last = minute;
                true
            }
            None if full => false,
            None => {
                audited.insert(key, minute);
                true
            }
        }
    }

    /// Whether the denial of a request without a valid principal (a garbage refresh token,
    /// an unknown or revoked client certificate) should be audited now: once per (reason,
    /// source) per minute (SPEC §15), so no one can grow the audit log faster than that. The
    /// source is the certificate's fingerprint when there is one, else the address (IPv6 by
    /// its /64). Every denial is still counted in `/metrics` (`hazina_denials`).
    pub fn audit_denial(&self, reason: Reason, meta: &RequestMeta) -> bool {
        let source = match (&meta.cert_fingerprint, meta.source_ip) {
            (Some(fingerprint), _) => format!("certificate:{fingerprint}"),
            (None, Some(ip)) => format!("address:{}", address_key(ip)),
            (None, None) => "unknown".to_owned(),
        };
        self.once_per_minute(format!("denied:{}:{source}", reason.as_str()))
    }

    /// Drops keys whose budgets have refilled (they are indistinguishable from new ones),
    /// once a minute, or at once when too many are tracked.
    fn maintain(&self) {
        let now = self.clock.clock.now();
        let last = self.last_maintenance.load(Ordering::Relaxed);
        // The size is looked at every 1024 requests only: it takes the limiters' locks.
        let sample = self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(1024);
        let crowded = sample && now > last && self.tracked_keys() > MAX_TRACKED_KEYS;
        let due = now.saturating_sub(last) >= 60 || crowded;
        if !due
            || self
                .last_maintenance
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for bucket in [&self.principals, &self.services].into_iter().flatten() {
            bucket.limiter.retain_recent();
            bucket.limiter.shrink_to_fit();
        }
        let minute = now.div_euclid(60);
        if let Ok(mut audited) = self.audited.lock() {
            audited.retain(|_, last| *last >= minute);
            audited.shrink_to_fit();
        }
    }

    /// Keys the limiters hold right now.
    pub fn tracked_keys(&self) -> usize {
        [&self.principals, &self.services]
            .into_iter()
            .flatten()
            .map(|b| b.limiter.len())
            .sum()
    }

    /// Whether this process should sweep stale login-throttle rows now (every ten minutes).
    pub fn login_cleanup_due(&self, now: UnixSeconds) -> bool {
        let last = self.last_login_cleanup.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 600
            && self
                .last_login_cleanup
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// A place for one more audit follow stream, if fewer than `max` are open; the place is
    /// given back when the permit drops (the stream's thread ends).
    pub fn follow_permit(&self, max: u32) -> Option<FollowPermit> {
        let streams = std::sync::Arc::clone(&self.follow_streams);
        streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(FollowPermit(streams))
    }

    /// Whether any rate limit is on (start-up warns loudly when none is).
    pub fn enabled(&self) -> bool {
        self.principals.is_some()
    }

    /// Whether any budget is counted at all (users and addresses, or services).
    pub fn counts_anything(&self) -> bool {
        self.principals.is_some() || self.services.is_some()
    }
}

/// One open audit follow stream (see [`Limits::follow_permit`]).
#[derive(Debug)]
pub struct FollowPermit(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Drop for FollowPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_minute: u32) -> (Limits, Clock) {
        let clock = Clock::manual(1_700_000_000);
        let settings = AbuseSettings {
            rate_limit_per_minute: per_minute,
            service_rate_limit_per_minute: per_minute * 2,
            ..AbuseSettings::default()
        };
        (Limits::new(&settings, clock.clone()), clock)
    }

    #[test]
    fn a_key_gets_its_quota_per_minute_and_then_a_retry_time() {
        let (limits, clock) = limits(3);
        let alice = RateKey::User(1);
        for remaining in [2, 1, 0] {
            assert_eq!(
                limits.check(&alice),
                Decision::Allowed {
                    limit: 3,
                    remaining
                }
            );
        }
        assert_eq!(
            limits.check(&alice),
            Decision::Refused {
                limit: 3,
                retry_after: 20,
                key: alice.clone()
            }
        );
        // Another key is untouched; a service has its own, larger budget.
        assert!(matches!(
            limits.check(&RateKey::User(2)),
            Decision::Allowed { remaining: 2, .. }
        ));
        assert!(matches!(
            limits.check(&RateKey::Service("ab".into())),
            Decision::Allowed {
                limit: 6,
                remaining: 5
            }
        ));
        clock.advance(60);
        assert!(matches!(
            limits.check(&alice),
            Decision::Allowed { remaining: 2, .. }
        ));
    }

    #[test]
    fn zero_turns_limiting_off() {
        let (limits, _) = limits(0);
        assert!(!limits.enabled());
        for _ in 0..1000 {
            assert_eq!(limits.check(&RateKey::User(1)), Decision::Unlimited);
        }
    }

    #[test]
    fn refusals_are_audited_once_per_key_per_minute() {
        let (limits, clock) = limits(1);
        let key = RateKey::Address("192.0.2.1".parse().unwrap()).audit_key();
        assert!(limits.once_per_minute(key.clone()));
        assert!(!limits.once_per_minute(key.clone()));
        assert!(limits.once_per_minute(RateKey::User(7).audit_key()));
        clock.advance(60);
        assert!(limits.once_per_minute(key));
    }

    #[test]
    fn refilled_keys_are_forgotten() {
        let (limits, clock) = limits(5);
        for id in 0..100 {
            limits.check(&RateKey::User(id));
        }
        assert_eq!(limits.tracked_keys(), 100);
        clock.advance(61);
        limits.check(&RateKey::User(1000));
        assert_eq!(limits.tracked_keys(), 1);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
