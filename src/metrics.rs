//! `/metrics`: counters and histograms in the Prometheus (OpenMetrics) text format.
//!
//! Every label takes its value from a closed set: route *patterns* from the route table (an
//! unmatched path is `unmatched`, never the path itself), standard method names (anything
//! else is `other`) and status codes. So no request can grow the number of series, and no
//! id, name or secret can appear in a label.
//!
//! Counters are per process, as a Prometheus scrape of each node expects.

use std::sync::atomic::Ordering;

use actix_web::dev::ResourceDef;

use actix_web::http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::audit::AuditLog;
use crate::domain::Provider;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which rate-limit budget refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    User,
    Address,
    Service,
}

impl Budget {
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::User => "user",
            Budget::Address => "address",
            Budget::Service => "service",
        }
    }
}

/// Whose failed logins started a lockout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockoutSubject {
    Account,
    Address,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    budget: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExchangeLabels {
    provider: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderErrorLabels {
    provider: &'static str,
    error: &'static str,
}

/// The token broker's counters (SPEC §9.4), labelled by provider slug, call kind
/// (`exchange`, `refresh`) and error kind: closed sets all. Never a token, never an id.
#[derive(Clone)]
pub struct BrokerMetrics {
    exchanges: Family<ExchangeLabels, Counter>,
    cache_hits: Family<ProviderLabels, Counter>,
    errors: Family<ProviderErrorLabels, Counter>,
    latency: Family<ExchangeLabels, Histogram, fn() -> Histogram>,
}

impl BrokerMetrics {
    fn register(registry: &mut Registry) -> Self {
        let exchanges = Family::<ExchangeLabels, Counter>::default();
        registry.register(
            "hazina_token_exchanges",
            "Calls to a provider's token endpoint that returned a token, by provider and kind (exchange, refresh)",
            exchanges.clone(),
        );
        let cache_hits = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "hazina_token_cache_hits",
            "access-token answers served from the in-memory token cache, by provider",
            cache_hits.clone(),
        );
        let errors = Family::<ProviderErrorLabels, Counter>::default();
        registry.register(
            "hazina_token_provider_errors",
            "Failed calls to a provider's token endpoint, by provider and error (status, rate_limited, timeout, unreachable, malformed)",
            errors.clone(),
        );
        let latency = Family::<ExchangeLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "hazina_token_exchange_duration_seconds",
            "Time a provider's token endpoint took to answer, by provider and kind",
            latency.clone(),
        );
        BrokerMetrics {
            exchanges,
            cache_hits,
            errors,
            latency,
        }
    }

    pub fn exchanged(&self, provider: Provider, kind: &'static str, seconds: f64) {
        let labels = ExchangeLabels {
            provider: provider.as_str(),
            kind,
        };
        self.exchanges.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }

    pub fn failed(
        &self,
        provider: Provider,
        kind: &'static str,
        error: &'static str,
        seconds: f64,
    ) {
        self.errors
            .get_or_create(&ProviderErrorLabels {
                provider: provider.as_str(),
                error,
            })
            .inc();
        self.latency
            .get_or_create(&ExchangeLabels {
                provider: provider.as_str(),
                kind,
            })
            .observe(seconds);
    }

    pub fn cache_hit(&self, provider: Provider) {
        self.cache_hits
            .get_or_create(&ProviderLabels {
                provider: provider.as_str(),
            })
            .inc();
    }
}

impl std::fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerMetrics").finish_non_exhaustive()
    }
}

/// Routes whose 200 answers hand out a decrypted private key.
const REVEAL_ROUTES: &[&str] = &[
    "/payments/credentials/{id}/get-private-key/",
    "/payments/credentials/lookup/get-private-key/",
];

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~4 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

