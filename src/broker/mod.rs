//! The provider token broker (SPEC §9.4): services get a short-lived provider token, never
//! the app secret behind it.
//!
//! What it guarantees:
//! - **Tokens live in memory only**, as `SecretString` (zeroized on drop), one slot per
//!   credential. A slot is bound to the exact row and version that were opened for its
//!   exchange (owner, provider, environment, version, profile, envelope, `api_key`; see
//!   [`crate::vault::binding_of`]): a rotation, a rollback, an environment or key change (on
//!   any node), or an edit in the database, means the next call finds the slot bound to
//!   something else, opens the credential again, drops the slot and exchanges afresh; the node
//!   that made a change also drops it at once ([`Broker::forget`]), as it does on deactivation
//!   and deletion. Nothing is ever written to the database, a log line, an audit entry or a metric.
//! - **Reuse until 60 s before expiry**, then renewal: through the refresh token where the
//!   provider issues one (JPay, Pagamio; a refused refresh falls back to a full exchange),
//!   otherwise by exchanging the stored credentials again.
//! - **Single flight**: at most one call per credential is in flight in this process; every
//!   caller that arrives meanwhile awaits that call's outcome (a thousand concurrent callers
//!   cause one provider call, and share its failure too).
//! - **Backoff**: a provider's 429 stops calls for that credential for its `Retry-After`
//!   (default 30 s, at most 10 minutes); callers are told how long.
//! - **The network**: HTTPS with rustls on aws-lc-rs and the Mozilla roots (plus
//!   `HAZINA_PROVIDER_CA_FILE`), plain HTTP only to loopback (checked at load), no redirects,
//!   no proxy, a timeout on every call (`HAZINA_PROVIDER_TIMEOUT_SECONDS`, default 5), answers
//!   read up to 64 KiB. The request and answer bodies the HTTP client buffers are not zeroized
//!   (nor are those of the server's own requests); what hazina keeps is.
//!
//! The caller (the release gate, [`crate::vault::access_token`]) has already checked the
//! grant and opened the credential's envelope, so a row edited in the database never reaches
//! here; it writes the audit entry before the token leaves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::config::ProviderSettings;
use crate::domain::{Environment, Provider};
use crate::metrics::BrokerMetrics;
pub use crate::providers::exchange::Issued;
use crate::providers::exchange::{self, Body, Call, Kind, Token};

/// A cached token is handed out until this long before it expires, then renewed.
pub const RENEW_BEFORE_SECONDS: i64 = 60;
/// How long a provider's 429 stops calls when it sends no `Retry-After`.
pub const DEFAULT_BACKOFF_SECONDS: u64 = 30;
/// The most of a provider's answer that is read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why no token came back. Every message is safe to show: it names no secret and no URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The provider answered, but not with 2xx (nor 429).
    #[error("the provider's token endpoint answered HTTP {0}")]
    Status(u16),
    /// The provider said 429; no call is made for this many seconds.
    #[error("the provider is rate limiting token requests; retry in {0} s")]
    RateLimited(u64),
    #[error("the provider's token endpoint did not answer in time")]
    Timeout,
    #[error("the provider's token endpoint could not be reached")]
    Unreachable,
    #[error("the provider's answer was not a token")]
    Malformed,
}

impl Failure {
    /// The `error` label of `hazina_token_provider_errors`.
    fn label(&self) -> &'static str {
        match self {
            Failure::Status(_) => "status",
            Failure::RateLimited(_) => "rate_limited",
            Failure::Timeout => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::Malformed => "malformed",
        }
    }
}

/// The broker could not be built (a bad extra CA certificate).
#[derive(Debug, thiserror::Error)]
#[error("the provider HTTPS client could not be built: {0}")]
pub struct BuildError(String);

/// What a caller asks for: the credential version it opened, and its key and secret.
pub struct Ask<'a> {
    pub credential_id: i64,
    /// What the token is for ([`crate::vault::binding_of`]): a slot bound to anything else is
    /// dropped and exchanged afresh.
    pub binding: [u8; 32],
    pub provider: Provider,
    pub environment: Environment,
    /// The stored `api_key` (consumer key, client id, app key, username).
    pub key: &'a str,
    /// The opened `private_key` (consumer secret, client secret, app secret, password).
    pub secret: &'a SecretString,
    pub now: i64,
}

/// A slot's binding: the hash of the row and version its token was exchanged for.
type Binding = [u8; 32];

type Flight = Shared<BoxFuture<'static, Result<Arc<Issued>, Failure>>>;

struct Slot {
    binding: Binding,
    issued: Option<Arc<Issued>>,
    /// The call in flight, with its number (so a call that outlived its slot writes nothing).
    flight: Option<(u64, Flight)>,
    /// No call before this (Unix seconds): the provider said 429.
    backoff_until: i64,
}

impl Slot {
    fn new(binding: Binding) -> Self {
        Slot {
            binding,
            issued: None,
            flight: None,
            backoff_until: 0,
        }
    }

