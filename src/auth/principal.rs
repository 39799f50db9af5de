//! Who is calling. The only source of identity is a verified bearer token (and, for
//! services, a verified client certificate); no request header ever sets or changes it.

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

use super::jwt::{Claims, TokenType};
use crate::audit::{Action, Actor, Event, Outcome, Reason, RequestMeta};
use crate::db::sessions;
use crate::domain::{Role, UserId};
use crate::error::ApiError;
use crate::startup::AppState;
use crate::tls::PeerIdentity;

pub const UNAUTHENTICATED: &str = "Authentication credentials were not provided or are invalid";
pub const SERVICE_FORBIDDEN: &str = "Services may only fetch the keys they are granted";
pub const UNKNOWN_SERVICE: &str = "This client certificate is not a registered, enabled service";
pub const OUTSIDE_ALLOWLIST: &str = "Requests from this address are not allowed for this principal";

/// A user authenticated by a live access token.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser {
    pub id: UserId,
    pub username: String,
    pub role: Role,
    pub session_id: String,
}

impl AuthenticatedUser {
    /// Callers that may own credentials (users and admins). Auditors never touch secrets.
    pub fn require_owner(&self) -> Result<UserId, ApiError> {
        match self.role {
            Role::User | Role::Admin => Ok(self.id),
            Role::Auditor => Err(ApiError::Forbidden(
                "Auditors cannot access payment credentials",
            )),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header, if well formed.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

impl FromRequest for AuthenticatedUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let claims: Result<Claims, ApiError> = match (&state, bearer_token(req)) {
            (Some(state), Some(token)) => state
                .tokens
                .validate(token, TokenType::Access, state.clock.now())
                .map_err(|_| ApiError::Unauthorized(UNAUTHENTICATED)),
            (None, _) => Err(ApiError::internal(anyhow::anyhow!(
                "application state missing"
            ))),
            (_, None) => Err(ApiError::Unauthorized(UNAUTHENTICATED)),
        };
        // A caller with a verified client certificate and no token is a service: it may not
        // use the owners' API at all.
        let service_only = bearer_token(req).is_none() && req.conn_data::<PeerIdentity>().is_some();
        let req = req.clone();
        let meta = service_only.then(|| RequestMeta::of(&req));
        Box::pin(async move {
            if let Some(meta) = meta {
                // A certificate-only caller on an owners' endpoint: refused and recorded (the
                // entry carries the certificate's fingerprint).
                if let Some(state) = &state {
                    let ev = Event::new(
                        state.clock.now_micros(),
                        Actor::anonymous(),
                        &meta,
                        Action::ServiceAuthenticate,
                    )
                    .outcome(Outcome::Denied, Some(Reason::RoleForbidden));
                    state.audit.record_best_effort(ev).await;
                }
                return Err(ApiError::Forbidden(SERVICE_FORBIDDEN));
            }
            let claims = claims?;
            let state = state
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))?;
            let user = claims
                .user_id()
                .ok_or(ApiError::Unauthorized(UNAUTHENTICATED))?;
            let sid = claims.sid.clone();
            let now = state.clock.now();
            let (live, allowlist) = state
                .db(move |c| {
                    let live = sessions::live(c, &sid, user, now)?;
                    let allowlist = match live {
                        Some(_) => crate::db::users::allowed_cidrs(c, user)?,
                        None => None,
                    };
                    Ok((live, allowlist))
                })
                .await?;
            let live = live.ok_or(ApiError::Unauthorized(UNAUTHENTICATED))?;
            if !allowed(allowlist.as_deref(), req.peer_addr().map(|a| a.ip())) {
                let actor = Actor {
                    kind: crate::audit::ActorKind::User,
                    id: Some(user.get()),
                    name: Some(live.username.clone()),
                };
                let ev = Event::new(
                    state.clock.now_micros(),
                    actor,
                    &RequestMeta::of(&req),
                    Action::UserAuthenticate,
                )
                .target(crate::audit::Target::owner(user.get()))
                .outcome(Outcome::Denied, Some(Reason::OutsideAllowlist));
                state.audit.record_best_effort(ev).await;
                return Err(ApiError::Forbidden(OUTSIDE_ALLOWLIST));
            }
            let role =
                Role::parse(&live.role).map_err(|_| ApiError::Unauthorized(UNAUTHENTICATED))?;
            Ok(AuthenticatedUser {
                id: user,
                username: live.username,
                role,
                session_id: claims.sid,
            })
        })
    }
}

