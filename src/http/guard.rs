//! The guard every request passes before a handler (SPEC §7, §15): it picks the budget a
//! request spends (a validated bearer token's user, a verified client certificate's service,
//! a console page's session cookie's user, else the source address), counts it in
//! [`crate::limits::Limits`], then checks the head and body sizes. Refusals answer JSON, or
//! the console's page on console paths, and are audited once per key per minute.

use std::future::{ready, Ready};

use actix_web::body::EitherBody;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{web, HttpMessage, HttpRequest, ResponseError};
use futures_util::future::LocalBoxFuture;

use super::client_ip;
use super::principal::bearer_token;
use crate::audit::{Action, Event, Outcome, Reason, RequestMeta};
use crate::auth::jwt::TokenType;
use crate::error::{ApiError, TOO_MANY_REQUESTS};
use crate::limits::{address_key, Decision, Limits, RateKey, MAX_HEADERS, MAX_HEADER_BYTES};
use crate::state::AppState;
use crate::tls::PeerIdentity;

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

/// Whose budget `req` spends.
/// `console_token` is the access token of a console page's session cookie, if any.
fn key_for(req: &HttpRequest, state: &AppState, console_token: Option<String>) -> Option<RateKey> {
    if let Some(token) = bearer_token(req) {
        let claims = state
            .tokens
            .validate(token, TokenType::Access, state.clock.now());
        if let Some((claims, user)) = claims.ok().and_then(|c| c.user_id().map(|u| (c, u))) {
            // Authentication reuses these claims instead of validating the token again.
            req.extensions_mut()
                .insert(super::principal::ValidatedAccess(claims));
            return Some(RateKey::User(user.get()));
        }
    } else if let Some(peer) = req.conn_data::<PeerIdentity>() {
        return Some(RateKey::Service(peer.fingerprint.clone()));
    } else if let Some(token) = console_token {
        // A console page's session cookie: its user's budget when it validates, else the
        // address's — checked before the cookie's refresh token is ever spent (SPEC §15).
        let claims = state
            .tokens
            .validate(&token, TokenType::Access, state.clock.now());
        if let Some((claims, user)) = claims.ok().and_then(|c| c.user_id().map(|u| (c, u))) {
            // The cookie session and the page's authentication reuse them.
            req.extensions_mut()
                .insert(super::principal::ValidatedAccess(claims));
            return Some(RateKey::User(user.get()));
        }
    }
    client_ip(req).map(|ip| RateKey::Address(address_key(ip)))
}

/// Counts `req` against the budget it spends. With every limit off, nothing is
/// computed at all (not even the token check that picks the key).
fn decide(
    limits: &Limits,
    req: &HttpRequest,
    state: &AppState,
    console: &ConsolePages,
) -> Decision {
    if !limits.counts_anything() {
        return Decision::Unlimited;
    }
    let console_token = (console.access_token)(req, state.config.served_over_https());
    match key_for(req, state, console_token) {
        Some(key) => limits.check(&key),
        None => Decision::Unlimited,
    }
}

fn set_rate_headers(headers: &mut header::HeaderMap, limit: u32, remaining: u32) {
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(remaining));
}

/// Whether the request head is over [`MAX_HEADER_BYTES`] or [`MAX_HEADERS`].
fn head_too_large(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return true;
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    bytes + req.uri().to_string().len() > MAX_HEADER_BYTES
}

/// Whether a declared `Content-Length` is over `max`.
fn body_too_large(req: &ServiceRequest, max: usize) -> bool {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
}

/// Rate limits, then head and body size limits, for every request.
pub struct Guard(pub ConsolePages);

/// What the guard needs to know of the console (handed in by the application: the limiter
/// sits below the pages it guards).
#[derive(Clone, Copy)]
pub struct ConsolePages {
    /// Every console path starts with it.
    pub prefix: &'static str,
    /// Where its compiled-in files are (outside every rate limit: see [`is_probe`]).
    pub static_prefix: &'static str,
    /// The access token of a console page's session cookie (`https`: the cookies' names
    /// under HTTPS), for the budget it spends.
    pub access_token: fn(&HttpRequest, bool) -> Option<String>,
    /// The page a refusal shows on a console path.
    pub refusal: fn(&ApiError) -> actix_web::HttpResponse,
}