    /// Nothing left worth keeping at `now`: no usable token, no refresh token, no call.
    fn is_spent(&self, now: i64) -> bool {
        self.flight.is_none()
            && self.backoff_until <= now
            && self.issued.as_ref().is_none_or(|i| {
                i.access.expires_at <= now && i.refresh.as_ref().is_none_or(|r| r.expires_at <= now)
            })
    }
}

pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    settings: ProviderSettings,
    slots: Mutex<HashMap<i64, Slot>>,
    metrics: BrokerMetrics,
    flights: AtomicU64,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

/// The slot map's lock; a panic elsewhere never leaves it unusable (every change to a slot
/// is a single assignment).
fn lock(slots: &Mutex<HashMap<i64, Slot>>) -> MutexGuard<'_, HashMap<i64, Slot>> {
    slots
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Broker {
    pub fn new(settings: &ProviderSettings, metrics: BrokerMetrics) -> Result<Self, BuildError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in &settings.extra_roots {
            roots
                .add(cert.clone())
                .map_err(|e| BuildError(format!("HAZINA_PROVIDER_CA_FILE: {e}")))?;
        }
        let mut tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::crypto_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| BuildError(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("hazina/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError(e.to_string()))?;
        Ok(Broker {
            inner: Arc::new(Inner {
                http,
                settings: settings.clone(),
                slots: Mutex::new(HashMap::new()),
                metrics,
                flights: AtomicU64::new(0),
            }),
        })
    }

    /// The cached token for `binding`, while it has more than [`RENEW_BEFORE_SECONDS`] to
    /// live; `None` otherwise (then [`Broker::token`], after opening the credential).
    pub fn cached(
        &self,
        credential_id: i64,
        binding: &Binding,
        provider: Provider,
        now: i64,
    ) -> Option<Arc<Issued>> {
        let slots = lock(&self.inner.slots);
        let slot = slots.get(&credential_id)?;
        if slot.binding != *binding {
            return None;
        }
        let issued = slot.issued.as_ref()?;
        if now >= issued.access.expires_at - RENEW_BEFORE_SECONDS {
            return None;
        }
        self.inner.metrics.cache_hit(provider);
        Some(issued.clone())
    }

    /// A token for the asked version: the cached one while it has more than
    /// [`RENEW_BEFORE_SECONDS`] to live, else the outcome of the one call in flight for the
    /// credential (started here if there is none).
    pub async fn token(&self, ask: Ask<'_>) -> Result<Arc<Issued>, Failure> {
        let flight = {
            let mut slots = lock(&self.inner.slots);
            let binding = ask.binding;
            let slot = slots
                .entry(ask.credential_id)
                .or_insert_with(|| Slot::new(binding));
            if slot.binding != binding {
                // Another version (or key, or environment): its tokens go (zeroized) now.
                *slot = Slot::new(binding);
            }
            if let Some(issued) = &slot.issued {
                if ask.now < issued.access.expires_at - RENEW_BEFORE_SECONDS {
                    self.inner.metrics.cache_hit(ask.provider);
                    return Ok(issued.clone());
                }
            }
            if let Some((_, flight)) = &slot.flight {
                flight.clone()
            } else {
                if slot.backoff_until > ask.now {
                    return Err(Failure::RateLimited(
                        u64::try_from(slot.backoff_until - ask.now).unwrap_or(1),
                    ));
                }
                let refresh = slot
                    .issued
                    .as_ref()
                    .and_then(|i| i.refresh.as_ref())
                    .filter(|r| ask.now < r.expires_at - RENEW_BEFORE_SECONDS)
                    .map(|r| Token {
                        value: r.value.clone(),
                        expires_at: r.expires_at,
                    });
                let number = self.inner.flights.fetch_add(1, Ordering::Relaxed);
                let flight = fly(
                    self.inner.clone(),
                    number,
                    Trip {
                        credential_id: ask.credential_id,
                        provider: ask.provider,
                        environment: ask.environment,
                        key: ask.key.to_owned(),
                        secret: ask.secret.clone(),
                        refresh,
                        now: ask.now,
                    },
                )
                .boxed()
                .shared();
                slot.flight = Some((number, flight.clone()));
                flight
            }
        };
        flight.await
    }

    /// Drops the credential's tokens (a rotation, deactivation or deletion on this node).
    pub fn forget(&self, credential_id: i64) {
        lock(&self.inner.slots).remove(&credential_id);
    }

    /// Drops every slot with nothing left to use at `now` (expired tokens are zeroized then,
    /// not at the next call for their credential).
    pub fn sweep(&self, now: i64) {
        lock(&self.inner.slots).retain(|_, slot| !slot.is_spent(now));
    }

    /// How many credentials have a slot (tests, diagnostics).
    pub fn slots(&self) -> usize {
        lock(&self.inner.slots).len()
    }

    /// How many callers await the call in flight for `credential_id` (tests, diagnostics).
    pub fn waiting(&self, credential_id: i64) -> usize {
        lock(&self.inner.slots)
            .get(&credential_id)
            .and_then(|slot| slot.flight.as_ref())
            .and_then(|(_, flight)| flight.strong_count())
            // The slot's own handle is not a caller.
            .map_or(0, |handles| handles.saturating_sub(1))
    }
}

/// What one call needs, owned: it outlives the request that started it.
struct Trip {
    credential_id: i64,
    provider: Provider,
    environment: Environment,
    key: String,
    secret: SecretString,
    refresh: Option<Token>,
    now: i64,
}

/// One flight: a refresh where there is a refresh token (falling back to an exchange if the
/// provider refuses it), else an exchange; then the outcome goes into the slot, if the slot
/// is still the one this flight was started for.
async fn fly(inner: Arc<Inner>, number: u64, trip: Trip) -> Result<Arc<Issued>, Failure> {
    let outcome = renew(&inner, &trip).await.map(Arc::new);
    let mut slots = lock(&inner.slots);
    if let Some(slot) = slots.get_mut(&trip.credential_id) {
        if slot.flight.as_ref().is_some_and(|(n, _)| *n == number) {
            slot.flight = None;
            match &outcome {
                Ok(issued) => slot.issued = Some(issued.clone()),
                Err(Failure::RateLimited(seconds)) => {
                    slot.backoff_until = trip
                        .now
                        .saturating_add(i64::try_from(*seconds).unwrap_or(600));
                }
                Err(_) => {}
            }
        }
    }
    outcome
}

async fn renew(inner: &Inner, trip: &Trip) -> Result<Issued, Failure> {
    if let Some(refresh) = &trip.refresh {
        if let Some(call) = exchange::refresh_request(trip.provider, &refresh.value) {
            match inner.call(trip, Kind::Refresh, call).await {
                Ok(mut issued) => {
                    // A refresh answer without a new refresh token keeps the old one.
                    if issued.refresh.is_none() {
                        issued.refresh = Some(Token {
                            value: refresh.value.clone(),
                            expires_at: refresh.expires_at,
                        });
                    }
                    return Ok(issued);
                }
                // The refresh token was refused (expired, revoked): exchange afresh.
                Err(Failure::Status(400 | 401 | 403)) => {}
                Err(other) => return Err(other),
            }
        }
    }
    let call = exchange::request(trip.provider, &trip.key, &trip.secret);
    inner.call(trip, Kind::Exchange, call).await
}

impl Inner {
    /// One request to the provider, timed and counted.
    async fn call(&self, trip: &Trip, kind: Kind, call: Call) -> Result<Issued, Failure> {
        let started = Instant::now();
        let outcome = self.send(trip, call).await;
        let seconds = started.elapsed().as_secs_f64();
        match &outcome {
            Ok(_) => self
                .metrics
                .exchanged(trip.provider, kind.as_str(), seconds),
            Err(failure) => {
                self.metrics
                    .failed(trip.provider, kind.as_str(), failure.label(), seconds);
                tracing::warn!(
                    provider = trip.provider.as_str(),
                    environment = trip.environment.as_str(),
                    kind = kind.as_str(),
                    error = %failure,
                    "provider token call failed"
                );
            }
        }
        outcome
    }

    async fn send(&self, trip: &Trip, call: Call) -> Result<Issued, Failure> {
        use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
        let url = format!(
            "{}{}",
            self.settings.url(trip.provider, trip.environment),
            call.path
        );
        let request = self
            .http
            .request(call.method, url)
            .header(ACCEPT, "application/json");
        let request = match &call.body {
            Body::Basic { user, password } => {
                request.basic_auth(user, Some(password.expose_secret()))
            }
            Body::Form(fields) => {
                let fields: Vec<(&str, &str)> = fields
                    .iter()
                    .map(|(k, v)| (*k, v.expose_secret()))
                    .collect();
                request.form(&fields)
            }
            Body::Json(fields) => {
                let object: std::collections::BTreeMap<&str, &str> = fields
                    .iter()
                    .map(|(k, v)| (*k, v.expose_secret()))
                    .collect();
                let body = serde_json::to_vec(&object).map_err(|_| Failure::Malformed)?;
                request.header(CONTENT_TYPE, "application/json").body(body)
            }
        };
        let mut response = request.send().await.map_err(failure_of)?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let header = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok());
            return Err(Failure::RateLimited(
                exchange::retry_after(header).unwrap_or(DEFAULT_BACKOFF_SECONDS),
            ));
        }
        if !status.is_success() {
            return Err(Failure::Status(status.as_u16()));
        }
        let mut body = Zeroizing::new(Vec::new());
        while let Some(chunk) = response.chunk().await.map_err(failure_of)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(Failure::Malformed);
            }
            body.extend_from_slice(&chunk);
        }
        exchange::parse(trip.provider, &body, trip.now).map_err(|_| Failure::Malformed)
    }
}

fn failure_of(e: reqwest::Error) -> Failure {
    // The cause (DNS, TLS, connection) helps an operator; it holds the URL, never a body.
    tracing::debug!(cause = ?e, "provider call failed");
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_decode() || e.is_body() {
        Failure::Malformed
    } else {
        Failure::Unreachable
    }
}