/// A service authenticated by a verified client certificate whose identity is registered and
/// enabled, calling from inside its allowlist (if it has one).
#[derive(Debug, Clone)]
pub struct AuthenticatedService {
    pub id: i64,
    pub name: String,
    pub identity: String,
    pub fingerprint: String,
}

/// Whether `ip` falls inside a comma-separated CIDR allowlist (`None` = any address).
pub fn allowed(allowlist: Option<&str>, ip: Option<std::net::IpAddr>) -> bool {
    let Some(list) = allowlist.filter(|l| !l.trim().is_empty()) else {
        return true;
    };
    let Some(ip) = ip.map(|ip| ip.to_canonical()) else {
        return false;
    };
    list.split(',')
        .filter_map(|c| c.trim().parse::<ipnet::IpNet>().ok())
        .any(|net| net.contains(&ip))
}

impl FromRequest for AuthenticatedService {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let peer = req.conn_data::<PeerIdentity>().cloned();
        let ip = req.peer_addr().map(|a| a.ip());
        let meta = RequestMeta::of(req);
        Box::pin(async move {
            let state = state
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))?;
            let peer = peer.ok_or(ApiError::Unauthorized(UNAUTHENTICATED))?;
            let identity = peer.identity.clone();
            let by_fingerprint = format!("sha256:{}", peer.fingerprint);
            let found = state
                .db(move |c| crate::db::services::find_enabled(c, &identity, &by_fingerprint))
                .await?;
            let denied = |actor: Actor, reason: Reason| {
                Event::new(
                    state.clock.now_micros(),
                    actor,
                    &meta,
                    Action::ServiceAuthenticate,
                )
                .outcome(Outcome::Denied, Some(reason))
            };
            let Some(service) = found else {
                // The certificate is recorded by fingerprint (in the entry's meta).
                state
                    .audit
                    .record_best_effort(denied(Actor::anonymous(), Reason::UnknownService))
                    .await;
                return Err(ApiError::Forbidden(UNKNOWN_SERVICE));
            };
            let authenticated = AuthenticatedService {
                id: service.id,
                name: service.name,
                identity: peer.identity,
                fingerprint: peer.fingerprint,
            };
            if !allowed(service.allowed_cidrs.as_deref(), ip) {
                let ev = denied(Actor::service(&authenticated), Reason::OutsideAllowlist);
                state.audit.record_best_effort(ev).await;
                return Err(ApiError::Forbidden(OUTSIDE_ALLOWLIST));
            }
            Ok(authenticated)
        })
    }
}

/// Whoever calls an endpoint open to owners and services alike: a bearer token makes a user;
/// only a verified client certificate (and no token) makes a service.
#[derive(Debug, Clone)]
pub enum Caller {
    User(AuthenticatedUser),
    Service(AuthenticatedService),
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if bearer_token(req).is_some() {
            let user = AuthenticatedUser::from_request(req, payload);
            Box::pin(async move { user.await.map(Caller::User) })
        } else {
            let service = AuthenticatedService::from_request(req, payload);
            Box::pin(async move { service.await.map(Caller::Service) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn allowlists_match_by_cidr() {
        let ip = |s: &str| Some(s.parse().unwrap());
        assert!(allowed(None, ip("203.0.113.9")));
        assert!(allowed(Some("10.0.0.0/8, 127.0.0.1/32"), ip("127.0.0.1")));
        assert!(allowed(Some("10.0.0.0/8"), ip("10.1.2.3")));
        assert!(!allowed(Some("10.0.0.0/8"), ip("127.0.0.1")));
        assert!(!allowed(Some("10.0.0.0/8"), None));
        assert!(allowed(Some("::1/128"), ip("::1")));
        // A dual-stack listener reports IPv4 peers as IPv4-mapped IPv6.
        assert!(allowed(Some("10.0.0.0/8"), ip("::ffff:10.1.2.3")));
    }
}