impl<S, B> Transform<S, ServiceRequest> for Guard
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = GuardMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(GuardMiddleware {
            service,
            console: self.0,
        }))
    }
}

pub struct GuardMiddleware<S> {
    service: S,
    console: ConsolePages,
}

impl<S, B> Service<ServiceRequest> for GuardMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
            let fut = self.service.call(req);
            return Box::pin(async move { Ok(fut.await?.map_into_left_body()) });
        };
        // A load balancer's probes never spend (or are refused by) a budget: otherwise its
        // own address would lock itself out. `/metrics` stays guarded by its allowlist.
        let decision = if is_probe(&req, &state, &self.console) {
            Decision::Unlimited
        } else {
            decide(&state.limits, req.request(), &state, &self.console)
        };
        let console = self.console;
        let refuse = move |req: ServiceRequest, error: ApiError, decision: &Decision| {
            let mut res = if req.path().starts_with(console.prefix) {
                (console.refusal)(&error)
            } else {
                error.error_response()
            };
            match decision {
                Decision::Allowed { limit, remaining } => {
                    set_rate_headers(res.headers_mut(), *limit, *remaining)
                }
                Decision::Refused { limit, .. } => set_rate_headers(res.headers_mut(), *limit, 0),
                Decision::Unlimited => {}
            }
            req.into_response(res).map_into_right_body()
        };

        if let Decision::Refused {
            retry_after, key, ..
        } = &decision
        {
            state.metrics.rate_limited(key.budget());
            tracing::debug!(budget = key.budget().as_str(), "rate limit: refused");
            let error = ApiError::TooManyRequests {
                message: TOO_MANY_REQUESTS,
                retry_after: *retry_after,
            };
            if !state.limits.once_per_minute(key.audit_key()) {
                return Box::pin(ready(Ok(refuse(req, error, &decision))));
            }
            // The first refusal per key per minute waits for its audit entry; the rest of a
            // flood is answered at once and only counted.
            let event = Event::new(
                state.clock.now_micros(),
                key.actor(),
                &RequestMeta::of(req.request()),
                Action::RateLimited,
            )
            .outcome(Outcome::Denied, Some(Reason::RateLimited));
            tracing::warn!(
                budget = key.budget().as_str(),
                "rate limit exceeded (audited once per key per minute)"
            );
            return Box::pin(async move {
                state.audit.record_best_effort(event).await;
                Ok(refuse(req, error, &decision))
            });
        }
        if head_too_large(&req) {
            return Box::pin(ready(Ok(refuse(req, ApiError::HeadersTooLarge, &decision))));
        }
        if body_too_large(&req, state.config.max_body_bytes) {
            return Box::pin(ready(Ok(refuse(req, ApiError::PayloadTooLarge, &decision))));
        }

        let fut = self.service.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            if let Decision::Allowed { limit, remaining } = decision {
                set_rate_headers(res.headers_mut(), limit, remaining);
            }
            Ok(res.map_into_left_body())
        })
    }
}

/// `GET` or `HEAD` of `/healthz` or `/readyz`, of `/metrics` from an address its allowlist
/// admits (a scraper), or of the console's compiled-in files (a page must not render
/// unstyled because a burst spent its address's budget; they touch neither the database nor
/// a key): outside every rate limit. Anyone else's `/metrics` (an admin's token checked
/// against the database each time) keeps its budget.
fn is_probe(req: &ServiceRequest, state: &AppState, console: &ConsolePages) -> bool {
    if !matches!(
        *req.method(),
        actix_web::http::Method::GET | actix_web::http::Method::HEAD
    ) {
        return false;
    }
    match req.path() {
        "/healthz" | "/readyz" => true,
        "/metrics" => state.config.abuse.metrics_allowed_from(req.peer_addr()),
        path => path.starts_with(console.static_prefix),
    }
}
