//! The HTTP layer's view of a request, computed once and handed down as plain data: its id,
//! and the [`RequestMeta`] (client address, client certificate, request id) that audit
//! entries record. Nothing below this layer knows an `HttpRequest`.

pub mod guard;
pub mod principal;

pub use principal::{AuthenticatedService, AuthenticatedUser, Caller};

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};

use crate::audit::RequestMeta;

/// The reverse proxies whose `X-Forwarded-For` is believed (`HAZINA_TRUSTED_PROXIES`), as
/// the application registers them for [`client_ip`].
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

/// The client's address. The TCP peer — unless the peer is one of `HAZINA_TRUSTED_PROXIES`:
/// then `X-Forwarded-For` is read from the right (each proxy appends the address it received
/// the request from), skipping trusted proxies, and the first address that is not one is the
/// client. Everything left of it is the client's own claim and never believed; an entry that
/// is not an address ends the walk at the last trusted hop. With no trusted proxies (the
/// default) the header is ignored entirely.
pub fn client_ip(req: &HttpRequest) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr()?.ip().to_canonical();
    let Some(trusted) = req.app_data::<web::Data<TrustedProxies>>() else {
        return Some(peer);
    };
    let trusted = &trusted.0;
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<&str> = Vec::new();
    for value in req.headers().get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return Some(peer);
        };
        hops.extend(text.split(','));
    }
    let mut last_trusted = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else {
            return Some(last_trusted);
        };
        let ip = ip.to_canonical();
        if !is_trusted(&ip) {
            return Some(ip);
        }
        last_trusted = ip;
    }
    Some(last_trusted)
}

/// The id of one request: on every log line (via the span) and in `X-Request-Id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestMeta {
    /// The request's metadata: the client's address (the TCP peer, or what a trusted proxy
    /// says: see [`client_ip`]), its verified client certificate's
    /// fingerprint, and the request id.
    pub fn of(req: &HttpRequest) -> Self {
        RequestMeta {
            source_ip: client_ip(req),
            cert_fingerprint: req
                .conn_data::<crate::tls::PeerIdentity>()
                .map(|p| p.fingerprint.clone()),
            request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        }
    }
}

impl FromRequest for RequestMeta {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(Ok(RequestMeta::of(req)))
    }
}

/// A signed-in user's request, as every user-facing handler takes it: the shared state, the
/// user (session, account and allowlist checked by [`AuthenticatedUser`]) and the request's
/// metadata for its audit entries. One extractor instead of three, extracted in the order
/// the three were: the state, then the user, then the metadata.
pub struct UserRequest {
    pub state: web::Data<crate::state::AppState>,
    pub user: AuthenticatedUser,
    pub meta: RequestMeta,
}

impl FromRequest for UserRequest {
    type Error = crate::error::ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<crate::state::AppState>>().cloned();
        let user = AuthenticatedUser::from_request(req, payload);
        let req = req.clone();
        Box::pin(async move {
            let state = state.ok_or_else(|| {
                crate::error::ApiError::internal(anyhow::anyhow!(
                    "the application state is missing"
                ))
            })?;
            let user = user.await?;
            Ok(UserRequest {
                state,
                user,
                meta: RequestMeta::of(&req),
            })
        })
    }
}