pub struct Metrics {
    routes: RoutePatterns,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
    reveals: Counter,
    denials: Family<RequestLabels, Counter>,
    rate_limited: Family<BudgetLabels, Counter>,
    rate_limiter_keys: Gauge,
    login_throttled: Counter,
    login_lockouts: Family<SubjectLabels, Counter>,
    checkpoint_alarms: Counter,
    broker: BrokerMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry for one process; the audit writer's counters are read at each scrape.
    pub fn new(audit: AuditLog, routes: RoutePatterns) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "hazina_http_requests",
            "HTTP requests answered, by route pattern, method and status",
            requests.clone(),
        );
        let latency = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "hazina_http_request_duration_seconds",
            "Time to answer, by route pattern, method and status",
            latency.clone(),
        );
        let reveals = Counter::default();
        registry.register(
            "hazina_reveals",
            "Private keys handed out (successful reveals)",
            reveals.clone(),
        );
        let denials = Family::<RequestLabels, Counter>::default();
        registry.register(
            "hazina_denials",
            "Requests refused for their principal: 401, 403, 429, and 404 on credential routes",
            denials.clone(),
        );
        let rate_limited = Family::<BudgetLabels, Counter>::default();
        registry.register(
            "hazina_rate_limited",
            "Requests refused with 429 by a rate limit, by budget",
            rate_limited.clone(),
        );
        let rate_limiter_keys = Gauge::default();
        registry.register(
            "hazina_rate_limiter_keys",
            "Principals and addresses the rate limiters currently track (this process)",
            rate_limiter_keys.clone(),
        );
        let login_throttled = Counter::default();
        registry.register(
            "hazina_login_throttled",
            "Login attempts refused with 429 while an account or address was locked out",
            login_throttled.clone(),
        );
        let login_lockouts = Family::<SubjectLabels, Counter>::default();
        registry.register(
            "hazina_login_lockouts",
            "Lockouts started by failed logins, by account or address",
            login_lockouts.clone(),
        );
        let checkpoint_alarms = Counter::default();
        registry.register(
            "hazina_audit_checkpoint_alarms",
            "Times the checkpoint signer refused to sign because the audit log no longer extends its last checkpoint",
            checkpoint_alarms.clone(),
        );
        let broker = BrokerMetrics::register(&mut registry);
        registry.register_collector(Box::new(AuditCollector(audit)));
        Metrics {
            routes,
            broker,
            registry,
            requests,
            latency,
            reveals,
            denials,
            rate_limited,
            rate_limiter_keys,
            login_throttled,
            login_lockouts,
            checkpoint_alarms,
        }
    }

    /// Records one answered request. `pattern` is the matched route pattern, if routing got
    /// that far; a request refused before routing (429, 413, 431) is labelled by the pattern
    /// its `path` would have matched.
    pub fn observe_request(
        &self,
        pattern: Option<&str>,
        path: &str,
        method: &Method,
        status: StatusCode,
        seconds: f64,
    ) {
        let route = self.routes.label(pattern, path);
        let labels = RequestLabels {
            route,
            method: method_label(method),
            status: status.as_u16(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
        if status == StatusCode::OK && REVEAL_ROUTES.contains(&route) {
            self.reveals.inc();
        }
        let denied = matches!(status.as_u16(), 401 | 403 | 429)
            || (status == StatusCode::NOT_FOUND && route.starts_with("/payments/credentials/"));
        if denied {
            self.denials.get_or_create(&labels).inc();
        }
    }

    pub fn rate_limited(&self, budget: Budget) {
        self.rate_limited
            .get_or_create(&BudgetLabels {
                budget: budget.as_str(),
            })
            .inc();
    }

    pub fn set_rate_limiter_keys(&self, keys: usize) {
        self.rate_limiter_keys
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// The token broker's counters, to hand to [`crate::broker::Broker`].
    pub fn broker(&self) -> BrokerMetrics {
        self.broker.clone()
    }

    pub fn checkpoint_alarm(&self) {
        self.checkpoint_alarms.inc();
    }

    pub fn login_throttled(&self) {
        self.login_throttled.inc();
    }

    pub fn login_lockout(&self, subject: LockoutSubject) {
        let subject = match subject {
            LockoutSubject::Account => "account",
            LockoutSubject::Address => "address",
        };
        self.login_lockouts
            .get_or_create(&SubjectLabels { subject })
            .inc();
    }

    /// The whole registry as OpenMetrics text.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The route patterns requests are labelled by (the HTTP layer's route table, handed in at
/// start: metrics know no routes of their own).
pub struct RoutePatterns(Vec<(ResourceDef, &'static str)>);

impl RoutePatterns {
    /// From `(method, pattern)` pairs, in the order requests are matched.
    pub fn new(table: &[(&'static str, &'static str)]) -> Self {
        RoutePatterns(
            table
                .iter()
                .map(|(_, p)| (ResourceDef::new(*p), *p))
                .collect(),
        )
    }

    /// The table's own `&'static` pattern for `pattern` (or, without one, for the first
    /// route `path` matches), else `unmatched`.
    fn label(&self, pattern: Option<&str>, path: &str) -> &'static str {
        match pattern {
            Some(p) => self
                .0
                .iter()
                .find(|(_, known)| *known == p)
                .map(|(_, k)| *k),
            None => self
                .0
                .iter()
                .find(|(def, _)| def.is_match(path))
                .map(|(_, p)| *p),
        }
        .or_else(|| console_label(pattern, path))
        .unwrap_or("unmatched")
    }
}

/// Every console page shares one label (`/console/`): counted, never `unmatched`, and with
/// no path or id in it.
fn console_label(pattern: Option<&str>, path: &str) -> Option<&'static str> {
    const CONSOLE: &str = "/console/";
    let console = |p: &str| p == "/console" || p.starts_with(CONSOLE);
    (pattern.is_some_and(console) || (pattern.is_none() && console(path))).then_some(CONSOLE)
}

fn method_label(method: &Method) -> &'static str {
    const KNOWN: &[Method] = &[
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ];
    KNOWN
        .iter()
        .find(|m| *m == method)
        .map_or("other", |m| m.as_str())
}

/// The audit writer's counters, read at scrape time.
#[derive(Debug)]
struct AuditCollector(AuditLog);

impl Collector for AuditCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let counters = [
            (
                "hazina_audit_entries_written",
                "Audit entries durably committed",
                stats.written.load(Ordering::Relaxed)
                    + crate::audit::chain::CHANGE_ENTRIES.load(Ordering::Relaxed),
            ),
            (
                "hazina_audit_batches",
                "Audit group commits",
                stats.batches.load(Ordering::Relaxed),
            ),
            (
                "hazina_audit_write_failures",
                "Audit entries that could not be written (their requests failed closed)",
                stats.failures.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_closed_sets() {
        let routes = RoutePatterns::new(crate::routes::ROUTE_TABLE);
        let route_label = |pattern, path| routes.label(pattern, path);
        assert_eq!(route_label(Some("/healthz"), "/healthz"), "/healthz");
        assert_eq!(route_label(Some("/secret/../path"), "/x"), "unmatched");
        assert_eq!(route_label(None, "/no/such/thing"), "unmatched");
        assert_eq!(
            route_label(
                Some("/console/credentials/{id}/"),
                "/console/credentials/7/"
            ),
            "/console/"
        );
        assert_eq!(
            route_label(None, "/payments/credentials/42/get-private-key/"),
            "/payments/credentials/{id}/get-private-key/"
        );
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
